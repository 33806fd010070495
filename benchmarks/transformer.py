"""The decoupled GPT's figures (issue #19): time per token against backprop, synthesizer cost, and the BPC of runs.

    python benchmarks/transformer.py time --json OUT [--threads 1] [--rounds 7] [--steps 5] [--quick]
    python benchmarks/transformer.py figures --json OUT RUN [RUN ...]

`time`: backprop, DNI and cDNI at the default size (the CLI's `--model gpt` defaults: 4 blocks, width 64, 4 heads,
windows of 64, batch 32; each method's default recipe from `TrainConfig.resolve`), plus the variants the recipe
ablation compares, each warmed up and then timed in interleaved rounds (backprop, DNI, cDNI, …, backprop, …) so
that the drifts of a shared machine hit every method alike; the figure is the median time per step over rounds and
its ratio to backprop's median. Random token ids stand in for the data (the cost does not depend on it);
flush-denormal on for every method; no diagnostics. It also counts the multiply-adds per position of every
synthesizer against a block's (`TokenSynthesizer.multiply_adds`, `models.gpt.block_multiply_adds`).

`figures`: the summaries of finished runs (`synthgrad train --model gpt ...` folders), grouped by method and
recipe (every config field but the seed and the output folder): mean and spread over seeds of the final
validation and test BPC, tokens and training time per token, and each group's ratio to the backprop group's.
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

from synthgrad.config import Method, TrainConfig, from_dict
from synthgrad.models import GPTConfig, block_multiply_adds
from synthgrad.synthesizers import SynthesizerKind, TokenSynthesizer
from synthgrad.training import build_network

VOCAB = 50  # PTB characters
VARIANTS = {
    "backprop": {"method": Method.BACKPROP},
    "dni": {"method": Method.DNI},  # the default recipe: token MLP, folding every batch
    "cdni": {"method": Method.CDNI},  # the default recipe: token MLP reading the target, folding every batch
    "dni_fold3": {"method": Method.DNI, "fold_every": 3},  # the default until commit 2b5e3c4
    "cdni_unfolded": {  # cDNI's default until commit 2b5e3c4: token-linear, no folding, lr 3e-4
        "method": Method.CDNI,
        "fold_every": 0,
        "synthesizer": SynthesizerKind.TOKEN_LINEAR,
        "lr": 3e-4,
        "synthesizer_lr": 1e-3,
    },
    "dni_zero": {"method": Method.DNI, "synthesizer": SynthesizerKind.ZERO},  # folding alone: delayed gradients
    "dni_every_block": {"method": Method.DNI, "modules": 6},  # a cut after the embedding and every block
}


def time_steps(net, x, y, context, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        net.train_step(x, y, context)
    return (time.perf_counter() - t0) / steps


def synthesizer_cost(cfg: TrainConfig, net) -> dict:
    """Multiply-adds per position of each cut's synthesizer (cDNI's context comes as ids: looked up, no
    products) against one block's forward pass over the window."""
    block = block_multiply_adds(GPTConfig(VOCAB, layers=cfg.layers, width=cfg.width, heads=cfg.heads,
                                          context=cfg.context))  # fmt: skip
    cuts = [s.multiply_adds(dense_context=False) for s in net.synthesizers if isinstance(s, TokenSynthesizer)]
    return {"block_multiply_adds": block, "synthesizer_multiply_adds": cuts,
            "ratio_to_block": [c / block for c in cuts]}  # fmt: skip


