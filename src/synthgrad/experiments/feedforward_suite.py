"""The feed-forward reproduction suite (PAPER.md §2–3): the shipped experiment files, run, and a report.

Every row of the report is one experiment file of `synthgrad/configs/` (named beside its result), trained for the
suite's budget: `--epochs` and `--seeds` for the FCN rows; the CNN files carry their own CPU budget (2 epochs on
10k images), capped by `--epochs`. Every run goes through `training.train` with `resume=True`, so a suite that
was interrupted continues where it stopped when the same command is run again, and a finished row is not
trained twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from synthgrad.checkpoint import write_json
from synthgrad.config import Method, TrainConfig, from_dict, load_config_file
from synthgrad.experiments.feedforward_report import report
from synthgrad.training import train

log = logging.getLogger("synthgrad.experiments")

METHODS = (Method.BACKPROP, Method.DNI, Method.CDNI)
FEEDFORWARD_GROUPS = ("fcn", "paper", "update_prob", "unlock", "cnn")


@dataclass(frozen=True)
class Row:
    """One line of the report: an experiment file, run for `seeds` seeds."""

    group: str
    label: str
    file: str  # the experiment file's name in synthgrad/configs/
    seeds: int | None = None  # None: the suite's --seeds
    own_budget: bool = False  # the file's epochs (capped by --epochs) and train_limit are kept


def rows() -> list[Row]:
    """Every row of the suite, the cheap groups first (deepest FCN first: the issue's reference is about it)."""
    out = [Row("fcn", f"fcn{n}-{m.value}", f"mnist_fcn{n}_{m.value}") for n in (6, 5, 4, 3)
           for m in METHODS]  # fmt: skip
    sweep = ((1.0, ""), (0.5, "_update_p05"), (0.2, "_update_p02"), (0.05, "_update_p005"))
    out += [Row("update_prob", f"p{p:g}", f"mnist_fcn4_cdni{suffix}", seeds=1) for p, suffix in sweep]
    out += [Row("unlock", f"unlock-{m}", f"mnist_fcn4_{m}_unlock", seeds=1) for m in ("dni", "cdni")]
    # The paper's recipe (its synthesizers, PAPER.md §2) at the same budget, beside ours.
    out += [Row("paper", f"fcn{n}-{m}-paper", f"mnist_fcn{n}_{m}_paper", seeds=1) for n in (6, 3, 5, 4)
            for m in ("cdni", "dni")]  # fmt: skip
    out += [Row("cnn", f"cnn{n}-{m.value}", f"mnist_cnn{n}_{m.value}", seeds=1, own_budget=True) for n in (3, 4)
            for m in METHODS]  # fmt: skip
    return out


def row_config(row: Row, *, epochs: int, quick: bool, data_dir: str | None, threads: int | None) -> TrainConfig:
    """The row's experiment file with the suite's budget and machine settings."""
    values = {k: v for k, v in load_config_file(row.file).items() if k != "out"}
    cfg = from_dict(values)
    budget = min(epochs, cfg.epochs) if row.own_budget else epochs
    cfg = dataclasses.replace(cfg, epochs=1 if quick else budget, data_dir=data_dir, threads=threads)
    if quick:  # smoke sizes: every row runs, nothing is meaningful
        cfg = dataclasses.replace(cfg, train_limit=2048)
        if cfg.model == "cnn":
            hidden = None if cfg.method is Method.BACKPROP else (8,)
            cfg = dataclasses.replace(cfg, width=8, synthesizer_hidden=hidden)
    return cfg


def _run_row(row: Row, cfg: TrainConfig, out: Path, seeds: int, progress: bool, report_only: bool) -> dict | None:
    """Train `row` once per seed (resuming finished or partial runs) and average the summaries. With
    `report_only`, read the finished runs and train nothing: None if a seed has not finished."""
    summaries, runs = [], []
    for seed in range(row.seeds or seeds):
        run = out / row.group / f"{row.label}-s{seed}"
        runs.append(str(run))
        if report_only:
            if not (run / "summary.json").exists():
                return None
            summaries.append(json.loads((run / "summary.json").read_text()))
            continue
        log.info("[%s] %s seed %d", row.group, row.label, seed)
        summaries.append(train(dataclasses.replace(cfg, seed=seed, out=str(run)), resume=True, progress=progress))
    errors = [s["test_error"] for s in summaries]
    return {
        "group": row.group,
        "label": row.label,
        "file": row.file,
        "config": cfg.resolve().to_dict(),
        "test_error": statistics.mean(errors),
        "test_error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
        "time_per_epoch_s": statistics.mean(s["time_per_epoch_s"] for s in summaries),
        "wall_time_s": sum(s["wall_time_s"] for s in summaries),
        "final_true_cosine": summaries[0]["final_true_cosine"],
        "runs": runs,
    }


def reproduce_feedforward(
    data_dir: str | None,
    out: str = "runs/reproduce",
    epochs: int = 10,
    seeds: int = 1,
    quick: bool = False,
    progress: bool = True,
    groups: Sequence[str] | None = None,
    threads: int | None = None,
    report_only: bool = False,
) -> Path:
    """Run the suite (or only `groups` of it) and write `report.md` with figures; returns the report's path.

    Groups may run in separate processes into the same `out` (one core each); a last run of the whole suite then
    finds every row finished and writes the complete report; `report_only` writes it from the finished rows
    without training anything."""
    out_dir = Path(out)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    path = out_dir / "report.md"
    for row in rows():  # the report is rewritten after every row, so a partial suite still has one
        if groups is not None and row.group not in groups:
            continue
        cfg = row_config(row, epochs=epochs, quick=quick, data_dir=data_dir, threads=threads)
        result = _run_row(row, cfg, out_dir, seeds, progress, report_only)
        if result is None:
            continue
        results[row.label] = result
        write_json(out_dir / "results.json", results)
        path.write_text(report(results, out_dir, epochs, seeds, quick, time.perf_counter() - t0))
    print(f"report: {path}")
    return path
