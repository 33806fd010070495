"""PNG figures: learning curves, synthesizer quality, and comparisons across runs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def learning_curves(history: Sequence[Mapping], path: str | Path, title: str = "") -> None:
    """Train loss and test error against epoch, for one run (`history`: the per-epoch metric rows)."""
    epochs = [row["epoch"] for row in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [row["train_loss"] for row in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="train loss (cross-entropy)", yscale="log")
    ax2.plot(epochs, [row["test_error"] for row in history], marker="o", color="C3")
    ax2.set(xlabel="epoch", ylabel="test error (%)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        epoch_ticks(ax, epochs)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def epoch_ticks(ax, epochs: Sequence[float]) -> None:
    """Whole-number ticks on the epoch axis when every point is at a whole epoch (no "1.5" between epochs 1
    and 2 of a 3-epoch run); runs evaluated within epochs keep matplotlib's ticks."""
    if epochs and all(float(e).is_integer() for e in epochs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def drawable_points(xs: Sequence[float], ys: Sequence[float], *, log: bool = True) -> tuple[list, list]:
    """The (x, y) pairs worth drawing as one line: y not NaN (with folding, a cut's synthesizer trains only on the
    steps a true gradient comes down, and NaN points between them would break the line into nothing) and, on a
    log axis, y > 0 (a zero loss: prediction and target both still exactly zero)."""
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y) and (y > 0 or not log)]
    return [x for x, _ in kept], [y for _, y in kept]


def gradient_quality(diagnostics: Sequence[Mapping], path: str | Path, title: str = "") -> None:
    """Per cut: cosine(synthetic, true gradient) and the synthesizer loss against training step."""
    if not diagnostics:
        return
    steps = [row["step"] for row in diagnostics]
    n_cuts = len(diagnostics[0]["true_cosine"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for j in range(n_cuts):
        ax1.plot(
            *drawable_points(steps, [row["true_cosine"][j] for row in diagnostics], log=False), label=f"cut {j + 1}"
        )
        ax2.plot(*drawable_points(steps, [row["sg_loss"][j] for row in diagnostics]), label=f"cut {j + 1}")
    ax1.set(xlabel="step", ylabel="cos(synthetic, true gradient)", ylim=(-0.2, 1.0))
    ax2.set(xlabel="step", ylabel="synthesizer loss", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_runs(runs: Mapping[str, Sequence[Mapping]], path: str | Path, title: str = "") -> None:
    """Test error against epoch for several runs (`runs`: label -> history) on one axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, history in runs.items():
        ax.plot([r["epoch"] for r in history], [r["test_error"] for r in history], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="test error (%)", yscale="log", title=title)
    epoch_ticks(ax, [r["epoch"] for history in runs.values() for r in history])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(
    history: Sequence[Mapping],
    path: str | Path,
    *,
    x: str,
    ys: Sequence[tuple[str, str]],
    xlabel: str,
    ylabel: str,
    title: str,
    step: bool = False,
) -> None:
    """One PNG: each (key, label) of `ys` against `x` over the rows that have a value for it (the recurrent
    runs' learning curves; `step`: a staircase, for a curriculum's level)."""
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
    _finish(fig, ax, path, xlabel=xlabel, ylabel=ylabel, title=title)


def bars(values: Sequence[float], path: str | Path, *, xlabel: str, ylabel: str, title: str) -> None:
    """One PNG: a bar per value, numbered from 1 (e.g. bits wrong per output position)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(1, len(values) + 1), values)
    _finish(fig, ax, path, xlabel=xlabel, ylabel=ylabel, title=title)


def _finish(fig, ax, path: str | Path, *, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid and write a one-axis figure, then close it."""
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
