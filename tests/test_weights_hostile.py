"""Hostile weight files and receipts: each ends in one clear error naming the file, with bounded work.

Every class of bad input, through the Python API (:func:`yat_core.weights.load_weights`,
:func:`yat_core.nn.interchange.load_npz`, :func:`yat_core.report.load_receipt`) and the
command line (``yat-core export-onnx --weights``, ``yat-core report``): not a file (a
folder, a FIFO, a device, a symlink loop), empty, truncated, not a weight file, a file of
the other format, decompression bombs and huge declared sizes, inconsistent headers,
non-finite values, foreign byte order, and receipts that are not JSON, nested too deeply,
too large or of the wrong types. Bombs are small files of the same shape as large ones.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from yat_core.cli import main
from yat_core.errors import WeightFileError
from yat_core.mlp import init_mlp_numpy
from yat_core.nn import interchange
from yat_core.nn.interchange import NPZ_INFLATE_MAX, load_npz, save_npz
from yat_core.report import RECEIPT_MAX, ReceiptError, load_receipt
from yat_core.spec import LayerSpec, ModelSpec
from yat_core.weights import HEADER_MAX, load_safetensors, load_weights, save_safetensors, spec_to_json

#: A small model: its files are a few hundred bytes.
SPEC = ModelSpec((LayerSpec("yat", 6, 4), LayerSpec("linear", 4, 3)))
SUFFIXES = (".npz", ".safetensors")
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")


# ================================================================ making hostile files


def good_file(folder: Path, suffix: str, name: str = "w") -> Path:
    params = init_mlp_numpy(SPEC, 0)
    if suffix == ".npz":
        return save_npz(folder / f"{name}.npz", params)
    return save_safetensors(folder / f"{name}.safetensors", params, SPEC)


def npy_header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> bytes:
    """A ``.npy`` 1.0 header (magic, length, padded dict), as NumPy writes it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue()


