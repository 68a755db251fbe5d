"""The ⵟ-product ("Yat") and the plain dense layer, in array-API terms.

For ``x`` of shape ``(..., in)``, kernel ``w`` of shape ``(out, in)``::

    dot  = x @ w.T
    dist = max(|x|^2 + |w_j|^2 - 2 dot, 0)
    y    = alpha * (dot + bias)^2 / (dist + epsilon)

This module holds the only implementation of that formula in the package, and its
analytic vector-Jacobian product (used by the NumPy reference backend and checked
against finite differences and every autodiff framework by the parity suite).
Everything runs on any array-API namespace and under ``jax.jit``,
``torch.compile`` and ``mx.compile``: no value-dependent Python branches, no host
conversion, no in-place mutation.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from yat_core.namespaces import array_namespace

__all__ = [
    "DEFAULT_EPSILON",
    "SPHERICAL_NORM_EPS",
    "yat_product",
    "yat_product_vjp",
    "yat_forward",
    "yat_backward",
    "YatResiduals",
    "YatGrads",
    "RatioParts",
    "RatioGrads",
    "yat_ratio",
    "yat_ratio_vjp",
    "dense",
    "softplus",
    "softplus_inverse",
    "validate_epsilon",
]

Array = Any
#: Default epsilon of the denominator, shared by every layer in every framework.
DEFAULT_EPSILON = 1e-5
#: Floor of the norm in spherical mode (as ``torch.nn.functional.normalize``).
SPHERICAL_NORM_EPS = 1e-12


class YatGrads(NamedTuple):
    """Gradients of a scalar loss through :func:`yat_product`.

    A field is ``None`` where the matching input was a constant (a Python number
    or ``None``), so it has no gradient.
    """

    x: Array
    w: Array
    bias: Array | None
    alpha: Array | None
    epsilon: Array | None


class YatResiduals(NamedTuple):
    """Intermediates of :func:`yat_forward` that :func:`yat_backward` reuses.

    Keeping them means the backward pass never recomputes the forward matrix
    product.
    """

    x_unit: Array  # x as used in the dot (normalised in spherical mode)
    w_unit: Array
    x_norm: Array | None  # only in spherical mode
    w_norm: Array | None
    numer_base: Array  # dot + bias
    raw_dist: Array  # distance before the clamp
    denom: Array  # clamped distance + epsilon
    ratio: Array  # (dot + bias)^2 / denom
    y: Array
    bias: Any  # the options, as given (arrays or constants)
    alpha: Any
    epsilon: Any
    spherical: bool


class RatioParts(NamedTuple):
    """The ⵟ-product's elementwise half, from the dot product and the raw distance to ``y``."""

    numer_base: Array  # dot + bias
    raw_dist: Array  # distance before the clamp
    denom: Array  # clamped distance + epsilon
    ratio: Array  # (dot + bias)^2 / denom
    y: Array


class RatioGrads(NamedTuple):
    """Gradients of ``sum(g * y)`` through :func:`yat_ratio` (``dot`` has the distance's dot term folded in)."""

    numer: Array  # of dot + bias
    denom: Array  # of the clamped distance + epsilon
    dist: Array  # of the raw distance (zero where the clamp holds)
    dot: Array  # of the dot product: numer - 2 dist


def yat_ratio(dot: Array, raw_dist: Array, bias: Any, alpha: Any, epsilon: Any, /, *, xp: Any) -> RatioParts:
    """``alpha * (dot + bias)^2 / (max(raw_dist, 0) + epsilon)``, keeping the intermediates.

    The one implementation of the formula once ``dot`` and the squared distance are
    known: the dense product (:func:`yat_forward`) and the convolutions
    (:mod:`yat_core.conv`) both end here. ``bias`` broadcasts against ``dot``.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> yat_ratio(xp.asarray([2.0]), xp.asarray([-1e-9]), 1.0, 0.5, 1.0, xp=xp).y  # the clamp: distance 0
    array([4.5])
    """
    # The expansion cancels when x is close to a kernel row and can dip below 0;
    # `where` (not `maximum`) so every framework agrees on the gradient at the tie.
    dist = xp.where(raw_dist > 0, raw_dist, 0.0)
    numer_base = dot if bias is None else dot + bias
    denom = dist + epsilon
    ratio = (numer_base * numer_base) / denom
    return RatioParts(numer_base, raw_dist, denom, ratio, ratio if alpha is None else alpha * ratio)


