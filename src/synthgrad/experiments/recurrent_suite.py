"""The recurrent reproduction suite (PAPER.md §4–5): one command, a report with the paper's numbers beside ours.

The rows are the shipped experiment files, synthgrad/configs/recurrent/*.toml, one per row, each naming the
paper's table row it reproduces: BPTT, DNI and DNI + Aux at T = 2, 3, 4, 5 on Copy and Repeat Copy (score: the
largest length solved within the budget; Repeat Copy: the largest N·L, [Note: Repeat Copy curriculum] in
recurrent/copy_loop.py); the same three methods at T = 8 on Penn Treebank characters (test bits per character
at the best validation point); the two-network system locked and with a DNI at T = 4 (A-steps until B's moving
accuracy reaches the target). Every method of a task gets the same budget, stated in the report: by default each
file's, the budget of the committed report, so the command with no budget option reproduces that report;
`minutes` of wall time or `samples` give every row one budget instead. The report names each row's file.
Each run goes through `train_recurrent(..., resume=True)`: an interrupted suite continues where it stopped when
the same command is run again, and a finished row is not trained twice. `groups` runs only some tasks; the rows
of the other tasks are carried over from an earlier `report.json` in the same folder, if there is one, and the
report says which rows were carried (each row run here records its commit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from synthgrad import plots
from synthgrad.checkpoint import write_json
from synthgrad.recurrent.boundary import RecurrentMethod
from synthgrad.recurrent.runner import train_recurrent
from synthgrad.recurrent.task_config import (
    RecurrentConfig,
    RecurrentTask,
    experiment_name,
    experiment_names,
    load_experiment,
)
from synthgrad.recurrent.tasks import PAPER_SCORE_OFFSET, paper_score

log = logging.getLogger("synthgrad.experiments")

METHODS = (RecurrentMethod.BPTT, RecurrentMethod.DNI, RecurrentMethod.DNI_AUX)
RECURRENT_GROUPS = tuple(t.value for t in RecurrentTask)  # `--groups`: copy, repeat-copy, ptb-char, multinet
COPY_T = (2, 3, 4, 5)
# PAPER.md §4, max sequence length solved (C, the authors' table as shown in their slides); no DNI + Aux row. In the
# paper's units: the episode length N + 3 (Repeat Copy: N·R + 3), [Note: paper score] in recurrent/tasks.py.
PAPER_LENGTH = {
    ("copy", "bptt"): (7, 8, 10, 8),
    ("copy", "dni"): (16, 14, 18, 18),
    ("repeat-copy", "bptt"): (7, 5, 19, 23),
    ("repeat-copy", "dni"): (39, 33, 39, 59),
}
# The same table in items, N (Repeat Copy: N·R), as our `max_length` counts them.
PAPER_ITEMS = {key: tuple(v - PAPER_SCORE_OFFSET for v in row) for key, row in PAPER_LENGTH.items()}
PAPER_PTB_T8 = {"bptt": 1.354, "dni": 1.34}  # PAPER.md §4, test bits per character at T = 8 (C, from a figure)
# A committed report.md is the rendered report, then (from a line starting with this) notes written by hand.
HAND_WRITTEN = "## How this report was made"
# A budget in samples for every row is scaled per task, so that one number gives each a comparable share.
SAMPLE_SCALE = {"copy": 1, "repeat-copy": 1, "ptb-char": 100, "multinet": 10}
# What a row's `max_samples` counts, per task.
SAMPLE_UNIT = {"copy": "sequences", "repeat-copy": "sequences", "ptb-char": "characters",
               "multinet": "digits (all streams)"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the suite: its experiment file's name and the config it runs."""

    experiment: str
    config: RecurrentConfig


