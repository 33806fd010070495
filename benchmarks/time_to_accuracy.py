"""Time to a target accuracy: the decoupled pipeline against every exact-gradient schedule and the stale pipeline.

    python benchmarks/time_to_accuracy.py --data-dir DIR --json OUT [--seeds 3] [--epochs 6] [--target 98.0]
        [--methods a,b,...] [--microbatches 2,4,8] [--quick] [--plot OUT.png] [--keep DIR]
    python benchmarks/time_to_accuracy.py --workload gpt --data-dir DIR --json OUT [--target-bpc 2.5]
        [--max-tokens 6000000] ...

Every method trains the same model on the same batches through the same launcher (`synthgrad parallel`), one run
after another (never two at once), each process one thread pinned to its own core (`--pin-cores`); the single
process runs with 1 and with 2 threads. For each run: training seconds until the test error first reaches the
target (evaluated every `--eval-every` steps, evaluation excluded), samples/s, final test error, peak memory per
stage, and where each stage's time went. torch's pipeline schedules are swept over micro-batch counts and the best
per schedule is kept; a schedule that cannot run here is reported with its error message. Output: JSON with every
run, the per-method summary (median and spread over seeds), and one plot of test error against training time.

Default workload: MNIST FCN, 7 layers (6 hidden of 1024, BN), batch 256, Adam 1e-4, K = 2 stages of 3 + 4 layers,
6 epochs, target 98.0 % accuracy (2.0 % test error). `--workload gpt`: the transformer language model of issue
#19 at its default size (4 pre-LN blocks of width 64, 4 heads, windows of 64 characters of PTB, batch 32, each
method's default recipe), cut after block 2, a budget of `--max-tokens`, evaluated every `--eval-tokens` (the
whole validation and test text each time: evaluation time is excluded from the training time), target validation
bits per character `--target-bpc`. `--quick` checks that everything runs (a few steps, tiny
model): no figure of it means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zero-bubble", "zbv", "dualpipev")
# name -> (arguments of `synthgrad parallel`, stages or None for --stages, threads per process)
METHODS: dict[str, tuple[list[str], int | None, int]] = {
    "single-1t": (["--schedule", "single", "--method", "backprop"], 1, 1),
    "single-2t": (["--schedule", "single", "--method", "backprop"], 1, 2),
    "model-parallel": (["--schedule", "model-parallel", "--method", "backprop"], None, 1),
    **{s: (["--schedule", s, "--method", "backprop"], None, 1) for s in TORCH_SCHEDULES},
    "stale": (["--schedule", "stale", "--method", "backprop", "--max-staleness", "1"], None, 1),
    "dni": (["--schedule", "decoupled", "--method", "dni", "--max-staleness", "1"], None, 1),
    "cdni": (["--schedule", "decoupled", "--method", "cdni", "--max-staleness", "1"], None, 1),
    "dni-zero": (
        ["--schedule", "decoupled", "--method", "dni", "--synthesizer", "zero", "--max-staleness", "1"],
        None,
        1,
    ),  # fmt: skip
}
FAMILIES = {
    "single": ["single-1t", "single-2t"],
    "exact": ["model-parallel", *TORCH_SCHEDULES],
    "stale": ["stale", "dni-zero"],
    "decoupled": ["dni", "cdni"],
}


def run_one(name: str, args: list[str], stages: int, threads: int, common: list[str], out: Path) -> dict:
    """One run through `synthgrad parallel`: its summary and metric rows, or its error."""
    cmd = [sys.executable, "-m", "synthgrad.cli", "parallel", "--stages", str(stages), *common, *args,
           "--threads", str(threads), "--pin-cores", "--out", str(out), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    command = "synthgrad " + " ".join(cmd[3:])
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
        print(f"{name:24s} FAILED: {error[:200]}", flush=True)
        return {"error": error, "command": command}
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metric = "valid_bpc" if "valid_bpc" in summary else "test_error"  # the first metric: what the target is on
    curve = [(r["train_time_s"], r[metric]) for r in rows]
    ttt = summary.get("time_to_target_s")
    shown = "–" if ttt is None else f"{ttt:.1f} s"
    print(f"{name:24s} {summary['samples_per_s']:8.0f} samples/s  time to target {shown}  final "
          f"{metric} {summary[metric]:.3f}", flush=True)  # fmt: skip
    return {"command": command, "summary": summary, "curve": curve}


def summarize(runs: list[dict]) -> dict:
    """Median and spread over seeds of a method's runs (None where a run failed or never reached the target)."""
    ok = [r for r in runs if "summary" in r]
    if not ok:
        return {"error": runs[0].get("error")}
    ttt = [r["summary"]["time_to_target_s"] for r in ok]
    reached = [t for t in ttt if t is not None]
    sps = [r["summary"]["samples_per_s"] for r in ok]
    metric = "valid_bpc" if "valid_bpc" in ok[0]["summary"] else "test_error"
    return {
        "time_to_target_s": statistics.median(reached) if len(reached) == len(ttt) else None,
        "time_to_target_runs": ttt,
        "samples_per_s": statistics.median(sps),
        "metric": metric,
        f"final_{metric}": statistics.median(r["summary"][metric] for r in ok),
        "peak_rss_mb": [
            max(s["peak_rss_mb"] for r in ok for s in r["summary"]["per_stage"] if s["stage"] == k)
            for k in range(len(ok[0]["summary"]["per_stage"]))
        ],  # fmt: skip
        "per_stage": ok[0]["summary"]["per_stage"],
        "seeds": len(ok),
    }