def yat_ratio_vjp(parts: RatioParts, g: Array, alpha: Any, /, *, xp: Any) -> RatioGrads:
    """Gradients of ``sum(g * y)`` through :func:`yat_ratio`, from its intermediates.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> parts = yat_ratio(xp.asarray([2.0]), xp.asarray([1.0]), None, None, 1.0, xp=xp)  # y = dot^2 / (dist + 1)
    >>> grads = yat_ratio_vjp(parts, xp.asarray([1.0]), None, xp=xp)
    >>> grads.numer, grads.dist  # 2 dot / 2, -dot^2 / 2^2
    (array([2.]), array([-1.]))
    """
    g_ratio = g if alpha is None else g * alpha
    g_numer = g_ratio * 2.0 * parts.numer_base / parts.denom
    g_denom = -g_ratio * parts.ratio / parts.denom
    g_dist = xp.where(parts.raw_dist > 0, g_denom, 0.0)
    return RatioGrads(g_numer, g_denom, g_dist, g_numer - 2.0 * g_dist)


def _is_number(v: Any) -> bool:
    # Exact types: NumPy's 0-d results (np.float64 subclasses float) are arrays here.
    return type(v) in (int, float)


def validate_epsilon(epsilon: Any) -> None:
    """Reject a constant ``epsilon`` that is not a finite number > 0, and an array epsilon that is not a scalar.

    An array epsilon (the learnable case, ``softplus(raw)``) must have shape ``()``
    or ``(1,)``: it is one number added to every squared distance, and its
    gradient is the sum over all of them (a per-unit epsilon would broadcast in
    the forward pass and then fail in the backward one). Its values are not
    inspected: reading them would force a host synchronisation and break tracing.

    Examples
    --------
    >>> validate_epsilon(1e-5)
    >>> validate_epsilon(0.0)
    Traceback (most recent call last):
    ...
    ValueError: epsilon must be a finite number > 0, got 0.0
    >>> validate_epsilon(np.full(3, 0.1))
    Traceback (most recent call last):
    ...
    ValueError: epsilon must be a number or a scalar array (shape () or (1,)), got shape (3,)
    """
    shape = getattr(epsilon, "shape", None)
    if shape is not None and tuple(shape) not in ((), (1,)):
        raise ValueError(f"epsilon must be a number or a scalar array (shape () or (1,)), got shape {tuple(shape)}")
    if _is_number(epsilon) and not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    # Host NumPy values can be checked without a device sync or breaking a trace.
    if isinstance(epsilon, (np.ndarray, np.generic)) and not np.all(np.isfinite(epsilon) & (np.asarray(epsilon) > 0)):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon!r}")
    if isinstance(epsilon, bool) or epsilon is None:
        raise TypeError(f"epsilon must be a number > 0 or an array, got {epsilon!r}")


def _check_inputs(x: Array, w: Array, bias: Any, alpha: Any, epsilon: Any, xp: Any) -> None:
    validate_epsilon(epsilon)
    if len(getattr(w, "shape", ())) != 2:
        raise ValueError(f"kernel w must be 2-D (out, in), got shape {tuple(w.shape)}")
    if len(getattr(x, "shape", ())) < 1:
        raise ValueError(f"x must have at least 1 dimension (..., in), got shape {tuple(x.shape)}")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"x has {x.shape[-1]} features but the kernel expects {w.shape[1]} "
            f"(x.shape={tuple(x.shape)}, w.shape={tuple(w.shape)}; kernel layout is (out, in))"
        )
    for name, a in (("x", x), ("w", w)):
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"{name} must be a real floating array, got dtype {a.dtype}")
    if x.dtype != w.dtype:
        raise TypeError(f"x and w must share a dtype, got {x.dtype} and {w.dtype}")
    for name, value in (("bias", bias), ("alpha", alpha), ("epsilon", epsilon)):
        if value is not None and not _is_number(value) and not hasattr(value, "shape"):
            raise TypeError(f"{name} must be an array, a number or None, got {type(value).__name__}")
    if bias is not None and not _is_number(bias) and tuple(bias.shape) != (w.shape[0],):
        raise ValueError(f"bias must have shape ({w.shape[0]},), got {tuple(bias.shape)}")
    if alpha is not None and not _is_number(alpha) and tuple(alpha.shape) not in ((), (1,)):
        raise ValueError(f"alpha must be a scalar, got shape {tuple(alpha.shape)}")


