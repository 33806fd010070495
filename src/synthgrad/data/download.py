"""Checksummed downloads with mirror fallback, and safe tar extraction.

Everything is written to a temporary file next to the destination and moved into place with
``os.replace`` only after the checksum matched, so an interrupted or corrupt download never leaves a
file under the final name.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from synthgrad.errors import DataError

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "download_cifar10",
    "download_mnist",
    "extract_tar_safely",
    "fetch",
]

log = logging.getLogger(__name__)

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
#: file name -> (md5 of the original .gz, md5 of the uncompressed IDX file). Either one is accepted,
#: because some mirrors re-compress the files (different .gz bytes, identical content).
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIRNAME = "cifar-10-batches-py"

_CHUNK = 1 << 20


def _digest_file(path: Path, algo: str, *, uncompressed: bool = False) -> str:
    """Hex digest of ``path``; with ``uncompressed`` the digest of its gunzipped content (if gzip)."""
    h = hashlib.new(algo)
    with open(path, "rb") as raw:
        is_gz = uncompressed and raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        try:
            f = gzip.GzipFile(fileobj=raw) if is_gz else raw
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            return f"<corrupt gzip: {exc}>"
    return h.hexdigest()


def _verify(path: Path, sha256: str | None, md5: str | None, md5_of_uncompressed: str | None) -> str | None:
    """None if ``path`` passes the checks, else a message 'expected ..., got ...'."""
    if sha256 is not None:
        actual = _digest_file(path, "sha256")
        if actual != sha256.lower():
            return f"expected sha256 {sha256}, got {actual}"
    if md5 is None and md5_of_uncompressed is None:
        return None
    problems = []
    if md5 is not None:
        actual = _digest_file(path, "md5")
        if actual == md5.lower():
            return None
        problems.append(f"expected md5 {md5}, got {actual}")
    if md5_of_uncompressed is not None:
        actual = _digest_file(path, "md5", uncompressed=True)
        if actual == md5_of_uncompressed.lower():
            return None
        problems.append(f"expected md5 of the uncompressed content {md5_of_uncompressed}, got {actual}")
    return "; ".join(problems)


def fetch(
    urls: str | Sequence[str],
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    md5_of_uncompressed: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``dest`` from the first of ``urls`` that works and passes the checksums.

    ``sha256`` must match if given; if ``md5`` and/or ``md5_of_uncompressed`` are given, at least one of
    them must match (``md5_of_uncompressed`` is the md5 of the gunzipped content, or of the file itself
    if it is not gzip). A ``dest`` that already exists and passes the checks is kept without any
    network access. A mirror that fails (network error or checksum mismatch) is skipped; if all fail,
    :class:`DataError` names the file, every URL tried and why it failed. Returns ``dest``.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("fetch() needs at least one URL")
    dest = Path(dest)
    if dest.is_file() and _verify(dest, sha256, md5, md5_of_uncompressed) is None:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create download directory {dest.parent}: {exc.strerror or exc}") from exc
    failures: list[str] = []
    mismatch = False
    for url in urls:
        log.info("downloading %s -> %s", url, dest)
        try:
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise DataError(f"cannot write to {dest.parent}: {exc.strerror or exc}") from exc
        tmp = Path(tmp_name)
        try:
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out, _CHUNK)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                failures.append(f"{url} ({type(exc).__name__}: {reason})")
                continue
            problem = _verify(tmp, sha256, md5, md5_of_uncompressed)
            if problem is not None:
                mismatch = True
                failures.append(f"{url} (checksum mismatch: {problem})")
                continue
            os.replace(tmp, dest)
            return dest
        finally:
            tmp.unlink(missing_ok=True)
    head = "checksum mismatch for" if mismatch else "could not download"
    raise DataError(
        f"{head} {dest}; tried {'; '.join(failures)}. "
        f"Check the network connection, or put a correct copy of {dest.name} into {dest.parent} by hand."
    )


def download_mnist(
    dest_dir: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    mirrors: Sequence[str] | None = None,
) -> list[Path]:
    """Download the MNIST ``.gz`` files ``names`` (default: all four) into ``dest_dir``.

    ``mirrors`` are base URLs tried in order (default :data:`MNIST_MIRRORS`, read at call time).
    """
    mirrors = MNIST_MIRRORS if mirrors is None else mirrors
    names = list(MNIST_FILES) if names is None else names
    out = []
    for name in names:
        gz_md5, raw_md5 = MNIST_FILES[name]
        urls = [m.rstrip("/") + "/" + name for m in mirrors]
        out.append(fetch(urls, Path(dest_dir) / name, md5=gz_md5, md5_of_uncompressed=raw_md5))
    return out


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataError(f"{archive}: refusing to extract member {name!r}: absolute path or '..' in path")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing to extract member {name!r}: not a regular file or directory")


def extract_tar_safely(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Extract a (possibly compressed) tar archive into ``dest``.

    Every member is checked first: absolute paths, ``..`` components, links and device files are
    rejected with :class:`DataError` before anything is written.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without the PEP 706 backport
                tar.extractall(dest, members=members)  # noqa: S202 - members were checked above
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: corrupt or truncated tar archive ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        raise DataError(f"{archive}: extraction failed: {exc}") from exc


def download_cifar10(
    data_dir: str | os.PathLike[str], url: str | Sequence[str] | None = None, md5: str | None = None
) -> Path:
    """Download and extract CIFAR-10 (python version) into ``data_dir``; returns the batches directory.

    The archive is extracted into a temporary directory inside ``data_dir`` and the resulting
    ``cifar-10-batches-py`` folder is moved into place; the archive is deleted afterwards.
    ``url``/``md5`` default to :data:`CIFAR10_URL` / :data:`CIFAR10_MD5` (read at call time).
    """
    data_dir = Path(data_dir)
    archive = fetch(
        CIFAR10_URL if url is None else url,
        data_dir / "cifar-10-python.tar.gz",
        md5=CIFAR10_MD5 if md5 is None else md5,
    )
    target = data_dir / CIFAR10_DIRNAME
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".cifar-extract-") as tmp:
        extract_tar_safely(archive, tmp)
        extracted = Path(tmp) / CIFAR10_DIRNAME
        if not extracted.is_dir():
            raise DataError(f"{archive}: archive does not contain a {CIFAR10_DIRNAME}/ directory")
        if target.exists():
            shutil.rmtree(target)
        os.replace(extracted, target)
    archive.unlink(missing_ok=True)
    return target
