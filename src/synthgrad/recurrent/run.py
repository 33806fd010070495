"""What every recurrent run shares: its output folder, its budget, metric rows, checkpoints and its curve.

A `Session` is the bookkeeping of one run: it counts samples (what a sample is depends on the task: a sequence
for Copy, a character for Penn Treebank, a digit read for the two-network system), says when the budget is spent,
writes a metric row and a checkpoint every `log_every` samples, and restores all of it on `--resume`. The task
loops in `synthgrad.recurrent.train` and `synthgrad.recurrent.multinet` stay plain PyTorch.

[Note: deterministic resume]
    Rows and checkpoints fall at fixed sample counts, and a checkpoint holds everything a loop reads: weights,
    optimizer states, the data generator's state, the curriculum, the stream position and the carried state. So
    a run resumed from any checkpoint computes the same updates as an uninterrupted one, and with a budget in
    samples (`--max-samples`) it ends at the same point with the same numbers. With `--max-minutes` the budget is
    wall time: `wall_time_s` is saved with each checkpoint and a resumed run trains for the time that remains
    (work done after the last checkpoint is lost, and so is its time).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from synthgrad import plots  # noqa: F401 - selects matplotlib's file-only backend before pyplot is imported
from synthgrad.checkpoint import save_checkpoint
from synthgrad.runs import CHECKPOINT
from synthgrad.train import TrainingDiverged

log = logging.getLogger("synthgrad.recurrent")

# Config fields that may differ between a run and its resumption: the budget (to extend a run) and where it runs.
RESUMABLE = frozenset({"max_minutes", "max_samples", "out", "threads", "data_dir"})


@dataclass
class Progress:
    """The counters and history a checkpoint restores."""

    samples: int = 0  # sequences (Copy), characters (PTB) or digits read (two networks) trained on
    updates: int = 0  # loop iterations: sequence batches, chunks or windows
    wall_time_s: float = 0.0  # training + evaluation time, summed over resumptions
    history: list[dict] = field(default_factory=list)  # metric rows, also in metrics.jsonl
    finished: bool = False  # ended before its budget (early stopping on validation)


class Session:
    """Budget, metric rows and checkpoints of one run in `out` (see [Note: deterministic resume]).

    Args:
        out: the run's folder (already prepared by `prepare_out`).
        config: the run's config as plain values (saved in every checkpoint).
        max_samples, max_minutes: the budget; the run stops at the first update that reaches either.
        log_every: samples between metric rows (and checkpoints).
        ckpt: the loaded checkpoint when resuming, else None.
        show: draw a progress bar.
    """

    def __init__(
        self,
        out: Path,
        config: dict[str, Any],
        *,
        max_samples: int | None,
        max_minutes: float | None,
        log_every: int,
        ckpt: dict | None = None,
        show: bool = False,
        desc: str = "",
    ) -> None:
        self.out, self.config = out, config
        self.max_samples, self.max_minutes, self.log_every = max_samples, max_minutes, log_every
        self.progress = Progress(**ckpt["progress"]) if ckpt else Progress()
        self._base, self._t0 = self.progress.wall_time_s, time.perf_counter()
        self._bar = tqdm(
            total=max_samples, initial=self.progress.samples, unit="sample", desc=desc, disable=not show, leave=False
        )

    def elapsed(self) -> float:
        """Wall time of the run so far, including the time before a resumption."""
        return self._base + time.perf_counter() - self._t0

    def exhausted(self) -> bool:
        p = self.progress
        if p.finished:
            return True
        if self.max_samples is not None and p.samples >= self.max_samples:
            return True
        return self.max_minutes is not None and self.elapsed() >= 60.0 * self.max_minutes

    def advance(self, samples: int) -> bool:
        """Count one update over `samples` samples; True when it crossed a multiple of `log_every` (a row is due)."""
        before = self.progress.samples
        self.progress.samples += samples
        self.progress.updates += 1
        self._bar.update(samples)
        return before // self.log_every < self.progress.samples // self.log_every

    def postfix(self, **values: float | int | str) -> None:
        self._bar.set_postfix(values, refresh=False)

    def record(self, row: Mapping[str, Any]) -> dict:
        """Append a metric row (stamped with samples, updates and wall time) and rewrite metrics.jsonl."""
        p = self.progress
        full = {"samples": p.samples, "updates": p.updates, "wall_time_s": self.elapsed(), **row}
        p.history.append(full)
        (self.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in p.history))
        log.info("%s", " ".join(f"{k}={_short(v)}" for k, v in full.items()))
        return full

    def checkpoint(self, training: dict, task_state: dict) -> None:
        """Atomically save everything the loop needs to continue exactly from here."""
        self.progress.wall_time_s = self.elapsed()
        state = {"config": self.config, "progress": asdict(self.progress), "training": training, "task": task_state}
        save_checkpoint(self.out / CHECKPOINT, state)

    def check_finite(self, value: float, what: str) -> None:
        """Raise `TrainingDiverged` (exit 3 from the CLI) when `value` is NaN or infinite."""
        if not math.isfinite(value):
            last = self.out / CHECKPOINT
            where = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"training diverged: {what} is {value} after {self.progress.samples} samples; {where}"
            )

    def close(self) -> None:
        self._bar.close()


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_curves(
    history: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    x: str,
    ys: Sequence[tuple[str, str]],
    xlabel: str,
    ylabel: str,
    title: str,
    step: bool = False,
) -> None:
    """One PNG: each (key, label) of `ys` against `x` over the rows that have a value for it."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in ys:
        rows = [r for r in history if r.get(key) is not None]
        xs, vs = [r[x] for r in rows], [r[key] for r in rows]
        if step:
            ax.step(xs, vs, where="post", label=label)
        else:
            ax.plot(xs, vs, marker="." if len(rows) < 50 else None, label=label)
    if len(ys) > 1:
        ax.legend(fontsize=8)
    _save(fig, ax, path, xlabel=xlabel, ylabel=ylabel, title=title)


def plot_bars(values: Sequence[float], path: Path, *, xlabel: str, ylabel: str, title: str) -> None:
    """One PNG: a bar per value, numbered from 1."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(1, len(values) + 1), values)
    _save(fig, ax, path, xlabel=xlabel, ylabel=ylabel, title=title)


def _save(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid and write the figure, then close it."""
    import matplotlib.pyplot as plt

    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
