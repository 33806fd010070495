"""CIFAR-10 loader on small fake batches: layout, channel order, validation, and pickle safety."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synthgrad.data import ImageDataset, load_cifar10
from synthgrad.data.cifar import CIFAR10_BATCHES, find_cifar10_dir, read_cifar_batch
from synthgrad.errors import DataError


def write_batch(path: Path, data, labels, protocol: int = 2, **extra) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"data": data, b"labels": labels, **extra}, f, protocol=protocol)


def make_fake_cifar(directory: Path, sizes=(7, 7, 7, 7, 7, 4), seed=0, protocol=2) -> list[tuple]:
    """Write data_batch_1..5 and test_batch with the given sizes; returns [(data, labels), ...]."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, n in zip(CIFAR10_BATCHES, sizes, strict=True):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        write_batch(directory / name, data, labels, protocol=protocol)
        written.append((data, labels))
    return written


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    make_fake_cifar(tmp_path / "cifar-10-batches-py")
    return tmp_path / "cifar-10-batches-py"


def test_loads_fake_batches(tmp_path):
    written = make_fake_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_cifar10(tmp_path)
    assert isinstance(ds, ImageDataset) and ds.name == "cifar10" and ds.num_classes == 10
    assert ds.train_images.shape == (35, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_images.dtype == torch.float32 and ds.test_labels.dtype == torch.int64
    assert ds.input_shape == (3, 32, 32)
    assert ds.train_labels.tolist() == sum((labels for _, labels in written[:5]), [])
    assert ds.test_labels.tolist() == written[5][1]
    first, test = written[0][0], written[5][0]
    for c, y, x in [(0, 0, 0), (1, 0, 0), (2, 31, 31), (0, 5, 17), (2, 17, 5)]:
        assert ds.train_images[0, c, y, x].item() == np.float32(first[0, c * 1024 + y * 32 + x]) / np.float32(255)
        assert ds.test_images[3, c, y, x].item() == np.float32(test[3, c * 1024 + y * 32 + x]) / np.float32(255)
    # batch 2 follows batch 1
    assert torch.equal(ds.train_images[7], torch.from_numpy(written[1][0][0].reshape(3, 32, 32) / np.float32(255)))


def test_accepts_batches_dir_itself(cifar_dir):
    assert load_cifar10(cifar_dir).train_images.shape[0] == 35
    assert find_cifar10_dir(cifar_dir) == cifar_dir
    assert find_cifar10_dir(cifar_dir.parent) == cifar_dir


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_any_pickle_protocol(tmp_path, protocol):
    make_fake_cifar(tmp_path, protocol=protocol)
    assert load_cifar10(tmp_path).test_images.shape == (4, 3, 32, 32)


def test_numpy1_module_names_and_str_keys(cifar_dir):
    """Files written by numpy 1.x reference numpy.core.multiarray; old tools may use str keys."""
    blob = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    (cifar_dir / "test_batch").write_bytes(blob)
    data, labels = read_cifar_batch(cifar_dir / "test_batch")
    assert data.shape == (2, 3072) and labels.tolist() == [1, 2]


def test_missing_batch(cifar_dir):
    (cifar_dir / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3.*--download"):
        load_cifar10(cifar_dir.parent)


def test_empty_dir(tmp_path):
    with pytest.raises(DataError, match="missing data_batch_1, data_batch_2.*test_batch"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize(
    ("data", "labels", "message"),
    [
        (np.zeros((4, 3071), np.uint8), [0] * 4, r"shape \(N, 3072\).*\(4, 3071\)"),
        (np.zeros((4, 3072), np.int64), [0] * 4, "uint8 array.*int64"),
        (np.zeros(3072, np.uint8), [0], "shape"),
        ([[0] * 3072], [0], "found <class 'list'>"),
        (np.zeros((4, 3072), np.uint8), [0] * 3, "4 images but 3 labels"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 10, 2], "label 10 out of range"),
        (np.zeros((4, 3072), np.uint8), [0, -1, 1, 2], "label -1 out of range"),
        (np.zeros((4, 3072), np.uint8), ["a"] * 4, "flat list of integers"),
        (np.zeros((0, 3072), np.uint8), [], "no images"),
    ],
)
def test_invalid_batch_contents(cifar_dir, data, labels, message):
    write_batch(cifar_dir / "data_batch_2", data, labels)
    with pytest.raises(DataError, match=message) as info:
        load_cifar10(cifar_dir)
    assert "data_batch_2" in str(info.value)


def test_missing_key_and_wrong_top_level(cifar_dir):
    path = cifar_dir / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DataError, match="key 'labels' missing"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected a pickled dict, found list"):
        read_cifar_batch(path)


def test_corrupt_truncated_and_empty_pickles(cifar_dir):
    path = cifar_dir / "test_batch"
    blob = path.read_bytes()
    for bad, message in [(blob[: len(blob) // 2], "corrupt pickle"), (b"", "empty"), (b"\x80\x05garbage", "pickle")]:
        path.write_bytes(bad)
        with pytest.raises(DataError, match=message):
            read_cifar_batch(path)


class _Evil:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("func", [os.system, eval, exec, __import__, getattr])
def test_malicious_pickle_is_rejected_not_executed(cifar_dir, tmp_path, func):
    marker = tmp_path / "pwned"
    payload = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    write_batch(cifar_dir / "data_batch_1", _Evil(func, payload), [0], protocol=2)
    with pytest.raises(DataError, match="unsafe or corrupt pickle.*refusing to load global") as info:
        load_cifar10(cifar_dir)
    assert "data_batch_1" in str(info.value)
    assert not marker.exists()


def test_malicious_object_array_elements_are_rejected(cifar_dir, tmp_path):
    marker = tmp_path / "pwned"
    arr = np.empty(1, dtype=object)
    arr[0] = _Evil(os.system, f"touch {marker}")
    write_batch(cifar_dir / "test_batch", np.zeros((1, 3072), np.uint8), arr)
    with pytest.raises(DataError, match="refusing to load global"):
        read_cifar_batch(cifar_dir / "test_batch")
    assert not marker.exists()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 4), min_size=6, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    protocol=st.integers(2, 5),
)
def test_roundtrip_random_batches(tmp_path, sizes, seed, protocol):
    directory = tmp_path / f"rt-{seed}-{protocol}-{'-'.join(map(str, sizes))}"
    written = make_fake_cifar(directory, sizes=sizes, seed=seed, protocol=protocol)
    ds = load_cifar10(directory)
    train = np.concatenate([d for d, _ in written[:5]])
    assert ds.train_images.shape == (sum(sizes[:5]), 3, 32, 32)
    assert torch.equal(ds.train_images, torch.from_numpy(train.reshape(-1, 3, 32, 32) / np.float32(255)))
    assert torch.equal(ds.test_images, torch.from_numpy(written[5][0].reshape(-1, 3, 32, 32) / np.float32(255)))
    assert ds.train_labels.tolist() == sum((labels for _, labels in written[:5]), [])
    assert ds.test_labels.tolist() == written[5][1]