def raw_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip archive of ``(name, stored bytes, method, declared size, crc)`` members, sizes as given (no checks)."""
    out = bytearray()
    directory = bytearray()
    for name, data, method, declared, crc in members:
        encoded = name.encode()
        offset = len(out)
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), declared, len(encoded), 0
        )
        out += encoded + data
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), declared, len(encoded), 0, 0, 0,
            0, 0, offset,
        )  # fmt: skip
        directory += encoded
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(out), 0)
    path.write_bytes(bytes(out + directory + eocd))
    return path


def deflated(data: bytes) -> bytes:
    """``data`` as the start of a raw deflate stream (no final block): deflated streams can follow it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def deflated_zeros(n_bytes: int) -> bytes:
    """A raw deflate stream of ``n_bytes`` zeros, about a thousandth of that size, made quickly."""
    block = 2**24
    assert n_bytes % block == 0
    # A full flush makes a block's bytes independent of what came before, so they can repeat.
    return deflated(bytes(block)) * (n_bytes // block) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def safetensors_bytes(header: Any, data: bytes = b"", *, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + data


def st_header(tensors: dict[str, tuple[str, list[int], list[int]]], spec: ModelSpec = SPEC) -> dict[str, Any]:
    header: dict[str, Any] = {"__metadata__": {"format": "yat-core", "format_version": "1", "spec": spec_to_json(spec)}}
    for name, (dtype, shape, offsets) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    return header


@contextmanager
def no_hang(seconds: int = 10) -> Iterator[None]:
    """Fail, instead of hanging, when the body blocks (on a FIFO) longer than ``seconds``."""

    def alarm(*_: Any) -> None:
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(path: Path, pattern: str, spec: ModelSpec | None = SPEC) -> str:
    """Loading ``path`` fails with one :class:`WeightFileError` that names the file and matches ``pattern``."""
    with pytest.raises(WeightFileError, match=pattern) as info:
        load_weights(path, spec)
    message = str(info.value)
    assert message.startswith(f"weight file {path}: ") and "\n" not in message, message
    return message


def one_line_error(capsys: Any, argv: list[str], *expected: str) -> str:
    """``yat-core argv`` exits 1 with one line on stderr that holds every ``expected`` text, and no traceback."""
    with no_hang():
        status = main(argv)
    err = capsys.readouterr().err
    assert status == 1, err
    assert err.count("\n") == 1 and err.startswith("yat-core: error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


# ================================================================ not a file at all


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_missing_file_and_folder(tmp_path, suffix):
    refused(tmp_path / f"absent{suffix}", "file not found")
    (tmp_path / f"dir{suffix}").mkdir()
    refused(tmp_path / f"dir{suffix}", "is a directory, not a file")
    (tmp_path / "plain").write_bytes(b"x")
    refused(tmp_path / "plain" / f"w{suffix}", r"file not found \(a part of its path is not a directory\)")


@posix_only
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_fifo_is_named_and_never_blocks(tmp_path, suffix):
    fifo = tmp_path / f"pipe{suffix}"
    os.mkfifo(fifo)
    with no_hang():
        refused(fifo, "is a FIFO, not a file")


@posix_only
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_device_is_never_read(tmp_path, suffix):
    zero = tmp_path / f"zero{suffix}"
    zero.symlink_to("/dev/zero")
    with no_hang():
        refused(zero, "is a character device, not a file")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_symlink_loop(tmp_path, suffix):
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    a.symlink_to(b)
    b.symlink_to(a)
    refused(a, "a symlink loop")


# ================================================================ not a weight file


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    refused(path, r"not a readable (\.npz|safetensors) file \(truncated or corrupt\?\): the file is empty")


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(
    "content", [b"hello, not weights\n", bytes(range(256)) * 4, b"\x00" * 3], ids=["text", "binary", "tiny"]
)
def test_not_a_weight_file(tmp_path, suffix, content):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(content)
    refused(path, r"not a readable (\.npz|safetensors) file")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_truncated_anywhere(tmp_path, suffix):
    data = good_file(tmp_path, suffix).read_bytes()
    path = tmp_path / f"cut{suffix}"
    for keep in sorted({1, 7, 8, 9, 30, 64, len(data) // 2, len(data) - 30, len(data) - 1}):
        path.write_bytes(data[:keep])
        refused(path, r"not a readable (\.npz|safetensors) file \(truncated or corrupt\?\)")


def test_a_file_of_the_other_format(tmp_path):
    npz, st = good_file(tmp_path, ".npz"), good_file(tmp_path, ".safetensors")
    (tmp_path / "really-st.npz").write_bytes(st.read_bytes())
    (tmp_path / "really-npz.safetensors").write_bytes(npz.read_bytes())
    refused(tmp_path / "really-st.npz", r"a safetensors file, not an \.npz file; name it \*\.safetensors")
    refused(tmp_path / "really-npz.safetensors", r"a zip archive \(an \.npz file\?\), not a safetensors file")


# ================================================================ .npz: bombs and lying headers


def test_names_and_shapes_are_checked_before_any_array_is_read(tmp_path, monkeypatch):
    params = init_mlp_numpy(SPEC, 0)
    params["0.kernel"] = np.zeros((4, 5), np.float32)
    del params["1.bias"]
    params["extra"] = np.zeros(3, np.float32)
    path = save_npz(tmp_path / "w.npz", params)

    def no_data(*args: Any) -> None:
        raise AssertionError("an array was read before the names and shapes were checked")

    monkeypatch.setattr(interchange, "_npz_array", no_data)
    message = refused(path, "parameters do not fit the model")
    assert "missing 1.bias (shape (3,))" in message and "unexpected extra" in message
    assert "0.kernel has shape (4, 5), expected (4, 6)" in message


def test_a_deflated_member_larger_than_its_header_allows(tmp_path):
    # The .npy header allows 16 bytes; the member inflates to 16 MiB.
    header = npy_header("<f4", (4,))
    stream = deflated(header) + deflated_zeros(2**24)
    path = raw_zip(tmp_path / "bomb.npz", [("a.npy", stream, zipfile.ZIP_DEFLATED, len(header) + 2**24, 0)])
    refused(path, r"a declares 16,777,\d+ bytes, but its \.npy header \(shape \(4,\), float32\) needs \d+", None)


def test_a_member_that_inflates_past_its_declared_size_is_cut_short(tmp_path):
    # Declared (and header) size 16 bytes of data; the deflate stream holds 16 MiB: zipfile stops at 16, the CRC fails.
    header = npy_header("<f4", (4,))
    stream = deflated(header) + deflated_zeros(2**24)
    path = raw_zip(tmp_path / "bomb.npz", [("a.npy", stream, zipfile.ZIP_DEFLATED, len(header) + 16, 0)])
    refused(path, r"not a readable \.npz file \(truncated or corrupt\?\): Bad CRC-32", None)


def test_a_huge_declared_shape_is_refused_before_it_is_allocated(tmp_path):
    # A consistent header and size of 4 GiB in a file of a few hundred bytes.
    count = 2**30 - 64
    header = npy_header("<f4", (count,))
    # Incompressible bytes after the header, so that reading the header does not reach the stream's end.
    stream = deflated(header) + deflated(np.random.default_rng(0).bytes(8192))
    member = ("0.kernel.npy", stream, zipfile.ZIP_DEFLATED, len(header) + 4 * count, 0)
    path = raw_zip(tmp_path / "huge.npz", [member])
    refused(path, rf"inflate to {len(header) + 4 * count:,} bytes, more than the {NPZ_INFLATE_MAX:,} read", None)
    # Given the model, its shapes bound what is read.
    refused(path, rf"0\.kernel has shape \({count},\), expected \(4, 6\)")
    # Stored (not compressed): the data would have to be in the file.
    stored = raw_zip(tmp_path / "stored.npz", [(member[0], header, zipfile.ZIP_STORED, len(header) + 4 * count, 0)])
    refused(stored, r"stored with \d+ bytes but declares", None)


def test_an_oversized_zip_directory_is_refused_before_zipfile_reads_it(tmp_path):
    path = save_npz(tmp_path / "w.npz", init_mlp_numpy(SPEC, 0))
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    struct.pack_into("<L", data, at + 12, interchange.NPZ_DIRECTORY_MAX + 1)
    path.write_bytes(bytes(data))
    refused(path, r"its zip directory has 8,388,609 bytes, more than the 8,388,608 read")


@pytest.mark.parametrize(
    ("members", "pattern"),
    [
        ([("a.txt", b"x")], r"it holds 'a\.txt', not an \.npy array"),
        ([("a.npy", b"not an npy")], r"not a readable \.npz file \(truncated or corrupt\?\): the magic string"),
        ([("a.npy", b"\x93NUMPY\x03\x00" + bytes(8))], r"\.npy format version 3\.0"),
        ([("a.npy", b"\x93NUMPY\x01\x00" + (60000).to_bytes(2, "little") + b" " * 60000)], "Header info length"),
        ([("a.npy", npy_header("<i4", (2,)) + bytes(8))], r"not so: a \(int32\)"),
        ([("a.npy", npy_header("|O", (1,)) + bytes(8))], r"not so: a \(object \(Python objects: pickled"),
        ([("a.npy", npy_header("<c8", (1,)) + bytes(8))], r"not so: a \(complex64\)"),
        ([("a.npy", npy_header("<f4", (2,)) + bytes(4))], r"a declares \d+ bytes, but its \.npy header"),
        ([("a.npy", npy_header("<f4", (1,)) + bytes(4))] * 2, r"a is in it twice"),
    ],
    ids=["not-npy", "bad-magic", "npy-v3", "huge-npy-header", "int", "object", "complex", "short-data", "twice"],
)
def test_members_that_are_not_float_arrays(tmp_path, members, pattern):
    path = raw_zip(tmp_path / "w.npz", [(n, d, zipfile.ZIP_STORED, len(d), zlib.crc32(d)) for n, d in members])
    refused(path, pattern, None)


def test_an_encrypted_or_oddly_compressed_member(tmp_path):
    path = save_npz(tmp_path / "w.npz", {"a": np.ones(2, np.float32)})
    data = bytearray(path.read_bytes())
    directory = data.rfind(b"PK\x01\x02")
    struct.pack_into("<H", data, directory + 8, 1)  # the encrypted flag
    path.write_bytes(bytes(data))
    refused(path, "a is encrypted", None)
    struct.pack_into("<H", data, directory + 8, 0)
    struct.pack_into("<H", data, directory + 10, zipfile.ZIP_LZMA)
    path.write_bytes(bytes(data))
    refused(path, r"compressed with zip method 14 \(only stored or deflated are read\)", None)


def test_a_compressed_npz_still_loads(tmp_path):
    params = init_mlp_numpy(SPEC, 0)
    np.savez_compressed(tmp_path / "w.npz", **params)
    loaded = load_weights(tmp_path / "w.npz", SPEC)[1]
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


# ================================================================ safetensors: bombs and lying headers


def test_a_header_length_past_the_file_or_the_bound(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(b"{}", length=2**63))
    refused(path, r"its header claims 9,223,372,036,854,775,808 bytes, but only 2 follow")
    path.write_bytes(safetensors_bytes(b"{" + b" " * HEADER_MAX + b"}"))
    refused(path, rf"its header claims {HEADER_MAX + 2:,} bytes, more than the {HEADER_MAX:,}")


@pytest.mark.parametrize(
    ("header", "pattern"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "its header is JSON nested too deeply"),
        (b"[" + b"{}," * 200_001 + b"{}]", "more than 200,000 JSON objects and lists"),
        (b'{"a": 1, "a": 2}', "its header is not valid JSON .*a key appears twice"),
        (b"[1, 2]", "its header is a JSON list, not an object"),
        (b"\xff\xfe{}", "its header is not UTF-8 text"),
        (b'{"a": {"dtype": "F32", "shape": [1]}}', "tensor 'a' is not a record of dtype, shape and data_offsets"),
        (b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', r"tensor 'a' has dtype 'F32' and shape \[-1\]"),
        (b'{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "has dtype 'F32' and shape \\[True\\]"),
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}}', "not two byte offsets"),
        (b'{"__metadata__": {"spec": 5}}', "its __metadata__ is not an object of strings"),
    ],
    ids=["deep", "many", "duplicate-key", "list", "not-utf8", "no-offsets", "negative", "bool", "float", "metadata"],
)  # fmt: skip
def test_a_malformed_header(tmp_path, header, pattern):
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(64)))
    refused(path, r"not a readable safetensors file \(truncated or corrupt\?\): .*" + pattern)


@pytest.mark.parametrize(
    ("tensors", "data", "pattern"),
    [
        ({"0.kernel": ("F32", [4, 6], [0, 96])}, 50, r"'0\.kernel' lies at bytes 0 to 96 of a data section of 50"),
        ({"0.kernel": ("F32", [4, 6], [0, 2**70])}, 96, "lies at bytes 0 to 1,180,591,620,717,411,303,424"),
        ({"0.kernel": ("F32", [2**40, 2**40], [0, 96])}, 96, "needs 4,835,703,278,458,516,698,824,704 bytes"),
        ({"0.kernel": ("F32", [4, 6], [0, 96]), "1.bias": ("F32", [3], [90, 102])}, 200, "overlap"),
    ],
    ids=["past-the-end", "huge-offset", "huge-shape", "overlap"],
)
def test_offsets_are_checked_against_the_file(tmp_path, tensors, data, pattern):
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(st_header(tensors), bytes(data)))
    refused(path, r"not a readable safetensors file \(truncated or corrupt\?\): tensor.*" + pattern)


