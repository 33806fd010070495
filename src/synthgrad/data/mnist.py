"""MNIST (and any dataset in the same IDX layout, e.g. Fashion-MNIST) as in-memory tensors.

Also defines :class:`ImageDataset`, the container returned by every image loader in this package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synthgrad.data import download as _download
from synthgrad.data.idx import describe_magic, idx_magic, read_idx
from synthgrad.errors import DataError

__all__ = ["MNIST", "MNIST_NAMES", "ImageDataset", "find_mnist_files", "load_mnist"]


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Train and test splits of an image-classification dataset, fully in memory.

    ``train_images``: (N, C, H, W) float32 in [0, 1]; ``train_labels``: (N,) int64 in
    ``0..num_classes-1``; likewise ``test_images`` (M, C, H, W) and ``test_labels`` (M,).
    """

    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)
    num_classes: int = 10
    name: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, (C, H, W)."""
        c, h, w = self.train_images.shape[1:]
        return (int(c), int(h), int(w))

    def to(self, device: str | torch.device) -> ImageDataset:
        """The same splits on `device` (this dataset if they are there already)."""
        if self.train_images.device == torch.device(device):
            return self
        moved = {k: getattr(self, k).to(device) for k in ("train_images", "train_labels", "test_images", "test_labels")}
        return ImageDataset(**moved, num_classes=self.num_classes, name=self.name)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)}, num_classes={self.num_classes})"
        )


MNIST = ImageDataset  # the type returned by load_mnist

#: split key -> standard file name (without ``.gz``)
MNIST_NAMES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x0803, 0x0801  # 2051: ubyte, 3 dims; 2049: ubyte, 1 dim


def _locate(directory: Path) -> dict[str, Path | None]:
    """Split key -> existing file in ``directory`` (the ``.gz`` one if both exist), or None."""
    found: dict[str, Path | None] = {}
    for key, stem in MNIST_NAMES.items():
        candidates = [directory / f"{stem}.gz", directory / stem]
        found[key] = next((p for p in candidates if p.is_file()), None)
    return found


def find_mnist_files(data_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Path | None]]:
    """Pick the MNIST directory among ``data_dir`` and ``data_dir/mnist``.

    Returns ``(directory, files)`` where ``files`` maps each split key to its path or None (missing).
    A directory holding all four files wins (``data_dir`` first); otherwise the one holding the most
    files, and if neither holds any, ``data_dir`` itself when it is named ``mnist`` else ``data_dir/mnist``
    (the place :func:`load_mnist` downloads into).
    """
    data_dir = Path(data_dir).expanduser()
    options = [(d, _locate(d)) for d in (data_dir, data_dir / "mnist")]
    counts = [sum(p is not None for p in files.values()) for _, files in options]
    if max(counts) == 0:
        return options[0] if data_dir.name.lower() == "mnist" else options[1]
    return options[int(counts[1] > counts[0])]


def _load_split(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    for arr, path, magic, what in (
        (images, images_path, _IMAGES_MAGIC, "image"),
        (labels, labels_path, _LABELS_MAGIC, "label"),
    ):
        found = idx_magic(arr)
        if found != magic:
            hint = " (images and labels swapped?)" if {found, magic} == {_IMAGES_MAGIC, _LABELS_MAGIC} else ""
            raise DataError(
                f"{path}: expected an IDX {what} file with magic {describe_magic(magic)}, "
                f"found magic {describe_magic(found)}{hint}"
            )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: contains no images")
    if min(images.shape[1:]) == 0:
        raise DataError(f"{images_path}: images have an empty shape {images.shape[1:]}")
    top = int(labels.max())
    if top >= num_classes:
        raise DataError(
            f"{labels_path}: label {top} out of range: expected labels in 0..{num_classes - 1} ({num_classes} classes)"
        )
    return images, labels


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.empty((images.shape[0], 1, *images.shape[1:]), dtype=np.float32)  # (N, 1, H, W)
    np.divide(images[:, None], np.float32(255), out=x, dtype=np.float32)  # one pass, no temporaries
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def load_mnist(
    data_dir: str | os.PathLike[str], *, download: bool = False, num_classes: int = 10, name: str = "mnist"
) -> ImageDataset:
    """Load MNIST-format IDX files from ``data_dir`` or ``data_dir/mnist``.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte``, each raw or with ``.gz`` (the ``.gz`` is preferred if both exist).
    Missing files are downloaded into the chosen directory when ``download`` is true, otherwise
    :class:`DataError` lists them. Returns images (N, 1, H, W) float32 in [0, 1] (H = W = 28 for MNIST)
    and labels (N,) int64; train and test must agree on H and W.
    """
    directory, files = find_mnist_files(data_dir)
    missing = [MNIST_NAMES[k] for k, p in files.items() if p is None]
    if missing:
        if not download:
            raise DataError(
                f"MNIST files not found in {Path(data_dir).expanduser()} (nor in its mnist/ subfolder): "
                f"missing {', '.join(missing)} (raw or .gz). Pass --download to fetch them, or point "
                "--data-dir / SYNTHGRAD_DATA_DIR at the directory that holds them."
            )
        _download.download_mnist(directory, names=[f"{stem}.gz" for stem in missing])
        files = _locate(directory)
        still = [MNIST_NAMES[k] for k, p in files.items() if p is None]
        if still:  # pragma: no cover - fetch() raises before this can happen
            raise DataError(f"download finished but {', '.join(still)} still missing in {directory}")
    paths: dict[str, Path] = {k: p for k, p in files.items() if p is not None}
    train = _load_split(paths["train_images"], paths["train_labels"], num_classes)
    test = _load_split(paths["test_images"], paths["test_labels"], num_classes)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(
            f"image size mismatch: {paths['train_images']} holds {train[0].shape[1:]} images but "
            f"{paths['test_images']} holds {test[0].shape[1:]} images"
        )
    train_x, train_y = _to_tensors(*train)
    test_x, test_y = _to_tensors(*test)
    return ImageDataset(train_x, train_y, test_x, test_y, num_classes=num_classes, name=name)