def suite(budget: dict | None, *, quick: bool, data_dir: str | None, out: Path) -> list[Row]:
    """Every row, from the shipped experiment files, in report order. `budget`: {"max_minutes": M} or
    {"max_samples": S} for every row (S scaled by `SAMPLE_SCALE`), or None: each file's own. `quick`: smoke
    sizes. Each row runs in `out/<task>-<method>-T<T>`."""
    rows = []
    for name in experiment_names():
        values = load_experiment(name)
        task = values["task"]
        if budget is not None:
            values = {k: v for k, v in values.items() if k not in ("max_minutes", "max_samples")}
            values.update({k: v * SAMPLE_SCALE[task] if k == "max_samples" else v for k, v in budget.items()})
        if quick:
            values.update(hidden_size=16, batch_size=8, log_every=200)
            if task == "ptb-char":
                values.update(eval_chars=2000, log_every=5000)
        values.update(data_dir=data_dir, out=str(out / f"{task}-{values['method']}-T{values['T']}"))
        rows.append(Row(name, RecurrentConfig.from_dict(values)))
    order = {t: i for i, t in enumerate(RecurrentTask)} | {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (order[r.config.task], r.config.T, order[r.config.method]))


def reproduce_recurrent(
    *,
    data_dir: str | None = None,
    out: str | Path = "runs/reproduce-recurrent",
    minutes: float | None = None,
    samples: int | None = None,
    quick: bool = False,
    threads: int | None = None,
    progress: bool = True,
    groups: list[str] | None = None,
) -> Path:
    """Run the suite (budget per row: `samples`, else `minutes`, else each file's; `quick`: 200 samples per row,
    tiny networks; `groups`: only these tasks, the others carried over from `out/report.json`) and write
    `report.md`, `report.json` and figures in `out`; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget: dict | None = None
    if samples or quick:
        budget = {"max_samples": samples or 200}
    elif minutes is not None:
        budget = {"max_minutes": minutes}
    results: list[dict] = []
    if groups is not None and (out / "report.json").exists():
        previous = json.loads((out / "report.json").read_text())
        results = [{**r, "carried": True} for r in previous if r["task"] not in groups]
    t0 = time.perf_counter()
    commit = _commit()
    for row in suite(budget, quick=quick, data_dir=data_dir, out=out):
        cfg = dataclasses.replace(row.config, threads=threads)
        if groups is not None and cfg.task.value not in groups:
            continue
        log.info("[recurrent] %s %s T=%d (%s)", cfg.task.value, cfg.method.value, cfg.T, row.experiment)
        summary = train_recurrent(cfg, resume=True, progress=progress)
        results.append({**summary, "experiment": row.experiment, "commit": summary.get("commit", commit),
                        "carried": False})  # fmt: skip
        write_json(out / "report.json", results)  # rewritten after every row: a partial suite has a report too
        figures(results, out)
        (out / "report.md").write_text(report(results, quick, time.perf_counter() - t0))
    print(f"report: {out / 'report.md'}")
    return out / "report.md"


def rerender(out: str | Path) -> Path:
    """Rewrite `out/report.md` from `out/report.json` without training anything (after the renderer changed),
    keeping the hand-written part of an existing report.md (from its line starting with `HAND_WRITTEN` on)."""
    out = Path(out)
    text = report(json.loads((out / "report.json").read_text()), quick=False, elapsed=None)
    path = out / "report.md"
    old = path.read_text().splitlines() if path.exists() else []
    hand = next((i for i, line in enumerate(old) if line.startswith(HAND_WRITTEN)), None)
    if hand is not None:
        text = text.rstrip("\n") + "\n\n" + "\n".join(old[hand:]) + "\n"
    path.write_text(text)
    return path


def _commit() -> str:
    """The checked-out commit (short hash, "+changes" if the tree differs), or "unknown" outside a git tree."""
    try:
        run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
        head = run("rev-parse", "--short", "HEAD")
        return head + ("+changes" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    """CPU model and core count, e.g. "AMD EPYC, 2 cores"."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------------------- the report
def _find(results: list[dict], task: str, method: str, T: int) -> dict | None:  # noqa: N803
    return next((r for r in results if (r["task"], r["method"], r["T"]) == (task, method, T)), None)


def _file(r: dict) -> str:
    """The experiment file a result row ran (rows from before the files: the file of its task, method and T)."""
    name = r.get("experiment") or experiment_name(r["task"], r["method"], r["T"])
    return f"`{name}.toml`" if name in experiment_names() else "–"


def _section_budget(results: list[dict], task: str) -> list[str]:
    """A section's budget and commit, from its own rows (sections carried over may have run at another)."""
    rows = [r for r in results if r["task"] == task]
    if not rows:
        return []
    unit = SAMPLE_UNIT.get(task, "samples")
    budgets = sorted({f"{r['max_minutes']:g} min" if r.get("max_minutes") else f"{r.get('max_samples')} {unit}"
                      for r in rows})  # fmt: skip
    commits = sorted({r.get("commit") or "not recorded" for r in rows})
    carried = " (carried over from an earlier run)" if any(r.get("carried") for r in rows) else ""
    return [f"Budget per row: {', '.join(budgets)}; commit {', '.join(commits)}{carried}.", ""]


