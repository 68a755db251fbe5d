"""Framework-free helpers shared by the native layer modules.

The interchange format is a plain ``{name: numpy array}`` mapping in the core's
names and layouts (``"0.kernel"`` is ``(out, in)``, ``"0.alpha"`` a 0-d array), the
same one :func:`yat_core.mlp.init_mlp_numpy` returns; on disk it is an ``.npz``
file with one entry per parameter. :func:`check_params` holds an incoming mapping
to an :class:`~yat_core.mlp.MLPSpec` before any framework touches it, so every
framework rejects a bad file with the same message.

:func:`load_npz` treats its file as untrusted: it opens nothing but a regular file
(never blocking on a FIFO or a device), bounds the archive's directory, checks every
member's name, ``.npy`` header, dtype and shape (against the model, when given one)
and its declared size before any array is read, reads each array in bounded chunks,
and refuses non-finite values unless asked to keep them.

:func:`export_arrays` and :func:`import_arrays` are the whole of a framework's
interchange: the framework says how to read and write one parameter of one layer
and whether its kernels are stored ``(in, out)``; names, order, layout and checks
are handled here, once.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from yat_core._io import atomic_write, open_regular
from yat_core.errors import WeightFileError
from yat_core.mlp import LayerSpec, MLPSpec

__all__ = [
    "save_npz",
    "load_npz",
    "check_params",
    "export_arrays",
    "import_arrays",
]

#: Floating dtypes a parameter file may hold (cast to the model's dtype on import).
_FLOAT_KINDS = ("f",)
#: Item sizes of the floating dtypes a weight file may hold: float16, float32, float64.
_FLOAT_ITEMSIZES = (2, 4, 8)
#: The largest zip directory an ``.npz`` file may have (about 80,000 members): zipfile
#: holds an object per member, so the directory is bounded before zipfile reads it.
NPZ_DIRECTORY_MAX = 8 * 2**20
#: The largest ``.npy`` header read (NumPy's own default bound).
NPY_HEADER_MAX = 10_000
#: Without a model to bound them, compressed members may inflate to at most this many bytes in all.
NPZ_INFLATE_MAX = 256 * 2**20
#: Bytes read at a time from an archive member.
_CHUNK = 2**20


def save_npz(path: str | os.PathLike[str], params: Mapping[str, Any]) -> Path:
    """Write parameters to an uncompressed ``.npz`` file, atomically.

    The file is written under a temporary name in the destination folder and
    moved into place with :func:`os.replace`, so a reader sees the old file or the
    new one, never a partial one.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; written exactly as named (no ``.npz`` is appended).
    params : mapping of str to array-like
        Parameter name to value; each value is converted with :func:`numpy.asarray`.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.npz"
    >>> _ = save_npz(p, {"0.kernel": np.ones((2, 3), np.float32)})
    >>> load_npz(p)["0.kernel"].shape
    (2, 3)
    """
    arrays = {name: np.asarray(value) for name, value in params.items()}
    savez: Callable[..., None] = np.savez  # typed loosely: parameter names are free-form keywords
    return atomic_write(path, lambda fh: savez(fh, **arrays))


# ---------------------------------------------------------------------------------------------- untrusted files


def one_line(text: str, limit: int = 4000) -> str:
    """``text`` as one printable line of at most about ``limit`` characters (a file's names and values are untrusted).

    Examples
    --------
    >>> print(one_line("tensor a" + chr(10) + "b"))
    tensor a\\nb
    >>> len(one_line("x" * 5000))
    4001
    """
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: 2 * limit])
    return text if len(text) <= limit else text[:limit] + "…"


def fit_problems(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]]) -> list[str]:
    """What keeps parameters of the ``found`` names and shapes from fitting the ``expected`` ones (empty: they fit).

    Examples
    --------
    >>> fit_problems({"0.kernel": (2, 3), "0.bias": (2,)}, {"0.kernel": (3, 2), "9.x": ()})
    ['missing 0.bias (shape (2,))', 'unexpected 9.x', '0.kernel has shape (3, 2), expected (2, 3)']
    """
    problems = [f"missing {n} (shape {s})" for n, s in expected.items() if n not in found]
    problems += [f"unexpected {n}" for n in found if n not in expected]
    problems += [
        f"{n} has shape {tuple(found[n])}, expected {s}"
        for n, s in expected.items()
        if n in found and tuple(found[n]) != s
    ]
    return problems


def nonfinite_problem(params: Mapping[str, np.ndarray]) -> str | None:
    """Which parameters hold NaN or infinite values, and how many, or None when all are finite.

    Examples
    --------
    >>> nonfinite_problem({"a": np.array([1.0, np.nan, np.inf]), "b": np.zeros(2)})
    'a (1 NaN, 1 infinite of 3)'
    """
    bad = []
    for name, value in params.items():
        if np.isfinite(value).all():
            continue
        n_nan, n_inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        bad.append(f"{name} ({n_nan} NaN, {n_inf} infinite of {value.size})")
    return "; ".join(bad) or None


def float_dtype_problem(dtype: np.dtype[Any]) -> str | None:
    """Why ``dtype`` cannot be a parameter's (a parameter is float16, float32 or float64), or None."""
    if dtype.hasobject:
        return f"{dtype} (Python objects: pickled data is never loaded)"
    if dtype.kind not in _FLOAT_KINDS or dtype.itemsize not in _FLOAT_ITEMSIZES or dtype.fields or dtype.subdtype:
        return str(dtype)
    return None


# ---------------------------------------------------------------------------------------------- .npz files


@dataclass(frozen=True)
class _Member:
    """One ``.npy`` member of an archive, from its directory entry and its ``.npy`` header."""

    info: zipfile.ZipInfo
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran: bool
    data_bytes: int


#: What zipfile, zlib and NumPy's header reader raise on a damaged archive.
_DAMAGE = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    struct.error,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    NotImplementedError,
    RecursionError,
    UnicodeDecodeError,
)
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _zip_directory_size(fh: IO[bytes], size: int) -> int | None:
    """The size of a zip archive's central directory, from its end record; None when there is no end record."""
    tail_len = min(size, _EOCD.size + 0xFFFF)  # the end record and a comment of at most 64 KiB
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return None
    directory: int = _EOCD.unpack_from(tail, at)[5]
    locator = at - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        offset = _ZIP64_LOCATOR.unpack_from(tail, locator)[2]
        if offset + _ZIP64_EOCD.size <= size:
            fh.seek(offset)
            record = fh.read(_ZIP64_EOCD.size)
            if record[:4] == b"PK\x06\x06":
                directory = max(directory, _ZIP64_EOCD.unpack(record)[8])
    return directory


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes starting with ``head`` is laid out as a safetensors file."""
    return len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def looks_like_zip(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a zip archive (as an ``.npz`` file is)."""
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _npz_header(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, fault: Callable[[str], Exception]
) -> _Member:
    """Read one member's ``.npy`` header (a few bytes, bounded) and check its declared size against it."""
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=NPY_HEADER_MAX)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=NPY_HEADER_MAX)
        else:
            raise fault(
                f"{name}: .npy format version {version[0]}.{version[1]} (NumPy writes parameters as 1.0 or 2.0)"
            )
        header = stream.tell()
    problem = float_dtype_problem(dtype)
    if problem:
        raise fault(f"parameters must be float16, float32 or float64 arrays; not so: {name} ({problem})")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise fault(f"{name}: its .npy header has an invalid shape {shape!r}")
    data = math.prod(shape) * dtype.itemsize  # Python ints: no wrap-around
    if info.file_size != header + data:
        raise fault(
            f"not a readable .npz file (corrupt?): {name} declares {info.file_size:,} bytes, but its .npy header "
            f"(shape {tuple(shape)}, {dtype}) needs {header + data:,}"
        )
    return _Member(info, dtype, tuple(shape), bool(fortran), data)


