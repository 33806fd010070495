"""Test helpers: small fake datasets in the real formats, and running the CLI in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgrad.checkpoint import load_checkpoint
from synthgrad.data import write_idx


def write_fake_mnist(
    directory: Path, n_train: int = 600, n_test: int = 100, seed: int = 0, *, gzip: bool = True
) -> Path:
    """Random uint8 28×28 images and labels 0..9 under the four standard MNIST file names."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gzip else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gzip=gzip)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n, dtype=np.uint8), gzip=gzip)
    return directory


def run_cli(capfd: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    """`synthgrad.cli.main` in-process: (exit code, stdout, stderr)."""
    from synthgrad.cli import main

    capfd.readouterr()  # drop anything printed before
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors exit from inside main
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


def checkpoint_of(out: Path, rank: int = 0) -> tuple[dict, dict]:
    """(the manifest, rank `rank`'s saved state) of the last checkpoint in the run folder `out`."""
    manifest = json.loads((Path(out) / "checkpoint.json").read_text())
    return manifest, load_checkpoint(Path(out) / manifest["files"][rank])["state"]


def summary_and_rows(out: Path) -> tuple[dict, list[dict]]:
    """A run's summary and metric rows without their wall-clock fields, for comparing two runs."""
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    drop = ("wall_time_s", "time")
    return {k: v for k, v in summary.items() if k not in drop}, [
        {k: v for k, v in r.items() if k not in drop} for r in rows
    ]


def same_tensors(a: object, b: object) -> bool:
    """Equal nested dicts / lists of tensors and plain values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(same_tensors, a, b))
    return a == b
