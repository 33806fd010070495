"""IDX reader/writer: examples for every error path, plus property-based round trips and fuzzing."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from synthgrad.data.idx import IDX_DTYPES, describe_magic, idx_magic, parse_idx, read_idx, write_idx
from synthgrad.errors import DataError, SynthgradError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NATIVE_DTYPES = [np.dtype(t) for t in ("u1", "i1", "i2", "i4", "f4", "f8")]


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def test_reads_hand_built_ubyte_file(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(0x08, (2, 3), bytes(range(6))))
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    assert out.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_reads_big_endian_multibyte_items_into_native_order(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(0x0B, (3,), struct.pack(">3h", 1, -2, 300)))
    out = read_idx(path)
    assert out.dtype == np.dtype("i2") and out.dtype.isnative
    assert out.tolist() == [1, -2, 300]
    path.write_bytes(idx_bytes(0x0E, (2,), struct.pack(">2d", 1.5, -0.25)))
    assert read_idx(path).tolist() == [1.5, -0.25]


def test_gzip_detected_by_magic_not_by_name(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    raw_named_gz = write_idx(tmp_path / "raw.gz", a)
    gz_named_raw = write_idx(tmp_path / "compressed.idx", a, gzip=True)
    assert gz_named_raw.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(raw_named_gz), a)
    np.testing.assert_array_equal(read_idx(gz_named_raw), a)


def test_write_idx_header_matches_magic(tmp_path):
    path = write_idx(tmp_path / "img", np.zeros((5, 28, 28), np.uint8))
    assert struct.unpack(">IIII", path.read_bytes()[:16]) == (2051, 5, 28, 28)
    assert idx_magic(np.zeros(3, np.uint8)) == 2049
    assert describe_magic(2051) == "2051 (unsigned byte, 3 dimensions)"


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="cannot be stored"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
    with pytest.raises(ValueError, match="1..255 dimensions"):
        write_idx(tmp_path / "x", np.array(3, np.uint8))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "file is empty"),
        (b"\x00\x00", "expected at least 4 bytes, found 2"),
        (b"PK\x03\x04" + bytes(20), "bad IDX magic.*found 50 4b"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 9]), "unknown IDX dtype code 0x07"),
        (bytes([0, 0, 0x08, 0]), "0 dimensions"),
        (bytes([0, 0, 0x08, 3, 0, 0, 0, 1]), r"truncated IDX header: 3 dimensions need 16 header bytes, found 8"),
        (idx_bytes(0x08, (2, 5), bytes(7)), "truncated data.*expected 10 bytes of data, found 7"),
        (idx_bytes(0x0C, (2,), bytes(9)), "trailing garbage.*expected 8 bytes of data, found 9"),
        (idx_bytes(0x08, (2**32 - 1,) * 4, bytes(4)), "truncated data"),
        (idx_bytes(0x08, (2**32 - 1, 2**32 - 1, 2**32 - 1, 0), b""), "not representable"),
    ],
)
def test_malformed_raw_files(tmp_path, blob, message):
    path = tmp_path / "bad-file"
    path.write_bytes(blob)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, SynthgradError)


def test_corrupt_and_truncated_gzip(tmp_path):
    good = gzip.compress(idx_bytes(0x08, (100,), bytes(range(100))))
    cases = {
        "truncated.gz": good[: len(good) // 2],
        "badcrc.gz": good[:-8] + bytes(4) + good[-4:],
        "garbage.gz": b"\x1f\x8b" + b"this is not deflate data at all",
        "magic-only.gz": b"\x1f\x8b",
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
            read_idx(tmp_path / name)
        assert name in str(info.value)


def test_gzip_of_non_idx_content_is_reported_as_format_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"<html>not found</html>"))
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="is a directory"):
        read_idx(tmp_path)


def test_parse_idx_accepts_bytearray_and_returns_view():
    blob = bytearray(idx_bytes(0x08, (4,), bytes([1, 2, 3, 4])))
    out = parse_idx(blob, "mem")
    assert out.tolist() == [1, 2, 3, 4]
    with pytest.raises(DataError, match="^mem: "):
        parse_idx(blob[:-1], "mem")


# ---------------------------------------------------------------- property-based


@st.composite
def idx_arrays(draw):
    dtype = draw(st.sampled_from(NATIVE_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
    return draw(hnp.arrays(dtype, shape))


@SETTINGS
@given(array=idx_arrays(), compress=st.booleans())
def test_roundtrip(tmp_path, array, compress):
    path = write_idx(tmp_path / "rt", array, gzip=compress)
    out = read_idx(path)
    assert out.shape == array.shape
    assert out.dtype == array.dtype and out.dtype.isnative
    assert out.tobytes() == array.tobytes()  # bitwise, so NaNs compare equal too


@SETTINGS
@given(array=idx_arrays(), compress=st.booleans(), data=st.data())
def test_any_truncation_raises_data_error(tmp_path, array, compress, data):
    blob = write_idx(tmp_path / "full", array, gzip=compress).read_bytes()
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    path = tmp_path / "cut"
    path.write_bytes(blob[:cut])
    with pytest.raises(DataError):
        read_idx(path)


@SETTINGS
@given(array=idx_arrays(), data=st.data())
def test_header_corruption_parses_consistently_or_raises_data_error(tmp_path, array, data):
    blob = bytearray(write_idx(tmp_path / "full", array).read_bytes())
    header_len = 4 + 4 * array.ndim
    positions = data.draw(st.lists(st.integers(0, header_len - 1), min_size=1, max_size=4), label="positions")
    for pos in positions:
        blob[pos] = data.draw(st.integers(0, 255), label=f"byte@{pos}")
    path = tmp_path / "corrupt"
    path.write_bytes(bytes(blob))
    try:
        out = read_idx(path)
    except DataError:
        return
    # whatever header survived, the result must describe exactly the bytes in the file
    assert blob[0] == blob[1] == 0 and blob[2] in IDX_DTYPES
    assert out.ndim == blob[3]
    assert 4 + 4 * out.ndim + out.nbytes == len(blob)


plausible_headers = st.builds(
    lambda code, ndim, rest: bytes([0, 0, code, ndim]) + rest,
    st.sampled_from([*IDX_DTYPES, 0x00, 0x0A, 0xFF]),
    st.integers(0, 4),
    st.binary(max_size=48),
)


@SETTINGS
@given(blob=st.one_of(st.binary(max_size=64), plausible_headers), compress=st.booleans())
def test_arbitrary_bytes_never_crash(tmp_path, blob, compress):
    path = tmp_path / "fuzz"
    path.write_bytes(gzip.compress(blob) if compress else blob)
    try:
        out = read_idx(path)
    except DataError:
        return
    assert 4 + 4 * out.ndim + out.nbytes == len(blob)