def test_a_spec_in_the_metadata_nested_too_deeply(tmp_path):
    header = st_header({})
    header["__metadata__"]["spec"] = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(header))
    refused(path, "the model spec in its metadata is invalid: the model spec is JSON nested too deeply")


@pytest.mark.parametrize(
    "version", ["²", "1" * 5000, "-1", ""], ids=["superscript", "5000-digits", "negative", "empty"]
)
def test_a_format_version_that_is_not_a_small_number(tmp_path, version):
    header = st_header({})
    header["__metadata__"]["format_version"] = version
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(header))
    refused(path, "its metadata has no valid format_version")


def write_unchecked(path: Path, params: dict[str, np.ndarray]) -> Path:
    """``params`` in a weight file of ``path``'s format for :data:`SPEC`, written as another tool would.

    The project's own safetensors writer refuses non-finite values; the package's does not.
    """
    if path.suffix == ".npz":
        save_npz(path, params)
    else:
        import safetensors.numpy

        metadata = {"format": "yat-core", "format_version": "1", "spec": spec_to_json(SPEC)}
        path.write_bytes(safetensors.numpy.save(params, metadata=metadata))
    return path


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_names_and_values_from_the_file_stay_on_one_short_line(tmp_path, suffix):
    params = init_mlp_numpy(SPEC, 0)
    params["evil\nname\x1b[31m" + "x" * 10_000] = np.zeros(2, np.float32)
    path = write_unchecked(tmp_path / f"w{suffix}", params)
    message = refused(path, r"unexpected evil\\nname\\x1b\[31mxxx")
    assert len(message) < 5000 and "\x1b" not in message


