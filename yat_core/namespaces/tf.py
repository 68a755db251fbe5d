"""TensorFlow tensors and variables as an array-API namespace (array-api-compat does not cover them).

Imported only when a TensorFlow array is seen, so TensorFlow is already loaded.
Works eagerly and inside ``tf.function``.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import numpy as np
import tensorflow as tf

from yat_core.namespaces._table import build_namespace

__all__ = ["namespace", "device", "to_numpy"]

_SCALARS = (bool, int, float)


def _like(a: Any, b: Any) -> tuple[Any, Any]:
    # TF does not promote Python scalars in where/maximum: give them the tensor's dtype.
    if isinstance(a, _SCALARS) and not isinstance(b, _SCALARS):
        a = tf.constant(a, dtype=b.dtype)
    elif isinstance(b, _SCALARS) and not isinstance(a, _SCALARS):
        b = tf.constant(b, dtype=a.dtype)
    return a, b


def _where(condition: Any, x1: Any, x2: Any, /) -> Any:
    return tf.where(condition, *_like(x1, x2))


def _maximum(x1: Any, x2: Any, /) -> Any:
    return tf.maximum(*_like(x1, x2))


def _asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> Any:
    if dtype is None:
        return tf.convert_to_tensor(obj)
    dtype = tf.as_dtype(dtype)
    if tf.is_tensor(obj) or isinstance(obj, tf.Variable):
        return tf.cast(obj, dtype)
    # Through NumPy, so Python floats reach float64 unrounded (tf would make them float32 first).
    return tf.convert_to_tensor(np.asarray(obj, dtype=dtype.as_numpy_dtype))


def _argmax(x: Any, axis: int | None, keepdims: bool) -> Any:
    # tf.argmax reads axis=None as axis 0; the array API means "over the flattened array".
    if axis is None:
        flat = tf.argmax(tf.reshape(x, [-1]), axis=0)
        return tf.reshape(flat, [1] * len(x.shape)) if keepdims else flat
    out = tf.argmax(x, axis=axis)
    return tf.expand_dims(out, axis) if keepdims else out


def _take(x: Any, indices: Any, *, axis: int | None = None) -> Any:
    return tf.gather(tf.reshape(x, [-1]), indices) if axis is None else tf.gather(x, indices, axis=axis)


def _zeros(shape: Any, *, dtype: Any = None, device: Any = None) -> Any:
    return tf.zeros(shape, dtype=tf.float32 if dtype is None else tf.as_dtype(dtype))


def _flip(x: Any, /, *, axis: Any = None) -> Any:
    return tf.reverse(x, axis=list(range(len(x.shape))) if axis is None else list(np.atleast_1d(axis)))


def _ones_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> Any:
    return tf.ones_like(x, dtype=None if dtype is None else tf.as_dtype(dtype))


def _broadcast_to(x: Any, /, shape: tuple[int, ...]) -> Any:
    return tf.broadcast_to(x, shape)


def _zeros_like(x: Any, /, *, dtype: Any = None, device: Any = None) -> Any:
    return tf.zeros_like(x, dtype=None if dtype is None else tf.as_dtype(dtype))


@functools.cache
def namespace() -> types.SimpleNamespace:
    """An array-API namespace over ``tf`` for the calls yat_core makes.

    Examples
    --------
    >>> xp = namespace()
    >>> x = xp.asarray([[1.0, -2.0]])
    >>> xp.where(x > 0, x, 0.0).numpy().tolist(), xp.isdtype(x.dtype, "real floating")
    ([[1.0, 0.0]], True)
    """
    return build_namespace(
        "yat_core.namespaces.tf",
        dtype_name=lambda d: tf.as_dtype(d).name,
        dtype=tf.as_dtype,
        cast=lambda x, d: tf.cast(x, tf.as_dtype(d)),
        reduce={"sum": tf.reduce_sum, "max": tf.reduce_max, "mean": tf.reduce_mean},
        argmax=_argmax,
        arange=lambda start, stop, step, dtype: tf.range(start, stop, step, dtype=dtype and tf.as_dtype(dtype)),
        expand_dims=tf.expand_dims,
        reshape=tf.reshape,
        take=_take,
        join={"concat": tf.concat, "stack": tf.stack},
        asarray=_asarray,
        flip=_flip,
        ones_like=_ones_like,
        broadcast_to=_broadcast_to,
        logical_and=tf.logical_and,
        logical_or=tf.logical_or,
        logical_not=tf.logical_not,
        permute_dims=tf.transpose,
        where=_where,
        maximum=_maximum,
        zeros=_zeros,
        zeros_like=_zeros_like,
        sqrt=tf.sqrt,
        isfinite=tf.math.is_finite,
        exp=tf.exp,
        log=tf.math.log,
        log1p=tf.math.log1p,
        abs=tf.abs,
    )


def device(x: Any) -> str:
    """The tensor's device string (``"/job:localhost/.../device:CPU:0"``; empty in a graph)."""
    return str(x.device)


def to_numpy(x: Any) -> np.ndarray:
    """A host copy of a TensorFlow tensor or variable."""
    return np.asarray(x.numpy())
