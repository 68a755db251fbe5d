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
(missing, truncated or corrupt, no model in its metadata, a model that does not fit its
tensors, a wrong dtype, non-finite values) is a :class:`WeightFileError` that names the
file and the fault. Names, shapes and dtypes are checked from the safetensors header
before any array is read.

The ``safetensors`` package (extra ``yat-core[safetensors]``) is imported only when a
``.safetensors`` file is read or written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from yat_core._io import atomic_write
from yat_core._lazy import require
from yat_core.errors import DataError
from yat_core.nn.interchange import check_params, load_npz, save_npz
from yat_core.spec import LayerSpec, ModelSpec, spec_from_record, spec_record

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SUFFIXES",
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
#: safetensors dtypes a parameter may have (NumPy reads them all; cast to the model's dtype on import).
_FLOAT_DTYPES = ("F16", "F32", "F64")


class WeightFileError(DataError):
    """A weight file is missing, truncated, corrupt, of another model, or holds unusable values."""


def _fault(path: str | os.PathLike[str], what: str) -> WeightFileError:
    return WeightFileError(f"weight file {os.fspath(path)}: {what}")


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
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the model spec is not JSON ({exc})") from None
    return spec_from_record(record)


# ---------------------------------------------------------------------------------------------- safetensors


def _finite_or_fault(path: str | os.PathLike[str], params: Mapping[str, np.ndarray], verb: str) -> None:
    bad = []
    for name, value in params.items():
        n_nan, n_inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        if n_nan or n_inf:
            bad.append(f"{name} ({n_nan} NaN, {n_inf} infinite of {value.size})")
    if bad:
        raise _fault(path, f"{verb} non-finite values: {'; '.join(bad)}")


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


def _header_problems(spec: ModelSpec, found: Mapping[str, tuple[list[int], str]]) -> list[str]:
    # The same wording as check_params, from the header alone.
    expected = spec.param_shapes
    problems = [f"missing {n} (shape {s})" for n, s in expected.items() if n not in found]
    problems += [f"unexpected {n}" for n in found if n not in expected]
    problems += [
        f"{n} has shape {tuple(found[n][0])}, expected {s}"
        for n, s in expected.items()
        if n in found and tuple(found[n][0]) != s
    ]
    return problems


def load_safetensors(path: str | os.PathLike[str]) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """Read a file of :func:`save_safetensors`: the model's spec and its parameters (in spec order).

    The header is checked before any array is read: the format and its version, the
    spec, and every tensor's name, shape and dtype against the spec. The values are
    then checked to be finite.

    Raises
    ------
    WeightFileError
        Naming the file and its fault: missing, not a readable safetensors file
        (truncated or corrupt), no yat-core model in the metadata, a later format
        version, a spec that does not fit the tensors, a dtype other than float16/32/64,
        non-finite values.

    Examples
    --------
    >>> load_safetensors("no/such/file.safetensors")
    Traceback (most recent call last):
    ...
    yat_core.weights.WeightFileError: weight file no/such/file.safetensors: no such file
    """
    source = Path(path)
    if not source.is_file():
        raise _fault(path, "is a folder, not a file" if source.is_dir() else "no such file")
    _safetensors(f"reading {os.fspath(path)}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(source, framework="np") as handle:
            metadata = handle.metadata() or {}
            spec = _spec_of(path, metadata)
            found = {
                name: (handle.get_slice(name).get_shape(), handle.get_slice(name).get_dtype()) for name in handle.keys()
            }
            problems = _header_problems(spec, found)
            if problems:
                raise _fault(path, "its tensors do not fit the model in its metadata: " + "; ".join(problems))
            wrong = [f"{n} ({dtype})" for n, (_, dtype) in found.items() if dtype not in _FLOAT_DTYPES]
            if wrong:
                raise _fault(path, f"parameters must be float16, float32 or float64; not so: {', '.join(wrong)}")
            params = {name: handle.get_tensor(name) for name in spec.param_shapes}
    except SafetensorError as exc:
        raise _fault(path, f"not a readable safetensors file (truncated or corrupt?): {exc}") from None
    _finite_or_fault(path, params, "holds")
    return spec, params


def _spec_of(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> ModelSpec:
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise _fault(
            path,
            "its metadata holds no yat-core model spec (a safetensors file not written by yat-core; "
            "load its tensors with safetensors and import them into a model you build)",
        )
    version = metadata.get("format_version", "")
    if not version.isdigit():
        raise _fault(path, f"its metadata has no valid format_version (got {version!r})")
    if int(version) > FORMAT_VERSION:
        raise _fault(
            path, f"format version {version} is newer than this yat-core reads ({FORMAT_VERSION}); upgrade yat-core"
        )
    try:
        return spec_from_json(metadata["spec"])
    except ValueError as exc:
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
    path: str | os.PathLike[str], spec: ModelSpec | None = None
) -> tuple[ModelSpec | None, dict[str, np.ndarray]]:
    """Read a weight file of either format; return its model's spec (None for ``.npz`` without ``spec``) and parameters.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` or ``.npz`` file.
    spec : ModelSpec, optional
        The model the parameters are for. A ``.safetensors`` file must hold this very
        model; an ``.npz`` file's parameters are checked against it.

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
    yat_core.weights.WeightFileError: weight file .../w.npz: parameters do not fit the model: ...
    """
    if _suffix(path) == ".safetensors":
        stored, params = load_safetensors(path)
        if spec is not None and stored != spec:
            raise _fault(path, f"it holds another model: {_difference(stored, spec)}")
        return stored, params
    params = _load_npz(path)
    if spec is not None:
        try:
            params = check_params(params, spec)
        except (TypeError, ValueError) as exc:
            raise _fault(path, str(exc)) from None
    return spec, params


def _load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    source = Path(path)
    if not source.is_file():
        raise _fault(path, "is a folder, not a file" if source.is_dir() else "no such file")
    try:
        params = load_npz(source)
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise _fault(path, f"not a readable .npz file (truncated or corrupt?): {exc}") from None
    wrong = [f"{n} ({a.dtype})" for n, a in params.items() if a.dtype.kind != "f"]
    if wrong:
        raise _fault(path, f"parameters must be real floating arrays; not so: {', '.join(wrong)}")
    _finite_or_fault(path, params, "holds")
    return params


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


def import_weights(framework: str | ModuleType, model: Any, path: str | os.PathLike[str]) -> Any:
    """Load ``path`` (either format) into a native model in place and return it.

    The file must hold the model's own spec (``.safetensors``) or parameters that fit it
    (``.npz``); nothing is written into the model unless every check passes.
    """
    module = _framework(framework)
    _, params = load_weights(path, _model_spec(model))
    return module.import_params(model, params)


def build_from_file(
    framework: str | ModuleType, path: str | os.PathLike[str], *, spec: ModelSpec | None = None, **options: Any
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
    **options
        Passed to the framework's ``build_model`` (``dtype``, ``device``, ...).
    """
    module = _framework(framework)
    stored, params = load_weights(path, spec)
    if stored is None:
        raise _fault(path, "an .npz file holds no model spec; pass spec= (or use a .safetensors file)")
    return module.import_params(module.build_model(stored, 0, **options), params)
