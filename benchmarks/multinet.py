"""The two-network system (PAPER.md §5): A-steps until B reaches the target, locked vs DNI, over several seeds.

    python benchmarks/multinet.py --data-dir ../shared/data --json benchmarks/results/multinet.json \
        [--seeds 3] [--T 4] [--target 0.9] [--max-steps 200000]

Three variants of `synthgrad.recurrent.multinet.MultiNetSystem`, each seed with the same data stream:
  locked        A and B update together once per episode (every T² steps), exact gradients;
  dni           A updates every T steps on its own loss and the synthesizer's ĝ on its message;
  dni-zero-sg   the same, with the synthesizer's learning rate at 0: ĝ stays exactly 0, so A learns from its own
                task alone. What `dni` gains over this is what the synthetic gradient itself adds.
A variant stops when B's moving training accuracy (last tick of each episode, averaged over `--window`
episodes, as `synthgrad train --task multinet`) reaches the target, or after `--max-steps` A-steps. Reported: the
A-steps to the target per seed, their medians and the ratios of the medians to the locked system's; the wall
time per A-step, measured in the same run, says what a step costs. One thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from synthgrad.data import load_mnist, resolve_data_dir
from synthgrad.recurrent.multinet import MultiNetSystem, at_target, moving_accuracy
from synthgrad.recurrent.tasks import MultiNetTask

VARIANTS = ("locked", "dni", "dni-zero-sg")


def run(variant: str, task: MultiNetTask, seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    method = "bptt" if variant == "locked" else "dni"
    system = MultiNetSystem(args.T, method=method, a_hidden=args.hidden, b_hidden=args.hidden, lr=args.lr)
    if variant == "dni-zero-sg":
        for group in system.synthesizer_optimizer.param_groups:
            group["lr"] = 0.0
    generator = torch.Generator().manual_seed(seed)
    recent: list[float] = []
    t0 = time.perf_counter()
    reached = None
    while system.a_steps < args.max_steps:
        ep = system.train_episode(task.sample(args.batch, generator))
        recent = moving_accuracy(recent, ep.b_correct / ep.batch, args.window)
        if at_target(recent, args.window, args.target):
            reached = ep.a_steps
            break
    elapsed = time.perf_counter() - t0
    return {"steps_to_target": reached, "a_steps": system.a_steps, "a_updates": system.a_updates,
            "seconds": elapsed, "seconds_per_a_step": elapsed / system.a_steps}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--window", type=int, default=50, help="episodes in the moving accuracy")
    p.add_argument("--max-steps", type=int, default=200_000, help="A-steps before a variant gives up")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    task = MultiNetTask.from_dataset(load_mnist(resolve_data_dir(args.data_dir)), split="train", T=args.T)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in range(args.seeds):
        for variant in VARIANTS:  # taking turns seed by seed: machine drift hits every variant alike
            r = run(variant, task, seed, args)
            runs[variant].append(r)
            print(f"seed {seed} {variant:12s} steps to {args.target:.0%}: {r['steps_to_target']} "
                  f"({r['seconds']:.0f} s, {1e6 * r['seconds_per_a_step']:.0f} µs per A-step)", flush=True)  # fmt: skip
    summary = {}
    for variant, rs in runs.items():
        steps = [r["steps_to_target"] for r in rs]
        summary[variant] = {
            "steps_to_target": steps,
            "median_steps": statistics.median(steps) if None not in steps else None,
            "median_seconds_per_a_step": statistics.median(r["seconds_per_a_step"] for r in rs),
        }
    base = summary["locked"]["median_steps"]
    for variant in VARIANTS:
        s = summary[variant]
        s["steps_vs_locked"] = s["median_steps"] / base if s["median_steps"] and base else None
        per_seed = [
            d / b if d and b else None
            for d, b in zip(s["steps_to_target"], summary["locked"]["steps_to_target"], strict=True)
        ]
        s["per_seed_vs_locked"] = per_seed
        print(f"{variant:12s} median {s['median_steps']} A-steps, {s['steps_vs_locked']} x locked; per seed {per_seed}")
    out = {"config": vars(args), "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "summary": summary, "runs": runs}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
