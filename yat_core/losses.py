"""Softmax cross-entropy and accuracy, in array-API terms."""

from __future__ import annotations

from typing import Any

from yat_core.namespaces import array_namespace, device_of

__all__ = ["log_softmax", "one_hot", "softmax_cross_entropy", "cross_entropy_grad", "count_correct"]

Array = Any


def log_softmax(logits: Array, /, *, xp: Any = None) -> Array:
    """Row-wise ``log(softmax(logits))``, shifted by the row maximum so ``exp`` cannot overflow.

    Examples
    --------
    >>> import numpy as np
    >>> np.round(log_softmax(np.array([[0.0, 0.0]])), 4)
    array([[-0.6931, -0.6931]])
    """
    xp = array_namespace(logits) if xp is None else xp
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def one_hot(labels: Array, num_classes: int, dtype: Any, /, *, xp: Any = None) -> Array:
    """One-hot rows of ``labels`` (any integer dtype), as ``dtype``."""
    xp = array_namespace(labels) if xp is None else xp
    classes = xp.arange(num_classes, dtype=labels.dtype, device=device_of(labels))  # on the labels' device (GPU)
    return xp.astype(xp.expand_dims(labels, axis=-1) == classes, dtype)


def softmax_cross_entropy(logits: Array, labels: Array, /, *, xp: Any = None) -> Array:
    """Mean softmax cross-entropy of ``logits`` (n, classes) against integer ``labels`` (n,).

    Examples
    --------
    >>> import numpy as np
    >>> round(float(softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))), 6)  # log 4
    1.386294
    """
    xp = array_namespace(logits, labels) if xp is None else xp
    target = one_hot(labels, logits.shape[-1], logits.dtype, xp=xp)
    return -xp.mean(xp.sum(target * log_softmax(logits, xp=xp), axis=-1))


def cross_entropy_grad(logits: Array, labels: Array, /, *, xp: Any = None) -> Array:
    """Gradient of :func:`softmax_cross_entropy` with respect to ``logits``."""
    xp = array_namespace(logits, labels) if xp is None else xp
    target = one_hot(labels, logits.shape[-1], logits.dtype, xp=xp)
    return (xp.exp(log_softmax(logits, xp=xp)) - target) / logits.shape[0]


def count_correct(logits: Array, labels: Array, /, *, xp: Any = None) -> Array:
    """Number of rows whose arg-max equals the label (an integer array, no host sync)."""
    xp = array_namespace(logits, labels) if xp is None else xp
    predicted = xp.astype(xp.argmax(logits, axis=-1), labels.dtype)
    return xp.sum(xp.astype(predicted == labels, xp.int32))
