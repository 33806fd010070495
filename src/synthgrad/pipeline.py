"""Running a `DecoupledSchedule`: one interpreter of its ops per stage, over a transport.

`StageRunner` performs one stage's ops tick by tick; it never decides when anything happens (the schedule does)
and never does the maths (the stage does). What carries messages is a `Transport`: `LocalTransport` hands them
over in this process (`LocalExecutor` runs K stages here, round robin, each blocked op yielding to the next
stage), `synthgrad.parallel.transport.RuntimeTransport` sends them between processes. Both executors perform the
same operations on every stage in the same order, so they give the same numbers bit for bit, whatever the
timing ([Note: bounded staleness] in schedule.py).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor

from synthgrad.schedule import Action, DecoupledSchedule, Op
from synthgrad.stage import Stage


class Channel(enum.Enum):
    ACTIVATION = "activation"  # up the chain: h_k, or with complete unlock a real input
    TARGET = "target"  # down the chain: a synthesizer's target


class Transport(Protocol):
    """Point-to-point messages between stages, keyed by channel and step (each channel is in step order)."""

    def send(self, channel: Channel, dst: int, step: int, tensor: Tensor) -> None: ...

    def ready(self, channel: Channel, src: int, step: int) -> bool:
        """Whether `recv` would return at once (a transport that blocks in `recv` may always say True)."""
        ...

    def recv(self, channel: Channel, src: int, step: int, like: Tensor | tuple[int, ...]) -> Tensor:
        """The message; `like`: its shape (B, ...) or a tensor of that shape, for a transport that must allocate."""
        ...


@dataclass
class RunnerStats:
    """What a stage's runner measured since it was made (or last reset)."""

    sg_loss_sum: float = 0.0
    sg_count: int = 0
    max_staleness: int = 0
    input_loss_sum: float = 0.0
    input_count: int = 0
    losses: list[float] = field(default_factory=list)  # the top stage's task losses

    def sg_loss(self) -> float:
        return self.sg_loss_sum / self.sg_count if self.sg_count else float("nan")


class StageRunner:
    """Stage k's share of a schedule: `tick(t, x, y, context)` performs its ops for step t (a generator that
    yields whenever a message has not arrived yet; run it to the end with `run`).

    Args:
        stage: the stage.
        schedule: the schedule.
        transport: how messages travel.
        input_shape: per-example shape of this stage's input (to receive it).
        target_shape: per-example shape of this stage's output (to receive its synthesizer's targets).
    """

    def __init__(
        self,
        stage: Stage,
        schedule: DecoupledSchedule,
        transport: Transport,
        input_shape: tuple[int, ...],
        target_shape: tuple[int, ...],
    ) -> None:
        self.stage, self.schedule, self.transport = stage, schedule, transport
        self.k = stage.index
        self.input_shape, self.target_shape = input_shape, target_shape
        self.awaiting: dict[int, tuple[Tensor, Tensor | None, bool]] = {}  # unlock: step -> (x, context, update)
        self.stats = RunnerStats()

    def tick(self, t: int, x: Tensor | None, y: Tensor, context: Tensor | None) -> Iterator[None]:
        """Stage k's ops at tick t on batch (x, y). `x` is needed by stage 0 and, with complete unlock, by
        every stage (for I_k(x)); elsewhere it may be None."""
        stage, batch = self.stage, y.shape[0]
        update = stage.draw_update()  # the same draws on every stage: one seed, a generator each
        unlocked = self.schedule.unlock and self.k > 0
        if unlocked:
            self.awaiting[t] = (x, context, update)
        source, fresh, result, real_out = x, None, None, None
        for op in self.schedule.ops(self.k, t):
            a = op.action
            if a in (Action.RECV_ACTIVATION, Action.RECV_REAL_INPUT):
                while not self.transport.ready(Channel.ACTIVATION, self.k - 1, op.step):
                    yield
                received = self.transport.recv(Channel.ACTIVATION, self.k - 1, op.step, (batch, *self.input_shape))
                if a is Action.RECV_ACTIVATION:
                    source = received
                else:
                    real_out, synthetic_in = self._train_input(op.step, received)
                    fresh = synthetic_in if op.step == t else fresh
            elif a is Action.SEND_REAL_OUTPUT:
                self.transport.send(Channel.ACTIVATION, self.k + 1, op.step, real_out)
            elif a is Action.STEP:
                if unlocked:
                    source = fresh if fresh is not None else stage.input_interface.predict(x, context)
                result = stage.step(source, y, context, update, synthetic_input=unlocked)
                if result.loss is not None:
                    self.stats.losses.append(result.loss)
            elif a is Action.SEND_TARGET:
                self._send_target(op, result.down)
            elif a is Action.SEND_ACTIVATION:
                self.transport.send(Channel.ACTIVATION, self.k + 1, op.step, result.output.detach())
            elif a is Action.RECV_TARGET:
                message = None
                if op.carries:
                    while not self.transport.ready(Channel.TARGET, self.k + 1, op.step):
                        yield
                    message = self.transport.recv(Channel.TARGET, self.k + 1, op.step, (batch, *self.target_shape))
                self._receive(t, op.step, message)

    def run(self, t: int, x: Tensor | None, y: Tensor, context: Tensor | None) -> None:
        """`tick` to the end (with a transport that blocks in `recv`, it never yields)."""
        for _ in self.tick(t, x, y, context):
            pass

    def _train_input(self, s: int, real: Tensor) -> tuple[Tensor, Tensor]:
        x, context, update = self.awaiting.pop(s)
        synthetic_in, loss, real_out = self.stage.train_input(x, real, context, update)
        self.stats.input_loss_sum += loss
        self.stats.input_count += 1
        return real_out, synthetic_in

    def _send_target(self, op: Op, down: Tensor | None) -> None:
        if op.carries != (down is not None):
            raise RuntimeError(
                f"stage {self.k} step {op.step}: the schedule expects {'a' if op.carries else 'no'} message down, "
                f"the stage produced {'one' if down is not None else 'none'} (fold timing out of step)"
            )
        if down is not None:
            self.transport.send(Channel.TARGET, self.k - 1, op.step, down)

    def _receive(self, t: int, m: int, message: Tensor | None) -> None:
        sg_loss, _ = self.stage.receive(message)
        self.stats.max_staleness = max(self.stats.max_staleness, t - m)
        if not math.isnan(sg_loss):
            self.stats.sg_loss_sum += sg_loss
            self.stats.sg_count += 1

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        """The runner's own state: inputs awaiting their real counterpart (complete unlock)."""
        return {"awaiting": {s: list(v) for s, v in self.awaiting.items()}}

    def load_state(self, state: dict) -> None:
        self.awaiting = {int(s): (v[0], v[1], bool(v[2])) for s, v in state["awaiting"].items()}


