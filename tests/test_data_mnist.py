"""MNIST loader: fake IDX datasets for layout and every validation error, plus the real files if present."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgrad.data import DatasetSplits, ImageDataset, load_mnist, resolve_data_dir
from synthgrad.data import download as dl
from synthgrad.data.idx import write_idx
from synthgrad.data.mnist import MNIST_NAMES, find_mnist_files
from synthgrad.errors import DataError

REAL_ROOT = resolve_data_dir(None)  # the lookup of every entry point


def make_fake_mnist(directory: Path, *, n_train=12, n_test=5, hw=(28, 28), gz=True, seed=0) -> dict:
    """Write the four IDX files; returns the arrays written, keyed like MNIST_NAMES."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        write_idx(directory / (MNIST_NAMES[key] + (".gz" if gz else "")), arr, gzip=gz)
    return arrays


def test_loads_fake_dataset(tmp_path):
    arrays = make_fake_mnist(tmp_path)
    ds = load_mnist(tmp_path)
    assert isinstance(ds, ImageDataset) and DatasetSplits is ImageDataset
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.train_images.shape == (12, 1, 28, 28) and ds.test_images.shape == (5, 1, 28, 28)
    assert ds.train_images.dtype == torch.float32 and ds.train_labels.dtype == torch.int64
    assert ds.train_images.min() >= 0 and ds.train_images.max() <= 1
    expected = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255).unsqueeze(1)
    assert torch.equal(ds.train_images, expected)
    assert ds.train_labels.tolist() == arrays["train_labels"].tolist()
    assert ds.test_labels.tolist() == arrays["test_labels"].tolist()
    assert "train=(12, 1, 28, 28)" in repr(ds) and len(repr(ds)) < 200


def test_raw_and_mixed_files_and_gz_preferred(tmp_path):
    arrays = make_fake_mnist(tmp_path, gz=False)
    assert torch.equal(load_mnist(tmp_path).test_labels, torch.from_numpy(arrays["test_labels"]).long())
    # a .gz next to the raw file wins
    other = np.full(5, 3, np.uint8)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", other, gzip=True)
    assert load_mnist(tmp_path).test_labels.tolist() == [3] * 5


def test_accepts_dir_or_dir_slash_mnist(tmp_path):
    make_fake_mnist(tmp_path / "mnist")
    assert load_mnist(tmp_path).train_images.shape[0] == 12
    assert load_mnist(tmp_path / "mnist").train_images.shape[0] == 12
    assert find_mnist_files(tmp_path)[0] == tmp_path / "mnist"


def test_other_image_sizes_work_if_consistent(tmp_path):
    make_fake_mnist(tmp_path, hw=(8, 6))
    assert load_mnist(tmp_path).input_shape == (1, 8, 6)


def test_train_test_size_mismatch(tmp_path):
    make_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 14, 14), np.uint8), gzip=True)
    with pytest.raises(DataError, match=r"image size mismatch.*\(28, 28\).*t10k-images.*\(14, 14\)"):
        load_mnist(tmp_path)


def test_missing_files_without_download(tmp_path):
    make_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="--download") as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "train-labels" not in msg and str(tmp_path) in msg


def test_empty_dir_without_download(tmp_path):
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte, train-labels"):
        load_mnist(tmp_path / "does-not-exist")


def test_swapped_images_and_labels(tmp_path):
    make_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(12, np.uint8), gzip=True)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: expected an IDX image file.*swapped"):
        load_mnist(tmp_path)


def test_wrong_dtype(tmp_path):
    make_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.int32), gzip=True)
    with pytest.raises(DataError, match=r"t10k-labels.*magic 2049 .*found magic 3073 \(int, 1 dimensions\)"):
        load_mnist(tmp_path)


def test_count_mismatch(tmp_path):
    make_fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8), gzip=True)
    with pytest.raises(DataError, match="holds 12 images but .*train-labels.* holds 11 labels"):
        load_mnist(tmp_path)


def test_label_out_of_range(tmp_path):
    make_fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 10, 2, 3], np.uint8), gzip=True)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 10 out of range.*0\.\.9"):
        load_mnist(tmp_path)


