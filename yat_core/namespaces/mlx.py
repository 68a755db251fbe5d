"""MLX arrays as an array-API namespace (array-api-compat does not cover MLX).

``mlx.core`` follows the array API closely but not exactly; :func:`namespace` fills
the few gaps the core uses. Imported only when an MLX array is seen (or by the MLX
backend), so MLX is already loaded.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import mlx.core as mx
import numpy as np

__all__ = ["namespace", "device", "to_numpy", "asarray"]


def _isdtype(dtype: Any, kind: Any) -> bool:
    if isinstance(kind, tuple):
        return any(_isdtype(dtype, k) for k in kind)
    if not isinstance(kind, str):
        return bool(dtype == kind)
    if kind == "bool":
        return bool(dtype == mx.bool_)
    category = {
        "real floating": mx.floating,
        "integral": mx.integer,
        "signed integer": mx.signedinteger,
        "unsigned integer": mx.unsignedinteger,
        "complex floating": mx.complexfloating,
        "numeric": mx.number,
    }.get(kind)
    if category is None:
        raise ValueError(f"unknown dtype kind {kind!r}")
    return bool(mx.issubdtype(dtype, category)) and not (kind == "real floating" and dtype == mx.complex64)


_FROM_NUMPY = {np.dtype(np.float64): mx.float64, np.dtype(np.float32): mx.float32}


def asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> mx.array:
    """``mx.array`` that keeps a NumPy array's float64 (``mx.array`` alone would make it float32)."""
    if dtype is None and isinstance(obj, np.ndarray):
        dtype = _FROM_NUMPY.get(obj.dtype)
    return mx.array(obj, dtype=dtype) if dtype is not None else mx.array(obj)


def _zeros(shape: Any, *, dtype: Any = None, device: Any = None) -> mx.array:
    return mx.zeros(shape, dtype=dtype or mx.float32)


def _arange(start: Any, /, stop: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None) -> mx.array:
    # The standard's signature; MLX arrays live in unified memory, so `device` is not needed.
    if stop is None:
        start, stop = 0, start
    return mx.arange(start, stop, step, dtype=dtype) if dtype is not None else mx.arange(start, stop, step)


def _matrix_transpose(x: mx.array, /) -> mx.array:
    return mx.swapaxes(x, -1, -2)


@functools.cache
def namespace() -> types.SimpleNamespace:
    """An array-API namespace over ``mlx.core`` for the calls yat_core makes.

    Examples
    --------
    >>> xp = namespace()
    >>> xp.matrix_transpose(xp.asarray([[1.0, 2.0]])).shape
    (2, 1)
    """
    names = {n: getattr(mx, n) for n in dir(mx) if not n.startswith("_")}
    names.update(
        isdtype=_isdtype,
        asarray=asarray,
        zeros=_zeros,
        arange=_arange,
        matrix_transpose=_matrix_transpose,
        __name__="yat_core.namespaces.mlx",
    )
    return types.SimpleNamespace(**names)


def device(x: Any) -> Any:
    """MLX arrays live in unified memory; the device is where work runs by default."""
    return mx.default_device()


def to_numpy(x: Any) -> np.ndarray:
    """A host copy of an MLX array."""
    return np.array(x)
