"""CIFAR-10 from the standard python-pickle batches (``cifar-10-batches-py/``).

The batches are pickles, so they are read with a restricted unpickler that can only rebuild numpy
arrays (and bytes); a file referencing any other global (``os.system``, ...) is rejected with
:class:`DataError` before anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgrad.data import download as _download
from synthgrad.data.mnist import ImageDataset
from synthgrad.errors import DataError

__all__ = ["CIFAR10", "CIFAR10_BATCHES", "find_cifar10_dir", "load_cifar10", "read_cifar_batch"]

CIFAR10 = ImageDataset  # the type returned by load_cifar10

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CIFAR10_BATCHES = (*TRAIN_BATCHES, TEST_BATCH)
_PIXELS = 3 * 32 * 32


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # protocol 3+ from Python 3 writes bytes natively; protocol 0-2 writes them via
        # _codecs.encode(str, "latin1"), or __builtin__.bytes() for b""
        ("_codecs", "encode"): _codecs.encode,
        ("builtins", "bytes"): bytes,
        ("__builtin__", "bytes"): bytes,
    }
    for mod in ("numpy.core", "numpy._core"):  # files written by numpy 1.x use numpy.core
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):  # arrays pickled with protocol 5
            allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed in a CIFAR batch"
            ) from None


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path}: not a CIFAR-10 batch: key {key!r} missing (found keys {sorted(map(str, d))})")


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch safely; returns ``(data, labels)``: (N, 3072) uint8 and (N,) int64.

    Each row of ``data`` holds the R, G and B planes (32x32, row-major) one after another.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if not blob:
        raise DataError(f"{path}: file is empty (expected a pickled CIFAR-10 batch)")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: unsafe or corrupt pickle: {exc}") from exc
    except Exception as exc:  # a malformed pickle can raise almost anything
        raise DataError(f"{path}: corrupt pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch: expected a pickled dict, found {type(obj).__name__}")
    data, labels = _get(obj, "data", path), _get(obj, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise DataError(f"{path}: expected 'data' as a uint8 array of shape (N, {_PIXELS}), found {found}")
    try:
        labels_arr = np.asarray(labels)
    except Exception as exc:
        raise DataError(f"{path}: 'labels' is not a list of integers ({exc})") from exc
    if labels_arr.ndim != 1 or (labels_arr.size and labels_arr.dtype.kind not in "iu"):
        raise DataError(
            f"{path}: expected 'labels' as a flat list of integers, found {labels_arr.dtype} "
            f"with shape {labels_arr.shape}"
        )
    if len(labels_arr) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels_arr)} labels")
    if len(data) == 0:
        raise DataError(f"{path}: batch contains no images")
    bad = labels_arr[(labels_arr < 0) | (labels_arr > 9)]
    if bad.size:
        raise DataError(f"{path}: label {int(bad[0])} out of range: expected labels in 0..9")
    return data, labels_arr.astype(np.int64)


def find_cifar10_dir(data_dir: str | os.PathLike[str]) -> Path:
    """``data_dir`` if it holds more of the batches than ``data_dir/cifar-10-batches-py``, else the latter."""
    data_dir = Path(data_dir).expanduser()
    sub = data_dir / _download.CIFAR10_DIRNAME

    def count(d: Path) -> int:
        return sum((d / b).is_file() for b in CIFAR10_BATCHES)

    return data_dir if count(data_dir) > count(sub) else sub


def _to_tensors(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    x = np.empty((len(data), 3, 32, 32), dtype=np.float32)
    np.divide(data.reshape(-1, 3, 32, 32), np.float32(255), out=x, dtype=np.float32)
    return torch.from_numpy(x), torch.from_numpy(labels)


def load_cifar10(data_dir: str | os.PathLike[str], *, download: bool = False) -> ImageDataset:
    """Load CIFAR-10 from ``data_dir`` or ``data_dir/cifar-10-batches-py``.

    Returns train images (50000, 3, 32, 32) and test images (10000, 3, 32, 32) float32 in [0, 1]
    (channels R, G, B) with int64 labels in 0..9. Any number of images per batch is accepted.
    Missing batches are downloaded (the whole archive) if ``download`` is true, else :class:`DataError`.
    """
    data_dir = Path(data_dir).expanduser()
    directory = find_cifar10_dir(data_dir)
    missing = [b for b in CIFAR10_BATCHES if not (directory / b).is_file()]
    if missing and download:
        # download_cifar10 creates <target>/cifar-10-batches-py
        target = directory.parent if directory.name == _download.CIFAR10_DIRNAME else data_dir
        directory = _download.download_cifar10(target)
        missing = [b for b in CIFAR10_BATCHES if not (directory / b).is_file()]
    if missing:
        hint = "" if download else " Pass --download to fetch them, or set --data-dir / SYNTHGRAD_DATA_DIR."
        raise DataError(f"CIFAR-10 batches not found in {directory}: missing {', '.join(missing)}.{hint}")
    train = [read_cifar_batch(directory / b) for b in TRAIN_BATCHES]
    test = [read_cifar_batch(directory / TEST_BATCH)]
    train_x, train_y = _to_tensors(train)
    test_x, test_y = _to_tensors(test)
    return ImageDataset(train_x, train_y, test_x, test_y, num_classes=10, name="cifar10")
