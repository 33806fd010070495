"""The training loop every feed-forward job runs: in one process, on each stage of a pipeline, for each baseline.

A `Job` is one process's share of a run: it trains on a batch (given as indices into the training set, so that no
data travels between processes), evaluates the assembled network (agreed by every rank), and saves and loads
its state. `fit` is the rest, once: the batch order, evaluation every `eval_every` steps and at each epoch end,
time to the target, metric rows, checkpoints at each epoch end, resume, divergence, the progress bar, and the
summary in one schema.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm import tqdm

from synthgrad.errors import TrainingDiverged
from synthgrad.training.run_folder import Collective, RunFolder


@dataclass(frozen=True)
class Plan:
    """What `fit` runs: how many epochs of which batches, evaluated how often, against which target."""

    epochs: int
    batch_size: int
    seed: int  # the batch order's seed
    examples: int  # training examples used (the first `examples` of the training set)
    eval_every: int = 0  # steps between evaluations besides each epoch's end; 0: epoch ends only
    target: float | None = None  # the value of the job's first metric (lower is better) that counts as reached
    progress: bool = False  # a progress bar
    desc: str = ""

    @property
    def steps_per_epoch(self) -> int:
        """Full batches only: the ragged last batch is dropped (batch norm needs B >= 2)."""
        return self.examples // self.batch_size


def batch_order(seed: int, epoch: int, examples: int) -> torch.Tensor:
    """The permutation of the training set in `epoch` (from 1): every job and every rank derives the same one."""
    return torch.randperm(examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


class Job(Protocol):
    """One process's share of a training run, as `fit` sees it."""

    comm: Collective

    def step(self, indices: torch.Tensor) -> float | None:
        """Train on the batch of these training-set indices; the task loss if this rank knows it."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Metrics of the assembled network, the same on every rank; the first is the one a target is about
        (lower is better), e.g. {"test_error": %, "test_loss": nats}."""
        ...

    def evaluate_keys(self) -> tuple[str, ...]:
        """The keys `evaluate` returns, in order."""
        ...

    def interval_metrics(self) -> dict[str, Any]:
        """Extra metrics since the last call (synthesizer losses, cosines), for the next metric row."""
        ...

    def take_diagnostics(self) -> list[dict]:
        """Diagnostics rows since the last call."""
        ...

    def training_state(self) -> dict: ...

    def load_training_state(self, state: dict) -> None: ...

    def settle(self) -> None:
        """Before a checkpoint: receive what is in flight to this rank, so that its state is complete."""
        ...

    def check_finite(self) -> str | None:
        """What is not finite in this rank's model or optimizer state, or None."""
        ...

    def report(self) -> dict[str, Any]:
        """This rank's part of the summary (its timing, its staleness), gathered into `per_stage`."""
        ...


def fit(job: Job, run: RunFolder, plan: Plan) -> dict[str, Any]:
    """Train `job` per `plan` from where `run` stands; returns the summary's training part (every rank)."""
    p, comm = run.progress, job.comm
    steps = plan.steps_per_epoch
    if steps < 1:
        raise ValueError(f"{plan.examples} training examples make no batch of {plan.batch_size}")
    for epoch in range(p.epoch + 1, plan.epochs + 1):
        order = batch_order(plan.seed, epoch, plan.examples)
        loss_sum, loss_n, t0 = 0.0, 0, time.perf_counter()
        bar = tqdm(range(steps), desc=f"{plan.desc} epoch {epoch}/{plan.epochs}", disable=not plan.progress)
        for s in bar:
            loss = job.step(order[s * plan.batch_size : (s + 1) * plan.batch_size])
            p.steps, p.samples = p.steps + 1, p.samples + plan.batch_size
            if loss is not None:
                if not math.isfinite(loss):
                    raise TrainingDiverged(_diverged(run, f"the loss is {loss}", epoch, p.steps))
                loss_sum, loss_n = loss_sum + loss, loss_n + 1
                if s % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}")
            if s == steps - 1 or (plan.eval_every and p.steps % plan.eval_every == 0):
                elapsed, total, n = comm.all_reduce([time.perf_counter() - t0], "max") + comm.all_reduce(
                    [loss_sum, loss_n], "sum"
                )
                p.train_time_s += elapsed
                _evaluate(job, run, plan, epoch + (s + 1 - steps) / steps, total / n if n else float("nan"))
                loss_sum, loss_n, t0 = 0.0, 0, time.perf_counter()
        bar.close()
        p.epoch = epoch
        job.settle()
        problem = comm.all_gather_object(job.check_finite())
        if any(problem):
            where = "; ".join(f"rank {r}: {w}" for r, w in enumerate(problem) if w)
            raise TrainingDiverged(_diverged(run, where, epoch, p.steps))
        run.checkpoint({"job": job.training_state()})
    return _summary(job, run, plan)


def _evaluate(job: Job, run: RunFolder, plan: Plan, epoch: float, train_loss: float) -> None:
    p = run.progress
    metrics = job.evaluate()
    first = next(iter(metrics.values()))
    if p.time_to_target_s is None and plan.target is not None and first <= plan.target:
        p.time_to_target_s = p.train_time_s
    row = {"epoch": round(epoch, 6), "train_time_s": p.train_time_s, "train_loss": train_loss, **metrics,
           **job.interval_metrics()}  # fmt: skip
    run.record(row)
    run.diagnose(job.take_diagnostics())


def _diverged(run: RunFolder, what: str, epoch: int, step: int) -> str:
    last = run.out / "checkpoint.json"
    where = (
        f"the last good checkpoint is {last} (--resume continues)" if last.exists() else "no checkpoint was written yet"
    )
    return f"training diverged: {what} at epoch {epoch}, step {step}; {where} (try a smaller --lr)"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _summary(job: Job, run: RunFolder, plan: Plan) -> dict[str, Any]:
    """The training part of summary.json: the same keys for every job."""
    p = run.progress
    last = p.history[-1] if p.history else {}
    per_stage = job.comm.all_gather_object({**job.report(), "peak_rss_mb": peak_rss_mb()})
    metrics = list(job.evaluate_keys())
    return {
        "epochs": p.epoch,
        "steps": p.steps,
        "samples": p.samples,
        **{k: last.get(k) for k in metrics},
        "train_loss": last.get("train_loss"),
        f"best_{metrics[0]}": min((r[metrics[0]] for r in p.history), default=None),
        "train_time_s": p.train_time_s,
        "wall_time_s": run.elapsed(),
        "time_per_epoch_s": run.elapsed() / max(1, p.epoch),
        "samples_per_s": p.samples / p.train_time_s if p.train_time_s else None,
        "time_to_target_s": p.time_to_target_s,
        "target": plan.target,
        "eval_every": plan.eval_every,
        "world_size": job.comm.world_size,
        "per_stage": per_stage,
    }
