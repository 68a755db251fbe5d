"""Weight files: safetensors (with the model inside) and ``.npz``, for every framework.

A ``.safetensors`` file holds the parameters in the core's names and layouts
(:mod:`yat_core.nn.interchange`: ``"0.kernel"`` is ``(out, in)``) and, in its
metadata, the :class:`~yat_core.spec.ModelSpec` as JSON with a format version, so
that the file alone rebuilds the model in any framework (:func:`build_from_file`).
An ``.npz`` file holds the same parameters without the model: loading one needs the
spec from elsewhere (the model it is imported into, or ``spec=``).

:func:`save_weights` / :func:`load_weights` pick the format by the file's suffix;
:func:`export_weights`, :func:`import_weights` and :func:`build_from_file` do the same
for a native model of any framework of :mod:`yat_core.nn`. Every fault of a file
(missing, not a regular file, of the other format, truncated or corrupt, no model in its
metadata, a model that does not fit its tensors, a wrong dtype, non-finite values) is a
:class:`WeightFileError` that names the file and the fault.

Weight files are untrusted input, read with bounded work: a safetensors file's header
is parsed here (its length bounded by :data:`HEADER_MAX` and the file's size, every
tensor's offsets inside the file, not overlapping, and spanning exactly
``prod(shape) * itemsize`` bytes), and the names, shapes and dtypes are checked against
the model before any array is read; an ``.npz`` file is checked the same way by
:func:`yat_core.nn.interchange.load_npz`. So no file can make a reader allocate more
than the data it really holds (or, for compressed ``.npz`` members, than its model's
shapes allow).

The ``safetensors`` package (extra ``yat-core[safetensors]``) is imported only when a
``.safetensors`` file is written; reading needs nothing but NumPy.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np

from yat_core._io import atomic_write, open_regular, parse_json
from yat_core._lazy import require
from yat_core.errors import WeightFileError
from yat_core.nn.interchange import (
    check_params,
    fit_problems,
    load_npz,
    looks_like_zip,
    nonfinite_problem,
    one_line,
    save_npz,
)
from yat_core.spec import LayerSpec, ModelSpec, spec_from_record, spec_record

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SUFFIXES",
    "HEADER_MAX",
    "WeightFileError",
    "spec_to_json",
    "spec_from_json",
    "save_safetensors",
    "load_safetensors",
    "save_weights",
    "load_weights",
    "export_weights",
    "import_weights",
    "build_from_file",
]

#: The ``format`` entry of the metadata of the files this module writes.
FORMAT = "yat-core"
#: Version of the metadata layout; a reader refuses files of a later version.
FORMAT_VERSION = 1
#: The weight file formats, by suffix.
SUFFIXES = (".safetensors", ".npz")
#: safetensors dtypes a parameter may have, as NumPy dtypes (safetensors is little-endian).
_FLOAT_DTYPES: dict[str, np.dtype[Any]] = {"F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
#: Bytes per item of the other safetensors dtypes, to check a file's offsets before its dtypes are refused.
_ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "BF16": 2, "I32": 4,
              "U32": 4, "I64": 8, "U64": 8, "C64": 8} | {k: v.itemsize for k, v in _FLOAT_DTYPES.items()}  # fmt: skip
#: The largest safetensors header read. A yat-core header is a few KiB; parsing JSON can take about
#: ten bytes of memory per byte of text, so the bound is far below the format's 100 MB.
HEADER_MAX = 8 * 2**20
#: The most JSON objects and lists a header may hold (a yat-core model has a few per tensor).
_CONTAINERS_MAX = 200_000


def _fault(path: str | os.PathLike[str], what: str) -> WeightFileError:
    return WeightFileError(f"weight file {os.fspath(path)}: {one_line(what)}")


def _suffix(path: str | os.PathLike[str]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"weight file {os.fspath(path)}: unknown format {suffix or '(no suffix)'!r}; "
            f"name it {' or '.join('*' + s for s in SUFFIXES)}"
        )
    return suffix


def _safetensors(what: str) -> ModuleType:
    return require("safetensors.numpy", "safetensors", what)


# ---------------------------------------------------------------------------------------------- the spec as JSON


def spec_to_json(spec: ModelSpec) -> str:
    """The model as compact JSON (:func:`yat_core.spec.spec_record`).

    Examples
    --------
    >>> from yat_core.spec import vit_spec
    >>> spec_from_json(spec_to_json(vit_spec())) == vit_spec()
    True
    """
    return json.dumps(spec_record(spec), separators=(",", ":"), allow_nan=False)


def spec_from_json(text: str) -> ModelSpec:
    """The :class:`~yat_core.spec.ModelSpec` of :func:`spec_to_json`'s text, checked as any spec is.

    Raises
    ------
    ValueError
        Text that is not JSON, or a record :func:`yat_core.spec.spec_from_record` refuses.

    Examples
    --------
    >>> spec = spec_from_json('{"input_shape": [3], "layers": [{"kind": "linear", "in_features": 3, "out_features": 2}]}')
    >>> spec.layers[0].kind, spec.input_shape
    ('linear', (3,))
    """
    return spec_from_record(parse_json(text, "the model spec", max_containers=_CONTAINERS_MAX))


# ---------------------------------------------------------------------------------------------- safetensors


def _finite_or_fault(path: str | os.PathLike[str], params: Mapping[str, np.ndarray], verb: str) -> None:
    problem = nonfinite_problem(params)
    if problem:
        raise _fault(path, f"{verb} non-finite values: {problem}")


def save_safetensors(path: str | os.PathLike[str], params: Mapping[str, Any], spec: ModelSpec) -> Path:
    """Write ``params`` and the model ``spec`` to a ``.safetensors`` file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; written exactly as named.
    params : mapping of str to array-like
        The model's parameters in the core's names and layouts (a framework's
        ``export_params``); each keeps its floating dtype.
    spec : ModelSpec
        The model they belong to, stored as JSON in the metadata (``"spec"``), beside
        ``"format"`` and ``"format_version"``.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    ValueError
        Parameters that do not fit ``spec`` (:func:`~yat_core.nn.interchange.check_params`).
    WeightFileError
        Non-finite values (the file could not be loaded back).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from yat_core.mlp import init_mlp_numpy
    >>> from yat_core.spec import seed_spec
    >>> p = save_safetensors(pathlib.Path(tempfile.mkdtemp()) / "w.safetensors",
    ...                      init_mlp_numpy(seed_spec(), 0), seed_spec())
    >>> spec, params = load_safetensors(p)
    >>> spec == seed_spec(), params["0.kernel"].shape
    (True, (256, 784))
    """
    st = _safetensors(f"writing {os.fspath(path)}")
    checked = {name: np.array(value, order="C") for name, value in check_params(params, spec).items()}
    _finite_or_fault(path, checked, "refusing to write")
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "spec": spec_to_json(spec)}
    data = st.save(checked, metadata=metadata)
    return atomic_write(path, lambda fh: fh.write(data))


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One tensor of a safetensors header: dtype name, shape and where its bytes lie in the data."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_header(
    fh: IO[bytes], size: int, path: str | os.PathLike[str]
) -> tuple[dict[str, str], dict[str, _Tensor], int]:
    """Parse and check a safetensors header: its metadata, its tensors, and where their data starts.

    Reads 8 bytes and then the header alone (bounded); the tensors' offsets are checked
    against the file's size: inside it, not overlapping, each ``prod(shape) * itemsize`` bytes.
    """

    def damaged(what: str) -> WeightFileError:
        return _fault(path, f"not a readable safetensors file (truncated or corrupt?): {what}")

    if size == 0:
        raise damaged("the file is empty")
    head = fh.read(8)
    if looks_like_zip(head):
        raise _fault(path, "a zip archive (an .npz file?), not a safetensors file; name it *.npz")
    if size < 8:
        raise damaged(f"{size} bytes, fewer than the 8 that give its header's length")
    length = int.from_bytes(head, "little")
    if length > size - 8:
        raise damaged(f"its header claims {length:,} bytes, but only {size - 8:,} follow")
    if length > HEADER_MAX:
        raise _fault(path, f"its header claims {length:,} bytes, more than the {HEADER_MAX:,} a weight file's may have")
    raw = fh.read(length)
    if len(raw) != length:
        raise damaged(f"it ends inside its {length:,}-byte header")
    try:
        header = parse_json(raw, "its header", max_containers=_CONTAINERS_MAX, unique_keys=True)
    except ValueError as exc:
        raise damaged(str(exc)) from None
    if not isinstance(header, dict):
        raise damaged(f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise damaged("its __metadata__ is not an object of strings")
    data = size - 8 - length
    tensors: dict[str, _Tensor] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise damaged(f"tensor {name!r} is not a record of dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or not isinstance(shape, list) or not all(_is_count(n) for n in shape):
            raise damaged(f"tensor {name!r} has dtype {dtype!r} and shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
            raise damaged(f"tensor {name!r} has data_offsets {offsets!r}, not two byte offsets")
        begin, end = offsets
        if not begin <= end <= data:
            raise damaged(f"tensor {name!r} lies at bytes {begin:,} to {end:,} of a data section of {data:,}")
        itemsize = _ITEMSIZES.get(dtype)
        if itemsize is not None and end - begin != math.prod(shape) * itemsize:  # Python ints: no wrap-around
            raise damaged(
                f"tensor {name!r} ({dtype}, shape {tuple(shape)}) needs {math.prod(shape) * itemsize:,} bytes, "
                f"its offsets span {end - begin:,}"
            )
        tensors[name] = _Tensor(dtype, tuple(shape), begin, end)
    ordered = sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end))
    for (first, a), (second, b) in zip(ordered, ordered[1:]):
        if b.begin < a.end:
            raise damaged(f"tensors {first!r} and {second!r} overlap")
    return metadata, tensors, 8 + length


def _read_tensor(fh: io.BufferedReader, start: int, tensor: _Tensor) -> np.ndarray:
    """One tensor's bytes (already checked to lie inside the file) as a native-order array."""
    dtype = _FLOAT_DTYPES[tensor.dtype]
    flat = np.empty((tensor.end - tensor.begin) // dtype.itemsize, dtype)
    raw = flat.view(np.uint8)
    fh.seek(start + tensor.begin)
    done = 0
    while done < raw.size:
        got = fh.readinto(raw[done:].data)
        if not got:
            raise EOFError("the file ends inside tensor data (it shrank while being read?)")
        done += got
    return flat.reshape(tensor.shape).astype(dtype.newbyteorder("="), copy=False)


def load_safetensors(
    path: str | os.PathLike[str], *, allow_nonfinite: bool = False
) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """Read a file of :func:`save_safetensors`: the model's spec and its parameters (in spec order).

    Everything is checked before any array is read: the file is a regular file; its
    header's length is bounded (:data:`HEADER_MAX`, and the file's size); the header is
    JSON whose tensors lie inside the file without overlapping, each spanning
    ``prod(shape) * itemsize`` bytes; the format and its version; the spec; and every
    tensor's name, shape and dtype against the spec. The values are then checked to be
    finite. Reading needs NumPy only (not the ``safetensors`` package).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file.
    allow_nonfinite : bool
        Return NaN and infinite values instead of refusing the file.

    Raises
    ------
    WeightFileError
        Naming the file and its fault: missing, not a regular file (a folder, FIFO,
        device or symlink loop), an ``.npz`` file, not a readable safetensors file
        (empty, truncated or corrupt), no yat-core model in the metadata, a later format
        version, a spec that does not fit the tensors, a dtype other than
        float16/32/64, non-finite values.

    Examples
    --------
    >>> load_safetensors("no/such/file.safetensors")
    Traceback (most recent call last):
    ...
    yat_core.errors.WeightFileError: weight file no/such/file.safetensors: file not found
    """
    fh, info = open_regular(path, fault=lambda what: _fault(path, what))
    with fh:
        metadata, tensors, start = _read_header(fh, info.st_size, path)
        spec = _spec_of(path, metadata)
        problems = fit_problems(spec.param_shapes, {name: t.shape for name, t in tensors.items()})
        if problems:
            raise _fault(path, "its tensors do not fit the model in its metadata: " + "; ".join(problems))
        wrong = [f"{n} ({t.dtype})" for n, t in tensors.items() if t.dtype not in _FLOAT_DTYPES]
        if wrong:
            raise _fault(path, f"parameters must be float16, float32 or float64; not so: {', '.join(wrong)}")
        try:
            params = {name: _read_tensor(fh, start, tensors[name]) for name in spec.param_shapes}
        except (OSError, EOFError) as exc:
            raise _fault(path, f"not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if not allow_nonfinite:
        problem = nonfinite_problem(params)
        if problem:
            raise _fault(path, f"holds non-finite values: {problem}; pass allow_nonfinite=True to load them anyway")
    return spec, params


def _spec_of(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> ModelSpec:
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise _fault(
            path,
            "its metadata holds no yat-core model spec (a safetensors file not written by yat-core; "
            "load its tensors with safetensors and import them into a model you build)",
        )
    version = metadata.get("format_version", "")
    if not (version.isascii() and version.isdigit() and len(version) <= 9):
        raise _fault(path, f"its metadata has no valid format_version (got {version!r})")
    if int(version) > FORMAT_VERSION:
        raise _fault(
            path, f"format version {version} is newer than this yat-core reads ({FORMAT_VERSION}); upgrade yat-core"
        )
    try:
        return spec_from_json(metadata["spec"])
    except (ValueError, TypeError, OverflowError) as exc:
        raise _fault(path, f"the model spec in its metadata is invalid: {exc}") from None


# ---------------------------------------------------------------------------------------------- either format


def save_weights(path: str | os.PathLike[str], params: Mapping[str, Any], spec: ModelSpec) -> Path:
    """Write a model's parameters to ``path`` as its suffix says: ``.safetensors`` (with the spec) or ``.npz``.

    Both are written atomically after ``params`` are checked against ``spec``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from yat_core.mlp import init_mlp_numpy
    >>> from yat_core.spec import seed_spec
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> params = init_mlp_numpy(seed_spec(), 0)
    >>> [save_weights(folder / name, params, seed_spec()).name for name in ("w.npz", "w.safetensors")]
    ['w.npz', 'w.safetensors']
    >>> save_weights(folder / "w.pt", {}, seed_spec())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: weight file .../w.pt: unknown format '.pt'; name it *.safetensors or *.npz
    """
    if _suffix(path) == ".safetensors":
        return save_safetensors(path, params, spec)
    checked = check_params(params, spec)
    _finite_or_fault(path, checked, "refusing to write")
    return save_npz(path, checked)


def load_weights(
    path: str | os.PathLike[str], spec: ModelSpec | None = None, *, allow_nonfinite: bool = False
) -> tuple[ModelSpec | None, dict[str, np.ndarray]]:
    """Read a weight file of either format; return its model's spec (None for ``.npz`` without ``spec``) and parameters.

    Names, shapes and dtypes are checked (against ``spec``, or a safetensors file's own
    spec) before any array is read; see :func:`load_safetensors` and
    :func:`yat_core.nn.interchange.load_npz` for every check.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` or ``.npz`` file.
    spec : ModelSpec, optional
        The model the parameters are for. A ``.safetensors`` file must hold this very
        model; an ``.npz`` file's parameters are checked against it.
    allow_nonfinite : bool
        Return NaN and infinite values instead of refusing the file.

    Raises
    ------
    WeightFileError
        Any fault of the file, or a file of another model than ``spec`` (naming the file).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from yat_core.mlp import init_mlp_numpy
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> p = save_weights(pathlib.Path(tempfile.mkdtemp()) / "w.npz", init_mlp_numpy(seed_spec(), 0), seed_spec())
    >>> load_weights(p)[0] is None, load_weights(p, seed_spec())[0] == seed_spec()
    (True, True)
    >>> load_weights(p, cnn_spec())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    yat_core.errors.WeightFileError: weight file .../w.npz: parameters do not fit the model: ...
    """
    if _suffix(path) == ".safetensors":
        stored, params = load_safetensors(path, allow_nonfinite=allow_nonfinite)
        if spec is not None and stored != spec:
            raise _fault(path, f"it holds another model: {_difference(stored, spec)}")
        return stored, params
    params = load_npz(path, spec, allow_nonfinite=allow_nonfinite)
    if spec is not None:
        try:
            params = check_params(params, spec)
        except (TypeError, ValueError) as exc:  # pragma: no cover - load_npz checked the same against spec
            raise _fault(path, str(exc)) from None
    return spec, params


def _difference(stored: ModelSpec, wanted: ModelSpec) -> str:
    # The first thing that differs, in words.
    if len(stored.layers) != len(wanted.layers):
        return f"{len(stored.layers)} layers, the model has {len(wanted.layers)}"
    for i, (a, b) in enumerate(zip(stored.layers, wanted.layers)):
        if a != b:
            fields = [
                f"{f.name} {getattr(a, f.name)!r} (the model's: {getattr(b, f.name)!r})"
                for f in dataclasses.fields(LayerSpec)
                if getattr(a, f.name) != getattr(b, f.name)
            ]
            return f"layer {i} has {', '.join(fields)}"
    return f"input shape {stored.input_shape}, the model's is {wanted.input_shape}"


# ---------------------------------------------------------------------------------------------- native models


def _framework(framework: str | ModuleType) -> ModuleType:
    if isinstance(framework, ModuleType):
        return framework
    from yat_core.nn import get_framework

    return get_framework(framework)


def _model_spec(model: Any) -> ModelSpec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"expected a native model of a ModelSpec (build_model's), got {type(model).__name__}")
    return spec


def export_weights(framework: str | ModuleType, model: Any, path: str | os.PathLike[str]) -> Path:
    """Save a native model's parameters to ``path`` (``.safetensors`` with its spec, or ``.npz``).

    Parameters
    ----------
    framework : str or module
        A framework of :mod:`yat_core.nn` (``"torch"``, ``"nnx"``, ``"linen"``, ``"mlx"``,
        ``"keras"``, ``"tf"``) or its module.
    model
        That framework's model of a spec (its ``build_model``'s).
    path : str or os.PathLike

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from yat_core.spec import seed_spec
    >>> torch_nn = _framework("torch")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.safetensors"
    >>> p = export_weights("torch", torch_nn.build_model(seed_spec(), 0), path)
    >>> model = build_from_file("mlx", p)
    >>> type(model).__module__, model.spec == seed_spec()
    ('yat_core.nn.mlx', True)
    """
    module = _framework(framework)
    return save_weights(path, module.export_params(model), _model_spec(model))


def import_weights(
    framework: str | ModuleType, model: Any, path: str | os.PathLike[str], *, allow_nonfinite: bool = False
) -> Any:
    """Load ``path`` (either format) into a native model in place and return it.

    The file must hold the model's own spec (``.safetensors``) or parameters that fit it
    (``.npz``); nothing is written into the model unless every check passes (finite
    values included, unless ``allow_nonfinite``).
    """
    module = _framework(framework)
    _, params = load_weights(path, _model_spec(model), allow_nonfinite=allow_nonfinite)
    return module.import_params(model, params)


def build_from_file(
    framework: str | ModuleType,
    path: str | os.PathLike[str],
    *,
    spec: ModelSpec | None = None,
    allow_nonfinite: bool = False,
    **options: Any,
) -> Any:
    """The native model of the file's spec in ``framework``, holding the file's parameters.

    Parameters
    ----------
    framework : str or module
        A framework of :mod:`yat_core.nn`, or its module.
    path : str or os.PathLike
        A ``.safetensors`` file (it holds the spec) or an ``.npz`` file (then ``spec`` is needed).
    spec : ModelSpec, optional
        The model; for a ``.safetensors`` file it must be the file's.
    allow_nonfinite : bool
        Accept NaN and infinite parameters instead of refusing the file.
    **options
        Passed to the framework's ``build_model`` (``dtype``, ``device``, ...).
    """
    module = _framework(framework)
    stored, params = load_weights(path, spec, allow_nonfinite=allow_nonfinite)
    if stored is None:
        raise _fault(path, "an .npz file holds no model spec; pass spec= (or use a .safetensors file)")
    return module.import_params(module.build_model(stored, 0, **options), params)
