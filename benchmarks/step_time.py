"""Single-process time per training step of DNI and cDNI relative to backprop, measured side by side.

    python benchmarks/step_time.py --json runs/bench/step_time.json [--threads 2] [--rounds 7] [--quick]
        [--models mnist_fcn4,mnist_fcn6] [--width 1024] [--variants dni,dni_autograd,cdni,cdni_autograd]

For each model, the methods are built from the same `TrainConfig` defaults the CLI uses, warmed up, then timed
in interleaved rounds (backprop, DNI, cDNI, backprop, ...) so that drifts of this noisy machine hit every
method alike; the figure is the median over rounds of the time per step, and the ratio to backprop's median.
Synthetic MNIST-shaped batches (the data does not change the cost); flush-denormal on for every method.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from synthgrad.config import Method, TrainConfig, paper_recipe
from synthgrad.core import one_hot_context
from synthgrad.training import build_network

MODELS = {
    "mnist_fcn4": TrainConfig(model="fcn", layers=4),
    "mnist_fcn6": TrainConfig(model="fcn", layers=6),
    "mnist_cnn3": TrainConfig(model="cnn", layers=3, synthesizer_hidden=(64, 64)),
}
VARIANTS = {
    "backprop": {"method": Method.BACKPROP},
    "dni": {"method": Method.DNI},  # the default recipe (issue #5): rank-16 synthesizers, folding
    "dni_fold1": {"method": Method.DNI, "fold_every": 1},  # every batch folded
    "dni_fold2": {"method": Method.DNI, "fold_every": 2},  # every 2nd batch folded
    "dni_fold4": {"method": Method.DNI, "fold_every": 4},  # every 4th batch folded
    "cdni": {"method": Method.CDNI},  # the default recipe: rank-16 synthesizers
    "dni_paper": paper_recipe(Method.DNI),  # the paper's: MLP 2x1024 synthesizers, no folding
    "cdni_paper": paper_recipe(Method.CDNI),  # the paper's: linear synthesizers
    "cdni_unlock": {"method": Method.CDNI, "unlock": "full"},
    "dni_autograd": {"method": Method.DNI},  # the default recipes with the synthesizers fitted through autograd
    "cdni_autograd": {"method": Method.CDNI},  # instead of in closed form ([Note: closed-form fit])
}
FCN_ONLY = {"dni_paper", "cdni_paper", "cdni_unlock", "dni_fold1", "dni_fold2", "dni_fold4", "dni_autograd",
            "cdni_autograd"}  # fmt: skip


def time_steps(net, x, y, context, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        net.train_step(x, y, context)
    return (time.perf_counter() - t0) / steps


def bench_model(name: str, base: TrainConfig, rounds: int, steps: int, batch: int, variants: list[str]) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    nets = {}
    for variant, overrides in VARIANTS.items():
        if variant not in variants or base.model == "cnn" and variant in FCN_ONLY:
            continue
        cfg = dataclasses.replace(base, **overrides).resolve()
        net = build_network(cfg, (1, 28, 28), 10)
        for stage in net.stages[:-1]:
            stage.interface.allow_closed_form = not variant.endswith("_autograd")
        ctx = one_hot_context(y, 10) if cfg.method is Method.CDNI else None
        time_steps(net, x, y, ctx, 3)  # warm-up: allocator, first-touch, Adam state
        nets[variant] = (net, ctx)
    times: dict[str, list[float]] = {v: [] for v in nets}
    for _ in range(rounds):
        for variant, (net, ctx) in nets.items():
            times[variant].append(time_steps(net, x, y, ctx, steps))
    bp = statistics.median(times["backprop"])
    out = {}
    for variant, ts in times.items():
        med = statistics.median(ts)
        out[variant] = {"ms_per_step": 1000 * med, "ratio_to_backprop": med / bp, "rounds_ms": [1000 * t for t in ts]}
        print(f"{name:11s} {variant:12s} {1000 * med:8.1f} ms/step  {med / bp:5.2f}× backprop")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="FCNs only, 3 rounds of 2 steps")
    p.add_argument("--models", help=f"comma-separated subset of {', '.join(MODELS)} (default: all)")
    p.add_argument("--width", type=int, help="every model's width (default: the paper's, `TrainConfig.resolve`)")
    p.add_argument("--variants", help=f"comma-separated subset of {', '.join(VARIANTS)} (default: all; backprop is "
                   "always timed, the ratios' reference)")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rounds, steps = (3, 2) if args.quick else (args.rounds, args.steps)
    chosen = args.models.split(",") if args.models else list(MODELS)
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    variants = ["backprop", *(args.variants.split(",") if args.variants else VARIANTS)]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    models = {k: v for k, v in MODELS.items() if k in chosen and not (args.quick and v.model == "cnn")}
    if args.width:
        models = {k: dataclasses.replace(v, width=args.width) for k, v in models.items()}
    results = {name: bench_model(name, cfg, rounds, steps, args.batch_size, variants) for name, cfg in models.items()}
    meta = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "threads": args.threads,
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "width": args.width,
        "rounds": rounds,
        "steps_per_round": steps,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
