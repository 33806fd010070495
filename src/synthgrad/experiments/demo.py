"""`synthgrad demo`: one MNIST FCN trained with backprop, DNI and cDNI side by side, a table and a figure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from synthgrad import plots
from synthgrad.checkpoint import write_json
from synthgrad.config import TrainConfig
from synthgrad.experiments.feedforward_report import METHODS, history, recipe_text
from synthgrad.training import train


def demo(
    data_dir: str | None,
    out: str = "runs/demo",
    epochs: int = 3,
    layers: int = 4,
    download: bool = False,
    progress: bool | None = None,
) -> list[dict]:
    """Train one MNIST FCN with backprop, DNI and cDNI; print a table and write learning curves. Progress bars on a
    terminal only, unless `progress` says (True, False)."""
    out_dir = Path(out)
    base = TrainConfig(data_dir=data_dir, download=download, layers=layers, epochs=epochs)
    results = []
    for m in METHODS:  # `resume=True`: running the demo again reuses finished runs
        run = out_dir / "demo" / f"{m.value}-s0"
        summary = train(dataclasses.replace(base, method=m, out=str(run)), resume=True, progress=progress)
        results.append({"label": m.value, "run": str(run), **summary})
    plots.compare_runs(
        {r["label"]: history(r["run"]) for r in results},
        out_dir / "demo.png",
        f"MNIST FCN, {layers} layers, {epochs} epochs",
    )
    bp_time = results[0]["time_per_epoch_s"]
    lines = [
        f"MNIST FCN, {layers} layers ({layers - 1} hidden of 256), {epochs} epochs, batch 256, {recipe_text()}",
        f"{'method':10s} {'test error':>10s} {'s/epoch':>8s} {'× backprop':>10s} {'cos(SG, true) per cut'}",
    ]
    for r in results:
        cos = " ".join(f"{c:.2f}" for c in r["final_true_cosine"]) or "—"
        lines.append(
            f"{r['label']:10s} {r['test_error']:9.2f}% {r['time_per_epoch_s']:8.1f} "
            f"{r['time_per_epoch_s'] / bp_time:10.1f} {cos}"
        )
    table = "\n".join(lines)
    print(table)
    print(f"learning curves: {out_dir / 'demo.png'}; each run's files in {out_dir}/demo/")
    (out_dir / "demo.txt").write_text(table + "\n")
    write_json(out_dir / "demo.json", results)
    return results
