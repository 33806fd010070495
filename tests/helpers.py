"""Test helpers: small fake datasets in the real formats, and running the CLI in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

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
