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
    "write_idx",
]

DatasetSplits = ImageDataset  # alias
DEFAULT_DATA_DIR = Path("~/.cache/synthgrad/data")
DATA_DIR_ENV = "SYNTHGRAD_DATA_DIR"


def resolve_data_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``arg`` if given, else ``$SYNTHGRAD_DATA_DIR`` if set and non-empty, else
    ``~/.cache/synthgrad/data``. ``~`` is expanded; the directory need not exist."""
    if arg is not None and str(arg) != "":
        return Path(arg).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


DATASETS = ("mnist", "cifar10")


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = False) -> ImageDataset:
    """The image dataset `name` (one of `DATASETS`) from `resolve_data_dir(data_dir)`."""
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    return loaders[name](resolve_data_dir(data_dir), download=download)
