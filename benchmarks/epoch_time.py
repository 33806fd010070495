"""Time per MNIST epoch of DNI and cDNI relative to backprop, the issue #5 cost goal, measured side by side.

    python benchmarks/epoch_time.py --data-dir ../shared/data --json benchmarks/results/epoch_time.json \
        [--layers 3,4,5,6] [--rounds 3] [--work runs/bench/epoch_time]

An epoch here is every training step of an MNIST epoch (`synthgrad train`, batch 256; the test-set evaluation
is not counted: it costs every method the same), with each method's default recipe from `TrainConfig`. The
methods take turns epoch by epoch (backprop, DNI, cDNI, backprop, ...), each turn resuming its own run for one
more epoch, so that the drifts of a noisy machine hit every method alike; the figure is the median over rounds of
the training time per epoch the trainer measured, and its ratio to backprop's median. One thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from synthgrad.config import Method, TrainConfig
from synthgrad.training import train

METHODS = (Method.BACKPROP, Method.DNI, Method.CDNI)


def last_epoch_time(run: Path) -> float:
    """Training seconds of the run's last epoch (evaluation excluded: it costs every method the same)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["train_time_s"] - (rows[-2]["train_time_s"] if len(rows) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--layers", default="3,4,5,6", help="comma-separated FCN depths")
    p.add_argument("--rounds", type=int, default=3, help="epochs per method and depth")
    p.add_argument("--work", default="runs/bench/epoch_time", help="run directories (removed first)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for layers in (int(n) for n in args.layers.split(",")):
        times: dict[str, list[float]] = {m.value: [] for m in METHODS}
        for r in range(1, args.rounds + 1):
            for m in METHODS:
                out = Path(args.work) / f"fcn{layers}-{m.value}"
                if r == 1:
                    shutil.rmtree(out, ignore_errors=True)  # a fresh run: an old one would be resumed past round 1
                cfg = TrainConfig(
                    data_dir=args.data_dir, layers=layers, method=m, epochs=r, threads=1, seed=0, out=str(out)
                )
                train(cfg, resume=r > 1, progress=False)
                times[m.value].append(last_epoch_time(out))
        bp = statistics.median(times[Method.BACKPROP.value])
        results[f"fcn{layers}"] = {
            m: {"s_per_epoch": statistics.median(ts), "ratio_to_backprop": statistics.median(ts) / bp, "rounds_s": ts}
            for m, ts in times.items()
        }
        print(
            f"fcn{layers}: "
            + ", ".join(
                f"{m} {v['s_per_epoch']:.2f} s ({v['ratio_to_backprop']:.2f}×)"
                for m, v in results[f"fcn{layers}"].items()
            ),
            flush=True,
        )
    meta = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "threads": 1,
        "torch": torch.__version__,
        "rounds": args.rounds,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