def _npz_members(
    archive: zipfile.ZipFile,
    size: int,
    expected: Mapping[str, tuple[int, ...]] | None,
    fault: Callable[[str], Exception],
) -> dict[str, _Member]:
    """Check the archive's directory, then the headers of the members to read; nothing else is read."""
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            raise fault(f"not an .npz file of parameters: it holds {info.filename!r}, not an .npy array")
        name = info.filename[: -len(".npy")]
        if name in infos:
            raise fault(f"not a readable .npz file (corrupt?): {name} is in it twice")
        if info.flag_bits & 0x1:
            raise fault(f"{name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise fault(f"{name} is compressed with zip method {info.compress_type} (only stored or deflated are read)")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise fault(f"not a readable .npz file (corrupt?): {name} is stored with {info.compress_size:,} bytes "
                        f"but declares {info.file_size:,}")  # fmt: skip
        infos[name] = info
    if sum(info.compress_size for info in infos.values()) > size:
        raise fault(f"not a readable .npz file (corrupt?): its members claim more bytes than the file's {size:,}")
    inflated = sum(info.file_size for info in infos.values() if info.compress_type != zipfile.ZIP_STORED)
    if expected is None and inflated > NPZ_INFLATE_MAX:
        raise fault(
            f"its compressed members would inflate to {inflated:,} bytes, more than the {NPZ_INFLATE_MAX:,} read "
            "without a model; pass the model (spec=) to bound them by its shapes"
        )
    if expected is not None:
        # Headers (bounded reads) only of the members the model has; the others are named without being opened.
        members = {name: _npz_header(archive, infos[name], name, fault) for name in expected if name in infos}
        problems = fit_problems(expected, {**{n: () for n in infos}, **{n: m.shape for n, m in members.items()}})
        if problems:
            raise fault("parameters do not fit the model: " + "; ".join(problems))
    else:
        members = {name: _npz_header(archive, info, name, fault) for name, info in infos.items()}
    return members


