"""Keras variables and symbolic tensors as an array-API namespace over ``keras.ops``.

A Keras layer computes on its backend's own tensors (``jax.Array``,
``torch.Tensor``, ``tf.Tensor``), which resolve to those libraries' namespaces;
this adapter serves the objects whose type lives in ``keras`` itself
(``keras.Variable``, ``keras.KerasTensor``), and works on every Keras backend.
Imported only when such an object is seen, so Keras is already loaded.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import keras
import numpy as np
from keras import ops

from yat_core.namespaces._table import build_namespace

__all__ = ["namespace", "device", "to_numpy", "dtype_name"]


def dtype_name(dtype: Any) -> str:
    """Any backend's dtype object (``np.float32``, ``torch.float32``, ``"float32"``) as Keras names it."""
    return keras.backend.standardize_dtype(dtype)


def _asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> Any:
    return ops.convert_to_tensor(obj, dtype=None if dtype is None else dtype_name(dtype))


def _zeros(shape: Any, *, dtype: Any = None, device: Any = None) -> Any:
    return ops.zeros(shape, dtype=dtype_name(dtype or "float32"))


def _flip(x: Any, /, *, axis: Any = None) -> Any:
    return ops.flip(x, axis=axis)


def _ones_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> Any:
    return ops.ones_like(x, dtype=None if dtype is None else dtype_name(dtype))


def _broadcast_to(x: Any, /, shape: tuple[int, ...]) -> Any:
    return ops.broadcast_to(x, shape)


def _zeros_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> Any:
    return ops.zeros_like(x, dtype=None if dtype is None else dtype_name(dtype))


@functools.cache
def namespace() -> types.SimpleNamespace:
    """An array-API namespace over ``keras.ops``: the calls yat_core makes, on any Keras backend.

    Examples
    --------
    >>> xp = namespace()
    >>> x = xp.asarray(np.array([[1.0, -2.0]], np.float32))
    >>> tuple(xp.matrix_transpose(x).shape), xp.isdtype(x.dtype, "real floating")
    ((2, 1), True)
    """
    return build_namespace(
        "yat_core.namespaces.keras",
        dtype_name=dtype_name,
        dtype=lambda name: name,
        cast=lambda x, d: ops.cast(x, dtype_name(d)),
        reduce={"sum": ops.sum, "max": ops.max, "mean": ops.mean},
        argmax=lambda x, axis, keepdims: ops.argmax(x, axis=axis, keepdims=keepdims),
        arange=ops.arange,
        expand_dims=ops.expand_dims,
        reshape=ops.reshape,
        take=ops.take,
        join={"concat": ops.concatenate, "stack": ops.stack},
        asarray=_asarray,
        flip=_flip,
        ones_like=_ones_like,
        broadcast_to=_broadcast_to,
        logical_and=ops.logical_and,
        logical_or=ops.logical_or,
        logical_not=ops.logical_not,
        permute_dims=ops.transpose,
        where=ops.where,
        maximum=ops.maximum,
        zeros=_zeros,
        zeros_like=_zeros_like,
        sqrt=ops.sqrt,
        isfinite=ops.isfinite,
        exp=ops.exp,
        log=ops.log,
        log1p=ops.log1p,
        abs=ops.abs,
    )


def device(x: Any) -> str:
    """Where Keras keeps ``x`` (the backend's device string, ``"symbolic"`` for a KerasTensor)."""
    if isinstance(x, keras.KerasTensor):
        return "symbolic"
    return str(getattr(ops.convert_to_tensor(x), "device", "cpu"))


def to_numpy(x: Any) -> np.ndarray:
    """A host copy of a Keras variable or tensor."""
    return np.asarray(ops.convert_to_numpy(x))
