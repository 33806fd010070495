"""A recurrent run's budget, metric rows and checkpoints, on top of its `RunFolder`.

The task loops count samples (what a sample is depends on the task: a sequence for Copy, a character for Penn
Treebank, a digit read for the two-network system); `Budget` says when the budget is spent and when a metric row
and a checkpoint are due (every `log_every` samples), and keeps the progress bar. The folder itself (config.json,
metrics.jsonl, checkpoint.json and checkpoint-r0-N.pt, summary.json, train.log) is `RunFolder`'s.

[Note: deterministic resume]
    Rows and checkpoints fall at fixed sample counts, and a checkpoint holds everything a loop reads: weights,
    optimizer states, the data generator's state, the curriculum, the stream position and the carried state. So
    a run resumed from any checkpoint computes the same updates as an uninterrupted one, and with a budget in
    samples (`--max-samples`) it ends at the same point with the same numbers. With `--max-minutes` the budget is
    wall time: `wall_time_s` is saved with each checkpoint and a resumed run trains for the time that remains
    (work done after the last checkpoint is lost, and so is its time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from synthgrad.errors import TrainingDiverged
from synthgrad.training.chain_job import first_nonfinite, state_tensors
from synthgrad.training.loop import DivergenceGuard
from synthgrad.training.run_folder import MANIFEST, Progress, RunFolder


class Budget:
    """Budget, metric rows and checkpoints of one run in `folder` (see [Note: deterministic resume]).

    Args:
        folder: the run's folder, opened (and, on resume, restored) and started.
        max_samples, max_minutes: the budget; the run stops at the first update that reaches either.
        log_every: samples between metric rows (and checkpoints).
        show: draw a progress bar.
    """

    def __init__(
        self,
        folder: RunFolder,
        *,
        max_samples: int | None,
        max_minutes: float | None,
        log_every: int,
        show: bool = False,
        desc: str = "",
    ) -> None:
        self.folder = folder
        self._guard: DivergenceGuard | None = None  # of the model `check_step` watches
        self.max_samples, self.max_minutes, self.log_every = max_samples, max_minutes, log_every
        self._bar = tqdm(
            total=max_samples, initial=self.progress.samples, unit="sample", desc=desc, disable=not show, leave=False
        )

    @property
    def progress(self) -> Progress:
        """steps (loop iterations: sequence batches, chunks or episodes), samples, history, finished, …"""
        return self.folder.progress

    @property
    def out(self) -> Path:
        return self.folder.out

    def exhausted(self) -> bool:
        p = self.progress
        if p.finished:
            return True
        if self.max_samples is not None and p.samples >= self.max_samples:
            return True
        return self.max_minutes is not None and self.folder.elapsed() >= 60.0 * self.max_minutes

    def advance(self, samples: int) -> bool:
        """Count one update over `samples` samples; True when it crossed a multiple of `log_every` (a row is due)."""
        before = self.progress.samples
        self.progress.samples += samples
        self.progress.steps += 1
        self._bar.update(samples)
        return before // self.log_every < self.progress.samples // self.log_every

    def postfix(self, **values: float | int | str) -> None:
        self._bar.set_postfix(values, refresh=False)

    def record(self, row: Mapping[str, Any]) -> dict:
        """Append a metric row, stamped with step, samples and wall time (metrics.jsonl)."""
        return self.folder.record(row)

    def checkpoint(self, training: dict, task_state: dict) -> None:
        """Save everything the loop needs to continue exactly from here: the trainer's and the task's state."""
        self.folder.checkpoint({"training": training, "task": task_state})

    def check_finite(self, value: float, what: str) -> None:
        """Raise `TrainingDiverged` (exit 3 from the CLI) when `value` is NaN or infinite."""
        if not math.isfinite(value):
            self._diverged(f"{what} is {value}")

    def check_step(self, loss: float, what: str, model: nn.Module, *, steps: int = 1) -> None:
        """After every update, [Note: divergence] in training/loop.py for a recurrent run: raise `TrainingDiverged`
        (exit 3 from the CLI) when `loss` is NaN or infinite, when the loss per time step (`loss / steps`: Copy's
        sequences grow with the curriculum, PTB's last chunk is shorter) exceeds max(GROWTH × the run's first
        update's, FLOOR), or when a weight, buffer or optimizer state under `model` is not finite (every
        `nn.Module` and optimizer reachable from its modules' attributes). Checked before the update's metric row
        and checkpoint, so no checkpoint holds a non-finite value. The first update's loss is kept in the run's
        progress: a resumed run stops where the uninterrupted one does."""
        self.check_finite(loss, what)
        per_step, p = loss / steps, self.progress
        if p.start_loss is None:
            p.start_loss = per_step
        if self._guard is None or self._guard.job.model is not model:
            self._guard = DivergenceGuard(_Watched(model))
        problem = self._guard.problem(per_step, p.start_loss)
        if problem:
            self._diverged(problem)

    def _diverged(self, what: str) -> None:
        """Raise `TrainingDiverged` for the update being checked (it is counted by `advance`, after the check)."""
        p, last = self.progress, self.out / MANIFEST
        where = f"the last good checkpoint is named in {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training diverged: {what} at step {p.steps + 1}, after {p.samples} samples; {where} (try a smaller --lr)"
        )

    def close(self) -> None:
        self._bar.close()


class _Watched:
    """A recurrent run's model as `DivergenceGuard` watches a job: its modules and optimizers are found from the
    attributes (`model`, and the optimizers its modules hold); `check_finite` names the first non-finite tensor."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def check_finite(self) -> str | None:
        optimizers = [v for m in self.model.modules() for v in vars(m).values() if isinstance(v, torch.optim.Optimizer)]
        name = first_nonfinite(state_tensors(self.model, optimizers))
        return f"{name} is not finite" if name else None
