"""Yat attention and the Yat embedding, in array-API terms.

Yat attention scores a query against a key with the ⵟ-product instead of the scaled
dot product. For ``q (..., Tq, H, d)``, ``k (..., Tk, H, d)`` and ``v (..., Tk, H, dv)``::

    s[..., h, i, j] = alpha * (q_i . k_j)^2 / ((max(|q_i|^2 + |k_j|^2 - 2 q_i.k_j, 0) + eps) * sqrt(d))
    a = softmax over j of s, masked keys excluded
    out_i = sum_j a_ij v_j

A query whose keys are all masked attends to nothing: its weights and output are zero,
and so are the gradients through it, never NaN. ``spherical=True`` normalises ``q``
and ``k`` first (the distance is then ``2 - 2 q.k``). The score's formula is
:func:`yat_core.product.yat_ratio`, the one the dense and convolutional products use.

The embedding is a table ``E (vocab, d)`` looked up by integer ids
(:func:`yat_embed`); :func:`yat_embed_attend` scores queries against every row, a
tied output layer, and is the dense ⵟ-product with the table as its kernel.

:func:`yat_attention_vjp` is the analytic gradient (the NumPy reference backend's);
everything here traces under ``jax.jit``, ``torch.compile`` and ``mx.compile``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from yat_core.namespaces import array_namespace, device_of
from yat_core.namespaces.native import stop_gradient
from yat_core.product import (
    DEFAULT_EPSILON,
    RatioParts,
    _row_norm,
    _unit_vjp,
    validate_epsilon,
    yat_product,
    yat_ratio,
    yat_ratio_vjp,
)

__all__ = [
    "AttentionGrads",
    "yat_attention",
    "yat_attention_weights",
    "yat_attention_vjp",
    "softmax_attention",
    "softmax_attention_vjp",
    "yat_embed",
    "yat_embed_attend",
]

Array = Any


class AttentionGrads(NamedTuple):
    """Gradients of a scalar loss through :func:`yat_attention` (``None`` for a constant option)."""

    q: Array
    k: Array
    v: Array
    alpha: Array | None
    epsilon: Array | None


class _Scores(NamedTuple):
    # What the weights' backward pass needs from the forward pass.
    qh: Array  # q as used in the dot, (..., H, Tq, d): normalised in spherical mode
    kh: Array
    q_norm: Array | None  # spherical mode only
    k_norm: Array | None
    parts: RatioParts  # of the unscaled ratio (dot^2 / (dist + eps)), (..., H, Tq, Tk)
    scale: Any  # alpha / sqrt(d)
    allowed: Array | None  # (..., H, Tq, Tk) broadcastable; None: every key
    weights: Array  # the softmax, zero where masked


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _heads_first(a: Array, xp: Any) -> Array:
    """``(..., T, H, d)`` -> ``(..., H, T, d)`` (its own inverse)."""
    n = a.ndim
    return xp.permute_dims(a, (*range(n - 3), n - 2, n - 3, n - 1))


def _check(q: Array, k: Array, v: Array | None, mask: Any, alpha: Any, epsilon: Any, xp: Any) -> None:
    validate_epsilon(epsilon)
    arrays = (("q", q), ("k", k)) + ((("v", v),) if v is not None else ())
    for name, a in arrays:
        if not hasattr(a, "shape") or a.ndim < 3:
            raise ValueError(f"{name} must have shape (..., tokens, heads, head_size), got {getattr(a, 'shape', a)!r}")
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"{name} must be a real floating array, got dtype {a.dtype}")
        if a.dtype != q.dtype:
            raise TypeError(f"q and {name} must share a dtype, got {q.dtype} and {a.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head size, got {q.shape[-1]} and {k.shape[-1]}")
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"q and k must have the same number of heads, got {q.shape[-2]} and {k.shape[-2]}")
    if q.shape[:-3] != k.shape[:-3]:
        raise ValueError(f"q and k must have the same batch shape, got {tuple(q.shape[:-3])} and {tuple(k.shape[:-3])}")
    if v is not None and (tuple(v.shape[:-1]) != tuple(k.shape[:-1])):
        raise ValueError(
            f"v must have k's batch, token and head axes {tuple(k.shape[:-1])} (any value size), got {tuple(v.shape)}"
        )
    if alpha is not None and not _is_number(alpha) and tuple(alpha.shape) not in ((), (1,)):
        raise ValueError(f"alpha must be a scalar, got shape {tuple(alpha.shape)}")
    if mask is not None:
        if not hasattr(mask, "shape") or not xp.isdtype(mask.dtype, "bool"):
            raise TypeError(f"mask must be a boolean array (True: the query may attend to the key), got {mask!r}")
        target = (*q.shape[:-3], q.shape[-2], q.shape[-3], k.shape[-3])
        try:
            np.broadcast_shapes(tuple(mask.shape), target)
        except ValueError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape {target} "
                "(..., heads, queries, keys)"
            ) from None


def _allowed(mask: Any, causal: bool, tq: int, tk: int, like: Array, xp: Any) -> Array | None:
    if not causal:
        return mask
    rows = xp.arange(tq, device=device_of(like))
    cols = xp.arange(tk, device=device_of(like))
    lower = rows[:, None] >= cols[None, :]  # key j visible from query i when j <= i
    return lower if mask is None else xp.logical_and(mask, lower)


def _scores(q: Array, k: Array, mask: Any, causal: bool, alpha: Any, epsilon: Any, spherical: bool, xp: Any) -> _Scores:
    if not isinstance(causal, bool) or not isinstance(spherical, bool):
        raise TypeError(f"causal and spherical must be bools, got {causal!r} and {spherical!r}")
    qh, kh = _heads_first(q, xp), _heads_first(k, xp)
    q_norm = k_norm = None
    if spherical:
        q_norm, k_norm = _row_norm(qh, xp), _row_norm(kh, xp)
        qh, kh = qh / q_norm, kh / k_norm
    dot = qh @ xp.matrix_transpose(kh)  # (..., H, Tq, Tk)
    if spherical:
        raw_dist = 2.0 - 2.0 * dot
    else:
        q_sq = xp.sum(qh * qh, axis=-1, keepdims=True)
        k_sq = xp.matrix_transpose(xp.sum(kh * kh, axis=-1, keepdims=True))
        raw_dist = q_sq + k_sq - 2.0 * dot
    parts = yat_ratio(dot, raw_dist, None, None, epsilon, xp=xp)
    root = math.sqrt(int(q.shape[-1]))
    scale = 1.0 / root if alpha is None else alpha / root
    s = parts.ratio * scale
    allowed = _allowed(mask, causal, int(q.shape[-3]), int(k.shape[-3]), q, xp)
    return _Scores(qh, kh, q_norm, k_norm, parts, scale, allowed, _softmax(s, allowed, xp))


def _softmax(s: Array, allowed: Array | None, xp: Any) -> Array:
    """Softmax over the last axis among the allowed entries; zero where masked and on rows with none allowed."""
    # The shift by the row maximum cancels in the ratio: its gradient is zero, so autodiff
    # need not carry it (stop_gradient saves a pass over every score matrix).
    if allowed is None:
        top = stop_gradient(xp.max(s, axis=-1, keepdims=True), xp)
        e = xp.exp(s - top)
    else:
        # Masked scores never reach exp: a fully masked row would otherwise give inf - inf,
        # and autodiff through `where` would multiply their gradient by 0 * inf.
        s = xp.where(allowed, s, -xp.inf)
        top = xp.max(s, axis=-1, keepdims=True)
        top = stop_gradient(xp.where(xp.isfinite(top), top, 0.0), xp)
        e = xp.where(allowed, xp.exp(xp.where(allowed, s, top) - top), 0.0)
    total = xp.sum(e, axis=-1, keepdims=True)
    return e / xp.where(total > 0, total, 1.0)


def _weights_vjp(a: Array, vh: Array, gh: Array, xp: Any) -> tuple[Array, Array]:
    """Through ``out = a @ v`` and the softmax: the gradients of the scores and of ``v`` (heads first)."""
    g_v = xp.matrix_transpose(a) @ gh
    g_a = gh @ xp.matrix_transpose(vh)
    return a * (g_a - xp.sum(g_a * a, axis=-1, keepdims=True)), g_v  # zero where masked (a = 0)


def yat_attention_weights(
    q: Array,
    k: Array,
    /,
    *,
    mask: Array | None = None,
    causal: bool = False,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    xp: Any = None,
) -> Array:
    """The attention weights: softmax over the keys of the Yat scores, ``(..., heads, Tq, Tk)``.

    Arguments as :func:`yat_attention`; rows whose keys are all masked are zero.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.array([[[1.0, 0.0]]]); k = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # (T, H=1, d=2)
    >>> np.round(yat_attention_weights(q, k, epsilon=1.0), 3)  # the key equal to q wins
    array([[[0.67, 0.33]]])
    """
    xp = array_namespace(q, k) if xp is None else xp
    _check(q, k, None, mask, alpha, epsilon, xp)
    return _scores(q, k, mask, causal, alpha, epsilon, spherical, xp).weights


def yat_attention(
    q: Array,
    k: Array,
    v: Array,
    /,
    *,
    mask: Array | None = None,
    causal: bool = False,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    xp: Any = None,
) -> Array:
    """Yat attention: the softmax of the Yat scores weighs the values.

    Parameters
    ----------
    q : array, shape (..., Tq, heads, d)
    k : array, shape (..., Tk, heads, d)
    v : array, shape (..., Tk, heads, dv)
        Same dtype and library; any leading batch axes, the same for all three.
    mask : bool array, optional
        Broadcasts to ``(..., heads, Tq, Tk)``; True where the query may attend to the key.
    causal : bool
        Query ``i`` sees keys ``j <= i`` only (combined with ``mask``).
    alpha : float, scalar array or None
        Score scale (1 when None); the score is also divided by ``sqrt(d)``.
    epsilon : float > 0 or array
        Added to the squared distance.
    spherical : bool
        Normalise each query and key first.
    xp : namespace, optional

    Returns
    -------
    array, shape (..., Tq, heads, dv)
        Zero for a query whose keys are all masked.

    Raises
    ------
    ValueError
        For q/k head sizes, head counts or batch shapes that differ, a v that does not
        match k, a mask that does not broadcast to the scores, or ``epsilon <= 0``.
    TypeError
        For non-floating or mixed dtypes, or a mask that is not boolean.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.array([[[1.0, 0.0]]]); k = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    >>> v = np.array([[[3.0]], [[0.0]]])
    >>> np.round(yat_attention(q, k, v, epsilon=1.0), 3)  # 0.67 * 3 + 0.33 * 0
    array([[[2.009]]])
    >>> yat_attention(q, k, v, mask=np.array([[False, False]]))  # nothing to attend to
    array([[[0.]]])
    """
    xp = array_namespace(q, k, v) if xp is None else xp
    _check(q, k, v, mask, alpha, epsilon, xp)
    weights = _scores(q, k, mask, causal, alpha, epsilon, spherical, xp).weights
    return _heads_first(weights @ _heads_first(v, xp), xp)


def yat_attention_vjp(
    q: Array,
    k: Array,
    v: Array,
    g: Array,
    /,
    *,
    mask: Array | None = None,
    causal: bool = False,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    xp: Any = None,
) -> AttentionGrads:
    """Analytic gradients of ``sum(g * yat_attention(q, k, v, ...))``.

    The values' gradient and the softmax's adjoint, then
    :func:`yat_core.product.yat_ratio_vjp` for the score: the distance's dot term is
    folded into the dot's gradient, as in the dense product. Masked entries have zero
    weight, so they pass no gradient.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.ones((2, 1, 3)); k = np.ones((4, 1, 3)); v = np.ones((4, 1, 5))
    >>> grads = yat_attention_vjp(q, k, v, np.ones((2, 1, 5)))
    >>> grads.q.shape, grads.k.shape, grads.v.shape, grads.alpha is None
    ((2, 1, 3), (4, 1, 3), (4, 1, 5), True)
    """
    xp = array_namespace(q, k, v, g) if xp is None else xp
    _check(q, k, v, mask, alpha, epsilon, xp)
    _check_g(q, v, g)
    sc = _scores(q, k, mask, causal, alpha, epsilon, spherical, xp)
    g_s, g_v = _weights_vjp(sc.weights, _heads_first(v, xp), _heads_first(g, xp), xp)
    g_alpha = None
    alpha_shape = getattr(alpha, "shape", None)  # an array alpha is learnable; a number is not
    if alpha_shape is not None:
        g_alpha = xp.reshape(xp.sum(g_s * sc.parts.ratio) / math.sqrt(int(q.shape[-1])), tuple(alpha_shape))
    ratio_grads = yat_ratio_vjp(sc.parts, g_s * sc.scale, None, xp=xp)
    g_eps = xp.reshape(xp.sum(ratio_grads.denom), tuple(epsilon.shape)) if hasattr(epsilon, "shape") else None
    g_dot = ratio_grads.dot
    g_qh = g_dot @ sc.kh
    g_kh = xp.matrix_transpose(g_dot) @ sc.qh
    if spherical:
        g_qh = _unit_vjp(g_qh, sc.qh, sc.q_norm, xp)
        g_kh = _unit_vjp(g_kh, sc.kh, sc.k_norm, xp)
    else:
        g_dist = ratio_grads.dist
        g_qh = g_qh + 2.0 * sc.qh * xp.sum(g_dist, axis=-1, keepdims=True)
        g_kh = g_kh + 2.0 * sc.kh * xp.matrix_transpose(xp.sum(g_dist, axis=-2, keepdims=True))
    return AttentionGrads(_heads_first(g_qh, xp), _heads_first(g_kh, xp), _heads_first(g_v, xp), g_alpha, g_eps)


def _check_g(q: Array, v: Array, g: Array) -> None:
    expected = (*tuple(q.shape[:-1]), int(v.shape[-1]))
    if tuple(g.shape) != expected:
        raise ValueError(f"upstream gradient g must have the output's shape {expected}, got {tuple(g.shape)}")


def _dot_weights(q: Array, k: Array, mask: Any, causal: bool, xp: Any) -> tuple[Array, Array, Array]:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    qh, kh = _heads_first(q, xp), _heads_first(k, xp)
    s = (qh @ xp.matrix_transpose(kh)) / math.sqrt(int(q.shape[-1]))
    allowed = _allowed(mask, causal, int(q.shape[-3]), int(k.shape[-3]), q, xp)
    return qh, kh, _softmax(s, allowed, xp)


def softmax_attention(
    q: Array, k: Array, v: Array, /, *, mask: Array | None = None, causal: bool = False, xp: Any = None
) -> Array:
    """Scaled dot-product attention, ``softmax(q.k / sqrt(d)) v``: the baseline Yat attention replaces.

    The same layouts, mask, causal and fully-masked-row rules as :func:`yat_attention`.

    Examples
    --------
    >>> import numpy as np
    >>> q = np.zeros((1, 1, 2)); k = np.ones((2, 1, 2)); v = np.array([[[1.0]], [[3.0]]])
    >>> softmax_attention(q, k, v)  # equal scores: the mean of the values
    array([[[2.]]])
    """
    xp = array_namespace(q, k, v) if xp is None else xp
    _check(q, k, v, mask, None, DEFAULT_EPSILON, xp)
    _, _, weights = _dot_weights(q, k, mask, causal, xp)
    return _heads_first(weights @ _heads_first(v, xp), xp)


def softmax_attention_vjp(
    q: Array,
    k: Array,
    v: Array,
    g: Array,
    /,
    *,
    mask: Array | None = None,
    causal: bool = False,
    xp: Any = None,
) -> AttentionGrads:
    """Analytic gradients of ``sum(g * softmax_attention(q, k, v, ...))`` (``alpha`` and ``epsilon`` None).

    Examples
    --------
    >>> import numpy as np
    >>> grads = softmax_attention_vjp(np.ones((2, 1, 3)), np.ones((4, 1, 3)), np.ones((4, 1, 5)), np.ones((2, 1, 5)))
    >>> grads.q.shape, grads.v.shape, grads.alpha
    ((2, 1, 3), (4, 1, 5), None)
    """
    xp = array_namespace(q, k, v, g) if xp is None else xp
    _check(q, k, v, mask, None, DEFAULT_EPSILON, xp)
    _check_g(q, v, g)
    qh, kh, weights = _dot_weights(q, k, mask, causal, xp)
    g_s, g_v = _weights_vjp(weights, _heads_first(v, xp), _heads_first(g, xp), xp)
    g_dot = g_s / math.sqrt(int(q.shape[-1]))
    g_q = _heads_first(g_dot @ kh, xp)
    g_k = _heads_first(xp.matrix_transpose(g_dot) @ qh, xp)
    return AttentionGrads(g_q, g_k, _heads_first(g_v, xp), None, None)


def yat_embed(table: Array, ids: Array, /, *, xp: Any = None) -> Array:
    """Rows of the embedding ``table (vocab, d)`` for integer ``ids`` of any shape: ``(*ids.shape, d)``.

    Raises
    ------
    TypeError
        For ids that are not integers.
    ValueError
        For a table that is not 2-D, or (for host NumPy ids, which can be read without a
        device synchronisation) ids outside ``[0, vocab)``.

    Examples
    --------
    >>> import numpy as np
    >>> yat_embed(np.arange(6.0).reshape(3, 2), np.array([[2, 0]]))
    array([[[4., 5.],
            [0., 1.]]])
    """
    xp = array_namespace(table, ids) if xp is None else xp
    if getattr(table, "ndim", 0) != 2:
        raise ValueError(f"the embedding table must be 2-D (vocab, d), got shape {getattr(table, 'shape', None)}")
    if not hasattr(ids, "dtype") or not xp.isdtype(ids.dtype, "integral"):
        raise TypeError(f"embedding ids must be an integer array, got {getattr(ids, 'dtype', type(ids).__name__)}")
    vocab = int(table.shape[0])
    if isinstance(ids, np.ndarray) and ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        bad = ids[(ids < 0) | (ids >= vocab)]
        raise ValueError(f"embedding ids must lie in [0, {vocab}), got {int(bad.flat[0])}")
    flat = xp.reshape(ids, (-1,))
    return xp.reshape(xp.take(table, flat, axis=0), (*tuple(ids.shape), int(table.shape[1])))


def yat_embed_attend(
    query: Array,
    table: Array,
    /,
    *,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    xp: Any = None,
) -> Array:
    """Yat score of each query ``(..., d)`` against every row of ``table (vocab, d)``: ``(..., vocab)``.

    The tied output layer: :func:`yat_core.product.yat_product` with the table as its
    kernel (no bias; the distance clamped at 0).

    Examples
    --------
    >>> import numpy as np
    >>> yat_embed_attend(np.array([[1.0, 0.0]]), np.eye(2), epsilon=1.0)  # the query equals row 0
    array([[1., 0.]])
    """
    return yat_product(query, table, alpha=alpha, epsilon=epsilon, spherical=spherical, xp=xp)
