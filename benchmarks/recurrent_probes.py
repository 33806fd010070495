"""The set-up probes of issue #20: how far truncated BPTT and DNI get on Copy (or Repeat Copy) under each change.

    python benchmarks/recurrent_probes.py --minutes 10 --jobs 2 --json benchmarks/results/recurrent_probes.json \
        [--markdown PATH] [--task copy] [--T 2,4] [--methods bptt,dni] [--probes baseline,peephole,...] \
        [--seed 0] [--work runs/recurrent_probes] [--quick]

A row is one `synthgrad train --task TASK --method METHOD --T T` with the probe's flags on top of today's set-up,
a budget of `--minutes` wall-clock minutes (`--max-minutes`) and one thread (`--threads 1`); `--jobs` rows run at
a time, so give each its own core. The probes (`PROBES`; the default set is `DEFAULT_PROBES`) each change one lever
of the set-up (reports/recurrent/notes.md; the flags' semantics are in `synthgrad train --help`). Every row's
result is its run's summary.json: `max_length` (items solved: N for Copy, N·R for Repeat Copy's two-axis
curriculum) and `paper_score` (the paper's units, N + 3 or N·R + 3; [Note: paper score] in recurrent/tasks.py).

The JSON (rewritten as each row ends, so an interrupted sweep keeps what finished) holds per row the command, its
result and its wall time; the markdown table beside it (`--markdown`, default: the JSON path with .md) sets the
paper's figure beside each. A row whose run folder already holds a summary at the same budget is read back, not
trained again; one with a checkpoint and no summary (an interrupted sweep) continues with `--resume`, and one
with a smaller budget is extended the same way (`--max-minutes` may change on resume).

`--quick` is a smoke test: every row trains 64 sequences (`--max-samples 64`), a few seconds each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # the paper's figures and the re-scoring are read in this process
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip

# name: (what it changes, the flags it adds to today's set-up: LSTMCell at PyTorch's init, Adam 1e-3, no clipping,
# 256 units, 8-bit items). The defaults of every flag are today's, so "baseline" adds none.
PROBES: dict[str, tuple[str, list[str]]] = {
    "baseline": ("today's set-up", []),
    "peephole": ("Graves 2013's LSTM: the gates also read the cell (peepholes)", ["--cell", "peephole"]),
    "init-uniform": ("every LSTM weight and bias U(±0.1), the NTM-era init", ["--init", "uniform"]),
    "init-orthogonal": ("orthogonal recurrent blocks per gate, the rest PyTorch's", ["--init", "orthogonal"]),
    "rmsprop": (
        "NTM-era optimisation: RMSProp (α 0.95, momentum 0.9) at lr 1e-4, gradient norm clipped to 10",
        ["--optimizer", "rmsprop", "--lr", "1e-4", "--clip", "10"],
    ),
    "hidden-512": ("twice the units", ["--hidden-size", "512"]),
    # not in the default set: the parts of the rmsprop probe apart, and the items' width
    "adam-clip-10": ("today's Adam 1e-3, gradient norm clipped to 10", ["--clip", "10"]),
    "rmsprop-lr-1e-3": ("RMSProp at today's lr 1e-3, no clipping", ["--optimizer", "rmsprop"]),
    "item-bits-4": ("4-bit items instead of 8", ["--item-bits", "4"]),
    "stream-8": (
        "the paper's continuous stream, approximated: 8 episodes per sequence, the state carried across them",
        ["--episodes", "8"],
    ),
}
DEFAULT_PROBES = ["baseline", "peephole", "init-uniform", "init-orthogonal", "rmsprop", "hidden-512"]
TASKS = ["copy", "repeat-copy"]
METHODS = ["bptt", "dni", "dni-aux"]
QUICK = ["--max-samples", "64", "--log-every", "32"]


def rows(task: str, Ts: list[int], methods: list[str], probes: list[str]) -> list[dict]:  # noqa: N803
    """One row per (T, method, probe), in that order of nesting."""
    return [
        {"task": task, "T": t, "method": m, "probe": p, "why": PROBES[p][0], "flags": PROBES[p][1]}
        for t in Ts
        for m in methods
        for p in probes
    ]


def row_name(row: dict, seed: int) -> str:
    return f"{row['task']}_{row['method']}_T{row['T']}_{row['probe']}_seed{seed}"


def command(row: dict, out: Path, seed: int, minutes: float, quick: bool, resume: bool) -> list[str]:
    budget = QUICK if quick else ["--max-minutes", f"{minutes:g}"]
    args = ["train", "--task", row["task"], "--method", row["method"], "--T", str(row["T"]), "--seed", str(seed),
            *budget, *row["flags"], "--threads", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    return [sys.executable, "-m", "synthgrad.cli", *args, *(["--resume"] if resume else [])]


def run_row(row: dict, work: Path, seed: int, minutes: float, quick: bool) -> dict:
    """Train (or read back, or continue) one row; its record for the JSON."""
    out = work / row_name(row, seed)
    summary_path = out / "summary.json"
    done = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    budget_met = done is not None and (quick or (done.get("max_minutes") or 0) >= minutes)
    resume = not budget_met and (out / "checkpoint.json").is_file()
    cmd = command(row, out, seed, minutes, quick, resume)
    record = {**row, "command": shlex.join(["synthgrad", *cmd[3:]]), "run": str(out), "reused": budget_met}
    if not budget_met:
        start = time.monotonic()
        limit = 60 if quick else 60 * minutes + 600  # startup, the final evaluation and plots
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {**record, "error": f"no result within {limit:.0f} s"}
        record["process_s"] = round(time.monotonic() - start, 1)
        if proc.returncode != 0:
            error = proc.stderr.strip()[-2000:] or f"exit code {proc.returncode}"
            return {**record, "exit_code": proc.returncode, "error": error}
        done = json.loads(summary_path.read_text())
    keys = ("max_length", "paper_score", "final_length", "samples", "steps", "wall_time_s", "max_minutes")
    return {**record, **{k: done.get(k) for k in keys}, **rescored(out)}


def rescored(out: Path) -> dict:
    """The finer measures beside the items solved: bits wrong per sequence at the level the run ended on (the
    final weights on 1,024 fresh sequences) and the per-step reading's floor ([Note: per-step threshold])."""
    from synthgrad.errors import ConfigError
    from synthgrad.recurrent.rescore import rescore_run

    try:
        r = rescore_run(out)
    except (ConfigError, KeyError, OSError, ValueError):
        return {}
    return {"final_level": r["final_level"], "final_level_bits": r["final_level_bits"],
            "max_length_per_step": r["max_length_per_step"]}  # fmt: skip


