"""What one step of gradient delay costs the default GPT, in plain PyTorch (no synthgrad chain, no synthesizer).

    python benchmarks/gradient_delay.py --data-dir ../shared/data --json OUT [--delay 1] [--lower-beta1 0.5]
        [--lower-lr-scale 1] [--beta1 0.9] [--warmup 0] [--cosine 0.1] [--lower 3] [--predict] [--compensate 0]
        [--max-tokens 6000000] [--seed 0]

The model, data order and budget of `synthgrad train --model gpt` (4 blocks of width 64, 4 heads, windows of 64,
batch 32, Adam 1e-3, 6M tokens); the parameters below the middle cut (embedding, blocks 0 and 1) are updated with
their gradient of `--delay` steps earlier (computed at the weights that batch saw: weight stashing), the rest with
the current one. This is what folding every batch with a zero synthesizer does ([Note: folding in true gradients]
in stage.py), written out independently, so the cost of the delay can be told apart from anything synthgrad adds.
`--lower-beta1` / `--lower-lr-scale` give the delayed half its own Adam β1 / learning rate; `--warmup N` ramps
every learning rate linearly over the first N steps; `--cosine F` decays every learning rate along a half cosine
to F times itself by the end of the budget; `--lower K` delays the model's first K children instead of the
middle cut's 3 (1: the embedding alone). `--predict` runs each batch at the delayed half's weights extrapolated
`--delay` steps along its last update, w_t + d (w_t − w_{t−1}), where its gradient will be applied (weight
prediction, as in SpecTrain and XPipe), and puts w_t back before the update; `--compensate λ` adds DC-ASGD's
λ g⊙g⊙(w_now − w_then) to each delayed gradient. Prints and records the validation BPC at every fifth of the
budget. One thread.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import time
from pathlib import Path

import torch

from synthgrad.data.ptb import load_ptb
from synthgrad.data.windows import SplitWindows
from synthgrad.models.gpt import GPTConfig, gpt, lm_loss
from synthgrad.training.lm import split_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--delay", type=int, default=1, help="steps of delay of the lower half's gradient (0: backprop)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--lower-beta1", type=float, help="β1 of the delayed half (default: --beta1)")
    p.add_argument("--lower-lr-scale", type=float, default=1.0, help="the delayed half's lr ÷ --lr")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear lr warm-up (0: none)")
    p.add_argument(
        "--cosine",
        type=float,
        help="decay every lr along a half cosine to this fraction of it by the end of the budget (default: constant)",
    )
    p.add_argument(
        "--lower",
        type=int,
        default=3,
        help="how many of the model's children are delayed (default 3: the embedding and blocks 0, 1, the middle cut)",
    )
    p.add_argument(
        "--predict",
        action="store_true",
        help="weight prediction: run each batch at the delayed half's weights extrapolated --delay steps ahead along"
        " its last update (where its gradient will be applied), then restore them",
    )
    p.add_argument(
        "--compensate",
        type=float,
        default=0.0,
        help="delay compensation (DC-ASGD): add λ g⊙g⊙(w_now − w_then) to the delayed gradient g",
    )
    p.add_argument("--max-tokens", type=int, default=6_000_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not 1 <= args.lower <= 5:
        p.error(f"--lower must be in 1..5 (the model's 6 children: embedding, 4 blocks, head), got {args.lower}")
    if args.cosine is not None and not 0 <= args.cosine <= 1:
        p.error(f"--cosine must be in [0, 1], got {args.cosine}")
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    corpus = load_ptb("ptb-char", args.data_dir)
    windows = SplitWindows.from_corpus(corpus, 64)
    model = gpt(GPTConfig(vocab_size=corpus.vocab_size, layers=4, width=64, heads=4, context=64))
    lower, upper = list(model[: args.lower].parameters()), list(model[args.lower :].parameters())
    lower_beta1 = args.beta1 if args.lower_beta1 is None else args.lower_beta1
    groups = [
        {
            "params": lower,
            "lr": args.lr * args.lower_lr_scale,
            "betas": (lower_beta1, 0.999),
            "scale": args.lower_lr_scale,
        },
        {"params": upper, "lr": args.lr, "betas": (args.beta1, 0.999), "scale": 1.0},
    ]
    optimizer = torch.optim.Adam(groups, lr=args.lr, fused=True)
    late: collections.deque[list[torch.Tensor]] = collections.deque()
    snapshots: collections.deque[list[torch.Tensor] | None] = collections.deque()  # the weights each batch saw
    steps = args.max_tokens // (32 * 64)
    every = max(1, steps // 5)
    curve, start = [], time.perf_counter()
    previous = [q.detach().clone() for q in lower]  # the delayed half before the last update
    for step in range(steps):
        x, y = windows.train.train_batch(step, 32, args.seed)
        optimizer.zero_grad(set_to_none=False)
        now = [q.detach().clone() for q in lower] if args.predict or args.compensate else None
        if args.predict and args.delay:
            with torch.no_grad():
                for q, w, w0 in zip(lower, now, previous, strict=True):
                    q.add_(w - w0, alpha=args.delay)
        lm_loss(model(x), y).backward()
        if args.predict and args.delay:
            with torch.no_grad():
                for q, w in zip(lower, now, strict=True):
                    q.copy_(w)
        if args.delay:
            late.append([q.grad.clone() for q in lower])
            snapshots.append(now)
            old = late.popleft() if len(late) > args.delay else None
            then = snapshots.popleft() if len(snapshots) > args.delay else None
            for q, g in zip(lower, old or [torch.zeros_like(q) for q in lower], strict=True):
                q.grad.copy_(g)
            if args.compensate and old is not None:
                for q, g, w in zip(lower, old, then, strict=True):
                    q.grad.add_(args.compensate * g * g * (q.detach() - w))
        if now is not None:
            previous = now
        if args.warmup or args.cosine is not None:
            factor = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
            if args.cosine is not None:
                factor *= args.cosine + (1 - args.cosine) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in optimizer.param_groups:
                group["lr"] = args.lr * group["scale"] * factor
        optimizer.step()
        if (step + 1) % every == 0 or step == steps - 1:
            bpc = split_loss(model, windows.valid) / math.log(2)
            curve.append({"step": step + 1, "tokens": (step + 1) * 32 * 64, "valid_bpc": bpc})
            print(f"step {step + 1}: valid BPC {bpc:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "curve": curve}, indent=2) + "\n")


if __name__ == "__main__":
    main()