def report(results: list[dict], quick: bool, elapsed: float | None) -> str:
    """report.md from the result rows (report.json)."""
    lines = _header(results, quick, elapsed)
    for task in ("copy", "repeat-copy"):
        lines += _copy_section(results, task)
    lines += _ptb_section(results) + _multinet_section(results)
    lines += ["", "Figures: `ptb_bpc.png` (validation BPC vs characters), `multinet_accuracy.png`.", ""]
    return "\n".join(lines)


def _header(results: list[dict], quick: bool, elapsed: float | None) -> list[str]:
    carried = [r for r in results if r.get("carried")]
    first = next((r for r in results if not r.get("carried")), results[0])
    lines = [
        "# Recurrent DNI: reproduction of PAPER.md §4–5",
        "",
        f"One thread per run on {_machine()}, torch {torch.__version__}. Every method of a task gets the same "
        "budget; each section states its rows' budget and the commit they ran at, and each row the experiment "
        "file it ran (synthgrad/configs/recurrent/)."
        + (" **Quick smoke run: tiny networks, numbers meaningless.**" if quick else ""),
        (f"Suite wall time {elapsed / 60:.1f} min. " if elapsed is not None else "")
        + f"Copy tasks: LSTM {first['hidden_size']}, batch {first['batch_size']}, curriculum on bits wrong per "
        "sequence < 0.15 ([Note: curriculum error] in synthgrad/recurrent/copy_loop.py).",
        "",
    ]
    if carried:
        tasks = ", ".join(sorted({r["task"] for r in carried}))
        commits = ", ".join(sorted({r.get("commit") or "not recorded" for r in carried}))
        lines += [
            f"**Not re-run here:** the rows of {tasks} are carried over from an earlier report.json in this folder "
            f"(commit {commits}).",
            "",
        ]
    return lines


def row_paper_score(r: dict) -> int | None:
    """A Copy or Repeat Copy result row's score in the paper's units ([Note: paper score] in recurrent/tasks.py):
    the row's own `paper_score`, or, for rows from before it was recorded, computed from its `max_length`; None
    for Repeat Copy's `length` curriculum (a row without `repeat_curriculum` predates the two-axis one)."""
    if "paper_score" in r:
        return r["paper_score"]
    if r["task"] == "repeat-copy" and r.get("repeat_curriculum") != "both":
        return None
    return paper_score(r["task"], r["max_length"])