def _row_norm(a: Array, xp: Any) -> Array:
    # Floor the square before the root: autodiff of sqrt at 0 would give NaN for a zero row.
    sq = xp.sum(a * a, axis=-1, keepdims=True)
    floor = SPHERICAL_NORM_EPS**2
    # `where`, not `maximum(array, float)`: the latter breaks torch.compile's graph through array-api-compat.
    return xp.sqrt(xp.where(sq > floor, sq, floor))


def _parts(x: Array, w: Array, bias: Any, alpha: Any, epsilon: Any, spherical: bool, xp: Any) -> YatResiduals:
    x_norm = w_norm = None
    if spherical:
        x_norm, w_norm = _row_norm(x, xp), _row_norm(w, xp)
        x_unit, w_unit = x / x_norm, w / w_norm
    else:
        x_unit, w_unit = x, w
    dot = x_unit @ xp.matrix_transpose(w_unit)
    if spherical:
        raw_dist = 2.0 - 2.0 * dot
    else:
        x_sq = xp.sum(x_unit * x_unit, axis=-1, keepdims=True)
        w_sq = xp.sum(w_unit * w_unit, axis=-1)
        raw_dist = x_sq + w_sq - 2.0 * dot
    parts = yat_ratio(dot, raw_dist, bias, alpha, epsilon, xp=xp)
    return YatResiduals(x_unit, w_unit, x_norm, w_norm, *parts, bias, alpha, epsilon, spherical)


def yat_product(
    x: Array,
    w: Array,
    /,
    *,
    bias: Array | float | None = None,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    xp: Any = None,
) -> Array:
    """The ⵟ-product of inputs ``x`` with the rows of kernel ``w``.

    Parameters
    ----------
    x : array, shape (..., in)
        Inputs, real floating.
    w : array, shape (out, in)
        Kernel, one row per output unit; same dtype and library as ``x``.
    bias : array of shape (out,), float, or None
        Added to the dot product in the numerator only (never to the distance).
    alpha : scalar array, float, or None
        Output scale; ``None`` means no scaling.
    epsilon : float > 0 or array
        Added to the squared distance. Pass ``softplus(raw)`` for a learnable
        epsilon (see :func:`softplus`).
    spherical : bool
        Normalise ``x`` and the rows of ``w`` first; the distance is then
        ``2 - 2 dot``.
    xp : namespace, optional
        The array namespace; inferred from ``x`` and ``w`` when omitted.

    Returns
    -------
    array, shape (..., out)
        Non-negative when ``alpha >= 0``.

    Raises
    ------
    ValueError
        For mismatched shapes or ``epsilon <= 0``.
    TypeError
        For non-floating or mixed dtypes, or arrays from different libraries.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0]]); w = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> yat_product(x, w, epsilon=1.0)  # x == w[0]: dot 1, dist 0; x ⟂ w[1]: dot 0
    array([[1., 0.]])
    """
    xp = array_namespace(x, w) if xp is None else xp
    _check_inputs(x, w, bias, alpha, epsilon, xp)
    return _parts(x, w, bias, alpha, epsilon, spherical, xp).y


def _unit_vjp(g_unit: Array, unit: Array, norm: Array, xp: Any) -> Array:
    # d(a / max(|a|, tiny)) / da applied to g: project out the radial part, unless
    # the norm sat on its floor (then the map is a plain scaling).
    radial = xp.sum(g_unit * unit, axis=-1, keepdims=True)
    on_floor = norm <= SPHERICAL_NORM_EPS
    return xp.where(on_floor, g_unit, g_unit - unit * radial) / norm


def yat_forward(
    x: Array,
    w: Array,
    /,
    *,
    bias: Array | float | None = None,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    xp: Any = None,
) -> tuple[Array, YatResiduals]:
    """:func:`yat_product` that also returns what :func:`yat_backward` needs.

    Examples
    --------
    >>> import numpy as np
    >>> y, res = yat_forward(np.ones((1, 2)), np.ones((3, 2)), epsilon=1.0)
    >>> y.shape, res.denom.shape
    ((1, 3), (1, 3))
    """
    xp = array_namespace(x, w) if xp is None else xp
    _check_inputs(x, w, bias, alpha, epsilon, xp)
    res = _parts(x, w, bias, alpha, epsilon, spherical, xp)
    return res.y, res