# ================================================================ values: finite, byte order, layout


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_unless_allowed(tmp_path, suffix, bad):
    params = init_mlp_numpy(SPEC, 0)
    params["1.kernel"][2, 1] = bad
    path = write_unchecked(tmp_path / f"w{suffix}", params)
    message = refused(path, r"holds non-finite values: 1\.kernel \(")
    assert message.endswith("pass allow_nonfinite=True to load them anyway"), message
    loaded = load_weights(path, SPEC, allow_nonfinite=True)[1]["1.kernel"]
    assert np.array_equal(loaded, params["1.kernel"], equal_nan=True)
    with pytest.raises(WeightFileError, match=r"1\.kernel"):
        load_npz(path) if suffix == ".npz" else load_safetensors(path)


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8"])
def test_a_big_endian_npz_loads_in_native_order_with_the_same_values(tmp_path, dtype):
    params = {k: v.astype(dtype) for k, v in init_mlp_numpy(SPEC, 3).items()}
    swapped = {k: v.astype(np.dtype(dtype).newbyteorder(">")) for k, v in params.items()}
    path = save_npz(tmp_path / "be.npz", swapped)
    with np.load(path) as raw:
        assert raw["0.kernel"].dtype.byteorder == ">"  # the file really is big-endian
    for loaded in (load_npz(path), load_weights(path, SPEC)[1]):
        for name, value in params.items():
            assert loaded[name].dtype == np.dtype(dtype).newbyteorder("=") and loaded[name].dtype.isnative
            np.testing.assert_array_equal(loaded[name], value)


