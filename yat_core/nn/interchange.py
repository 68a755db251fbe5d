"""Framework-free helpers shared by the native layer modules.

The interchange format is a plain ``{name: numpy array}`` mapping in the core's
names and layouts (``"0.kernel"`` is ``(out, in)``, ``"0.alpha"`` a 0-d array), the
same one :func:`yat_core.mlp.init_mlp_numpy` returns; on disk it is an ``.npz``
file with one entry per parameter. :func:`check_params` holds an incoming mapping
to an :class:`~yat_core.mlp.MLPSpec` before any framework touches it, so every
framework rejects a bad file with the same message.

:func:`export_arrays` and :func:`import_arrays` are the whole of a framework's
interchange: the framework says how to read and write one parameter of one layer
and whether its kernels are stored ``(in, out)``; names, order, layout and checks
are handled here, once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from yat_core._io import atomic_write
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


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a parameter file written by :func:`save_npz` (or :func:`numpy.savez`).

    Object arrays are refused (``allow_pickle=False``): a parameter file never
    needs to run code.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> p = save_npz(pathlib.Path(tempfile.mkdtemp()) / "w.npz", {"0.alpha": np.float32(1.0)})
    >>> load_npz(p)
    {'0.alpha': array(1., dtype=float32)}
    """
    with np.load(Path(path), allow_pickle=False) as data:
        return {name: np.array(data[name]) for name in data.files}


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
    problems = [f"missing {n} (shape {s})" for n, s in expected.items() if n not in arrays]
    problems += [f"unexpected {n}" for n in arrays if n not in expected]
    problems += [
        f"{n} has shape {arrays[n].shape}, expected {s}"
        for n, s in expected.items()
        if n in arrays and arrays[n].shape != s
    ]
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
