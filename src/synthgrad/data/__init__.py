"""Datasets: MNIST-format IDX files and CIFAR-10 python batches, loaded into in-memory tensors.

Every loader returns an :class:`ImageDataset` with images (N, C, H, W) float32 in [0, 1] and labels
(N,) int64. Malformed or missing data raises :class:`synthgrad.errors.DataError`.
"""

from __future__ import annotations

import os
from pathlib import Path

from synthgrad.data.cifar import load_cifar10
from synthgrad.data.idx import read_idx, write_idx
from synthgrad.data.mnist import ImageDataset, load_mnist

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "DatasetSplits",
    "ImageDataset",
    "load_cifar10",
    "load_dataset",
    "load_mnist",
    "read_idx",
    "resolve_data_dir",
    "source_checkout",
    "write_idx",
]

DatasetSplits = ImageDataset  # alias
DEFAULT_DATA_DIR = Path("~/.cache/synthgrad/data")
DATA_DIR_ENV = "SYNTHGRAD_DATA_DIR"


def source_checkout() -> Path | None:
    """The root of the source checkout this package runs from (an editable install or `PYTHONPATH=src`), or None
    when it is installed from a wheel."""
    root = Path(__file__).resolve().parents[3]  # <root>/src/synthgrad/data/__init__.py
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "synthgrad").is_dir() else None


def resolve_data_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """The data root, the one lookup order of every entry point (CLI, scripts, tests):

    1. ``arg`` (``--data-dir``) if given;
    2. ``$SYNTHGRAD_DATA_DIR`` if set and non-empty;
    3. ``../shared/data`` beside the checkout, when running from a source checkout and that folder exists;
    4. ``~/.cache/synthgrad/data`` (where ``--download`` puts files).

    ``~`` is expanded; the directory returned need not exist."""
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    checkout = source_checkout()
    if checkout is not None and (checkout.parent / "shared" / "data").is_dir():
        return checkout.parent / "shared" / "data"
    return DEFAULT_DATA_DIR.expanduser()


DATASETS = ("mnist", "cifar10")


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = False) -> ImageDataset:
    """The image dataset `name` (one of `DATASETS`) from `resolve_data_dir(data_dir)`."""
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    return loaders[name](resolve_data_dir(data_dir), download=download)
