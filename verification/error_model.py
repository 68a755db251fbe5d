"""The error model every backend is held to (derived in ``verification/ERROR_MODEL.md``).

For each output element it bounds ``|computed - exact|``, where *exact* is the
product of the same (float32) inputs in real arithmetic, as the float64 oracle
evaluates it. The bound is a running error analysis: it starts from the standard
worst-case bound of a dot product of length ``k`` in any summation order,
``|fl(x . w) - x . w| <= gamma_k sum_i |x_i w_i|`` with ``gamma_k = k u / (1 - k u)``,
and carries intervals for the numerator ``n = dot + bias`` and the denominator
``d = dist + eps`` through the square, the division and ``alpha``. It is evaluated
with the oracle's exact intermediates, so it is

- tight where the problem is well conditioned: the observed error is a modest
  fraction of it (the rigorous ``gamma_k`` grows like ``k``, real rounding errors
  like ``sqrt(k)``);
- honest where it is not: near ``x == w`` the distance cancels, and the bound
  grows with ``(|x|^2 + |w|^2) / eps`` exactly as the real error can.

The oracle's own float64 error is bounded by the same model with the float64 unit
roundoff and added (:func:`total_bound`), so nothing is assumed about the oracle.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from verification.oracle import YatOracle, mlp_forward64
from yat_core.mlp import MLPSpec
from yat_core.product import SPHERICAL_NORM_EPS

__all__ = [
    "Precision",
    "FLOAT32",
    "FLOAT64",
    "MLX_FLOAT32",
    "MLX_FLOAT64",
    "ORACLE64",
    "precision_for",
    "gamma",
    "YatBound",
    "yat_bound",
    "yat_vjp_bound",
    "linear_bound",
    "mlp_forward_bounds",
    "total_bound",
    "cross_entropy_grad_bound",
    "mlp_grad_bounds",
    "loss_bound",
    "AttentionBound",
    "softmax_interval",
    "attention_bound",
    "attention_vjp_bound",
]


class Precision(NamedTuple):
    """How a backend computes: unit roundoff ``u`` of + - * / (correctly rounded);
    ``tiny``, the absolute error one operation may add through underflow (the smallest
    normal number: a flush-to-zero CPU loses that); ``fn_rel``, the relative error of
    one ``exp`` or ``log1p`` (not correctly rounded in any library)."""

    name: str
    u: float
    tiny: float
    fn_rel: float
    direct_distance: bool = False  # dist as sum((x - w)^2), as the oracle computes it


FLOAT32 = Precision("float32", 2.0**-24, 2.0**-126, 4 * 2.0**-24)
FLOAT64 = Precision("float64", 2.0**-53, 2.0**-1022, 4 * 2.0**-53)
#: MLX's CPU ``exp`` is off by up to 65 float32 ulps (its error grows with |x|:
#: 2 ulps on [-1, 0], 15 on [-14, -1], 65 near +-87), and computes float64 at that
#: float32 accuracy (measured, and re-measured by test_error_model.py); its
#: arithmetic itself is exact to ``u``.
MLX_FLOAT32 = FLOAT32._replace(name="mlx-float32", fn_rel=128 * 2.0**-24)
MLX_FLOAT64 = FLOAT64._replace(name="mlx-float64", fn_rel=128 * 2.0**-24)
#: The oracle itself: float64, and the distance by direct differences (a sum of
#: non-negative terms: relative error gamma_(k+2), no cancellation).
ORACLE64 = FLOAT64._replace(name="oracle-float64", direct_distance=True)
PRECISIONS = {p.name: p for p in (FLOAT32, FLOAT64, MLX_FLOAT32, MLX_FLOAT64, ORACLE64)}


def precision_for(backend: str, dtype: Any) -> Precision:
    """The :class:`Precision` a backend computes ``dtype`` with."""
    name = np.dtype(dtype).name
    return PRECISIONS.get(f"{backend}-{name}", PRECISIONS[name])


def softplus_rel(prec: Precision) -> float:
    """Relative error of ``max(r, 0) + log1p(exp(-|r|))``: exp's error moves log1p by at
    most the same relative amount (``t / (1 + t) <= log1p(t)``), log1p adds its own,
    the sum one rounding."""
    return 2.0 * prec.fn_rel + 2.0 * prec.u


def sigmoid_rel(prec: Precision) -> float:
    """Relative error of ``1 / (1 + exp(-r))`` or the chain rule through softplus."""
    return prec.fn_rel + 4.0 * prec.u


def gamma(m: int | float, u: float) -> float:
    """``m u / (1 - m u)``: the relative error bound of ``m`` chained roundings."""
    return np.inf if m * u >= 1 else m * u / (1.0 - m * u)


def _const_rel(value: Any, prec: Precision) -> float:
    """Relative rounding error of a Python constant stored in ``prec`` (0 if exact)."""
    if isinstance(value, np.ndarray) or prec.u <= FLOAT64.u:
        return 0.0
    return 0.0 if float(np.float32(value)) == float(value) else prec.u


class YatBound(NamedTuple):
    """Bounds of one product evaluation: ``y`` is the per-element bound of
    ``|y_computed - y_exact|``; the rest are intermediate intervals that the gradient
    bound reuses (``*_lo``/``*_hi``: an interval that holds the computed value)."""

    y: np.ndarray
    y_lo: np.ndarray  # the computed |y| lies in [y_lo, y_hi] (y has the sign of alpha)
    y_hi: np.ndarray
    n: np.ndarray  # |n_computed - n_exact|
    dist: np.ndarray  # |dist_computed - dist_exact| (before the clamp's effect)
    d_lo: np.ndarray
    d_hi: np.ndarray
    r_lo: np.ndarray  # ratio n^2 / d
    r_hi: np.ndarray
    alpha_lo: Any  # |alpha| as the backend holds it
    alpha_hi: Any
    xa: np.ndarray  # bound on |x| as used in the dot (normalised in spherical mode)
    wa: np.ndarray
    e_x: np.ndarray  # componentwise error of the rows as used
    e_w: np.ndarray


def _spherical_rows(o: YatOracle, e_in: np.ndarray, prec: Precision) -> tuple[np.ndarray, ...]:
    """Magnitudes and componentwise errors of the normalised rows.

    Sum of squares (gamma_k), square root (halves it, plus 2u), division (2u):
    each normalised component carries a relative error of at most ``rho``. An
    input error ``e_in`` moves ``x / |x|`` by at most ``2 |e_in| / |x|``.
    """
    u, k = prec.u, o.x_raw.shape[-1]
    gk = gamma(k, u)
    rho = (gk / 2.0 + 4.0 * u) * (1.0 + gk) * (1.0 + 4.0 * u)
    moved = 2.0 * np.sqrt(np.sum(e_in * e_in, axis=-1, keepdims=True)) / o.x_norm
    e_x = rho * (np.abs(o.x) + moved) + moved
    e_w = rho * np.abs(o.w)
    return np.abs(o.x) + e_x, np.abs(o.w) + e_w, e_x, e_w


def _dot_and_dist(o: YatOracle, e_in: np.ndarray, prec: Precision) -> tuple[np.ndarray, ...]:
    """Bounds on the dot product and the distance, and the row magnitudes used."""
    u, tiny, k = prec.u, prec.tiny, o.x_raw.shape[-1]
    gk = gamma(k, u)
    if o.spherical:
        xa, wa, e_x, e_w = _spherical_rows(o, e_in, prec)
    else:
        xa, wa, e_x, e_w = np.abs(o.x) + e_in, np.abs(o.w), e_in, np.zeros_like(o.w)
    s = xa @ wa.T  # >= sum_i |x_i w_i| of the rows as computed
    e_dot = e_x @ wa.T + np.abs(o.x) @ e_w.T + gk * s + k * tiny
    if o.spherical:  # raw = 2 - 2 dot: one rounding of a value at most 2 + 2 s
        e_dist = 2.0 * e_dot + 2.0 * u * (1.0 + s) + tiny
    else:
        moved = 2.0 * (np.sum(np.abs(o.x_raw) * e_in, axis=-1, keepdims=True) + e_in @ np.abs(o.w_raw).T)
        moved = moved + np.sum(e_in * e_in, axis=-1, keepdims=True)
        if prec.direct_distance:  # sum of rounded squares of rounded differences
            e_dist = moved + gamma(k + 2, u) * (o.dist + moved) + 3.0 * (k + 2) * tiny
        else:  # raw = |x|^2 + |w|^2 - 2 dot: k + 2 roundings over those three magnitudes
            sx = np.sum(xa * xa, axis=-1, keepdims=True)
            sw = np.sum(wa * wa, axis=-1)[None, :]
            e_dist = moved + gamma(k + 2, u) * (sx + sw + 2.0 * s) + 3.0 * (k + 2) * tiny
    return e_dot, e_dist, s, xa, wa, e_x, e_w


def yat_bound(o: YatOracle, prec: Precision = FLOAT32, x_err: np.ndarray | None = None) -> YatBound:
    """Per-element bound of a backend's ``yat_product`` error in precision ``prec``.

    Parameters
    ----------
    o : YatOracle
        The exact intermediates (float64 oracle) of the inputs.
    prec : Precision
        The backend's working precision.
    x_err : array, optional
        A componentwise bound on an error already present in ``x`` (the previous
        layer's, inside an MLP); zero by default.
    """
    u, tiny = prec.u, prec.tiny
    k = o.x_raw.shape[-1]
    gk = gamma(k, u)
    e_in = np.zeros_like(o.x_raw) if x_err is None else np.asarray(x_err, dtype=np.float64)
    e_dot, e_dist, s, xa, wa, e_x, e_w = _dot_and_dist(o, e_in, prec)

    b_abs = np.abs(o.bias)
    e_n = e_dot
    if o.bias_is_array or np.any(b_abs):
        rb = _const_rel(o.bias, prec)
        e_n = e_dot + rb * b_abs + u * (1.0 + gk) * (s + b_abs) * (1.0 + rb) + tiny

    eps = o.epsilon
    re = softplus_rel(prec) if o.epsilon_raw is not None else _const_rel(eps, prec)
    e_eps = re * eps + tiny
    e_d = e_dist + e_eps + u * (o.d + e_dist + e_eps) + tiny
    # d = max(dist, 0) + eps >= eps as computed: the clamp keeps the interval off 0.
    d_lo = np.maximum(np.maximum(o.d - e_d, eps * (1.0 - re) - tiny), tiny)
    d_hi = o.d + e_d

    n_abs = np.abs(o.n)
    n_hi, n_lo = n_abs + e_n, np.maximum(n_abs - e_n, 0.0)
    q_hi, q_lo = n_hi * n_hi * (1.0 + u) + tiny, np.maximum(n_lo * n_lo * (1.0 - u) - tiny, 0.0)
    # Division: two roundings, so a reciprocal followed by a multiplication is covered too.
    r_hi = q_hi / d_lo * (1.0 + u) ** 2 + tiny
    r_lo = np.maximum(q_lo / d_hi * (1.0 - u) ** 2 - tiny, 0.0)

    a = np.abs(o.alpha)
    ra = _const_rel(o.alpha, prec)
    a_lo, a_hi = a * (1.0 - ra), a * (1.0 + ra)
    if o.alpha_given:  # one rounding; two allowed
        y_hi = a_hi * r_hi * (1.0 + u) ** 2 + tiny
        y_lo = np.maximum(a_lo * r_lo * (1.0 - u) ** 2 - tiny, 0.0)
    else:
        y_hi, y_lo = r_hi, r_lo
    y_abs = np.abs(o.y)
    e_y = np.maximum(y_hi - y_abs, y_abs - y_lo)
    return YatBound(e_y, y_lo, y_hi, e_n, e_dist, d_lo, d_hi, r_lo, r_hi, a_lo, a_hi, xa, wa, e_x, e_w)


def linear_bound(
    h: np.ndarray, kernel: np.ndarray, bias: Any, h_err: np.ndarray, prec: Precision = FLOAT32
) -> np.ndarray:
    """Bound of ``fl(h @ kernel.T + bias)``'s error when ``h`` carries ``h_err``."""
    u, tiny, k = prec.u, prec.tiny, h.shape[-1]
    w_abs = np.abs(np.asarray(kernel, dtype=np.float64))
    s = (np.abs(h) + h_err) @ w_abs.T
    err = h_err @ w_abs.T + gamma(k, u) * s + k * tiny
    if bias is not None:
        b_abs = np.abs(np.asarray(bias, dtype=np.float64))
        rb = _const_rel(bias, prec)
        err = err + rb * b_abs + u * (1.0 + gamma(k, u)) * (s + b_abs) * (1.0 + rb) + tiny
    return err


def mlp_forward_bounds(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    spec: MLPSpec,
    prec: Precision = FLOAT32,
    x_err: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Oracle activations (every layer's input and the logits) and the bound on
    each layer's output error, the input error of each layer being the bound of
    the previous one (an exact interval argument, not a first-order estimate).
    ``x_err`` bounds an error in the inputs themselves (zero by default)."""
    acts, saved = mlp_forward64(params, x, spec)
    err = np.zeros_like(acts[0]) if x_err is None else np.asarray(x_err, dtype=np.float64)
    bounds = []
    for i, layer in enumerate(spec.layers):
        prefix = f"{i}."
        if layer.kind == "yat":
            err = yat_bound(saved[i], prec, x_err=err).y
        else:
            bias = params[prefix + "bias"] if layer.bias == "learnable" else layer.bias
            err = linear_bound(acts[i], params[prefix + "kernel"], bias, err, prec)
        bounds.append(err)
    return acts, bounds


def loss_bound(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    labels: np.ndarray,
    spec: MLPSpec,
    prec: Precision = FLOAT32,
    x_err: np.ndarray | None = None,
) -> float:
    """Bound on the error of the mean cross-entropy as computed in ``prec``.

    Per row, ``lse - logit[label]`` moves by at most the label's logit error plus the
    largest one; the float evaluation adds the log-domain terms of
    :func:`cross_entropy_grad_bound`; the mean adds ``gamma_batch``.
    """
    u = prec.u
    acts, bounds = mlp_forward_bounds(params, x, spec, prec, x_err)
    logits, err = acts[-1], bounds[-1]
    batch, classes = logits.shape
    rows = np.arange(batch)
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    row_loss = lse - shifted[rows, labels]
    row_err = err[rows, labels] + err.max(axis=1) + 2.0 * u * (np.abs(shifted[rows, labels]) + np.abs(lse))
    row_err = row_err + prec.fn_rel * (2.0 + np.abs(lse)) + gamma(classes + 2, u) * (1.0 + np.abs(lse))
    return float(np.mean(row_err) + gamma(batch + 1, u) * np.mean(np.abs(row_loss) + row_err))


def total_bound(bound_of: Any, prec: Precision) -> Any:
    """``bound_of(prec) + bound_of(ORACLE64)``: the backend's error and the oracle's.

    Where the model's intervals are unbounded (an ill-conditioned corner, such as a
    normalised near-zero row inside an MLP) ``inf * 0`` can appear; such an entry
    means "no bound" and becomes ``inf``, never NaN.
    """
    with np.errstate(all="ignore"):
        a, b = bound_of(prec), bound_of(ORACLE64)
        if isinstance(a, dict):
            return {key: np.nan_to_num(a[key] + b[key], nan=np.inf) for key in a}
        return np.nan_to_num(a + b, nan=np.inf)


# -- gradients ------------------------------------------------------------------------------


def _mul(lo1: Any, hi1: Any, lo2: Any, hi2: Any) -> tuple[np.ndarray, np.ndarray]:
    """Interval product ``[lo1, hi1] * [lo2, hi2]``."""
    corners = np.stack(np.broadcast_arrays(lo1 * lo2, lo1 * hi2, hi1 * lo2, hi1 * hi2))
    return corners.min(axis=0), corners.max(axis=0)


def _deviation(lo: np.ndarray, hi: np.ndarray, exact: np.ndarray, ops: float, prec: Precision) -> np.ndarray:
    """Largest distance from ``exact`` to an interval widened by ``ops`` roundings."""
    widen = ops * prec.u * np.maximum(np.abs(lo), np.abs(hi)) + prec.tiny
    return np.maximum(hi + widen - exact, exact - (lo - widen))


def _elementwise_grads(
    o: YatOracle, fb: YatBound, g: np.ndarray, g_err: np.ndarray, prec: Precision
) -> dict[str, np.ndarray]:
    """Exact values and error bounds of ``g_numer = 2 g alpha n / d``,
    ``g_denom = -g alpha n^2 / d^2`` and the masked ``g_dist`` (an upstream gradient
    known to within ``g_err``)."""
    u = prec.u
    sign = np.sign(o.alpha) if o.alpha_given else 1.0
    a_lo, a_hi = (fb.alpha_lo, fb.alpha_hi) if o.alpha_given else (1.0, 1.0)
    ga_lo, ga_hi = _mul(sign * g - g_err, sign * g + g_err, a_lo, a_hi)
    nd_lo, nd_hi = _mul(o.n - fb.n, o.n + fb.n, 1.0 / fb.d_hi, 1.0 / fb.d_lo)
    gn_lo, gn_hi = _mul(2.0 * ga_lo, 2.0 * ga_hi, nd_lo, nd_hi)
    ga = g * o.alpha
    gn = 2.0 * ga * o.n / o.d
    e_gn = _deviation(gn_lo, gn_hi, gn, 4.0, prec)

    gd_lo, gd_hi = _mul(-ga_hi, -ga_lo, fb.r_lo / fb.d_hi, fb.r_hi / fb.d_lo)
    gden = -ga * o.ratio / o.d
    e_gden = _deviation(gd_lo, gd_hi, gden, 4.0, prec)
    # Where the computed distance may sit at the clamp, the mask may drop g_denom.
    certain = o.dist - fb.dist > 0
    gdist = np.where(o.dist > 0, gden, 0.0)
    e_gdist = np.where(certain, e_gden, e_gden + np.abs(gden))

    gn_hi_abs = np.abs(gn) + e_gn
    gd_hi_abs = np.abs(gdist) + e_gdist
    e_gdot = e_gn + 2.0 * e_gdist + u * (gn_hi_abs + 2.0 * gd_hi_abs)
    return {
        "gn": gn,
        "e_gn": e_gn,
        "gn_hi": gn_hi_abs,
        "gden": gden,
        "e_gden": e_gden,
        "gden_hi": np.abs(gden) + e_gden,
        "gdist": gdist,
        "e_gdist": e_gdist,
        "gdist_hi": gd_hi_abs,
        "gdot": gn - 2.0 * gdist,
        "e_gdot": e_gdot,
        "gdot_hi": gn_hi_abs + 2.0 * gd_hi_abs,
    }


def _t(a: np.ndarray, axis: int) -> np.ndarray:
    # Gradients of rows of x contract over the outputs (axis 1); of rows of w, over the batch.
    return a if axis == 1 else a.T


def _plain_row_grad(
    e: dict[str, np.ndarray],
    rows: np.ndarray,
    rows_err: np.ndarray,
    other: np.ndarray,
    other_err: np.ndarray,
    axis: int,
    prec: Precision,
) -> np.ndarray:
    """Bound on ``g_dot @ other + 2 rows * sum(g_dist)`` (g_x: axis 1; g_w: axis 0).

    Any grouping of the three terms (analytic: fused ``g_dot``; autodiff: numerator
    and distance paths apart) passes each term through at most ``m + 2`` roundings,
    ``m`` the length of the contraction. ``rows_err`` / ``other_err`` bound errors
    already in the operands (an MLP layer's input).
    """
    u, tiny = prec.u, prec.tiny
    m = _t(e["gdot"], axis).shape[-1]
    rows_hi, other_hi = np.abs(rows) + rows_err, np.abs(other) + other_err
    dist_sum_hi = np.sum(_t(e["gdist_hi"], axis), axis=-1, keepdims=True)
    magnitude = _t(e["gdot_hi"], axis) @ other_hi + 2.0 * rows_hi * dist_sum_hi
    propagated = _t(e["e_gdot"], axis) @ other_hi + _t(e["gdot_hi"], axis) @ other_err
    propagated = propagated + 2.0 * (
        np.abs(rows) * np.sum(_t(e["e_gdist"], axis), axis=-1, keepdims=True) + rows_err * dist_sum_hi
    )
    return propagated + gamma(m + 2, u) * magnitude + (m + 2) * tiny


def _unit_row_grad(
    e: dict[str, np.ndarray],
    unit: np.ndarray,
    norm: np.ndarray,
    norm_rel: Any,
    unit_a: np.ndarray,
    e_unit: np.ndarray,
    other: np.ndarray,
    other_a: np.ndarray,
    e_other: np.ndarray,
    axis: int,
    prec: Precision,
) -> np.ndarray:
    """Bound on the gradient through ``a / max(|a|, floor)`` (spherical mode).

    ``g_u = g_dot @ other_unit``, then ``(g_u - u (g_u . u)) / |a|`` (or
    ``g_u / floor`` on the floor). Autodiff groups the same terms differently; the
    ``8u`` slack on every term covers that. ``norm_rel`` bounds the relative error
    of the norm as computed.
    """
    u, tiny, k = prec.u, prec.tiny, unit.shape[-1]
    m = _t(e["gdot"], axis).shape[-1]
    gk = gamma(k, u)
    gdot_hi = _t(e["gdot_hi"], axis)
    gu = _t(e["gdot"], axis) @ other
    e_gu = _t(e["e_gdot"], axis) @ other_a + gdot_hi @ e_other + gamma(m, u) * (gdot_hi @ other_a) + m * tiny
    gu_hi = np.abs(gu) + e_gu
    radial = np.sum(gu * unit, axis=-1, keepdims=True)
    e_rad = np.sum(e_gu * unit_a + np.abs(gu) * e_unit, axis=-1, keepdims=True)
    e_rad = e_rad + gk * np.sum(gu_hi * unit_a, axis=-1, keepdims=True) + k * tiny
    rad_hi = np.abs(radial) + e_rad
    tangent = gu - unit * radial
    e_t = e_gu + e_unit * rad_hi + np.abs(unit) * e_rad + 2.0 * u * (gu_hi + unit_a * rad_hi)
    slack = (norm_rel + 8.0 * u) * (np.abs(tangent) + e_t + gu_hi + unit_a * rad_hi)
    on_floor = norm <= SPHERICAL_NORM_EPS
    return np.where(on_floor, (e_gu + 2.0 * u * gu_hi) / norm, (e_t + slack) / (norm * (1.0 - norm_rel))) + tiny


def yat_vjp_bound(
    o: YatOracle,
    fb: YatBound,
    g: np.ndarray,
    prec: Precision = FLOAT32,
    g_err: np.ndarray | None = None,
    x_err: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-element bounds of a backend's gradients of ``sum(g * y)``.

    Keys as :func:`verification.oracle.yat_vjp64`. Built on the forward intervals
    ``fb`` (:func:`yat_bound` of the same inputs, precision and ``x_err``), whatever
    order of operations the backend (analytic or autodiff) uses. ``g_err`` bounds an
    error in the upstream gradient, ``x_err`` one in ``x`` (inside an MLP).
    """
    u, tiny = prec.u, prec.tiny
    g = np.asarray(g, dtype=np.float64)
    g_err = np.zeros_like(g) if g_err is None else g_err
    x_err = np.zeros_like(o.x_raw) if x_err is None else x_err
    e = _elementwise_grads(o, fb, g, g_err, prec)
    if o.spherical:
        gk = gamma(o.x_raw.shape[-1], u)
        rho_n = (gk / 2.0 + 2.0 * u) * (1.0 + gk)
        x_moved = np.sqrt(np.sum(x_err * x_err, axis=-1, keepdims=True)) / o.x_norm
        bounds = {
            "x": _unit_row_grad(e, o.x, o.x_norm, rho_n + x_moved, fb.xa, fb.e_x, o.w, fb.wa, fb.e_w, 1, prec),
            "w": _unit_row_grad(e, o.w, o.w_norm, rho_n, fb.wa, fb.e_w, o.x, fb.xa, fb.e_x, 0, prec),
        }
    else:
        zero_w = np.zeros_like(o.w_raw)
        bounds = {
            "x": _plain_row_grad(e, o.x, x_err, o.w, zero_w, 1, prec),
            "w": _plain_row_grad(e, o.w, zero_w, o.x, x_err, 0, prec),
        }
    batch, terms = g.shape[0], g.size
    if o.bias_is_array:
        bounds["bias"] = np.sum(e["e_gn"], axis=0) + gamma(batch, u) * np.sum(e["gn_hi"], axis=0) + batch * tiny
    if o.alpha_is_array:
        e_r = np.maximum(fb.r_hi - o.ratio, o.ratio - fb.r_lo)
        g_hi = np.abs(g) + g_err
        value = np.sum(g_hi * e_r + g_err * o.ratio) + gamma(terms, u) * np.sum(g_hi * fb.r_hi) + terms * tiny
        bounds["alpha"] = np.reshape(value, np.shape(o.alpha))
    if o.epsilon_raw is not None:
        sigmoid = 1.0 / (1.0 + np.exp(-o.epsilon_raw))
        summed = np.sum(e["e_gden"]) + gamma(terms, u) * np.sum(e["gden_hi"])
        rel = sigmoid_rel(prec)
        value = sigmoid * (summed * (1.0 + rel) + rel * abs(np.sum(e["gden"]))) + terms * tiny
        bounds["epsilon_raw"] = np.reshape(value, np.shape(o.epsilon_raw))
    return bounds


def cross_entropy_grad_bound(
    logits: np.ndarray, labels: np.ndarray, logit_err: np.ndarray, prec: Precision = FLOAT32
) -> np.ndarray:
    """Bound on the error of ``(softmax(logits) - onehot) / batch`` as the core computes it.

    Moving the logits by at most ``E`` scales each probability by at most
    ``exp(E_i + max_j E_j)``; the float evaluation (shift, exp, sum, log, exp) adds
    an absolute error in the log domain of ``u`` times the magnitudes involved.
    """
    u = prec.u
    batch, classes = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p = np.exp(shifted - lse)
    # In the log domain: the logits' own error, the shift and subtraction (u each), the
    # exps and the log (fn_rel each, the log's relative to lse), the sum of the exps.
    log_err = logit_err + logit_err.max(axis=1, keepdims=True)
    log_err = log_err + 2.0 * u * (np.abs(shifted) + np.abs(lse)) + prec.fn_rel * (2.0 + np.abs(lse))
    log_err = log_err + gamma(classes + 2, u)
    onehot = np.zeros_like(p)
    onehot[np.arange(batch), labels] = 1.0
    # A probability as computed stays in [0, 1] (up to its last rounding), whatever the logits.
    p_err = np.minimum(p * np.expm1(np.minimum(log_err, 80.0)), 1.0 + 2.0 * prec.fn_rel)
    return (p_err + 2.0 * u * (np.abs(p - onehot) + p_err)) / batch + prec.tiny


def mlp_grad_bounds(
    params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray, spec: MLPSpec, prec: Precision = FLOAT32
) -> dict[str, np.ndarray]:
    """Per-element bounds of a backend's MLP loss gradients (every parameter).

    The forward bounds give each layer's input error; the backward pass carries a
    bound on the upstream gradient's error from the loss down to the first layer.
    """
    from verification.oracle import mlp_backward64

    u, tiny = prec.u, prec.tiny
    back = mlp_backward64(params, x, labels, spec)
    acts = back.acts
    fwd_err, fbs = [np.zeros_like(acts[0])], []
    for i, layer in enumerate(spec.layers):
        if layer.kind == "yat":
            fb = yat_bound(back.saved[i], prec, x_err=fwd_err[-1])
            fbs.append(fb)
            fwd_err.append(fb.y)
        else:
            bias = params[f"{i}.bias"] if layer.bias == "learnable" else layer.bias
            fbs.append(None)
            fwd_err.append(linear_bound(acts[i], params[f"{i}.kernel"], bias, fwd_err[-1], prec))
    g_err = cross_entropy_grad_bound(acts[-1], labels, fwd_err[-1], prec)
    bounds: dict[str, np.ndarray] = {}
    for i in reversed(range(len(spec.layers))):
        layer, prefix, g = spec.layers[i], f"{i}.", back.upstream[i]
        h, h_err = acts[i], fwd_err[i]
        if layer.kind == "linear":
            if layer.activation == "relu":  # a gradient near a kink may be dropped or kept
                unsure = np.abs(acts[i + 1]) <= fwd_err[i + 1]
                g_err = np.where(unsure, np.abs(g) + g_err, np.where(acts[i + 1] > 0, g_err, 0.0))
                g = np.where(acts[i + 1] > 0, g, 0.0)
            kernel = np.abs(np.asarray(params[prefix + "kernel"], dtype=np.float64))
            g_hi, h_hi = np.abs(g) + g_err, np.abs(h) + h_err
            batch, outs = g.shape
            bounds[prefix + "kernel"] = g_err.T @ h_hi + np.abs(g).T @ h_err + gamma(batch, u) * (g_hi.T @ h_hi)
            bounds[prefix + "kernel"] += batch * tiny
            if layer.bias == "learnable":
                bounds[prefix + "bias"] = g_err.sum(axis=0) + gamma(batch, u) * g_hi.sum(axis=0) + batch * tiny
            g_err = g_err @ kernel + gamma(outs, u) * (g_hi @ kernel) + outs * tiny
            continue
        parts = yat_vjp_bound(back.saved[i], fbs[i], g, prec, g_err=g_err, x_err=h_err)
        bounds[prefix + "kernel"] = parts["w"]
        for name in ("bias", "alpha", "epsilon_raw"):
            if name in parts:
                bounds[prefix + name] = parts[name]
        g_err = parts["x"]
    return {name: bounds[name] for name in params}


# -- attention ------------------------------------------------------------------------------


class AttentionBound(NamedTuple):
    """Bounds of one :func:`yat_core.attention.yat_attention` evaluation (ERROR_MODEL.md, "Attention").

    Score-shaped arrays are heads first, ``(*batch, heads, Tq, Tk)``; ``*_lo``/``*_hi``
    are intervals that hold the computed value.
    """

    out: np.ndarray  # |out_computed - out_exact|, (..., Tq, H, dv)
    weights: np.ndarray  # |a_computed - a_exact|
    w_lo: np.ndarray
    w_hi: np.ndarray
    s_lo: np.ndarray  # the scores as computed
    s_hi: np.ndarray
    scores: list[YatBound]  # each (batch, head) slice's score bound, as AttentionOracle.scores


def _score_intervals(o: Any, prec: Precision) -> tuple[list[YatBound], np.ndarray, np.ndarray]:
    """Each slice's :func:`yat_bound` (the score is a Yat ratio scaled by ``alpha / sqrt(d)``)
    and the interval of the computed scores: ``|s|`` lies in ``[y_lo, y_hi]``, with the
    sign of ``alpha``, and ``y_lo >= 0`` because the clamp keeps the denominator >= eps."""
    fbs = [yat_bound(so, prec) for so in o.scores]
    shape = o.s.shape
    lo = np.stack([fb.y_lo for fb in fbs]).reshape(shape)
    hi = np.stack([fb.y_hi for fb in fbs]).reshape(shape)
    return (fbs, lo, hi) if o.scale >= 0 else (fbs, -hi, -lo)


def _exp_tiny(prec: Precision) -> float:
    """Absolute error of an ``exp`` that underflows: an ``exp`` only float32-accurate flushes
    below float32's smallest normal number whatever the dtype (MLX: its float64
    ``exp(-88)`` is 0)."""
    return max(prec.tiny, FLOAT32.tiny) if prec.fn_rel >= FLOAT32.u else prec.tiny


def softmax_interval(
    s_lo: np.ndarray, s_hi: np.ndarray, allowed: np.ndarray, prec: Precision
) -> tuple[np.ndarray, np.ndarray]:
    """An interval holding every weight of ``softmax(s)`` over the ``allowed`` entries of the
    last axis, as computed in ``prec`` (``exp(s - max)``, its sum, one division) from scores
    known only to lie in ``[s_lo, s_hi]``; zero where not allowed.

    The computed shift ``fl(s_j - m)`` is off by ``u |s_j - m|``, at most ``u`` times the
    row's largest ``s_hi`` minus ``s_lo_j``: the larger the scores' spread, the larger the
    error of ``exp``'s argument. ``exp`` adds ``fn_rel`` (``log(1 + fn_rel)`` in the exponent).
    A weight ``p_j`` increases with its own exponent and decreases with every other, so
    ``[1 / (1 + sum_{l != j} exp(hi_l - lo_j)), 1 / (1 + sum_{l != j} exp(lo_l - hi_j))]`` holds
    it exactly; the sum of the ``n`` exponentials adds ``gamma_n``, the division two roundings,
    underflow ``tiny`` per term; a computed weight is never outside ``[0, 1]`` (up to those
    roundings).
    """
    u, tiny = prec.u, _exp_tiny(prec)
    n = np.sum(allowed, axis=-1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore"):
        top = np.max(np.where(allowed, s_hi, -np.inf), axis=-1, keepdims=True)
        spread = np.where(allowed, np.maximum(top - s_lo, 0.0), 0.0)  # bounds |s_j - max| as computed
    fn = -np.log1p(-prec.fn_rel)
    lo = np.where(allowed, s_lo - u * spread - fn, 0.0)
    hi = np.where(allowed, s_hi + u * spread + fn, 0.0)
    tk = allowed.shape[-1]
    others = allowed[..., None, :] & ~np.eye(tk, dtype=bool)  # [..., j, l]: l != j, l allowed
    worst = np.where(others, np.exp(np.minimum(hi[..., None, :] - lo[..., :, None], 700.0)), 0.0)
    best = np.where(others, np.exp(np.minimum(lo[..., None, :] - hi[..., :, None], 700.0)), 0.0)
    p_lo = 1.0 / (1.0 + np.sum(worst, axis=-1))
    p_hi = 1.0 / (1.0 + np.sum(best, axis=-1))
    g_n = np.where(n * u < 0.5, n * u / (1.0 - n * u), np.inf)
    slack = (n + 2.0) * tiny
    w_hi = np.minimum(p_hi, 1.0) * (1.0 + u) ** 2 / (1.0 - g_n) + slack
    w_lo = np.maximum(p_lo * (1.0 - u) ** 2 / (1.0 + g_n) - slack, 0.0)
    return np.where(allowed, w_lo, 0.0), np.where(allowed, w_hi, 0.0)


def attention_bound(o: Any, prec: Precision = FLOAT32) -> AttentionBound:
    """Per-element bound of a backend's ``yat_attention`` output and weights in ``prec``.

    ``o`` is the :class:`~verification.oracle.AttentionOracle` of the inputs. The scores
    carry the dense product's bound (:func:`yat_bound`, contraction length ``d``), the
    weights the interval of :func:`softmax_interval`, and the output, a contraction of
    length ``Tk``, ``sum_j e_a,j |v_j| + gamma_Tk sum_j (a_j + e_a,j) |v_j|``.
    """
    u, tiny = prec.u, prec.tiny
    fbs, s_lo, s_hi = _score_intervals(o, prec)
    w_lo, w_hi = softmax_interval(s_lo, s_hi, o.allowed, prec)
    a = o.weights
    # Masked weights are exactly 0; tiny keeps every bound positive (error / bound is defined).
    e_a = np.where(o.allowed, np.maximum(w_hi - a, a - w_lo), 0.0) + tiny
    v_abs = np.abs(np.swapaxes(o.v, -3, -2))
    tk = a.shape[-1]
    e_out = e_a @ v_abs + gamma(tk, u) * ((a + e_a) @ v_abs) + tk * tiny
    return AttentionBound(np.swapaxes(e_out, -3, -2), e_a, w_lo, w_hi, s_lo, s_hi, fbs)


def attention_vjp_bound(o: Any, fb: AttentionBound, g: np.ndarray, prec: Precision = FLOAT32) -> dict[str, np.ndarray]:
    """Per-element bounds of a backend's gradients of ``sum(g * yat_attention(...))``.

    Keys as :func:`verification.oracle.yat_attention_vjp64`. The values' gradient
    ``a^T g`` and the weights' gradient ``g_a = g . v`` are contractions; the softmax
    adjoint ``g_s = a (g_a - sum_l a_l g_a,l)`` is bounded through the weights' intervals
    with six roundings per term, in any grouping (the analytic form, or autodiff's
    ``e_j g_a,j / S - e_j sum_l g_a,l e_l / S^2``). Autodiff also sends
    ``-sum_j g_s,j`` (zero in exact arithmetic) into the row's maximum, through the shift
    ``s - max``; its computed value is added to every entry's bound. The scores' gradient
    then goes through :func:`yat_vjp_bound` of each slice with that upstream error, the
    scale ``alpha / sqrt(d)`` given one more rounding (it is computed).
    """
    from verification.oracle import attention_score_grad64

    u, tiny = prec.u, prec.tiny
    g_s, g_a, _ = attention_score_grad64(o, g)
    a, e_a, allowed = o.weights, fb.weights, o.allowed
    a_hi = a + e_a
    g_abs = np.abs(np.swapaxes(np.asarray(g, dtype=np.float64), -3, -2))
    v_abs = np.abs(np.swapaxes(o.v, -3, -2))
    *lead, tq, tk = a.shape
    dv = v_abs.shape[-1]
    e_gv = np.swapaxes(e_a, -1, -2) @ g_abs + gamma(tq, u) * (np.swapaxes(a_hi, -1, -2) @ g_abs) + tq * tiny
    e_ga = gamma(dv, u) * (g_abs @ np.swapaxes(v_abs, -1, -2)) + dv * tiny
    ga_hi = np.abs(g_a) + e_ga
    r = np.sum(a * g_a, axis=-1, keepdims=True)
    e_r = np.sum(e_a * ga_hi + a * e_ga, axis=-1, keepdims=True)
    e_r = e_r + gamma(tk + 2, u) * np.sum(a_hi * ga_hi, axis=-1, keepdims=True) + tk * tiny
    r_hi = np.abs(r) + e_r
    e_gs = e_a * (ga_hi + r_hi) + a * (e_ga + e_r) + gamma(6, u) * a_hi * (ga_hi + r_hi) + tiny
    through_max = np.sum(np.where(allowed, e_gs + gamma(tk, u) * (np.abs(g_s) + e_gs), 0.0), axis=-1, keepdims=True)
    e_gs = np.where(allowed, e_gs + through_max + tk * tiny, 0.0)

    d = o.head_size
    flat_gs, flat_err = g_s.reshape(-1, tq, tk), e_gs.reshape(-1, tq, tk)
    widened = [fs._replace(alpha_lo=fs.alpha_lo * (1.0 - u), alpha_hi=fs.alpha_hi * (1.0 + u)) for fs in fb.scores]
    parts = [yat_vjp_bound(so, fs, gs, prec, g_err=ge) for so, fs, gs, ge in zip(o.scores, widened, flat_gs, flat_err)]
    bounds = {
        "q": np.swapaxes(np.stack([p["x"] for p in parts]).reshape(*lead, tq, d), -3, -2),
        "k": np.swapaxes(np.stack([p["w"] for p in parts]).reshape(*lead, tk, d), -3, -2),
        "v": np.swapaxes(e_gv, -3, -2),
    }
    terms = g_s.size
    if o.alpha_is_array:  # sum(g_s * ratio) / sqrt(d)
        ratio = np.stack([so.ratio for so in o.scores])
        r_lo = np.stack([fs.r_lo for fs in fb.scores])
        r_up = np.stack([fs.r_hi for fs in fb.scores])
        e_ratio = np.maximum(r_up - ratio, ratio - r_lo)
        gs_hi = np.abs(flat_gs) + flat_err
        summed = np.sum(flat_err * r_up + np.abs(flat_gs) * e_ratio) + gamma(terms, u) * np.sum(gs_hi * r_up)
        summed = summed + terms * tiny
        value = (summed + 2.0 * u * (np.sum(gs_hi * r_up) + summed)) / np.sqrt(d) + tiny
        bounds["alpha"] = np.reshape(value, np.shape(o.alpha))
    if o.epsilon_is_array:  # sum of g_denom = -g_s scale n^2 / d^2 over every entry
        el = [_elementwise_grads(so, fs, gs, ge, prec) for so, fs, gs, ge in zip(o.scores, widened, flat_gs, flat_err)]
        summed = sum(float(np.sum(e["e_gden"])) for e in el)
        summed += gamma(terms, u) * sum(float(np.sum(e["gden_hi"])) for e in el) + terms * tiny
        bounds["epsilon"] = np.reshape(np.asarray(summed, dtype=np.float64), o.epsilon_shape)
    return bounds
