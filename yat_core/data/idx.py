"""The IDX file format (LeCun's MNIST container): read, write, validate.

An IDX file is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then
``ndim`` big-endian uint32 dimension sizes, then the array in C order, big-endian.
Files may be gzip-compressed. Every fault is reported as a
:class:`~yat_core.errors.DataError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .._io import atomic_write_files
from ..errors import DataError

__all__ = ["read_idx", "write_idx", "decode_idx", "encode_idx", "gunzip"]

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


def _is_gz_name(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).endswith(".gz")


def gunzip(data: bytes, name: str) -> bytes:
    """Decompress gzip ``data``; a truncated or corrupt stream is a DataError naming ``name``."""
    if not data:  # gzip.decompress(b"") returns b"" instead of failing
        raise DataError(f"{name}: empty file, expected gzip data")
    try:
        return gzip.decompress(data)
    except EOFError as exc:  # stream ends before its end-of-stream marker
        raise DataError(f"{name}: truncated gzip data ({exc})") from None
    except (gzip.BadGzipFile, zlib.error) as exc:  # bad header, bad deflate data, CRC
        raise DataError(f"{name}: corrupt gzip data ({exc})") from None


def _describe_magic(code: int, ndim: int) -> str:
    dtype = _DTYPES.get(code)
    kind = dtype.newbyteorder("=").name if dtype is not None else "unknown type"
    return f"{kind}, {ndim} dims"


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
    if len(data) < 4:
        raise DataError(f"{name}: file is {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if magic is not None and found != magic:
        raise DataError(
            f"{name}: wrong magic number 0x{found:08X}, expected 0x{magic:08X} "
            f"({_describe_magic(magic >> 8 & 0xFF, magic & 0xFF)})" + _gzip_hint(data)
        )
    if data[:2] != b"\0\0" or code not in _DTYPES:
        raise DataError(
            f"{name}: wrong magic number 0x{found:08X}, expected 0x0000TTNN with "
            f"type code TT in {{{', '.join(f'{c:02X}' for c in _DTYPES)}}}" + _gzip_hint(data)
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: size mismatch: header needs {header} bytes, file has {len(data)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _DTYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        shape = "x".join(map(str, dims)) or "scalar"
        raise DataError(
            f"{name}: size mismatch: expected {expected} bytes (header + {shape} "
            f"{dtype.newbyteorder('=').name}), found {len(data)}"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    # astype copies: the result is writable and independent of `data`.
    return flat.reshape(dims).astype(dtype.newbyteorder("="))


def _gzip_hint(data: bytes) -> str:
    # IDX files start with a zero byte, so gzip magic is unambiguous.
    return " (the data looks gzip-compressed; name the file *.gz)" if data[:2] == _GZIP_MAGIC else ""


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


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed, and validate it.

    Gzip data is recognised by a ``.gz`` name or by its magic bytes.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    magic : int, optional
        If given, the exact magic number required (``0x00000803`` for MNIST
        images, ``0x00000801`` for labels).

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    DataError
        Missing file, truncated or corrupt gzip, wrong magic number, size
        mismatch. The message names the file.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> write_idx(p, np.array([3, 1, 4], dtype=np.uint8))
    >>> read_idx(p)
    array([3, 1, 4], dtype=uint8)
    """
    name = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{name}: file not found") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if _is_gz_name(name) or data[:2] == _GZIP_MAGIC:
        data = gunzip(data, name)
    return decode_idx(data, name, magic=magic)


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