def test_a_fortran_order_npz_loads_c_contiguous_with_the_same_values(tmp_path):
    params = init_mlp_numpy(SPEC, 4)
    path = save_npz(tmp_path / "f.npz", {k: np.asfortranarray(v) if v.ndim > 1 else v for k, v in params.items()})
    loaded = load_npz(path, SPEC)
    for name, value in params.items():
        assert loaded[name].flags.c_contiguous
        np.testing.assert_array_equal(loaded[name], value)


# ================================================================ export-onnx with hostile weights


def hostile_npz(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.npz"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind in ("empty", "text"):
        path.write_text("" if kind == "empty" else "not weights")
    elif kind == "bzip2":
        raw_zip(path, [("0.kernel.npy", b"", zipfile.ZIP_BZIP2, 2**31, 0)])
    elif kind == "bomb":
        header = npy_header("<f4", (4, 6))
        raw_zip(path, [("0.kernel.npy", deflated(header) + deflated_zeros(2**24), 8, len(header) + 2**24, 0)])
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("absent", "file not found"),
        ("folder", "is a directory"),
        ("fifo", "is a FIFO"),
        ("empty", "the file is empty"),
        ("text", "not a readable .npz file"),
        ("bzip2", "stored or deflated"),
        ("bomb", "0.kernel declares 16,777,"),
    ],
)
def test_export_onnx_refuses_a_hostile_npz_in_one_line(tmp_path, capsys, kind, expected):
    weights = hostile_npz(kind, tmp_path)
    out = tmp_path / "m.onnx"
    argv = ["export-onnx", "--weights", str(weights), "--model", "mlp", "--out", str(out), "--check-images", "0"]
    one_line_error(capsys, argv, f"weight file {weights}", expected)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_onnx_refuses_hostile_safetensors_in_one_line(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    cases = {
        "bomb.safetensors": (safetensors_bytes(b"{}", length=2**40), "its header claims"),
        "deep.safetensors": (safetensors_bytes(b"[" * 50_000 + b"]" * 50_000), "nested too deeply"),
        "npz.safetensors": (save_npz(tmp_path / "x.npz", init_mlp_numpy(SPEC, 0)).read_bytes(), "not a safetensors"),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        argv = ["export-onnx", "--weights", str(tmp_path / name), "--out", str(out), "--check-images", "0"]
        one_line_error(capsys, argv, f"weight file {tmp_path / name}", expected)
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage, then the error naming the flag
        main(["export-onnx", "--weights", "", "--out", str(out)])
    assert exit_info.value.code == 2 and "argument --weights: empty path" in capsys.readouterr().err
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop)
    argv = ["export-onnx", "--weights", str(loop), "--out", str(out), "--check-images", "0"]
    one_line_error(capsys, argv, f"weight file {loop}", "symlink loop")
    assert not out.exists()


# ================================================================ receipts


def receipt() -> dict[str, Any]:
    history = [{"epoch": 1, "train_loss": 1.0, "test_loss": 0.5, "test_acc": 0.9, "epoch_s": 2.0, "step_loss": [1.0]}]
    return {"kind": "train", "backend": "numpy", "framework": None, "device": "cpu", "params": 10, "epochs": 1,
            "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "seed": 0, "n_train": 4, "n_test": 2, "total_s": 3.0,
            "final_test_acc": 0.9, "final_test_loss": 0.5, "history": history, "versions": {}, "machine": {},
            "git_commit": None, "model_name": "mlp", "model": [], "input_shape": [4], "dtype": "float32"}  # fmt: skip


def receipt_refused(capsys: Any, path: Path, expected: str) -> None:
    with no_hang(), pytest.raises(ReceiptError, match=expected) as info:
        load_receipt(path)
    assert str(info.value).startswith(f"receipt {path}: ") and "\n" not in str(info.value)
    one_line_error(capsys, ["report", str(path)], f"receipt {path}: ")


def test_a_good_receipt_is_reported(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(receipt()))
    assert main(["report", str(path)]) == 0
    assert "core/numpy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty, not a training receipt"),
        (b"   \n", "empty, not a training receipt"),
        (b"\x89PNG\r\n\x1a\n\x00\xff", "not UTF-8 text"),
        (b"{not json", r"not valid JSON \(truncated\?\)"),
        (json.dumps(receipt()).encode()[:-40], r"not valid JSON \(truncated\?\)"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[" * 5_000 + b"]" * 5_000, "nested too deeply"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "nested more than 32 levels deep"),
        (b"[" + b"{}," * 100_000 + b"{}]", "more than 100,000 JSON objects and lists"),
        (b'{"seed": ' + b"9" * 5000 + b"}", r"not valid JSON \(Exceeds the limit"),
        (b"[1, 2, 3]", r"not a training receipt \(a JSON list, not an object\)"),
    ],
    ids=["empty", "blank", "binary", "not-json", "truncated", "deep", "deep-5000", "deep-40", "many", "digits", "list"],
)
def test_a_receipt_that_is_not_one(tmp_path, capsys, content, expected):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    receipt_refused(capsys, path, expected)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"lr": "fast"}, "lr is 'fast', not a number"),
        ({"total_s": "3"}, "total_s is '3', not a number"),
        ({"total_s": 10**400}, "total_s is 1000.*, not a number"),
        ({"final_test_loss": [0.5]}, r"final_test_loss is \[0\.5\], not a number"),
        ({"seed": 1.5}, "seed is 1.5, not an integer"),
        ({"epochs": True}, "epochs is True, not an integer"),
        ({"device": {"name": "cpu"}}, "device is .*, not a string"),
        ({"framework": 3}, "framework is 3, not a string"),
        ({"steps_per_epoch": "x"}, "steps_per_epoch is 'x', not a count"),
        ({"history": "long"}, "history is empty or not a list"),
        ({"history": [{"epoch": 1, "epoch_s": "2"}]}, "history entry 1 has no epoch_s"),
        ({"history": [{"epoch": 1, "epoch_s": 2.0, "step_loss": [10**400]}]}, "step_loss that is not a list of numbers"),
        ({"kind": "comparison"}, r"not a training receipt \(kind 'comparison'\)"),
    ],
    ids=["lr", "total-s", "total-s-huge", "loss-list", "seed", "epochs-bool", "device", "framework", "steps",
         "history", "epoch-s", "step-loss-huge", "kind"],
)  # fmt: skip
def test_a_receipt_with_a_field_of_the_wrong_type(tmp_path, capsys, change, expected):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**receipt(), **change}))
    receipt_refused(capsys, path, expected)


