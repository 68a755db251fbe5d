"""Framework-free helpers shared by the native layer modules.

The interchange format is a plain ``{name: numpy array}`` mapping in the core's
names and layouts (``"0.kernel"`` is ``(out, in)``, ``"0.alpha"`` a 0-d array), the
same one :func:`yat_core.mlp.init_mlp_numpy` returns; on disk it is an ``.npz``
file with one entry per parameter. :func:`check_params` holds an incoming mapping
to an :class:`~yat_core.mlp.MLPSpec` before any framework touches it, so every
framework rejects a bad file with the same message.

The option helpers translate a native layer's ``bias`` / ``alpha`` arguments
(``True``, ``False``, a number) to the core's :class:`~yat_core.mlp.LayerSpec`
options and back, so every framework accepts the same values with the same
defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from yat_core._io import atomic_write
from yat_core.mlp import LEARNABLE, LayerSpec, MLPSpec, Option
from yat_core.product import DEFAULT_EPSILON

__all__ = [
    "save_npz",
    "load_npz",
    "check_params",
    "layer_option",
    "native_option",
    "yat_layer_spec",
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
    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


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


def check_params(params: Mapping[str, Any], spec: MLPSpec) -> dict[str, np.ndarray]:
    """Validate a parameter mapping against ``spec``; return it as NumPy arrays in spec order.

    Parameters
    ----------
    params : mapping of str to array-like
        Names and values in the core's layout.
    spec : MLPSpec
        The model the parameters are meant for.

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
        raise ValueError("parameters do not fit the model: " + "; ".join(problems))
    bad = [f"{n} ({a.dtype})" for n, a in arrays.items() if a.dtype.kind not in _FLOAT_KINDS]
    if bad:
        raise TypeError(f"parameters must be real floating arrays; not so: {', '.join(bad)}")
    return {name: arrays[name] for name in expected}


def layer_option(value: Any, name: str) -> Option:
    """A native layer's ``bias`` / ``alpha`` argument as the core's option.

    ``True`` or ``"learnable"``: a learnable parameter; ``False`` or ``None``:
    absent; a number: a constant.

    Examples
    --------
    >>> layer_option(True, "bias"), layer_option(False, "bias"), layer_option(2, "alpha")
    ('learnable', None, 2.0)
    """
    if value is True or (isinstance(value, str) and value == LEARNABLE):
        return LEARNABLE
    if value is False or value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise ValueError(f"{name} must be True (learnable), False/None (absent) or a number (constant), got {value!r}")


def native_option(option: Option) -> bool | float:
    """The inverse of :func:`layer_option`: ``True``, ``False`` or the constant.

    Examples
    --------
    >>> native_option("learnable"), native_option(None), native_option(0.5)
    (True, False, 0.5)
    """
    if option == LEARNABLE:
        return True
    return False if option is None else float(option)


def yat_layer_spec(
    in_features: int,
    out_features: int,
    *,
    bias: Any = True,
    alpha: Any = True,
    epsilon: float = DEFAULT_EPSILON,
    learnable_epsilon: bool = False,
    spherical: bool = False,
) -> LayerSpec:
    """The core's description of a native Yat layer built with these arguments.

    The native layers keep it as ``layer.spec`` and hand its options to
    :func:`yat_core.product.yat_product`; building it also runs the core's checks
    (``epsilon > 0``, sizes >= 1).

    Examples
    --------
    >>> yat_layer_spec(4, 3, bias=False, alpha=2.0)
    LayerSpec(kind='yat', in_features=4, out_features=3, bias=None, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False, activation=None)
    """
    return LayerSpec(
        "yat",
        int(in_features),
        int(out_features),
        bias=layer_option(bias, "bias"),
        alpha=layer_option(alpha, "alpha"),
        epsilon=float(epsilon),
        learnable_epsilon=bool(learnable_epsilon),
        spherical=bool(spherical),
    )