def test_empty_split(tmp_path):
    make_fake_mnist(tmp_path, n_test=0)
    with pytest.raises(DataError, match="contains no images"):
        load_mnist(tmp_path)


def test_corrupt_file_is_named(tmp_path):
    make_fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        load_mnist(tmp_path)


def _fake_mirror(tmp_path: Path, monkeypatch) -> Path:
    """A file:// 'mirror' with fake MNIST .gz files whose md5s are patched into MNIST_FILES."""
    mirror = tmp_path / "mirror"
    make_fake_mnist(mirror, seed=1)
    files = {
        p.name: (hashlib.md5(p.read_bytes()).hexdigest(), hashlib.md5(gzip.decompress(p.read_bytes())).hexdigest())
        for p in mirror.iterdir()
    }
    monkeypatch.setattr(dl, "MNIST_FILES", files)
    monkeypatch.setattr(dl, "MNIST_MIRRORS", ((tmp_path / "absent").as_uri() + "/", mirror.as_uri() + "/"))
    return mirror


def test_download_into_dir_slash_mnist(tmp_path, monkeypatch):
    _fake_mirror(tmp_path, monkeypatch)
    data = tmp_path / "data"
    ds = load_mnist(data, download=True)
    assert ds.train_images.shape == (12, 1, 28, 28)
    assert sorted(p.name for p in (data / "mnist").iterdir()) == sorted(n + ".gz" for n in MNIST_NAMES.values())
    load_mnist(data)  # found again without downloading


def test_download_fetches_only_missing_files(tmp_path, monkeypatch):
    mirror = _fake_mirror(tmp_path, monkeypatch)
    data = tmp_path / "mnist"
    make_fake_mnist(data, seed=1, gz=False)
    (data / "t10k-images-idx3-ubyte").unlink()
    (mirror / "train-images-idx3-ubyte.gz").unlink()  # would fail if it were fetched
    ds = load_mnist(data, download=True)
    assert ds.test_images.shape == (5, 1, 28, 28)
    assert sorted(p.name for p in data.iterdir() if p.suffix == ".gz") == ["t10k-images-idx3-ubyte.gz"]


def test_resolve_data_dir(monkeypatch, tmp_path):
    """--data-dir, then $SYNTHGRAD_DATA_DIR, then ../shared/data beside a source checkout, then the cache."""
    import synthgrad.data

    monkeypatch.setenv("SYNTHGRAD_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir("some/dir") == Path("some/dir")
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.setenv("SYNTHGRAD_DATA_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    checkout = tmp_path / "work" / "synthgrad"
    monkeypatch.setattr(synthgrad.data, "source_checkout", lambda: checkout)
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "synthgrad" / "data"  # no ../shared/data
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    assert resolve_data_dir(None) == tmp_path / "work" / "shared" / "data"
    monkeypatch.setattr(synthgrad.data, "source_checkout", lambda: None)  # installed from a wheel
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "synthgrad" / "data"
    assert resolve_data_dir("~/x") == tmp_path / "home" / "x"


# ---------------------------------------------------------------- the real MNIST, if available


@pytest.fixture(scope="module")
def real_mnist() -> ImageDataset:
    _, files = find_mnist_files(REAL_ROOT)
    if any(p is None for p in files.values()):
        pytest.skip(f"real MNIST not found under {REAL_ROOT} (set SYNTHGRAD_DATA_DIR)")
    return load_mnist(REAL_ROOT)


def test_real_mnist(real_mnist):
    ds = real_mnist
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert ds.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    hist = torch.bincount(ds.train_labels, minlength=10).tolist()
    assert hist == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.train_images.min() == 0.0 and ds.train_images.max() == 1.0
    assert 0.12 < ds.train_images.mean() < 0.14  # the well-known MNIST mean 0.1307


def test_real_mnist_dir_or_subdir():
    directory, files = find_mnist_files(REAL_ROOT)
    if any(p is None for p in files.values()):
        pytest.skip("real MNIST not available")
    assert find_mnist_files(directory) == (directory, files)
