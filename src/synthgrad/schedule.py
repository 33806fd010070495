"""The decoupled pipeline's schedule, as data: for every stage and tick, the list of actions it performs.

A stage does the work (synthgrad/stage.py); the schedule decides when, as in `torch.distributed.pipelining`. Tick t
is global step t: every stage runs step t at its tick t, on the same batch. Stage k's actions at tick t:

    recv_activation(t)     h_{k-1}(t) from stage k−1 (k > 0)
    recv_real_input(s)     complete unlock (k > 0): the real input of step s = t − S, which trains I_k; the
    send_real_output(s)    real forward pass it runs is what stage k+1 receives as its real input of step s
    step(t)                forward, synthetic gradient, backward, update; with folding, fold the true gradient
                           that arrived last tick
    send_target(t)         the message for stage k−1 (k > 0): its synthesizer's target
    send_activation(t)     h_k(t) to stage k+1 (below the top; with complete unlock only stage 0 sends it here)
    recv_target(t − S)     the message stage k+1 sent at its step t − S: stage k's synthesizer regresses onto it

[Note: bounded staleness]
    S (`staleness`) is the schedule's one knob: every target is consumed exactly S of the receiver's own steps
    after the step it is for, and with complete unlock every real input S steps late. A stage therefore never
    waits for a stage above it unless that stage is more than S steps behind, so S ≥ 1 lets stages run
    concurrently (S = 1 is the tightest pipeline; larger S absorbs jitter and slow links) and S = 0 is
    lockstep: the same operations in the same order as `DecoupledSequential.train_step`. Because the delay is
    fixed rather than "whatever has arrived", a run's numbers do not depend on timing: the same seed gives the
    same weights in one process (`pipeline.LocalExecutor`), in K processes, on any machine or link, and a
    resumed run continues exactly (tests/test_schedule.py, tests/test_parallel.py).

[Note: fold timing]
    With folding (`TrueGradient(every=e)`) a message carries a true gradient only on some steps, so that nothing
    travels otherwise. The top stage sends the true gradient of batch s with its step s when s is kept
    (s % e == 0); the stage below receives it at its tick s + S and folds it at step s + S + 1, sending the
    true gradient one stage lower with that step's message. So stage k sends a true gradient at step t exactly
    when t − (K−1−k)(S+1) is a kept step (≥ 0); the receiver knows from the schedule what to expect.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from synthgrad.interface import TargetRule


class Action(enum.Enum):
    RECV_ACTIVATION = "recv_activation"
    RECV_REAL_INPUT = "recv_real_input"
    SEND_REAL_OUTPUT = "send_real_output"
    STEP = "step"
    SEND_TARGET = "send_target"
    SEND_ACTIVATION = "send_activation"
    RECV_TARGET = "recv_target"


@dataclass(frozen=True)
class Op:
    """One action of one stage, about one step's batch. `carries`: whether a tensor travels (a folding stage's
    message on a step that folds nothing is not sent at all)."""

    action: Action
    step: int
    carries: bool = True

    def __str__(self) -> str:
        return f"{self.action.value}({self.step}{'' if self.carries else ', empty'})"


@dataclass(frozen=True)
class DecoupledSchedule:
    """The ops of `stages` decoupled stages with staleness bound `staleness` ([Note: bounded staleness]).

    Args:
        stages: K.
        staleness: S ≥ 0.
        rule: the chain's target rule (for which messages carry a tensor, [Note: fold timing]).
        unlock: complete unlock (stages above the first train on synthetic inputs).
    """

    stages: int
    staleness: int
    rule: TargetRule
    unlock: bool = False

    def __post_init__(self) -> None:
        if self.stages < 1 or self.staleness < 0:
            raise ValueError(f"a schedule needs >= 1 stage and staleness >= 0, got {self.stages}, {self.staleness}")

    def carries_target(self, stage: int, step: int) -> bool:
        """Whether stage `stage`'s message down at `step` carries a tensor ([Note: fold timing])."""
        if self.rule.carries_input_gradient:
            return step >= 0 and self.rule.targets(step)  # [Note: sparse targets] in interface.py
        lag = (self.stages - 1 - stage) * (self.staleness + 1)
        return step - lag >= 0 and self.rule.keeps(step - lag)

    def ops(self, stage: int, tick: int) -> list[Op]:
        """Stage `stage`'s actions at `tick`, in order."""
        k, t, s = stage, tick, tick - self.staleness
        top = k == self.stages - 1
        ops: list[Op] = []
        if k > 0 and self.unlock:
            if s >= 0:
                ops.append(Op(Action.RECV_REAL_INPUT, s))
                if not top:
                    ops.append(Op(Action.SEND_REAL_OUTPUT, s))
        elif k > 0:
            ops.append(Op(Action.RECV_ACTIVATION, t))
        ops.append(Op(Action.STEP, t))
        if k > 0:
            ops.append(Op(Action.SEND_TARGET, t, self.carries_target(k, t)))
        if not top and not (self.unlock and k > 0):
            ops.append(Op(Action.SEND_ACTIVATION, t))
        if not top and s >= 0:
            ops.append(Op(Action.RECV_TARGET, s, self.carries_target(k + 1, s)))
        return ops

    def unconsumed_targets(self, stage: int, ticks_done: int) -> list[int]:
        """Steps whose message stage `stage` has been sent but not consumed after `ticks_done` ticks (a checkpoint
        keeps them, so that a resumed run consumes them on time)."""
        if stage == self.stages - 1:
            return []
        first = max(0, ticks_done - self.staleness)
        return [m for m in range(first, ticks_done) if self.carries_target(stage + 1, m)]

    def unconsumed_real_inputs(self, stage: int, ticks_done: int) -> list[int]:
        """Complete unlock: steps whose real input stage `stage` has been sent but not consumed after
        `ticks_done` ticks (only stage 0 sends ahead of the schedule's delay)."""
        if not self.unlock or stage != 1:
            return []
        return list(range(max(0, ticks_done - self.staleness), ticks_done))

    def format(self, ticks: int) -> str:
        """The first `ticks` ticks as a table: a line per stage and tick."""
        lines = []
        for t in range(ticks):
            for k in range(self.stages):
                lines.append(f"t={t:<3d} stage {k}: " + " ".join(str(op) for op in self.ops(k, t)))
        return "\n".join(lines)