def test_a_huge_value_in_a_receipt_gives_a_short_message(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**receipt(), "lr": "fast\n" * 1_000_000}))
    with pytest.raises(ReceiptError, match=r"lr is 'fast\\nfast") as info:
        load_receipt(path)
    assert len(str(info.value)) < 5000 and "\n" not in str(info.value)


def test_a_receipt_too_large_to_be_one(tmp_path, capsys):
    path = tmp_path / "r.json"
    with path.open("wb") as fh:
        fh.truncate(RECEIPT_MAX + 1)  # sparse: no time or disk spent
    receipt_refused(capsys, path, "larger than 16 MiB, more than any training receipt")


@posix_only
def test_a_receipt_that_is_a_folder_fifo_device_or_symlink_loop(tmp_path, capsys):
    folder, fifo, zero, loop = (tmp_path / n for n in ("dir.json", "pipe.json", "zero.json", "loop.json"))
    folder.mkdir()
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    loop.symlink_to(loop)
    receipt_refused(capsys, folder, "is a directory, not a file")
    receipt_refused(capsys, fifo, "is a FIFO, not a file")
    receipt_refused(capsys, zero, "is a character device, not a file")
    receipt_refused(capsys, loop, "a symlink loop")
    receipt_refused(capsys, tmp_path / "absent.json", "file not found")


