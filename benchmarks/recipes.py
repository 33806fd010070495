"""Ablation of the DNI / cDNI training recipe (issue #5): test error and time per epoch against backprop.

    python benchmarks/recipes.py --data-dir ../shared/data --json benchmarks/results/recipes.json \
        [--layers 6] [--epochs 20] [--seeds 1] [--only dni-fold1,cdni-lowrank16] [--work runs/bench/recipes]

Each recipe is a set of `TrainConfig` overrides, trained with the same trainer the CLI uses (one thread, so
several copies can share a machine without slowing each other down), for every seed; backprop is trained in
the same invocation and every time is reported as a ratio to its time per epoch. Runs resume, so an interrupted
ablation continues where it stopped. The table in BENCHMARKS.md ("Recipe ablation") comes from this script; the
`why` column says what each row isolates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from synthgrad.config import Method, TrainConfig, paper_recipe
from synthgrad.synthesizers import SynthesizerKind
from synthgrad.training import train

LINEAR, LOWRANK = SynthesizerKind.LINEAR, SynthesizerKind.LOWRANK

# name: (why, overrides). Every recipe names all of its levers, so changing a default does not change a row.
RECIPES: dict[str, tuple[str, dict]] = {
    "backprop": ("the reference", {"method": Method.BACKPROP, "lr": 1e-4}),
    "dni-paper": (
        "the paper's DNI: MLP 2×1024 (BN) synthesizers, module lr 3e-5, synthesizer lr 1e-3, no folding",
        paper_recipe(Method.DNI),
    ),
    "dni-linear": (
        "cheap synthesizer, no folding: what a synthesizer without the label can do",
        {"method": Method.DNI, "synthesizer": LINEAR, "lr": 1e-4, "synthesizer_lr": 1e-4, "fold_every": 0},
    ),
    "dni-fold1-zero": (
        "folding with a synthesizer that never learns (lr 1e-12, ĝ ≈ 0): delayed backprop, no DNI",
        {"method": Method.DNI, "synthesizer": LINEAR, "lr": 1e-4, "synthesizer_lr": 1e-12, "fold_every": 1},
    ),
    "dni-fold1": (
        "linear synthesizer + every batch's true gradient folded in",
        {"method": Method.DNI, "synthesizer": LINEAR, "lr": 1e-4, "synthesizer_lr": 1e-4, "fold_every": 1},
    ),
    "dni-lowrank16-fold1": (
        "rank-16 synthesizer, every batch folded",
        {
            "method": Method.DNI,
            "synthesizer": LOWRANK,
            "synthesizer_hidden": (16,),
            "lr": 1e-4,
            "synthesizer_lr": 1e-4,
            "fold_every": 1,
        },
    ),
    **{
        f"dni-lowrank16-fold{k}{'-lr2e-4' if lr == 2e-4 else ''}": (
            why,
            {
                "method": Method.DNI,
                "synthesizer": LOWRANK,
                "synthesizer_hidden": (16,),
                "lr": lr,
                "synthesizer_lr": 1e-4,
                "fold_every": k,
            },
        )
        for k, lr, why in (
            (2, 1e-4, "every 2nd batch folded: half the extra backward passes"),
            (3, 1e-4, "every 3rd batch folded"),
            (3, 2e-4, "the default DNI recipe: every 3rd batch folded, module lr doubled"),
            (4, 2e-4, "every 4th batch folded, module lr doubled"),
        )
    },
    "dni-fold3-zero-lr2e-4": (
        "the default with a synthesizer that never learns (lr 1e-12, ĝ ≈ 0): what the synthesizer adds",
        {
            "method": Method.DNI,
            "synthesizer": LOWRANK,
            "synthesizer_hidden": (16,),
            "lr": 2e-4,
            "synthesizer_lr": 1e-12,
            "fold_every": 3,
        },
    ),
    "dni-fold1-slr1e-3": (
        "as dni-fold1, synthesizer lr 1e-3",
        {"method": Method.DNI, "synthesizer": LINEAR, "lr": 1e-4, "synthesizer_lr": 1e-3, "fold_every": 1},
    ),
    "dni-fold2": (
        "linear synthesizer, every 2nd batch folded (half the extra backward passes)",
        {"method": Method.DNI, "synthesizer": LINEAR, "lr": 1e-4, "synthesizer_lr": 1e-4, "fold_every": 2},
    ),
    "dni-fold4": (
        "linear synthesizer, every 4th batch folded",
        {"method": Method.DNI, "synthesizer": LINEAR, "lr": 1e-4, "synthesizer_lr": 1e-4, "fold_every": 4},
    ),
    "dni-lowrank64-fold2": (
        "low-rank (64) synthesizer, every 2nd batch folded",
        {
            "method": Method.DNI,
            "synthesizer": LOWRANK,
            "synthesizer_hidden": (64,),
            "lr": 1e-4,
            "synthesizer_lr": 1e-4,
            "fold_every": 2,
        },
    ),
    "cdni-paper": (
        "the paper's cDNI: linear synthesizer on [h, y], module lr 1e-4, synthesizer lr 1e-3",
        paper_recipe(Method.CDNI),
    ),
    "cdni-lowrank64": (
        "low-rank synthesizer (h → 64 → h, plus the label term)",
        {
            "method": Method.CDNI,
            "synthesizer": LOWRANK,
            "synthesizer_hidden": (64,),
            "lr": 1e-4,
            "synthesizer_lr": 1e-3,
            "fold_every": 0,
        },
    ),
    "cdni-lowrank16": (
        "the default cDNI recipe: low-rank 16, a quarter of rank 64's arithmetic",
        {
            "method": Method.CDNI,
            "synthesizer": LOWRANK,
            "synthesizer_hidden": (16,),
            "lr": 1e-4,
            "synthesizer_lr": 1e-3,
            "fold_every": 0,
        },
    ),
    "cdni-lowrank16-slr3e-3": (
        "as cdni-lowrank16, synthesizer lr 3e-3",
        {
            "method": Method.CDNI,
            "synthesizer": LOWRANK,
            "synthesizer_hidden": (16,),
            "lr": 1e-4,
            "synthesizer_lr": 3e-3,
            "fold_every": 0,
        },
    ),
    "cdni-lowrank16-fold4": (
        "cDNI with every 4th batch's true gradient folded in",
        {
            "method": Method.CDNI,
            "synthesizer": LOWRANK,
            "synthesizer_hidden": (16,),
            "lr": 1e-4,
            "synthesizer_lr": 1e-3,
            "fold_every": 4,
        },
    ),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--only", help="comma-separated recipe names (backprop always runs)")
    p.add_argument("--work", default="runs/bench/recipes", help="run directories (resumable)")
    args = p.parse_args(argv)
    names = list(RECIPES) if not args.only else ["backprop", *[n for n in args.only.split(",") if n != "backprop"]]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    torch.set_num_threads(1)
    base = TrainConfig(data_dir=args.data_dir, layers=args.layers, epochs=args.epochs, threads=1)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for name in names:
        why, overrides = RECIPES[name]
        runs = []
        for seed in range(args.seeds):
            out = Path(args.work) / f"fcn{args.layers}-e{args.epochs}" / f"{name}-s{seed}"
            cfg = dataclasses.replace(base, seed=seed, out=str(out), **overrides)
            runs.append(train(cfg, resume=True, progress=False))
        errors = [r["test_error"] for r in runs]
        results[name] = {
            "why": why,
            "config": dataclasses.replace(base, **overrides).to_dict(),
            "test_error": statistics.mean(errors),
            "test_errors": errors,
            "time_per_epoch_s": statistics.mean(r["time_per_epoch_s"] for r in runs),
        }
        bp = results["backprop"]["time_per_epoch_s"]
        for r in results.values():
            r["time_vs_backprop"] = r["time_per_epoch_s"] / bp
        out_json = {
            "layers": args.layers,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "machine": f"{platform.machine()}, 1 thread, torch {torch.__version__}",
            "elapsed_s": time.perf_counter() - t0,
            "recipes": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out_json, indent=1))
        print(f"{name:24s} {results[name]['test_error']:6.2f}%  ×{results[name]['time_vs_backprop']:.2f}", flush=True)
    print(f"\n| recipe | test error % ({args.seeds} seed(s)) | time/epoch × backprop | what it isolates |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['test_error']:.2f} | {r['time_vs_backprop']:.2f} | {r['why']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