def bench_time(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    rounds, steps = (2, 1) if args.quick else (args.rounds, args.steps)
    base = from_dict({"model": "gpt", "diagnose_every": 0})
    gen = torch.Generator().manual_seed(0)
    nets, cost = {}, {}
    for name, overrides in VARIANTS.items():
        cfg = dataclasses.replace(base, **overrides).validate().resolve()
        x = torch.randint(0, VOCAB, (cfg.batch_size, cfg.context), generator=gen)
        y = torch.randint(0, VOCAB, (cfg.batch_size, cfg.context), generator=gen)
        net = build_network(cfg, (cfg.context,), VOCAB)
        context = y if cfg.method is Method.CDNI else None
        time_steps(net, x, y, context, 2 if args.quick else 5)  # warm-up: allocator, Adam state, folded batches
        nets[name] = (net, x, y, context, cfg.batch_size * cfg.context)
        if cfg.method is not Method.BACKPROP:
            cost[name] = synthesizer_cost(cfg, net)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(rounds):
        for name, (net, x, y, context, _) in nets.items():
            times[name].append(time_steps(net, x, y, context, steps))
    bp = statistics.median(times["backprop"])
    results = {}
    for name, ts in times.items():
        med, tokens = statistics.median(ts), nets[name][4]
        results[name] = {"ms_per_step": 1000 * med, "tokens_per_s": tokens / med, "ratio_to_backprop": med / bp,
                         "rounds_ms": [1000 * t for t in ts]}  # fmt: skip
        print(f"{name:16s} {1000 * med:8.1f} ms/step {tokens / med:9.0f} tokens/s {med / bp:6.2f}× backprop")
    for name, c in cost.items():
        shown = ", ".join(f"{r:.1%}" for r in c["ratio_to_block"])
        print(f"{name:16s} synthesizer multiply-adds per position: {c['synthesizer_multiply_adds']} ({shown} of a "
              f"block's {c['block_multiply_adds']})")  # fmt: skip
    return {"rounds": rounds, "steps_per_round": steps, "time": results, "synthesizer_cost": cost}


def _group(config: dict) -> str:
    """A recipe's name: the method and every field that differs from the default of that method."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in config.items() if k in known}
    default = from_dict({"model": "gpt", "method": values["method"]}).resolve().to_dict()
    skip = {"seed", "out", "threads", "data_dir", "device", "download", "diagnose_every", "eval_tokens"}
    differ = [f"{k}={v}" for k, v in sorted(values.items()) if k not in skip and default.get(k) != v]
    return " ".join([values["method"], *differ])


def bench_figures(args: argparse.Namespace) -> dict:
    groups: dict[str, list[dict]] = {}
    for run in map(Path, args.runs):
        summary = json.loads((run / "summary.json").read_text())
        config = json.loads((run / "config.json").read_text())
        groups.setdefault(_group(config), []).append({**summary, "run": str(run)})
    out: dict[str, dict] = {}
    for name, runs in sorted(groups.items()):
        row: dict = {"runs": [r["run"] for r in runs], "seeds": [r["seed"] for r in runs]}
        for key in ("valid_bpc", "test_bpc", "tokens"):
            values = [r[key] for r in runs]
            row[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "values": values}  # fmt: skip
        per_token = [r["train_time_s"] / r["tokens"] * 1e6 for r in runs]  # µs per training token
        row["us_per_token"] = {"mean": statistics.mean(per_token), "values": per_token}
        out[name] = row
    base = next((row for name, row in out.items() if name.startswith("backprop")), None)
    for name, row in out.items():
        if base is not None:
            row["valid_bpc_ratio"] = row["valid_bpc"]["mean"] / base["valid_bpc"]["mean"]
            row["time_per_token_ratio"] = row["us_per_token"]["mean"] / base["us_per_token"]["mean"]
        v = row["valid_bpc"]
        ratio = f"  {row['valid_bpc_ratio']:.4f}× BPC  {row['time_per_token_ratio']:.2f}× time" if base else ""
        print(f"{name:60s} n={len(row['runs'])} valid {v['mean']:.4f} ± {v['sd']:.4f}  test "
              f"{row['test_bpc']['mean']:.4f}  {row['us_per_token']['mean']:.1f} µs/token{ratio}")  # fmt: skip
    return {"groups": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("time", help="time per token and synthesizer cost, side by side")
    t.add_argument("--json", required=True)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--rounds", type=int, default=7)
    t.add_argument("--steps", type=int, default=5, help="steps per timed round")
    t.add_argument("--quick", action="store_true", help="2 rounds of 1 step: checks that it runs")
    f = sub.add_parser("figures", help="BPC and time per token of finished runs, grouped by recipe")
    f.add_argument("--json", required=True)
    f.add_argument("runs", nargs="+", help="run folders")
    args = p.parse_args()
    result = bench_time(args) if args.command == "time" else bench_figures(args)
    meta = {"machine": f"{platform.machine()} {platform.processor()}".strip(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "command": args.command,
            **({"threads": args.threads} if args.command == "time" else {})}  # fmt: skip
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