class LocalTransport:
    """Messages handed over in one process: a mailbox keyed by (channel, receiver, step)."""

    def __init__(self) -> None:
        self.mail: dict[tuple[Channel, int, int], Tensor] = {}
        self.sender: dict[tuple[Channel, int, int], int] = {}

    def bind(self, k: int) -> _Bound:
        return _Bound(self, k)


class _Bound:
    """`LocalTransport` as seen by stage k."""

    def __init__(self, hub: LocalTransport, k: int) -> None:
        self.hub, self.k = hub, k

    def send(self, channel: Channel, dst: int, step: int, tensor: Tensor) -> None:
        self.hub.mail[(channel, dst, step)] = tensor.detach()

    def ready(self, channel: Channel, src: int, step: int) -> bool:
        return (channel, self.k, step) in self.hub.mail

    def recv(self, channel: Channel, src: int, step: int, like: Tensor | tuple[int, ...]) -> Tensor:
        return self.hub.mail.pop((channel, self.k, step))


class LocalExecutor:
    """K stages of one chain run under a schedule in this process. Equal, bit for bit, to the same schedule run
    in K processes (tests/test_parallel.py); with staleness 0, to `DecoupledSequential.train_step`.

    Args:
        stages: the chain's stages, bottom first.
        schedule: the schedule (its `stages` must equal len(stages)).
        shapes: per-example output shape of every stage (`decoupled.infer_shapes`).
        input_shape: per-example shape of the network input.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        schedule: DecoupledSchedule,
        shapes: Sequence[tuple[int, ...]],
        input_shape: tuple[int, ...],
    ) -> None:
        if schedule.stages != len(stages):
            raise ValueError(f"a schedule of {schedule.stages} stages cannot run {len(stages)}")
        self.transport = LocalTransport()
        ins = [tuple(input_shape), *map(tuple, shapes[:-1])]
        self.runners = [
            StageRunner(s, schedule, self.transport.bind(k), ins[k], tuple(shapes[k])) for k, s in enumerate(stages)
        ]
        self.ticks = 0

    def tick(self, x: Tensor, y: Tensor, context: Tensor | None = None) -> float | None:
        """Every stage's ops of the next tick on batch (x, y); returns the top stage's loss."""
        t = self.ticks
        pending = [r.tick(t, x, y, context) for r in self.runners]
        rounds = 0
        while pending:  # round robin; a message crosses at most K stages up and K down per tick
            rounds += 1
            if rounds > 4 * len(self.runners) + 4:
                raise RuntimeError(f"tick {t}: stages wait for messages that no stage sends (a schedule with a cycle)")
            pending = [gen for gen in pending if next(gen, StopIteration) is not StopIteration]
        self.ticks += 1
        losses = self.runners[-1].stats.losses
        return losses[-1] if losses else None
