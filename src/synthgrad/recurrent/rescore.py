"""Re-score a finished Copy / Repeat Copy run under the per-step reading of the paper's error threshold, without
training (issue #20).

[Note: per-step threshold]
    PAPER.md §4 grows the length when the average error falls "below 0.15 bits", and does not settle the unit: per
    sequence (our curriculum, `curriculum_threshold`) or per output step. Read per step, a sequence may carry
    0.15 bits wrong for each scored step: 0.15·N bits per sequence for Copy (N output steps), 0.15·(N·R + 1) for
    Repeat Copy (N·R vectors and the end marker). At N = 1 the two readings agree; above, the per-step one is
    the more lenient, so every level a run solved stays solved, and a level it did not solve may count.

    What a finished run holds to decide that (`rescore_run`):
      metrics.jsonl  every row's `bit_errors` is the mean bits wrong per sequence of the training batches since
                     the row before, at the level in the row. A level counts when a row whose every batch ran at
                     that level (the row before is at the same level) has a mean below the per-step threshold.
                     This is a mean over `log_every` sequences, not the curriculum's window of 10 batches, so it
                     is an approximation of what the per-step curriculum would have done with the same batches.
      summary.json   `bit_errors_by_position` (runs since aebad8a): bits wrong at each output step of 1,024 fresh
                     sequences at the level the run ended on, with the final weights; the level counts when their
                     sum is below the per-step threshold.
    The result is a floor, not a prediction: a per-step curriculum leaves every level sooner, so a run trained
    under it has more of its budget left for the later levels than the run re-scored here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from synthgrad.errors import ConfigError

PER_STEP_BITS = 0.15  # bits wrong per scored output step (PAPER.md §4's 0.15, read per step)


def scored_steps(task: str, length: int, repeats: int | None = None) -> int:
    """The output steps a sequence is scored on: N (Copy); N·R vectors and the end marker (Repeat Copy)."""
    if task == "copy":
        return length
    if task == "repeat-copy" and repeats is not None:
        return length * repeats + 1
    raise ConfigError(f"no per-step threshold for task {task!r} with repeats {repeats!r}")


def per_step_threshold(task: str, length: int, repeats: int | None = None, per_step: float = PER_STEP_BITS) -> float:
    """Bits wrong per sequence that the per-step reading allows at a level ([Note: per-step threshold])."""
    return per_step * scored_steps(task, length, repeats)


def _level(row: dict) -> tuple[int, int | None, int]:
    """(length, repeats, items) of a metric row or a summary's final level; items = what `max_length` counts."""
    length, repeats = row.get("length", row.get("final_length")), row.get("repeats", row.get("final_repeats"))
    return length, repeats, length * (repeats or 1)


def rescore_rows(task: str, rows: Sequence[dict], per_step: float = PER_STEP_BITS) -> list[int]:
    """The levels (in items, as `max_length`) that metric rows show solved under the per-step reading: a row whose
    batches all ran at its level and whose mean bits wrong per sequence is below that level's threshold."""
    solved = []
    for before, row in zip(rows, rows[1:], strict=False):
        if _level(before) != _level(row) or row.get("bit_errors") is None:
            continue  # the row's batches span a level change (or it has none)
        length, repeats, items = _level(row)
        if row["bit_errors"] < per_step_threshold(task, length, repeats, per_step):
            solved.append(items)
    return sorted(set(solved))


def rescore_summary(summary: dict, rows: Sequence[dict] = (), per_step: float = PER_STEP_BITS) -> dict:
    """A finished run's score under the per-step reading, from its summary (and its metric rows, if given).

    Returns max_length (per sequence, as run), max_length_per_step (a floor, [Note: per-step threshold]), and the
    evidence: final_level_bits (sum of `bit_errors_by_position`, None without it), its threshold, and the levels
    the rows show solved. Repeat Copy's `length` curriculum (N drawn per batch) has no per-level threshold."""
    task = summary["task"]
    if task == "repeat-copy" and summary.get("repeat_curriculum") != "both":
        raise ConfigError("Repeat Copy's `length` curriculum draws N per batch: no one per-step threshold per level")
    length, repeats, items = _level(summary)
    best, from_rows = summary["max_length"], rescore_rows(task, rows, per_step)
    threshold = per_step_threshold(task, length, repeats, per_step)
    positions = summary.get("bit_errors_by_position")
    final_bits = round(sum(positions), 4) if positions is not None else None
    if final_bits is not None and final_bits < threshold:
        best = max(best, items)
    return {
        "task": task,
        "method": summary.get("method"),
        "T": summary.get("T"),
        "max_length": summary["max_length"],
        "max_length_per_step": max([best, *from_rows]),
        "final_level": items,
        "final_level_bits": final_bits,
        "final_level_threshold": round(threshold, 4),
        "levels_from_rows": from_rows,
    }


def rescore_run(run_dir: str | Path, per_step: float = PER_STEP_BITS) -> dict:
    """`rescore_summary` of the run in `run_dir` (its summary.json and metrics.jsonl); nothing is trained."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return rescore_summary(summary, rows, per_step)