def yat_backward(res: YatResiduals, g: Array, /, *, xp: Any = None) -> YatGrads:
    """Gradients of ``sum(g * y)`` from the residuals of :func:`yat_forward`.

    Two matrix products, like a linear layer's backward pass: the distance's dot
    term is folded into the dot's gradient.
    """
    xp = array_namespace(g) if xp is None else xp
    alpha, bias, epsilon = res.alpha, res.bias, res.epsilon
    parts = RatioParts(res.numer_base, res.raw_dist, res.denom, res.ratio, res.y)
    # dist = |x|^2 + |w|^2 - 2 dot (or 2 - 2 dot): g_dot has its dot term folded in.
    g_numer, g_denom, g_dist, g_dot = yat_ratio_vjp(parts, g, alpha, xp=xp)
    batch_axes = tuple(range(g.ndim - 1))

    def _over_batch(a: Array) -> Array:
        return xp.sum(a, axis=batch_axes) if batch_axes else a

    g_bias = None if bias is None or _is_number(bias) else _over_batch(g_numer)
    g_alpha = None
    if alpha is not None and not _is_number(alpha):
        g_alpha = xp.reshape(xp.sum(g * res.ratio), alpha.shape)
    g_eps = None if _is_number(epsilon) else xp.reshape(xp.sum(g_denom), epsilon.shape)

    n_in, n_out = res.x_unit.shape[-1], res.w_unit.shape[0]
    x2d = xp.reshape(res.x_unit, (-1, n_in))
    g_dot2d = xp.reshape(g_dot, (-1, n_out))
    g_x_unit = g_dot @ res.w_unit
    g_w_unit = xp.matrix_transpose(g_dot2d) @ x2d
    if res.spherical:
        g_x = _unit_vjp(g_x_unit, res.x_unit, res.x_norm, xp)
        g_w = _unit_vjp(g_w_unit, res.w_unit, res.w_norm, xp)
    else:
        g_x = g_x_unit + 2.0 * res.x_unit * xp.sum(g_dist, axis=-1, keepdims=True)
        g_w = g_w_unit + 2.0 * res.w_unit * xp.reshape(_over_batch(g_dist), (-1, 1))
    return YatGrads(g_x, g_w, g_bias, g_alpha, g_eps)


def yat_product_vjp(
    x: Array,
    w: Array,
    g: Array,
    /,
    *,
    bias: Array | float | None = None,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    xp: Any = None,
) -> YatGrads:
    """Analytic vector-Jacobian product of :func:`yat_product`.

    Given the upstream gradient ``g`` (same shape as the output), returns the
    gradient of ``sum(g * yat_product(x, w, ...))`` with respect to every array
    input (``None`` for constants). Recomputes the forward pass; use
    :func:`yat_forward` / :func:`yat_backward` to reuse it.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0]]); w = np.array([[0.5, -1.0]])
    >>> grads = yat_product_vjp(x, w, np.ones((1, 1)))
    >>> grads.x.shape, grads.w.shape, grads.bias is None
    ((1, 2), (1, 2), True)
    """
    xp = array_namespace(x, w, g) if xp is None else xp
    _, res = yat_forward(x, w, bias=bias, alpha=alpha, epsilon=epsilon, spherical=spherical, xp=xp)
    return yat_backward(res, g, xp=xp)


def dense(x: Array, w: Array, /, *, bias: Array | None = None, xp: Any = None) -> Array:
    """Linear layer ``x @ w.T + bias`` with the same kernel layout ``(out, in)``.

    Examples
    --------
    >>> import numpy as np
    >>> dense(np.ones((1, 3)), np.ones((2, 3)), bias=np.array([0.0, 1.0]))
    array([[3., 4.]])
    """
    xp = array_namespace(x, w) if xp is None else xp
    if getattr(w, "ndim", None) != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"dense: x.shape={tuple(x.shape)} does not fit kernel w.shape={tuple(w.shape)} (kernel layout is (out, in))"
        )
    y = x @ xp.matrix_transpose(w)
    return y if bias is None else y + bias


def softplus(raw: Array, /, *, xp: Any = None) -> Array:
    """``log(1 + exp(raw))``, computed without overflow; keeps a learnable epsilon > 0.

    Examples
    --------
    >>> import numpy as np
    >>> float(softplus(np.asarray(0.0)))  # log 2
    0.6931471805599453
    """
    xp = array_namespace(raw) if xp is None else xp
    return xp.where(raw > 0, raw, 0.0) + xp.log1p(xp.exp(-xp.abs(raw)))


def softplus_inverse(value: float) -> float:
    """The raw parameter whose :func:`softplus` is ``value`` (host-side, for init).

    Examples
    --------
    >>> round(softplus_inverse(0.6931471805599453), 12)
    0.0
    """
    if not value > 0:
        raise ValueError(f"softplus_inverse needs a value > 0, got {value!r}")
    return value + math.log(-math.expm1(-value))
