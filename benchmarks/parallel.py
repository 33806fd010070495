"""Decoupled stages in parallel against every baseline, side by side in one run.

    python benchmarks/parallel.py --data-dir DIR --json OUT [--quick] [--epochs E]

Every method trains the same model on the same batches through the same launcher (`synthgrad parallel`), one
after another (never concurrently), and reports samples/s of pure training time, the training seconds until the
test error first reaches the target (evaluation time excluded), and the final test error:

    backprop_single          one process, all cores
    backprop_model_parallel  K processes, synchronous model-parallel backprop (the locked baseline)
    pipeline_gpipe / _1f1b   torch.distributed.pipelining schedules over K processes
    ddp                      DistributedDataParallel over K processes (a data-parallel reference)
    dni_pipeline             K decoupled cDNI stages (synthgrad's runtime)

plus the scaling of dni_pipeline for K = 1 (= backprop_single), 2, 4. On a 2-core machine K = 4 is
oversubscribed (4 processes, 1 thread each, on 2 cores): it shows the overhead, not a speed-up.

Default model: a wide FCN (7 layers: 6 hidden of 1024 units, MNIST) cut into 2 stages of 3 + 4 layers, which
balances their work (784×1024 + 2 × 1024² against 3 × 1024² + 1024×10 multiply-adds per example); a stage's
compute outweighs its activation message (256 × 1024 floats per step). dni_pipeline runs cDNI with the default
recipe (`TrainConfig`, issue #5: a low-rank synthesizer of rank width/16 = 64 plus the label term, synthesizer lr
1e-3; ≈4% of a stage's work).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--model", "fcn", "--batch-size", "256", "--lr", "1e-4", "--seed", "0"]
DNI = ["--method", "cdni"]  # the default recipe (rank width/16 = 64 synthesizers here)
METHODS = {
    "backprop_single": (["--schedule", "single", "--method", "backprop"], 1),
    "backprop_model_parallel": (["--schedule", "model-parallel", "--method", "backprop"], None),
    "pipeline_gpipe": (["--schedule", "gpipe", "--method", "backprop"], None),
    "pipeline_1f1b": (["--schedule", "1f1b", "--method", "backprop"], None),
    "ddp": (["--schedule", "ddp", "--method", "backprop"], None),
    "dni_pipeline": (["--schedule", "decoupled", *DNI], None),
}


def run_job(name: str, args: list[str], stages: int, common: list[str], out: Path) -> dict:
    """Run one method through `synthgrad parallel` and return its summary (or the error)."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // stages)
    cmd = [sys.executable, "-m", "synthgrad.cli", "parallel", "--stages", str(stages), *MODEL, *common, *args,
           "--threads", str(threads), "--out", str(out / name), "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"{name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {"error": proc.stderr[-500:], "command": " ".join(cmd[2:])}
    summary = json.loads((out / name / "summary.json").read_text())
    summary.update({"stages": stages, "threads_per_process": threads, "job_wall_s": elapsed,
                    "command": "synthgrad " + " ".join(cmd[3:])})  # fmt: skip
    sps, ttt = summary.get("samples_per_s"), summary.get("time_to_target_s")
    print(
        f"{name:26s} K={stages}  {sps or 0:8.0f} samples/s  time-to-target {ttt if ttt is None else round(ttt, 1)}"
        f"  final error {summary.get('test_error', float('nan')):.2f}%",
        flush=True,
    )
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--quick", action="store_true", help="8,192 training examples, 1 epoch: under 3 minutes")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--target-accuracy", type=float, default=97.5)
    p.add_argument("--keep", help="keep every run's directory here (default: a temporary directory)")
    p.add_argument("--layers", type=int, default=7)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--methods", help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--no-scaling", action="store_true", help="skip the K = 4 run")
    args = p.parse_args()
    common = ["--data-dir", args.data_dir, "--target-accuracy", str(args.target_accuracy)]
    common += ["--layers", str(args.layers), "--width", str(args.width)]
    chosen = args.methods.split(",") if args.methods else list(METHODS)
    if args.quick:
        common += ["--epochs", "1", "--train-limit", "8192", "--eval-every", "8"]
    else:
        common += ["--epochs", str(args.epochs), "--eval-every", "40"]
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="synthgrad-bench-"))
    if out.exists() and args.keep:
        shutil.rmtree(out)
    results: dict = {"methods": {}, "scaling": {}}
    for name in chosen:
        method_args, fixed_k = METHODS[name]
        results["methods"][name] = run_job(name, method_args, fixed_k or args.stages, common, out)
    m = results["methods"]
    if "dni_pipeline" in m and not args.no_scaling:
        results["scaling"] = {"1": m.get("backprop_single"), str(args.stages): m["dni_pipeline"]}
        for k in (2, 4):
            if str(k) not in results["scaling"]:
                results["scaling"][str(k)] = run_job(f"dni_pipeline_k{k}", METHODS["dni_pipeline"][0], k, common, out)
    ok = all("error" not in v for v in m.values())
    if ok and set(METHODS) <= set(m):
        best_pipe = max(m["pipeline_gpipe"]["samples_per_s"], m["pipeline_1f1b"]["samples_per_s"])
        dni = m["dni_pipeline"]
        results["ratios"] = {
            "dni_vs_model_parallel": dni["samples_per_s"] / m["backprop_model_parallel"]["samples_per_s"],
            "dni_vs_best_pipeline": dni["samples_per_s"] / best_pipe,
            "dni_vs_single": dni["samples_per_s"] / m["backprop_single"]["samples_per_s"],
            "dni_time_to_target_vs_single": (
                dni["time_to_target_s"] / m["backprop_single"]["time_to_target_s"]
                if dni["time_to_target_s"] and m["backprop_single"]["time_to_target_s"]
                else None
            ),
        }
        for key, value in results["ratios"].items():
            print(f"{key:32s} {value if value is None else round(value, 2)}")
    results["meta"] = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "target_accuracy": args.target_accuracy,
        "model": " ".join(MODEL + ["--layers", str(args.layers), "--width", str(args.width)]),
        "dni": " ".join(DNI),
        "runs": str(out),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
