"""Reader and writer for the IDX format used by MNIST and its look-alikes (Fashion-MNIST, KMNIST, ...).

Layout: 2 zero bytes, a dtype code byte, an ndim byte, ``ndim`` big-endian uint32 dimensions, then the
array in C order with big-endian items. Files may be gzip-compressed; compression is detected from the
gzip magic bytes ``1f 8b``, never from the file name.
"""

from __future__ import annotations

import gzip as _gzip
import os
import zlib
from pathlib import Path

import numpy as np

from synthgrad.errors import DataError

__all__ = ["IDX_DTYPES", "idx_magic", "describe_magic", "parse_idx", "read_idx", "write_idx"]

#: IDX dtype code -> numpy dtype of the items on disk (big-endian).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}
_CODE_OF_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def idx_magic(array: np.ndarray) -> int:
    """The IDX magic number ``(dtype_code << 8) | ndim`` that ``array`` would be written with.

    E.g. 2051 for a uint8 (N, H, W) image file, 2049 for a uint8 (N,) label file.
    """
    code = _CODE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"dtype {array.dtype} cannot be stored in an IDX file")
    return (code << 8) | array.ndim


def describe_magic(magic: int) -> str:
    """Human-readable form of an IDX magic number, e.g. ``"2051 (unsigned byte, 3 dimensions)"``."""
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    return f"{magic} ({_DTYPE_NAMES.get(code, f'unknown dtype code 0x{code:02X}')}, {ndim} dimensions)"


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.itemsize > 1 else dtype


def parse_idx(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> np.ndarray:
    """Parse an *uncompressed* IDX blob; ``name`` is used in error messages.

    Returns an array of shape ``dims`` in native byte order. For 1-byte dtypes it is a zero-copy,
    read-only view of ``data``; wider dtypes are byte-swapped into a fresh, writable array.
    """
    buf = memoryview(data).cast("B")
    size = len(buf)
    if size == 0:
        raise DataError(f"{name}: file is empty (expected an IDX header)")
    if size < 4:
        raise DataError(f"{name}: too short for an IDX header: expected at least 4 bytes, found {size}")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(
            f"{name}: bad IDX magic: expected the file to start with bytes 00 00, "
            f"found {buf[0]:02x} {buf[1]:02x} (not an IDX file?)"
        )
    code, ndim = buf[2], buf[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{name}: unknown IDX dtype code 0x{code:02X} (expected one of {known})")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions (expected at least 1)")
    header = 4 + 4 * ndim
    if size < header:
        raise DataError(f"{name}: truncated IDX header: {ndim} dimensions need {header} header bytes, found {size}")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = dtype.itemsize
    for d in dims:  # Python ints: no overflow even for absurd headers
        expected *= d
    found = size - header
    if found != expected:
        what = "truncated data" if found < expected else "trailing garbage after the data"
        raise DataError(
            f"{name}: {what}: IDX header {describe_magic((code << 8) | ndim)} with shape {dims} "
            f"expected {expected} bytes of data, found {found}"
        )
    try:  # only fails for absurd shapes with a zero dimension, e.g. (2**31, 2**31, 0)
        array = np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)
    except ValueError as exc:
        raise DataError(f"{name}: IDX shape {dims} is not representable ({exc})") from exc
    if dtype.itemsize > 1:
        array = array.astype(_native(dtype))
    return array


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into an array of the shape stored in its header.

    The result is in native byte order; uint8/int8 arrays are read-only views of the file contents.
    Raises :class:`DataError` naming the file for a missing, empty, corrupt or truncated file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an IDX file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = _gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({type(exc).__name__}: {exc})") from exc
    return parse_idx(raw, str(path))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, gzip: bool = False) -> Path:
    """Write ``array`` (any shape with ndim 1..255, dtype u1/i1/i2/i4/f4/f8) as an IDX file.

    With ``gzip=True`` the file is gzip-compressed (deterministically: mtime 0). Returns the path.
    """
    array = np.asarray(array)
    magic = idx_magic(array)  # validates the dtype
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX files hold arrays with 1..255 dimensions, got ndim={array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX dimensions must fit in uint32, got shape {array.shape}")
    disk_dtype = IDX_DTYPES[magic >> 8]
    blob = (
        magic.to_bytes(4, "big")
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + np.ascontiguousarray(array, dtype=disk_dtype).tobytes()
    )
    if gzip:
        blob = _gzip.compress(blob, mtime=0)
    path = Path(path)
    path.write_bytes(blob)
    return path