# ================================================================ peak memory on bombs

_MEMORY_CHILD = """
import sys
from pathlib import Path
from yat_core.errors import YatError
from yat_core.nn.interchange import load_npz
from yat_core.report import load_receipt
from yat_core.spec import seed_spec
from yat_core.weights import load_weights

folder = Path(sys.argv[1])
for load in (lambda: load_npz(folder / "bomb.npz"), lambda: load_weights(folder / "bomb.npz", seed_spec()),
             lambda: load_weights(folder / "cut.npz"), lambda: load_weights(folder / "floats.safetensors"),
             lambda: load_receipt(folder / "floats.json")):
    try:
        load()
    except YatError as exc:
        print(str(exc)[:100])
    else:
        raise SystemExit("a bomb loaded")
# VmHWM, not ru_maxrss: exec keeps the parent's ru_maxrss, and pytest's may be large.
status = Path("/proc/self/status").read_text()
print("peak MiB", int(status.split("VmHWM:")[1].split()[0]) / 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_peak_memory_stays_bounded_on_bombs(tmp_path):
    # A 640 KiB member that inflates to 640 MiB, consistent with its header: refused unread without a model.
    n_bytes = 40 * 2**24
    header, body = npy_header("<f4", (n_bytes // 4,)), deflated_zeros(n_bytes)
    member = ("0.kernel.npy", deflated(header) + body, zipfile.ZIP_DEFLATED, len(header) + n_bytes, 0)
    raw_zip(tmp_path / "bomb.npz", [member])
    # The same stream under a header that allows 16 bytes: zipfile stops there.
    small = npy_header("<f4", (4,))
    raw_zip(tmp_path / "cut.npz", [("a.npy", deflated(small) + body, zipfile.ZIP_DEFLATED, len(small) + 16, 0)])
    # Headers and receipts just under their bounds, made of the JSON that costs the most memory per byte.
    floats = (HEADER_MAX - 2) // 4
    (tmp_path / "floats.safetensors").write_bytes(safetensors_bytes(b"[" + b"1e1," * floats + b"1]"))
    floats = (RECEIPT_MAX - 2) // 4
    (tmp_path / "floats.json").write_bytes(b"[" + b"1e1," * floats + b"1]")
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MEMORY_CHILD), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    peak = float(child.stdout.rsplit("peak MiB", 1)[1])
    assert peak < 500, child.stdout
