"""The stage transport's receive window ([Note: receives ahead] in parallel/transport.py), on a fake runtime that
records every receive it is asked to post: `ahead` receives stay posted per channel, in step order, only for steps
that carry a message and only before the run's end; what arrives is what was sent for that step."""

from __future__ import annotations

import pytest
import torch

from synthgrad.parallel.runtime import TAG_FORWARD, TAG_TARGET, StageTiming
from synthgrad.parallel.transport import RuntimeTransport
from synthgrad.pipeline import Channel


class _Work:
    def __init__(self, fill) -> None:
        self.fill = fill

    def wait(self) -> None:
        self.fill()


class FakeRuntime:
    """Peers whose message for step s is a tensor full of s; receives are matched in posting order per tag."""

    def __init__(self, carries=lambda s: True) -> None:
        self.device = torch.device("cpu")
        self.timing = StageTiming()
        self.rank = 1
        self.carries = carries
        self.posted: dict[int, list[int]] = {TAG_FORWARD: [], TAG_TARGET: []}  # the step each receive is for
        self.sent: dict[int, int] = {TAG_FORWARD: 0, TAG_TARGET: 0}  # the next step each peer sends

    def irecv(self, buf: torch.Tensor, src: int, tag: int) -> _Work:
        def fill() -> None:
            while not (self.carries(self.sent[tag]) or tag == TAG_FORWARD):
                self.sent[tag] += 1
            buf.fill_(self.sent[tag])
            self.sent[tag] += 1

        self.posted[tag].append(len(self.posted[tag]))
        return _Work(fill)

    def wait(self, work: _Work, peer: int) -> None:
        work.wait()

    def isend(self, tensor, dst, tag):
        return _Work(lambda: None)


def _posted_steps(transport: RuntimeTransport, channel: Channel) -> list[int]:
    return [s for s, _, _ in transport.incoming[channel].posted]


@pytest.mark.parametrize("ahead", [1, 2, 3, 5])
def test_keeps_ahead_receives_posted_in_step_order(ahead: int) -> None:
    rt = FakeRuntime()
    t = RuntimeTransport(rt, 1, lambda s: True, max_outstanding=8, ahead=ahead)
    for step in range(12):
        got = t.recv(Channel.ACTIVATION, 0, step, (2, 3))
        assert torch.equal(got, torch.full((2, 3), float(step)))
        assert _posted_steps(t, Channel.ACTIVATION) == list(range(step + 1, step + 1 + ahead))


def test_the_target_channel_posts_only_steps_that_carry_a_target() -> None:
    carries = lambda s: s % 3 == 0  # noqa: E731 (a fold every third step)
    rt = FakeRuntime(carries)
    t = RuntimeTransport(rt, 1, carries, max_outstanding=8, ahead=3)
    got = t.recv(Channel.TARGET, 2, 0, (4,))
    assert torch.equal(got, torch.zeros(4))
    assert _posted_steps(t, Channel.TARGET) == [3, 6, 9]
    assert torch.equal(t.recv(Channel.TARGET, 2, 3, (4,)), torch.full((4,), 3.0))
    assert _posted_steps(t, Channel.TARGET) == [6, 9, 12]


def test_no_receive_is_posted_at_or_after_the_runs_end() -> None:
    rt = FakeRuntime()
    t = RuntimeTransport(rt, 1, lambda s: True, max_outstanding=8, ahead=4)
    t.limit(6)
    for step in range(6):
        t.recv(Channel.ACTIVATION, 0, step, (1,))
        assert all(s < 6 for s in _posted_steps(t, Channel.ACTIVATION))
    assert _posted_steps(t, Channel.ACTIVATION) == []
    assert len(rt.posted[TAG_FORWARD]) == 6  # every step received exactly once


def test_settle_moves_the_posted_messages_into_the_inbox_in_order_and_resumes_from_it() -> None:
    rt = FakeRuntime()
    t = RuntimeTransport(rt, 1, lambda s: True, max_outstanding=8, ahead=3)
    t.recv(Channel.ACTIVATION, 0, 0, (2,))  # posts 1, 2, 3
    t.settle([], [1, 2], {Channel.ACTIVATION: (2,), Channel.TARGET: (2,)})
    assert sorted(t.incoming[Channel.ACTIVATION].inbox) == [1, 2]
    assert _posted_steps(t, Channel.ACTIVATION) == [3]
    state = t.state()
    fresh = RuntimeTransport(FakeRuntime(), 1, lambda s: True, max_outstanding=8, ahead=3)
    fresh.load_state(state)
    assert torch.equal(fresh.recv(Channel.ACTIVATION, 0, 1, (2,)), torch.full((2,), 1.0))
    assert torch.equal(fresh.recv(Channel.ACTIVATION, 0, 2, (2,)), torch.full((2,), 2.0))
    assert _posted_steps(fresh, Channel.ACTIVATION) == [3, 4, 5]  # posting continues after the inbox


def test_ahead_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ahead"):
        RuntimeTransport(FakeRuntime(), 1, lambda s: True, max_outstanding=8, ahead=0)