def _npz_array(archive: zipfile.ZipFile, member: _Member) -> np.ndarray:
    """Read one member's array in bounded chunks; zipfile checks its CRC at the end."""
    flat = np.empty(member.data_bytes // member.dtype.itemsize, member.dtype)
    raw = flat.view(np.uint8)
    with archive.open(member.info) as stream:
        stream.seek(member.info.file_size - member.data_bytes)
        done = 0
        while done < member.data_bytes:
            chunk = stream.read(min(_CHUNK, member.data_bytes - done))
            if not chunk:
                raise EOFError(f"{member.info.filename} ends after {done:,} of its {member.data_bytes:,} data bytes")
            raw[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
            done += len(chunk)
    array = flat.reshape(member.shape[::-1]).T if member.fortran else flat.reshape(member.shape)
    # Native byte order and C order, whatever the file had.
    return array.astype(member.dtype.newbyteorder("="), order="C", copy=False)


def load_npz(
    path: str | os.PathLike[str],
    spec: MLPSpec | LayerSpec | None = None,
    *,
    allow_nonfinite: bool = False,
) -> dict[str, np.ndarray]:
    """Read a parameter file written by :func:`save_npz` (or :func:`numpy.savez`), checking it all before reading.

    The file is untrusted: it must be a regular file; the zip directory is bounded;
    every member must be an ``.npy`` array whose declared size agrees with its header;
    names and shapes are checked against ``spec`` (when given) and dtypes against
    float16/32/64 before any array is read. Arrays are read in bounded chunks and come
    back in native byte order. Object arrays are never unpickled.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    spec : ModelSpec or LayerSpec, optional
        The model (names ``"0.kernel"``, ...) or layer (names ``"kernel"``, ...) the file is
        for: its names and shapes must match, and they bound what is read. Without it,
        compressed members may inflate to :data:`NPZ_INFLATE_MAX` bytes in all.
    allow_nonfinite : bool
        Return NaN and infinite values instead of refusing the file.

    Returns
    -------
    dict of str to numpy.ndarray
        In the file's order, or ``spec``'s when given.

    Raises
    ------
    WeightFileError
        Naming the file and the fault: missing, not a regular file, not an ``.npz`` file
        (a safetensors file is named as such), truncated or corrupt, parameters that do
        not fit ``spec``, a dtype other than float16/32/64, non-finite values.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = save_npz(pathlib.Path(tempfile.mkdtemp()) / "w.npz", {"0.alpha": np.float32(1.0)})
    >>> load_npz(p)
    {'0.alpha': array(1., dtype=float32)}
    >>> _ = save_npz(p, {"0.alpha": np.float32("nan")})
    >>> load_npz(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    yat_core.errors.WeightFileError: weight file .../w.npz: holds non-finite values: 0.alpha (1 NaN, 0 infinite of 1); ...
    """

    def fault(what: str) -> WeightFileError:
        return WeightFileError(f"weight file {os.fspath(path)}: {one_line(what)}")

    def damaged(what: object) -> WeightFileError:
        first_line = (str(what).strip().splitlines() or [type(what).__name__])[0]
        return fault(f"not a readable .npz file (truncated or corrupt?): {first_line}")

    expected = None if spec is None else spec.param_shapes
    fh, info = open_regular(path, fault=fault)
    with fh:
        size = info.st_size
        head = fh.read(16)
        if size == 0:
            raise damaged("the file is empty")
        if looks_like_safetensors(head, size):
            raise fault("a safetensors file, not an .npz file; name it *.safetensors")
        try:
            directory = _zip_directory_size(fh, size)
            if directory is None:
                raise damaged("not a zip archive (no zip directory at its end)")
            if directory > NPZ_DIRECTORY_MAX:
                raise fault(f"its zip directory has {directory:,} bytes, more than the {NPZ_DIRECTORY_MAX:,} read")
            fh.seek(0)
            with zipfile.ZipFile(fh) as archive:
                members = _npz_members(archive, size, expected, fault)
                params = {name: _npz_array(archive, member) for name, member in members.items()}
        except WeightFileError:
            raise
        except _DAMAGE as exc:
            raise damaged(exc) from None
    problem = None if allow_nonfinite else nonfinite_problem(params)
    if problem:
        raise fault(f"holds non-finite values: {problem}; pass allow_nonfinite=True to load them anyway")
    return params


def check_params(params: Mapping[str, Any], spec: MLPSpec | LayerSpec) -> dict[str, np.ndarray]:
    """Validate a parameter mapping against ``spec``; return it as NumPy arrays in spec order.

    Parameters
    ----------
    params : mapping of str to array-like
        Names and values in the core's layout.
    spec : ModelSpec or LayerSpec
        The model (names ``"0.kernel"``, ...) or the single layer (names ``"kernel"``, ...)
        the parameters are meant for.

    Returns
    -------
    dict of str to numpy.ndarray
        The same values, ordered as ``spec.param_shapes``.

    Raises
    ------
    ValueError
        Missing or unexpected names, or a shape that differs from the spec's
        (the message names every offending parameter).
    TypeError
        A value that is not a real floating array.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> spec = seed_spec(); params = init_mlp_numpy(spec, 0)
    >>> len(check_params(params, spec))
    8
    >>> del params["2.bias"]; check_params(params, spec)
    Traceback (most recent call last):
    ...
    ValueError: parameters do not fit the model: missing 2.bias (shape (10,))
    """
    expected = spec.param_shapes
    arrays = {name: np.asarray(value) for name, value in params.items()}
    problems = fit_problems(expected, {name: value.shape for name, value in arrays.items()})
    if problems:
        what = "layer" if isinstance(spec, LayerSpec) else "model"
        raise ValueError(f"parameters do not fit the {what}: " + "; ".join(problems))
    bad = [f"{n} ({a.dtype})" for n, a in arrays.items() if a.dtype.kind not in _FLOAT_KINDS]
    if bad:
        raise TypeError(f"parameters must be real floating arrays; not so: {', '.join(bad)}")
    return {name: arrays[name] for name in expected}


def _native_layout(layer: LayerSpec, name: str, value: np.ndarray, kernel_in_out: bool) -> np.ndarray:
    # The core stores dense kernels (out, in); frameworks whose kernels are (in, out) see the transpose.
    # Convolution kernels pass as they are: each framework's layer converts its own layout.
    dense = layer.kind in ("yat", "linear")
    return np.ascontiguousarray(value.T) if kernel_in_out and dense and name == "kernel" else value


def export_arrays(
    spec: MLPSpec, read: Callable[[int, str], Any], *, kernel_in_out: bool = False
) -> dict[str, np.ndarray]:
    """A native model's parameters in the core's names and layouts.

    Parameters
    ----------
    spec : MLPSpec
        The model's description: which parameters each layer has, in order.
    read : callable
        ``read(layer_index, core_name)`` returns that parameter as a host array in the
        framework's layout.
    kernel_in_out : bool
        The framework stores dense kernels ``(in, out)`` (Flax, Keras, TensorFlow).
        Convolution kernels are read in the core's layout: ``read`` converts them.

    Examples
    --------
    >>> from yat_core.mlp import LayerSpec, MLPSpec
    >>> spec = MLPSpec((LayerSpec("linear", 3, 2, bias=None),))
    >>> export_arrays(spec, lambda i, name: np.zeros((3, 2)), kernel_in_out=True)["0.kernel"].shape
    (2, 3)
    """
    return {
        f"{i}.{name}": np.array(_native_layout(layer, name, np.asarray(read(i, name)), kernel_in_out))
        for i, layer in enumerate(spec.layers)
        for name in layer.param_shapes
    }


def import_arrays(
    spec: MLPSpec,
    params: Mapping[str, Any],
    write: Callable[[int, str, np.ndarray], None],
    *,
    kernel_in_out: bool = False,
) -> None:
    """Check ``params`` against ``spec``, then hand each one to ``write`` in the framework's layout.

    ``write(layer_index, core_name, value)`` stores a NumPy array (cast it to the
    parameter's dtype and device there). Dense kernels arrive in the framework's layout
    (``kernel_in_out``); convolution kernels in the core's, for ``write`` to convert. Nothing is written unless every name, shape
    and dtype fits, so a bad mapping leaves the model as it was.

    Examples
    --------
    >>> from yat_core.mlp import LayerSpec, MLPSpec
    >>> spec, seen = MLPSpec((LayerSpec("linear", 3, 2, bias=None),)), {}
    >>> import_arrays(spec, {"0.kernel": np.zeros((2, 3))}, lambda i, n, v: seen.update({n: v.shape}),
    ...               kernel_in_out=True)
    >>> seen
    {'kernel': (3, 2)}
    """
    for key, value in check_params(params, spec).items():
        index, name = key.split(".", 1)
        i = int(index)
        write(i, name, _native_layout(spec.layers[i], name, value, kernel_in_out))
