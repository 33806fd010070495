"""Downloads over file:// URLs only (tests never touch the network), and safe tar extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from synthgrad.data import download as dl
from synthgrad.data import load_cifar10, resolve_data_dir
from synthgrad.data.download import download_cifar10, download_mnist, extract_tar_safely, fetch
from synthgrad.data.idx import read_idx
from synthgrad.errors import DataError

REAL_MNIST = resolve_data_dir(None)  # the lookup of every entry point
PAYLOAD = b"synthetic gradients " * 1000


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "server"
    src.mkdir()
    (src / "file.bin").write_bytes(PAYLOAD)
    return src


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_good_checksum(tmp_path, source):
    dest = tmp_path / "dl" / "sub" / "file.bin"
    out = fetch((source / "file.bin").as_uri(), dest, md5=md5(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert listing(dest.parent) == ["file.bin"]  # no temp files left


def test_bad_checksum_leaves_nothing(tmp_path, source):
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(DataError) as info:
        fetch([(source / "file.bin").as_uri()], dest, md5="0" * 32)
    msg = str(info.value)
    assert "checksum mismatch" in msg and str(dest) in msg
    assert "expected md5 " + "0" * 32 in msg and md5(PAYLOAD) in msg
    assert listing(dest.parent) == []


def test_bad_sha256(tmp_path, source):
    with pytest.raises(DataError, match=f"expected sha256 {'f' * 64}, got {hashlib.sha256(PAYLOAD).hexdigest()}"):
        fetch((source / "file.bin").as_uri(), tmp_path / "x", sha256="f" * 64)
    assert not (tmp_path / "x").exists()


def test_falls_back_to_second_mirror(tmp_path, source):
    dest = tmp_path / "dl" / "file.bin"
    urls = [(tmp_path / "missing" / "file.bin").as_uri(), (source / "file.bin").as_uri()]
    fetch(urls, dest, md5=md5(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and listing(dest.parent) == ["file.bin"]


def test_falls_back_after_checksum_mismatch(tmp_path, source):
    (source / "corrupt.bin").write_bytes(PAYLOAD[:-1])
    dest = tmp_path / "dl" / "file.bin"
    fetch([(source / "corrupt.bin").as_uri(), (source / "file.bin").as_uri()], dest, md5=md5(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and listing(dest.parent) == ["file.bin"]


def test_all_mirrors_fail_names_urls(tmp_path):
    urls = [(tmp_path / "a" / "f.gz").as_uri(), (tmp_path / "b" / "f.gz").as_uri(), "not a url"]
    dest = tmp_path / "dl" / "f.gz"
    with pytest.raises(DataError, match="could not download") as info:
        fetch(urls, dest, md5="0" * 32)
    for url in urls:
        assert url in str(info.value)
    assert listing(dest.parent) == []


def test_md5_of_uncompressed_accepts_recompressed_or_raw(tmp_path, source):
    original = gzip.compress(PAYLOAD, mtime=1)
    (source / "recompressed.gz").write_bytes(gzip.compress(PAYLOAD, compresslevel=1, mtime=2))
    (source / "plain.gz").write_bytes(PAYLOAD)  # a mirror serving the content uncompressed
    for name in ("recompressed.gz", "plain.gz"):
        dest = tmp_path / "dl" / name
        fetch((source / name).as_uri(), dest, md5=md5(original), md5_of_uncompressed=md5(PAYLOAD))
        content = dest.read_bytes()
        assert (content if name == "plain.gz" else gzip.decompress(content)) == PAYLOAD
    (source / "other.gz").write_bytes(gzip.compress(PAYLOAD + b"!"))
    with pytest.raises(DataError, match="expected md5 of the uncompressed content"):
        fetch(
            (source / "other.gz").as_uri(),
            tmp_path / "dl" / "o.gz",
            md5=md5(original),
            md5_of_uncompressed=md5(PAYLOAD),
        )
    (source / "broken.gz").write_bytes(original[:-5])
    with pytest.raises(DataError, match="corrupt gzip"):
        fetch((source / "broken.gz").as_uri(), tmp_path / "dl" / "b.gz", md5_of_uncompressed=md5(PAYLOAD))
    assert listing(tmp_path / "dl") == ["plain.gz", "recompressed.gz"]


def test_existing_valid_file_is_kept_invalid_one_replaced(tmp_path, source):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    assert fetch("file:///nonexistent/never/used", dest, md5=md5(PAYLOAD)) == dest
    dest.write_bytes(b"stale partial download")
    fetch((source / "file.bin").as_uri(), dest, md5=md5(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_download_real_mnist_from_recompressed_mirror(tmp_path):
    """The shared copy is re-gzipped (its .gz md5s differ from LeCun's); the uncompressed md5 matches."""
    mirror = REAL_MNIST / "mnist"
    if not all((mirror / name).is_file() for name in dl.MNIST_FILES):
        pytest.skip(f"real MNIST .gz files not found in {mirror}")
    names = ["train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # small ones keep this fast
    paths = download_mnist(tmp_path, names=names, mirrors=[(tmp_path / "nope").as_uri(), mirror.as_uri()])
    assert [p.name for p in paths] == names
    assert read_idx(paths[1])[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


# ---------------------------------------------------------------- tar archives / CIFAR-10


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar_tarball(path: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
            batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [1] * n}
            add_bytes(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil-abs.txt", "a/../../evil.txt", "ok/../../evil"])
def test_extract_rejects_path_traversal(tmp_path, member):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "fine.txt", b"fine")
        add_bytes(tar, member, b"evil")
    dest = tmp_path / "out"
    with pytest.raises(DataError, match="refusing to extract member"):
        extract_tar_safely(archive, dest)
    assert not dest.exists()  # nothing extracted at all, not even the fine member
    assert not (tmp_path / "evil.txt").exists()


def test_extract_rejects_links(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="not a regular file"):
        extract_tar_safely(archive, tmp_path / "out")


def test_extract_corrupt_archive(tmp_path):
    archive = make_cifar_tarball(tmp_path / "c.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt or truncated tar"):
        extract_tar_safely(archive, tmp_path / "out")


def test_download_cifar10_extracts_and_removes_archive(tmp_path):
    tarball = make_cifar_tarball(tmp_path / "cifar-10-python.tar.gz")
    data = tmp_path / "data"
    out = download_cifar10(data, url=tarball.as_uri(), md5=md5(tarball.read_bytes()))
    assert out == data / "cifar-10-batches-py"
    assert listing(data) == ["cifar-10-batches-py"]
    assert "test_batch" in listing(out)


def test_load_cifar10_download(tmp_path, monkeypatch):
    tarball = make_cifar_tarball(tmp_path / "served.tar.gz", n=2)
    monkeypatch.setattr(dl, "CIFAR10_URL", tarball.as_uri())
    monkeypatch.setattr(dl, "CIFAR10_MD5", md5(tarball.read_bytes()))
    ds = load_cifar10(tmp_path / "data", download=True)
    assert ds.train_images.shape == (10, 3, 32, 32) and ds.test_images.shape == (2, 3, 32, 32)
    monkeypatch.setattr(dl, "CIFAR10_MD5", "0" * 32)  # a second load must not download again
    assert load_cifar10(tmp_path / "data").test_labels.tolist() == [1, 1]


def test_load_cifar10_download_bad_checksum(tmp_path, monkeypatch):
    tarball = make_cifar_tarball(tmp_path / "served.tar.gz")
    monkeypatch.setattr(dl, "CIFAR10_URL", tarball.as_uri())
    monkeypatch.setattr(dl, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match="checksum mismatch.*cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "data", download=True)
    assert listing(tmp_path / "data") == []
