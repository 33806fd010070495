"""The training loop every feed-forward job runs: in one process, on each stage of a pipeline, for each baseline.

A `Job` is one process's share of a run: it trains on a batch (given as indices into the training set, so that no
data travels between processes), evaluates the assembled network (agreed by every rank), and saves and loads
its state. `fit` is the rest, once: the batch order, evaluation every `eval_every` steps and at each epoch end,
time to the target, metric rows, checkpoints at each epoch end, budgets in steps or minutes (a language model's
tokens) that may end a run within an epoch, resume (within an epoch too), divergence, the progress bar, and the
summary in one schema.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
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
    # Budgets besides the epochs; the run stops at the first one spent, with an evaluation and a checkpoint.
    max_steps: int | None = None  # steps in all (a language model's budget in tokens)
    max_minutes: float | None = None  # training time (evaluation excluded); a job of one process only
    checkpoint_every: int = 0  # steps between checkpoints besides epoch ends (taken at evaluations); 0: none
    tokens_per_example: int = 0  # a language model's window T: metric rows and the summary count tokens too
    stop_at_target: bool = False  # end the run at the first evaluation that reaches `target` (time-to-target runs)

    def reached(self, progress: Any) -> bool:
        """Whether a run that stops at its target has reached it."""
        return self.stop_at_target and progress.time_to_target_s is not None

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
    """Train `job` per `plan` from where `run` stands; returns the summary's training part (every rank).

    The run ends after `plan.epochs` epochs or when a budget of the plan is spent, evaluated and checkpointed
    either way; a run resumed from a checkpoint within an epoch continues at the step it was taken."""
    p = run.progress
    if plan.steps_per_epoch < 1:
        raise ValueError(f"{plan.examples} training examples make no batch of {plan.batch_size}")
    guard = DivergenceGuard(job)
    while p.epoch < plan.epochs and not _spent(plan, p.steps, p.train_time_s, job.comm) and not plan.reached(p):
        epoch = p.epoch + 1
        if _train_epoch(job, run, plan, epoch, guard):
            p.epoch = epoch
        _checkpoint(job, run, epoch)
    return _summary(job, run, plan)


def _train_epoch(job: Job, run: RunFolder, plan: Plan, epoch: int, guard: DivergenceGuard) -> bool:
    """The steps of `epoch` from where the run stands: True at the epoch's end, False where a budget ran out."""
    p, steps, b = run.progress, plan.steps_per_epoch, plan.batch_size
    order = batch_order(plan.seed, epoch, plan.examples)
    first = p.steps - (epoch - 1) * steps  # steps of this epoch taken before a resumption
    last = steps if plan.max_steps is None else min(steps, plan.max_steps - (epoch - 1) * steps)
    interval = _Interval()
    bar = tqdm(range(first, steps), initial=first, total=last, desc=f"{plan.desc} epoch {epoch}/{plan.epochs}",
               disable=not plan.progress)  # fmt: skip
    for s in bar:
        loss = job.step(order[s * b : (s + 1) * b])
        p.steps, p.samples = p.steps + 1, p.samples + b
        if loss is not None and p.start_loss is None and math.isfinite(loss):
            p.start_loss = loss
        problem = guard.problem(loss, p.start_loss)
        if problem:
            raise TrainingDiverged(_diverged(run, problem, epoch, p.steps))
        if loss is not None:
            interval.loss_sum, interval.loss_n = interval.loss_sum + loss, interval.loss_n + 1
            if s % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
        stop = _spent(plan, p.steps, p.train_time_s + time.perf_counter() - interval.t0, job.comm)
        if s == steps - 1 or stop or (plan.eval_every and p.steps % plan.eval_every == 0):
            _close_interval(job, run, plan, epoch + (s + 1 - steps) / steps, interval)
            interval = _Interval()
            stop = stop or plan.reached(p)  # the same on every rank: every rank evaluates the same network
            if not stop and s < steps - 1 and plan.checkpoint_every and p.steps % plan.checkpoint_every == 0:
                _checkpoint(job, run, epoch)
        if stop:
            bar.close()
            return False
    bar.close()
    return True


@dataclass
class _Interval:
    """The training loss and time since the last evaluation."""

    loss_sum: float = 0.0
    loss_n: int = 0
    t0: float = dataclasses.field(default_factory=time.perf_counter)


def _spent(plan: Plan, steps: int, train_time_s: float, comm: Collective) -> bool:
    """Whether a budget of `plan` is spent after `steps` steps and `train_time_s` seconds of training. Time is a
    budget only in a job of one process: the ranks of a job must stop at the same step."""
    if plan.max_steps is not None and steps >= plan.max_steps:
        return True
    return plan.max_minutes is not None and comm.world_size == 1 and train_time_s >= 60 * plan.max_minutes


def _close_interval(job: Job, run: RunFolder, plan: Plan, epoch: float, interval: _Interval) -> None:
    """Agree with the other ranks on the interval's time and loss, add the time, and evaluate."""
    p, comm = run.progress, job.comm
    start = p.start_loss
    elapsed, total, n, start_sum, start_n = comm.all_reduce([time.perf_counter() - interval.t0], "max") + (
        comm.all_reduce([interval.loss_sum, interval.loss_n, start or 0.0, float(start is not None)], "sum")
    )
    p.start_loss = start_sum / start_n if start_n else None  # every rank knows it from here on
    p.train_time_s += elapsed
    _evaluate(job, run, plan, epoch, total / n if n else float("nan"))


