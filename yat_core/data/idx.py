"""The IDX file format (LeCun's MNIST container): read, write, validate.

An IDX file is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then
``ndim`` big-endian uint32 dimension sizes, then the array in C order, big-endian.
Files may be gzip-compressed. Every fault is reported as a
:class:`~yat_core.errors.DataError` that names the file and what is wrong with it.

Reading is bounded by the header: the header is parsed first, the payload size it
declares is computed exactly (Python integers, no wrap-around) and refused above
``max_bytes`` (default :data:`MAX_IDX_BYTES`), and at most one byte more than that
is ever read or decompressed, so a small gzip file that expands to gigabytes costs
no more memory than the array its header describes. Compressed input is bounded
too (by the file's size, checked against the header before decompressing), and what
is not a regular file (a FIFO, a folder, a device, a symlink loop) is refused without
being opened for a blocking read.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from .._io import atomic_write_files, open_regular
from ..errors import DataError

__all__ = ["MAX_IDX_BYTES", "read_idx", "write_idx", "decode_idx", "encode_idx", "gunzip", "gunzip_idx"]

#: Largest payload (uncompressed data after the header) read from one IDX file, in bytes.
#: MNIST's largest file holds 47 MB; the cap keeps a hostile header from costing more.
MAX_IDX_BYTES = 256 << 20

# IDX type code -> big-endian dtype.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[tuple[str, int], int] = {(d.kind, d.itemsize): c for c, d in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # decompression step: bounds the temporaries of each read


class _Layout(NamedTuple):
    header: bytes  # magic and dims, as in the file
    dtype: np.dtype  # big-endian, as stored
    dims: tuple[int, ...]
    nbytes: int  # payload size the header declares

    @property
    def size(self) -> int:
        return len(self.header) + self.nbytes

    @property
    def size_text(self) -> str:
        return _count(self.size)

    def describe(self) -> str:
        dims = self.dims if len(self.dims) <= 6 else (*self.dims[:6], "...")
        shape = "x".join(map(str, dims)) or "scalar"
        return f"header + {shape} {self.dtype.newbyteorder('=').name}"


def _count(n: int) -> str:
    # Headers can declare sizes with thousands of digits; a message shows their magnitude.
    digits = str(n)
    return digits if len(digits) <= 15 else f"about {digits[0]}.{digits[1:3]}e{len(digits) - 1}"


def _is_gz_name(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).endswith(".gz")


def _gzip_errors(name: str, exc: BaseException) -> DataError:
    if isinstance(exc, EOFError):  # stream ends before its end-of-stream marker
        return DataError(f"{name}: truncated gzip data ({exc})")
    return DataError(f"{name}: corrupt gzip data ({exc})")  # bad header, bad deflate data, CRC


_GZIP_FAULTS = (EOFError, gzip.BadGzipFile, zlib.error, OSError)


def gunzip(data: bytes, name: str, *, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """Decompress gzip ``data``, refusing output larger than ``max_bytes``.

    Decompression is streamed and stops one byte past the limit, so a
    decompression bomb costs at most ``max_bytes`` of memory.

    Raises
    ------
    DataError
        Empty, truncated or corrupt data, or more than ``max_bytes`` of output;
        the message names ``name``.

    Examples
    --------
    >>> gunzip(gzip.compress(b"abc"), "x.gz")
    b'abc'
    >>> gunzip(gzip.compress(bytes(1000)), "bomb.gz", max_bytes=100)
    Traceback (most recent call last):
    ...
    yat_core.errors.DataError: bomb.gz: gzip data expands to more than 100 bytes
    """
    if not data:  # gzip.decompress(b"") returns b"" instead of failing
        raise DataError(f"{name}: empty file, expected gzip data")
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            while chunk := stream.read(min(_CHUNK, max_bytes + 1 - len(out))):
                out += chunk
                if len(out) > max_bytes:
                    raise DataError(f"{name}: gzip data expands to more than {max_bytes} bytes")
    except _GZIP_FAULTS as exc:
        raise _gzip_errors(name, exc) from None
    return bytes(out)


def _describe_magic(code: int, ndim: int) -> str:
    dtype = _DTYPES.get(code)
    kind = dtype.newbyteorder("=").name if dtype is not None else "unknown type"
    return f"{kind}, {ndim} dims"


def _gzip_hint(data: bytes) -> str:
    # IDX files start with a zero byte, so gzip magic is unambiguous.
    return " (the data looks gzip-compressed; name the file *.gz)" if data[:2] == _GZIP_MAGIC else ""


def _check_magic(head: bytes, name: str, magic: int | None) -> tuple[np.dtype, int]:
    if len(head) < 4:
        raise DataError(f"{name}: file is {len(head)} bytes, too short for an IDX header")
    found = int.from_bytes(head[:4], "big")
    code, ndim = head[2], head[3]
    if magic is not None and found != magic:
        raise DataError(
            f"{name}: wrong magic number 0x{found:08X}, expected 0x{magic:08X} "
            f"({_describe_magic(magic >> 8 & 0xFF, magic & 0xFF)})" + _gzip_hint(head)
        )
    if head[:2] != b"\0\0" or code not in _DTYPES:
        raise DataError(
            f"{name}: wrong magic number 0x{found:08X}, expected 0x0000TTNN with "
            f"type code TT in {{{', '.join(f'{c:02X}' for c in _DTYPES)}}}" + _gzip_hint(head)
        )
    return _DTYPES[code], ndim


def _layout(head: bytes, dims_bytes: bytes, dtype: np.dtype, name: str) -> _Layout:
    ndim = head[3]
    if len(dims_bytes) < 4 * ndim:
        raise DataError(f"{name}: size mismatch: header needs {4 + 4 * ndim} bytes, file has {4 + len(dims_bytes)}")
    dims = tuple(int.from_bytes(dims_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    # Python integers: exact for any dims, where an int64 product could wrap around.
    return _Layout(head[:4] + dims_bytes[: 4 * ndim], dtype, dims, math.prod(dims) * dtype.itemsize)


def _check_limit(layout: _Layout, name: str, max_bytes: int) -> None:
    if layout.nbytes > max_bytes:
        raise DataError(
            f"{name}: header declares {_count(layout.nbytes)} bytes of data ({layout.describe()}), "
            f"more than the {max_bytes}-byte limit for an IDX file"
        )


def decode_idx(data: bytes, name: str = "<bytes>", *, magic: int | None = None) -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file.

    Parameters
    ----------
    data : bytes
        The whole file: header and payload.
    name : str
        Shown in error messages (normally the file path).
    magic : int, optional
        If given, the exact magic number required, e.g. ``0x00000803`` for
        uint8 with 3 dims.

    Returns
    -------
    numpy.ndarray
        A writable array in native byte order.

    Raises
    ------
    DataError
        Wrong magic number, unknown type code, or payload size mismatch.

    Examples
    --------
    >>> decode_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
    array([7, 9], dtype=uint8)
    """
    dtype, ndim = _check_magic(bytes(data[:4]), name, magic)
    layout = _layout(bytes(data[:4]), bytes(data[4 : 4 + 4 * ndim]), dtype, name)
    if len(data) != layout.size:
        raise DataError(
            f"{name}: size mismatch: expected {layout.size_text} bytes ({layout.describe()}), found {len(data)}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=layout.nbytes // dtype.itemsize, offset=len(layout.header))
    # astype copies: the result is writable and independent of `data`.
    return flat.reshape(layout.dims).astype(dtype.newbyteorder("="))


def _read_upto(stream: IO[bytes], n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0 and (chunk := stream.read(n)):
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _read_layout(stream: IO[bytes], name: str, magic: int | None) -> _Layout:
    head = _read_upto(stream, 4)
    dtype, ndim = _check_magic(head, name, magic)
    return _layout(head, _read_upto(stream, 4 * ndim), dtype, name)


def _read_layout_and_payload(
    stream: IO[bytes], name: str, magic: int | None, max_bytes: int, file_size: int | None, gz_size: int | None
) -> tuple[_Layout, np.ndarray]:
    """Header, then at most the declared payload plus one byte from ``stream``.

    Returns the layout and the payload as a flat uint8 array (file byte order).
    ``file_size`` is the size of an uncompressed file, ``gz_size`` that of a
    compressed one, both known before reading.
    """
    layout = _read_layout(stream, name, magic)
    mismatch = f"{name}: size mismatch: expected {layout.size_text} bytes ({layout.describe()}), found"
    if file_size is not None and file_size != layout.size:
        raise DataError(f"{mismatch} {file_size}")
    _check_limit(layout, name, max_bytes)
    if gz_size is not None and gz_size > _gzip_input_limit(layout.size):
        raise DataError(
            f"{name}: {gz_size} bytes of gzip data, more than an IDX file of {layout.size} bytes "
            f"({layout.describe()}) can need"
        )
    # np.empty: pages are only committed as data arrives, so a short stream costs little.
    payload = np.empty(layout.nbytes, dtype=np.uint8)
    view = payload.data
    got = 0
    while got < layout.nbytes:
        n = stream.readinto(view[got : got + _CHUNK])  # type: ignore[attr-defined]
        if not n:
            raise DataError(f"{mismatch} {layout.size - layout.nbytes + got}")
        got += n
    if stream.read(1):
        raise DataError(f"{mismatch} more (the data goes on past the {layout.size} bytes its header allows)")
    return layout, payload


def _native(layout: _Layout, payload: np.ndarray) -> np.ndarray:
    array = payload.view(layout.dtype).reshape(layout.dims)
    if not layout.dtype.isnative:
        array = array.byteswap(inplace=True).view(layout.dtype.newbyteorder("="))
    return array


def _gzip_input_limit(max_bytes: int) -> int:
    # Deflate never needs much more input than output (stored blocks add 5 bytes per 64 KiB);
    # more compressed input than this is junk (e.g. a flood of empty gzip members).
    return max_bytes + max_bytes // 8 + (1 << 20)


def _read_idx_stream(
    fh: IO[bytes], name: str, compressed_size: int, gz: bool, magic: int | None, max_bytes: int
) -> tuple[_Layout, np.ndarray]:
    if not gz:
        return _read_layout_and_payload(fh, name, magic, max_bytes, compressed_size, None)
    if compressed_size == 0:
        raise DataError(f"{name}: empty file, expected gzip data")
    limit = _gzip_input_limit(max_bytes)
    if compressed_size > limit:
        raise DataError(f"{name}: {compressed_size} bytes of gzip data, more than the {limit}-byte limit")
    try:
        with gzip.GzipFile(fileobj=fh, mode="rb") as stream:
            gz_stream: IO[bytes] = stream  # type: ignore[assignment]
            return _read_layout_and_payload(gz_stream, name, magic, max_bytes, None, compressed_size)
    except _GZIP_FAULTS as exc:
        raise _gzip_errors(name, exc) from None


def _read_idx_file(
    path: str | os.PathLike[str], magic: int | None, max_bytes: int, allow_gzip: bool = True
) -> tuple[_Layout, np.ndarray]:
    name = os.fspath(path)
    fh, info = open_regular(path)
    with fh:
        try:
            gz = allow_gzip and (_is_gz_name(name) or fh.read(2) == _GZIP_MAGIC)
            fh.seek(0)
            return _read_idx_stream(fh, name, info.st_size, gz, magic, max_bytes)
        except OSError as exc:  # an I/O error while reading a raw file
            raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from None


def _read_idx_file_layout(path: str | os.PathLike[str], magic: int | None) -> _Layout:
    """The header of an IDX file, raw or gzip (only its first bytes are decompressed)."""
    name = os.fspath(path)
    fh, info = open_regular(path)
    with fh:
        try:
            if _is_gz_name(name) or fh.read(2) == _GZIP_MAGIC:
                if info.st_size == 0:
                    raise DataError(f"{name}: empty file, expected gzip data")
                fh.seek(0)
                with gzip.GzipFile(fileobj=fh, mode="rb") as stream:
                    return _read_layout(stream, name, magic)  # type: ignore[arg-type]
            fh.seek(0)
            return _read_layout(fh, name, magic)
        except _GZIP_FAULTS as exc:
            raise _gzip_errors(name, exc) from None


def gunzip_idx(data: bytes, name: str, *, magic: int | None = None, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """The uncompressed bytes of a gzip-compressed IDX file, read no further than its header allows.

    Parameters
    ----------
    data : bytes
        The compressed file.
    name : str
        Shown in error messages (a path or URL).
    magic : int, optional
        The exact magic number required.
    max_bytes : int
        Largest payload accepted.

    Returns
    -------
    bytes
        Header and payload, as in the uncompressed file.

    Examples
    --------
    >>> raw = bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])
    >>> gunzip_idx(gzip.compress(raw), "labels.gz") == raw
    True
    """
    layout, payload = _read_idx_stream(io.BytesIO(data), name, len(data), True, magic, max_bytes)
    return layout.header + payload.tobytes()


def encode_idx(array: np.ndarray) -> bytes:
    """Serialise an array as the bytes of an uncompressed IDX file.

    Parameters
    ----------
    array : numpy.ndarray
        Any array whose dtype has an IDX type code (uint8, int8, int16,
        int32, float32, float64); at most 255 dims, each < 2**32.

    Returns
    -------
    bytes
        Header followed by the big-endian payload.

    Examples
    --------
    >>> encode_idx(np.array([7, 9], dtype=np.uint8))
    b'\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x02\\x07\\t'
    """
    array = np.asarray(array)
    code = _CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise DataError(f"cannot encode a {array.dtype} array of shape {array.shape} as IDX")
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed, and validate it.

    Gzip data is recognised by a ``.gz`` name or by its magic bytes. The
    header is checked first; no more data is read or decompressed than it
    declares (plus one byte, to detect excess).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    magic : int, optional
        If given, the exact magic number required (``0x00000803`` for MNIST
        images, ``0x00000801`` for labels).
    max_bytes : int
        Largest payload accepted; default :data:`MAX_IDX_BYTES`.

    Returns
    -------
    numpy.ndarray
        A writable array in native byte order.

    Raises
    ------
    DataError
        Missing file, not a regular file (FIFO, folder, device, symlink loop),
        truncated or corrupt gzip, wrong magic number, size mismatch, payload
        above ``max_bytes``. The message names the file.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> write_idx(p, np.array([3, 1, 4], dtype=np.uint8))
    >>> read_idx(p)
    array([3, 1, 4], dtype=uint8)
    """
    return _native(*_read_idx_file(path, magic, max_bytes))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write an array as an IDX file, atomically.

    The file appears complete or not at all: the data goes to a temporary
    file in the same folder, is fsynced, then renamed over ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; gzip-compressed if the name ends with ``.gz``.
    array : numpy.ndarray
        Normally uint8; any dtype accepted by :func:`encode_idx`.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "images-idx3-ubyte")
    >>> write_idx(p, np.zeros((2, 28, 28), dtype=np.uint8))
    >>> os.path.getsize(p)
    1584
    """
    data = encode_idx(array)
    if _is_gz_name(path):
        data = gzip.compress(data, mtime=0)  # mtime=0: identical input, identical file
    atomic_write_files({Path(path): lambda fh: fh.write(data)})
