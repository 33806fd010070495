"""One stage of a decoupled pipeline, as a job of the training loop: what each `synthgrad parallel` process runs.

Every process builds the whole chain with the same seed and trains only its own stage, running the schedule's
ops for it (`synthgrad.pipeline.StageRunner`) over `RuntimeTransport`. The maths is the stage's, the timing the
schedule's: the K processes compute exactly what `pipeline.LocalExecutor` computes in one.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from synthgrad.decoupled import DecoupledSequential, infer_shapes
from synthgrad.parallel.runtime import Runtime
from synthgrad.parallel.transport import RuntimeTransport
from synthgrad.pipeline import Channel, StageRunner
from synthgrad.schedule import DecoupledSchedule
from synthgrad.training.chain_job import first_nonfinite, state_tensors
from synthgrad.training.evaluate import evaluate_across
from synthgrad.training.task import Task


class StageJob:
    """Stage `rt.rank` of `net` under `schedule`, on `task`.

    Args:
        net: the whole chain (the same on every rank); this rank trains `net.stages[rank]`.
        rt: the runtime (the job's collective).
        schedule: the pipeline's schedule.
        task: what the chain trains on (tensors on the runtime's device) and how it is scored.
        batch_size: examples per step.
        ticks: the steps the run will take in all (no message is awaited beyond them).
        layers: the model layers this stage holds (for the report).
    """

    def __init__(
        self, net: DecoupledSequential, rt: Runtime, schedule: DecoupledSchedule, task: Task, *, batch_size: int,
        ticks: int, layers: list[int],
    ) -> None:  # fmt: skip
        self.net, self.comm, self.schedule, self.task, self.layers = net, rt, schedule, task, layers
        self.k = rt.rank
        self.stage = net.stages[self.k]
        shapes = infer_shapes(net.blocks, task.example)
        self.shapes = {Channel.TARGET: tuple(shapes[self.k])}
        in_shape = task.input_shape if self.k == 0 else tuple(shapes[self.k - 1])
        self.shapes[Channel.ACTIVATION] = in_shape
        s = schedule.staleness
        self.transport = RuntimeTransport(
            rt, self.k, lambda m: schedule.carries_target(self.k + 1, m), 4 * (s + 2), ahead=s + 1
        )  # [Note: receives ahead] in parallel/transport.py
        self.transport.limit(ticks)
        self.runner = StageRunner(self.stage, schedule, self.transport, in_shape, tuple(shapes[self.k]))
        self.batch = batch_size
        self.busy_s = 0.0  # time inside the stage's ticks

    def step(self, indices: torch.Tensor) -> float | None:
        x, y, context = self.task.batch(indices)  # every stage needs y (the draws, cDNI's context), x stage 0
        t0 = time.perf_counter()
        self.runner.run(self.stage.steps, x, y, context)
        self.busy_s += time.perf_counter() - t0
        losses = self.runner.stats.losses
        return losses.pop() if losses else None

    def evaluate_keys(self) -> tuple[str, ...]:
        return self.task.metrics

    def evaluate(self) -> dict[str, float]:
        return evaluate_across(self.comm, self.net, self.stage.block, f"stages.{self.k}.block.", self.task.evaluate)

    def interval_metrics(self) -> dict[str, Any]:
        stats = self.comm.all_gather_object(self.runner.stats.sg_loss())
        self.runner.stats.sg_loss_sum, self.runner.stats.sg_count = 0.0, 0
        return {"sg_loss": stats[:-1]}

    def take_diagnostics(self) -> list[dict]:
        return []

    def settle(self) -> None:
        ticks = self.stage.steps
        targets = self.schedule.unconsumed_targets(self.k, ticks)
        inputs = self.schedule.unconsumed_real_inputs(self.k, ticks)
        shapes = {Channel.TARGET: (self.batch, *self.shapes[Channel.TARGET]),
                  Channel.ACTIVATION: (self.batch, *self.shapes[Channel.ACTIVATION])}  # fmt: skip
        self.transport.settle(targets, inputs, shapes)

    def training_state(self) -> dict:
        return {"stage": self.stage.training_state(), "runner": self.runner.state(),
                "transport": self.transport.state()}  # fmt: skip

    def load_training_state(self, state: dict) -> None:
        self.stage.load_training_state(state["stage"])
        self.runner.load_state(state["runner"])
        self.transport.load_state(state["transport"])

    def check_finite(self) -> str | None:
        s = self.stage
        return first_nonfinite(state_tensors(s, [s.optimizer, s.interface and s.interface.optimizer]))

    def report(self) -> dict[str, Any]:
        t = self.comm.timing
        return {
            "stage": self.k,
            "layers": self.layers,
            "compute_s": self.busy_s - t.wait_s - t.comm_s,
            "wait_s": t.wait_s,
            "comm_s": t.comm_s,
            "max_staleness_seen": self.runner.stats.max_staleness,
            "threads": torch.get_num_threads(),
        }