def _checkpoint(job: Job, run: RunFolder, epoch: int) -> None:
    """Receive what is in flight, check every rank's state is finite, and checkpoint."""
    job.settle()
    problem = job.comm.all_gather_object(job.check_finite())
    if any(problem):
        where = "; ".join(f"rank {r}: {w}" for r, w in enumerate(problem) if w)
        raise TrainingDiverged(_diverged(run, where, epoch, run.progress.steps))
    run.checkpoint({"job": job.training_state()})


class DivergenceGuard:
    """[Note: divergence]
    After every step `fit` stops a run (TrainingDiverged, exit 3) when

    - the loss is NaN or infinite;
    - the loss exceeds max(GROWTH × its value at the run's first step, FLOOR): GROWTH = 1e3, FLOOR = 100 nats.
      The first step's loss is computed by the initial weights, before any update, so a learning rate that
      explodes at once cannot raise the reference with it; it is kept in the run's progress, so a resumed run
      stops where the uninterrupted one does. Why these numbers: a classifier starts near ln C (2.3 nats for 10
      classes); healthy runs, DNI's early instability included, stay within ~10× of that, so 1e3× leaves two
      orders of magnitude of margin, and 2,300 nats means logits thousands apart, from which no run here came
      back (`--lr 1e4` sat at 7.6e6 and 87 % test error for three epochs). The floor keeps a run that starts from
      a small loss (a fine-tune near 0) from stopping at a spike to a few nats: a batch-mean cross-entropy of 100
      nats is a true-class probability of e^-100 on average;
    - a weight, a buffer (batch norm's running statistics) or an optimizer state of the job is NaN or
      infinite. One pass over every such tensor: the sum of each, stacked and summed, is finite iff they all are
      (NaN and ±inf propagate; a finite sum over 3.4e38 also trips it, which is divergence too), one
      synchronisation per step. Measured at ~2 % of a step (MNIST FCN 4×256, batch 256, one thread: 0.2 ms of
      9-13 ms; `benchmarks/resume_check.py --guard-cost`), where the named check the checkpoint uses,
      `Job.check_finite`, costs 25-40 %; that one still runs before every checkpoint, and names the tensor here.

    The job's tensors are found from its attributes: every `nn.Module` (its parameters and buffers) and every
    optimizer held by the job or by one of its modules (its state)."""

    GROWTH = 1e3
    FLOOR = 100.0

    def __init__(self, job: Job) -> None:
        self.job = job
        self._optimizers: list[torch.optim.Optimizer] = []
        self._tensors: list[torch.Tensor] = []
        self._size = -1  # optimizer states seen when the tensors were collected (Adam creates them lazily)

    def problem(self, loss: float | None, start: float | None) -> str | None:
        """What has diverged after this step, or None."""
        if loss is not None and not math.isfinite(loss):
            return f"the loss is {loss}"
        if loss is not None and start is not None and loss > max(self.GROWTH * start, self.FLOOR):
            return f"the loss grew to {loss:.3g} (over {self.GROWTH:g}× the first step's {start:.3g})"
        if not self._state_finite():
            return self.job.check_finite() or "the model's or optimizer's values overflow (sum beyond 3.4e38)"
        return None

    def _state_finite(self) -> bool:
        size = sum(len(o.state) for o in self._optimizers)
        if size != self._size:
            self._collect()
        if not self._tensors:
            return True
        return math.isfinite(sum(torch.stack([t.sum() for t in group]).sum().item() for group in self._groups))

    def _collect(self) -> None:
        modules = [v for v in vars(self.job).values() if isinstance(v, nn.Module)]
        optimizers = {id(v): v for v in vars(self.job).values() if isinstance(v, torch.optim.Optimizer)}
        tensors: dict[int, torch.Tensor] = {}
        for m in modules:
            for sub in m.modules():
                optimizers |= {id(v): v for v in vars(sub).values() if isinstance(v, torch.optim.Optimizer)}
            tensors |= {id(t): t for t in itertools.chain(m.parameters(), m.buffers())}
        for o in optimizers.values():
            tensors |= {id(t): t for st in o.state.values() for t in st.values() if isinstance(t, torch.Tensor)}
        self._optimizers = list(optimizers.values())
        self._size = sum(len(o.state) for o in self._optimizers)
        self._tensors = [t for t in tensors.values() if t.is_floating_point() and t.numel()]
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for t in self._tensors:
            by_device.setdefault(t.device, []).append(t)
        self._groups = list(by_device.values())


def _evaluate(job: Job, run: RunFolder, plan: Plan, epoch: float, train_loss: float) -> None:
    p = run.progress
    metrics = job.evaluate()
    first = next(iter(metrics.values()))
    if p.time_to_target_s is None and plan.target is not None and first <= plan.target:
        p.time_to_target_s = p.train_time_s
    tokens = {"tokens": p.samples * plan.tokens_per_example} if plan.tokens_per_example else {}
    row = {"epoch": round(epoch, 6), **tokens, "train_time_s": p.train_time_s, "train_loss": train_loss, **metrics,
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
        **({"tokens": p.samples * plan.tokens_per_example} if plan.tokens_per_example else {}),
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