def best_microbatches(results: dict, name: str, counts: list[int]) -> dict:
    """Of a torch schedule's micro-batch counts, the one that reached the target soonest (else: most samples/s)."""
    tried = {m: results[f"{name}-m{m}"] for m in counts}
    ok = {m: s for m, s in tried.items() if "error" not in s}
    if not ok:
        return {"error": next(iter(tried.values()))["error"], "microbatches": counts}

    def key(m: int) -> tuple:
        return ok[m]["time_to_target_s"] is None, ok[m]["time_to_target_s"] or 0, -ok[m]["samples_per_s"]

    m = min(ok, key=key)
    return {**ok[m], "microbatches": m, "errors": {k: v["error"] for k, v in tried.items() if "error" in v}}


def plot(results: dict, runs: dict, path: Path, target: float, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, summary in results.items():
        label = name + (f" (M={summary['microbatches']})" if "microbatches" in summary else "")
        key = f"{name}-m{summary['microbatches']}" if "microbatches" in summary else name
        curve = next((r["curve"] for r in runs.get(key, []) if "curve" in r), None)
        if curve:
            ax.plot(*zip(*curve, strict=True), label=label, lw=2 if name in FAMILIES["decoupled"] else 1)
    ax.axhline(target, color="grey", ls="--", lw=0.8)
    ylabel = "validation bits per character" if metric == "valid_bpc" else "test error (%)"
    ax.set(xlabel="training time (s)", ylabel=ylabel, yscale="log", title="time to target (seed 0)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--workload", choices=("fcn", "gpt"), default="fcn")
    p.add_argument("--target-bpc", type=float, default=2.5, help="gpt: validation bits per character")
    p.add_argument("--max-tokens", type=int, default=6_000_000, help="gpt: training tokens per run")
    p.add_argument("--eval-tokens", type=int, default=400_000, help="gpt: tokens between evaluations")
    p.add_argument("--json", required=True)
    p.add_argument("--plot", help="the figure (default: next to --json)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--target", type=float, default=98.0, help="test accuracy %%")
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--layers", type=int, default=7)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--microbatches", default="2,4,8")
    p.add_argument("--methods", help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--families", help="comma-separated subset of: " + ", ".join(FAMILIES))
    p.add_argument("--extra", default="", help="more arguments for every run (e.g. '--lr 2e-4')")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch on 1,024 examples, a tiny model")
    p.add_argument("--full-curves", action="store_true", help="train every run to its epoch budget")
    p.add_argument("--keep", help="keep every run's folder here (default: a temporary folder)")
    args = p.parse_args()
    names = args.methods.split(",") if args.methods else list(METHODS)
    if args.families:
        names = [n for f in args.families.split(",") for n in FAMILIES[f]]
    counts = [int(m) for m in args.microbatches.split(",")]
    common = ["--data-dir", args.data_dir, "--model", "fcn", "--batch-size", "256", "--lr", "1e-4", "--target-accuracy",
              str(args.target), "--layers", str(args.layers), "--width", str(args.width)]  # fmt: skip
    metric, target = "test_error", 100.0 - args.target
    if args.workload == "gpt":  # every other option at the model's defaults (config.py, [Note: GPT recipe])
        metric, target = "valid_bpc", args.target_bpc
        common = ["--data-dir", args.data_dir, "--model", "gpt", "--dataset", "ptb-char",
                  "--target-bpc", str(args.target_bpc), "--max-tokens", str(args.max_tokens),
                  "--eval-tokens", str(args.eval_tokens)]  # fmt: skip
        if args.quick:
            common[common.index("--max-tokens") + 1] = "16384"
            common += ["--eval-every", "2", "--layers", "2", "--width", "16", "--heads", "2", "--context", "16"]
        elif not args.full_curves:
            common += ["--stop-at-target"]
    elif args.quick:
        common += ["--epochs", "1", "--train-limit", "1024", "--eval-every", "2"]
        common[common.index("--width") + 1] = "32"
    else:
        common += ["--epochs", str(args.epochs), "--eval-every", str(args.eval_every)]
        if not args.full_curves:  # a run ends once it reaches the target: the figure is the time to it
            common += ["--stop-at-target"]
    common += args.extra.split()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="synthgrad-tta-"))
    runs: dict[str, list[dict]] = {}
    for seed in range(1 if args.quick else args.seeds):  # seeds outermost: every method meets the same drift
        for name in names:
            method_args, stages, threads = METHODS[name]
            variants = [(f"{name}-m{m}", ["--microbatches", str(m)]) for m in counts] if name in TORCH_SCHEDULES \
                else [(name, [])]  # fmt: skip
            for key, extra in variants:
                out = work / f"{key}-s{seed}"
                shutil.rmtree(out, ignore_errors=True)
                runs.setdefault(key, []).append(run_one(key, [*method_args, *extra, "--seed", str(seed)],
                                                        stages or args.stages, threads, common, out))  # fmt: skip
    per_key = {key: summarize(rs) for key, rs in runs.items()}
    results = {n: best_microbatches(per_key, n, counts) if n in TORCH_SCHEDULES else per_key[n] for n in names}
    meta = {"machine": f"{platform.machine()} {platform.processor()}".strip(), "cores": os.cpu_count(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "quick": args.quick,
            "workload": args.workload, "metric": metric, "target": target, "common": " ".join(common),
            "runs": str(work)}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "runs": runs}, indent=2) + "\n")
    plot(results, runs, Path(args.plot) if args.plot else Path(args.json).with_suffix(".png"), target, metric)
    for name, r in results.items():
        t, final = r.get("time_to_target_s"), r.get(f"final_{metric}", float("nan"))
        print(f"{name:18s} time to target {'–' if t is None else f'{t:6.1f} s'}  {r.get('samples_per_s') or 0:7.0f} "
              f"samples/s  final {metric} {final:.3f}  {r.get('error', '')}")  # fmt: skip
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
