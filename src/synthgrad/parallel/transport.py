"""Messages between stage processes, for the schedule's interpreter (`synthgrad.pipeline.StageRunner`).

Each channel between two stages is a FIFO in step order, and the receiver knows from the schedule which steps
carry a message ([Note: fold timing] in synthgrad/schedule.py), so it posts its receives ahead ([Note: receives
ahead]): a message is on the wire while the receiver computes, and waiting happens only when the sender is late.
What has arrived but is not consumed yet sits in an inbox, which a checkpoint keeps (`settle`), so that a resumed
run receives nothing twice and misses nothing.

[Note: receives ahead]
    gloo moves a message only once both ends have posted it: a receive sends the peer a small "ready to receive"
    notice, and the sender holds the bytes until that notice arrives (gloo/transport/tcp/pair.cc, `Pair::recv`
    and `Pair::send`). The notice travels on the same TCP connection as the receiver's own outgoing messages,
    behind whatever of them is still queued. Where a message takes a while on the link (1 MiB at 100 Mbit/s is
    ~90 ms) that is most of a step: stage 0, posting its receive for target t just after sending activation
    t + S, made the notice wait behind that activation, and target t left stage 1 only then, so the step became
    compute plus one message (155 ms measured for the 7 × 1024 FCN, batch 256, where the link allows ~100 ms;
    benchmarks/transport_probe.py reproduces both). Keeping `ahead` receives posted per channel (S + 1 by default:
    every message that can be in flight towards a stage) sends each notice steps before its message, while the
    connection is idle. The cost is `ahead` buffers of one message per channel, the memory [Note: auto
    staleness] already counts per step of S.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from synthgrad.parallel.runtime import TAG_FORWARD, TAG_TARGET, Runtime
from synthgrad.pipeline import Channel

TAGS = {Channel.ACTIVATION: TAG_FORWARD, Channel.TARGET: TAG_TARGET}


class _Incoming:
    """One incoming channel: receives posted in step order, `ahead` of what is consumed ([Note: receives ahead])."""

    def __init__(
        self, rt: Runtime, src: int, channel: Channel, carries: Callable[[int], bool], ahead: int = 1
    ) -> None:  # fmt: skip
        if ahead < 1:
            raise ValueError(f"receives posted ahead must be >= 1, got {ahead}")
        self.rt, self.src, self.tag, self.carries, self.ahead = rt, src, TAGS[channel], carries, ahead
        self.inbox: dict[int, Tensor] = {}
        self.posted: deque[tuple[int, object, Tensor]] = deque()  # (step, work, buffer)
        self.shape: tuple[int, ...] | None = None
        self.limit: int | None = None  # no receive is posted for this step or later (the run ends before it)

    def _next(self, after: int) -> int:
        """The first step > `after` that carries a message and has not arrived yet."""
        step = max([after, *self.inbox, *(s for s, _, _ in self.posted)]) + 1
        while not self.carries(step):
            step += 1
        return step

    def _post(self, step: int) -> bool:
        if self.limit is not None and step >= self.limit:
            return False
        buf = torch.empty(self.shape, device=self.rt.device)
        self.posted.append((step, self.rt.irecv(buf, self.src, self.tag), buf))
        return True

    def take(self, step: int, shape: tuple[int, ...]) -> Tensor:
        self.shape = shape
        message = self.inbox.pop(step) if step in self.inbox else self._wait(step)
        # `ahead` posted: the next messages travel while this stage computes
        while len(self.posted) < self.ahead and self._post(self._next(step)):
            pass
        return message

    def settle(self, steps: list[int]) -> None:
        """Receive the messages of `steps` (in order) into the inbox."""
        for step in steps:
            if step not in self.inbox:
                self.inbox[step] = self._wait(step)

    def _wait(self, step: int) -> Tensor:
        """The message of `step`, the next one on the wire: wait for it."""
        if not self.posted:
            self._post(step)
        posted, work, buf = self.posted.popleft()
        if posted != step:
            raise RuntimeError(f"stage {self.rt.rank}: channel out of step: expected {step}, the next is {posted}")
        with self.rt.timing.measure("wait"):
            self.rt.wait(work, self.src)
        return buf


class RuntimeTransport:
    """`Transport` over a `Runtime`, as seen by stage `k` of a schedule."""

    def __init__(
        self, rt: Runtime, k: int, target_carries: Callable[[int], bool], max_outstanding: int, ahead: int = 1
    ) -> None:  # fmt: skip
        self.rt, self.k = rt, k
        self.incoming = {
            Channel.ACTIVATION: _Incoming(rt, k - 1, Channel.ACTIVATION, lambda s: True, ahead),
            Channel.TARGET: _Incoming(rt, k + 1, Channel.TARGET, target_carries, ahead),
        }
        self.sends: deque[tuple[object, int]] = deque()
        self.max_outstanding = max_outstanding

    def limit(self, ticks: int) -> None:
        """The run ends after `ticks` ticks: post no receive for a later step."""
        for incoming in self.incoming.values():
            incoming.limit = ticks

    def send(self, channel: Channel, dst: int, step: int, tensor: Tensor) -> None:
        self.sends.append((self.rt.isend(tensor.detach(), dst, TAGS[channel]), dst))
        while len(self.sends) > self.max_outstanding:  # completed long ago in practice; bounds memory
            self._complete_oldest_send()

    def _complete_oldest_send(self) -> None:
        work, dst = self.sends.popleft()
        with self.rt.timing.measure("comm"):
            self.rt.wait(work, dst)

    def ready(self, channel: Channel, src: int, step: int) -> bool:
        return True  # `recv` blocks

    def recv(self, channel: Channel, src: int, step: int, like: Tensor | tuple[int, ...]) -> Tensor:
        shape = tuple(like.shape) if isinstance(like, Tensor) else tuple(like)
        return self.incoming[channel].take(step, shape)

    def settle(self, targets: list[int], activations: list[int], shapes: dict[Channel, tuple[int, ...]]) -> None:
        """Receive what is in flight to this stage into the inbox, and complete every send."""
        for channel, steps in ((Channel.TARGET, targets), (Channel.ACTIVATION, activations)):
            if steps:
                self.incoming[channel].shape = shapes[channel]
                self.incoming[channel].settle(steps)
        while self.sends:
            self._complete_oldest_send()

    def state(self) -> dict:
        return {c.value: dict(self.incoming[c].inbox) for c in Channel}

    def load_state(self, state: dict) -> None:
        for c in Channel:
            self.incoming[c].inbox = {int(s): t for s, t in state[c.value].items()}