def paper_figure(task: str, method: str, T: int) -> int | None:  # noqa: N803
    """The paper's entry (its units) for this task, method and T, or None (DNI + Aux, a T it has no column for)."""
    from synthgrad.experiments.recurrent_suite import COPY_T, PAPER_LENGTH

    row = PAPER_LENGTH.get((task, method))
    return row[list(COPY_T).index(T)] if row is not None and T in COPY_T else None


def markdown(results: list[dict], title: str) -> str:
    lines = [f"# {title}", "", "Each row: `synthgrad train` with the probe's flags (its full command is in the JSON).",
             "Solved: items (N; Repeat Copy N·R) / the paper's units (N + 3; N·R + 3); paper: the paper's entry in",
             "its units.", "",
             "Bits wrong at the next level: per sequence, the final weights on 1,024 fresh sequences at the level",
             "the run ended on (N + 1 items; the threshold is 0.15 per sequence, 0.15·(N + 1) read per step); per",
             "step: the items solved under the per-step reading (a floor, reports/recurrent/notes.md).", "",
             "| probe | flags | method | T | solved (items) | paper score | paper | bits wrong at the next level |"
             " per step (items) | sequences | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        flags = " ".join(r["flags"]) or "–"
        paper = paper_figure(r["task"], r["method"], r["T"])
        if "error" in r:
            why = r["error"].splitlines()[-1] if r["error"] else "?"
            lines.append(f"| {r['probe']} | `{flags}` | {r['method']} | {r['T']} | failed: {why} | | "
                         f"{paper or '–'} | | | | |")  # fmt: skip
            continue
        score = "–" if r["paper_score"] is None else r["paper_score"]
        bits = "–" if r.get("final_level_bits") is None else f"{r['final_level_bits']:.2f} at {r['final_level']}"
        lines.append(f"| {r['probe']} | `{flags}` | {r['method']} | {r['T']} | {r['max_length']} | {score} | "
                     f"{paper or '–'} | {bits} | {r.get('max_length_per_step', '–')} | {r['samples']:,} | "
                     f"{r['wall_time_s'] / 60:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def names(text: str, known: list[str], what: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in known]
    if unknown or not chosen:
        raise SystemExit(f"recurrent_probes: unknown {what} {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(known)}")  # fmt: skip
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="copy")
    p.add_argument("--T", default="2,4", help="chunk lengths, comma-separated (default 2,4)")
    p.add_argument("--methods", default="bptt,dni", help=f"of {', '.join(METHODS)} (default bptt,dni)")
    p.add_argument("--probes", default=",".join(DEFAULT_PROBES),
                   help="comma-separated, default " + ",".join(DEFAULT_PROBES) + "; every probe:\n" +
                   "\n".join(f"  {k}: {v[0]} ({' '.join(v[1]) or 'no flags'})" for k, v in PROBES.items()))  # fmt: skip
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per row (--max-minutes; default 10)")
    p.add_argument("--jobs", type=int, default=1, help="rows at a time, one thread each (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "recurrent_probes.json")
    p.add_argument("--markdown", type=Path, help="the table (default: the JSON path with .md)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "recurrent_probes", help="the rows' run folders")
    p.add_argument("--quick", action="store_true", help="smoke test: 64 sequences per row")
    args = p.parse_args(argv)
    try:
        Ts = [int(t) for t in args.T.split(",") if t.strip()]  # noqa: N806
    except ValueError:
        raise SystemExit(f"recurrent_probes: --T takes whole numbers separated by commas, got {args.T!r}") from None
    if not Ts or min(Ts) < 1 or args.jobs < 1 or not args.minutes > 0:
        raise SystemExit("recurrent_probes: --T values, --jobs and --minutes must be >= 1, >= 1 and > 0")
    methods = names(args.methods, METHODS, "method(s)")
    probes = names(args.probes, list(PROBES), "probe(s)")
    work = args.work / "quick" if args.quick else args.work
    todo = rows(args.task, Ts, methods, probes)
    md_path = args.markdown or args.json.with_suffix(".md")
    budget = "64 sequences (quick)" if args.quick else f"{args.minutes:g} min"
    title = f"Issue #20 set-up probes: {args.task}, {budget} per row, seed {args.seed}"
    meta = {"task": args.task, "minutes": None if args.quick else args.minutes, "quick": args.quick,
            "seed": args.seed, "jobs": args.jobs, "machine": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version()}  # fmt: skip
    results: list[dict | None] = [None] * len(todo)
    lock = threading.Lock()

    def one(i: int) -> None:
        r = run_row(todo[i], work, args.seed, args.minutes, args.quick)
        with lock:
            results[i] = r
            done = [x for x in results if x is not None]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**meta, "rows": done}, indent=1) + "\n")
            md_path.write_text(markdown(done, title))
            result = r["error"].splitlines()[-1] if "error" in r else f"{r['max_length']} items, paper score " \
                f"{r['paper_score']}, {r['samples']:,} sequences"  # fmt: skip
            print(f"{row_name(r, args.seed)}: {result}", flush=True)

    print(f"{len(todo)} rows, {args.jobs} at a time; results in {args.json} and {md_path}", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(one, range(len(todo))))
    return 1 if any("error" in r for r in results if r is not None) else 0


if __name__ == "__main__":
    sys.exit(main())