def _copy_section(results: list[dict], task: str) -> list[str]:
    rows = [r for r in results if r["task"] == task]
    two_axes = any(r.get("repeat_curriculum") == "both" for r in rows)
    items, episode = "N, the vectors to copy", "N + 3"
    if task == "repeat-copy":
        items = "N·L, the vectors in the output; the paper's N·R" if two_axes else "L, with N drawn per batch"
        episode = "N·L + 3 (the paper's N·R + 3)"
    lines = [
        f"## {task}: " + ("largest N·L solved (output vectors)" if two_axes else "max sequence length solved"),
        "",
        *_section_budget(results, task),
        f"In the paper's units, the episode length {episode} ([Note: paper score] in synthgrad/recurrent/tasks.py):",
        "",
        *_copy_table(results, task, row_paper_score, PAPER_LENGTH),
        "",
        f"In items ({items}), the paper's entries less 3:",
        "",
        *_copy_table(results, task, lambda r: r["max_length"], PAPER_ITEMS),
    ]
    lines += ["", "Each row: its result, the paper's, the sequences trained within the budget, its file:", ""]
    lines += ["| method | T | solved (items) | paper score | paper | sequences | experiment file |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in METHODS:
        for i, t in enumerate(COPY_T):
            r = _find(results, task, method.value, t)
            if r:
                paper = PAPER_LENGTH[(task, method.value)][i] if (task, method.value) in PAPER_LENGTH else "–"
                score = _cell(row_paper_score(r))
                lines.append(f"| {method.value} | {t} | {r['max_length']} | {score} | {paper} | {r['samples']} "
                             f"| {_file(r)} |")  # fmt: skip
    return [*lines, ""]


def _copy_table(results: list[dict], task: str, value: Callable[[dict], int | None], paper: dict) -> list[str]:
    """Ours beside the paper's, a column per T: `value(row)` of each row, the paper's from `paper`."""
    lines = ["| method | " + " | ".join(f"T={t}" for t in COPY_T) + " |", "|---|" + "---|" * len(COPY_T)]
    for method in METHODS:
        m = method.value
        cells = [_cell(value(r)) if r else "–" for r in (_find(results, task, m, t) for t in COPY_T)]
        lines.append(f"| {m} (ours) | " + " | ".join(cells) + " |")
        if (task, m) in paper:
            lines.append(f"| {m} (paper) | " + " | ".join(map(str, paper[(task, m)])) + " |")
    return lines


def _cell(v: int | None) -> str:
    return "–" if v is None else str(v)


def _ptb_section(results: list[dict]) -> list[str]:
    lines = ["## Penn Treebank characters, T = 8", "", *_section_budget(results, "ptb-char")]
    ptb = [r for r in results if r["task"] == "ptb-char"]
    if ptb:
        r = ptb[-1]
        lines += [
            f"LSTM {r['hidden_size']}, batch {r['batch_size']} streams, Adam {r['lr']:g}; DNI synthesizer Adam "
            f"{r.get('synthesizer_lr', '–')}, discount λ = {r.get('discount', '–')} ([Note: discount] in "
            "synthgrad/recurrent/boundary.py); test BPC at the best validation point.",
            "",
        ]
    lines += ["| method | test BPC (ours) | valid BPC | characters | paper | experiment file |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for method in METHODS:
        r = _find(results, "ptb-char", method.value, 8)
        if r:
            paper = PAPER_PTB_T8.get(method.value, "–")
            lines.append(f"| {method.value} | {r['test_bpc']:.3f} | {r['valid_bpc']:.3f} | {r['samples']} | {paper} "
                         f"| {_file(r)} |")  # fmt: skip
    return lines


def _multinet_section(results: list[dict]) -> list[str]:
    lines = ["", "## Two networks (T = 4)", "", *_section_budget(results, "multinet")]
    lines += [
        "A reads a digit per step and counts the 3s of each window of T steps; B ticks every T steps on A's message "
        "and counts the 3s since the episode (T² steps) began; locked, both update once per episode; with the DNI, "
        "A updates every T steps (the task in full: `synthgrad/recurrent/multinet.py`).",
        "",
        "| method | A-steps to target | target | A updates | B test accuracy | A test accuracy | experiment file |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in METHODS[:2]:
        r = _find(results, "multinet", method.value, 4)
        if r:
            reached = r["steps_to_target"] if r["steps_to_target"] is not None else "not reached"
            a_test = f"{r['test_a_accuracy']:.3f}" if "test_a_accuracy" in r else "–"
            cells = f"{reached} | {r['target_accuracy']:.0%} | {r['a_updates']} | {r['test_accuracy']:.3f} | {a_test}"
            lines.append(f"| {'locked (bptt)' if method.value == 'bptt' else 'dni'} | {cells} | {_file(r)} |")
    paper = "The paper: with the DNI the system learns much faster, with similar final accuracy (PAPER.md §5)."
    return [*lines, "", paper]


def figures(results: list[dict], out: Path) -> None:
    """ptb_bpc.png and multinet_accuracy.png: every method's curve, from the rows' metrics.jsonl in `out`."""
    for task, x, key, name, ylabel in (
        ("ptb-char", "samples", "valid_bpc", "ptb_bpc.png", "validation bits per character"),
        ("multinet", "a_steps", "accuracy", "multinet_accuracy.png", "B's moving accuracy"),
    ):
        history = []
        for r in results:
            if r["task"] == task:
                path = out / f"{task}-{r['method']}-T{r['T']}" / "metrics.jsonl"
                rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
                history += [{x: row[x], r["method"]: row[key]} for row in rows if key in row]
        methods = sorted({r["method"] for r in results if r["task"] == task})
        if history:
            plots.curves(history, out / name, x=x, ys=[(m, m) for m in methods], xlabel=x, ylabel=ylabel, title=task)
