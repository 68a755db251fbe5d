"""The float64 NumPy oracle: the reference for every check of the suite.

Written from the definition, independently of :mod:`yat_core.product`:

- the squared distance is computed directly as ``sum((x - w)^2)`` (no expansion,
  so no cancellation: it is exact to a few float64 ulps even when ``x == w`` or the
  norms are large); in spherical mode it is the definition's ``2 - 2 dot`` of the
  normalised rows, clamped at 0;
- gradients come from a hand-derived backward pass in float64 whose distance terms
  use ``x - w`` directly.

Convolutions (Yat, transposed, plain), pooling and every other layer kind of a
:class:`~yat_core.spec.ModelSpec` are written here too, independently of
:mod:`yat_core.conv` and :mod:`yat_core.mlp`: an unfold by a loop over kernel offsets,
each group's patches through the dense product above, and the fold (the unfold's
adjoint) for the input's gradient; :func:`mlp_forward64` and :func:`mlp_backward64` run
any model.

Yat attention (:func:`yat_attention64`) runs each (batch, head) slice of its scores
through the same dense product, then the masked softmax and the weighted sum;
:func:`yat_attention_vjp64` is its backward pass; :func:`softmax_attention64` is the
scaled dot-product baseline. Nothing there calls :mod:`yat_core.attention`.

The token kinds of the vision transformer are layers of :func:`mlp_forward64` too:
``patches`` (a loop over patch positions), ``pos_embed``, the attention layers (the
q/k/v projections, heads as consecutive blocks of ``features / heads`` features, the
attention above, the output projection), ``token_mean``, dense layers on token
sequences, and ``residual`` (the layer's input added to its output).

Inputs are float32 arrays read exactly in float64; constant options (a Python
``epsilon``, bias or alpha) are used at their float64 value, so the float32
rounding of a constant is counted as part of a backend's error.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import numpy as np

from yat_core.mlp import MLPSpec
from yat_core.product import SPHERICAL_NORM_EPS

__all__ = [
    "YatOracle",
    "softplus64",
    "squared_distances",
    "yat_forward64",
    "yat_oracle",
    "yat_vjp64",
    "yat_oracle_vjp",
    "mlp_forward64",
    "mlp_loss_grad64",
    "mlp_backward64",
    "cross_entropy64",
    "MLPBackward",
    "ConvOracle",
    "conv_pads64",
    "unfold64",
    "fold64",
    "transpose_as_direct64",
    "yat_conv64",
    "yat_conv_vjp64",
    "conv64",
    "conv_vjp64",
    "pool_windows64",
    "max_pool64",
    "max_pool_vjp64",
    "avg_pool64",
    "avg_pool_vjp64",
    "AttentionOracle",
    "attention_allowed64",
    "yat_attention64",
    "attention_score_grad64",
    "yat_attention_vjp64",
    "SoftmaxAttentionOracle",
    "softmax_attention64",
    "softmax_attention_vjp64",
    "AttentionLayer64",
    "patches64",
    "patches_vjp64",
]

F64 = np.float64
#: Elements per temporary of the direct distance (bounds the oracle's memory).
_CHUNK = 1 << 21


class YatOracle(NamedTuple):
    """Every intermediate of the product, in float64.

    ``x`` and ``w`` are the rows as used in the dot product (normalised in
    spherical mode); ``x_raw`` and ``w_raw`` the inputs as given.
    """

    x_raw: np.ndarray
    w_raw: np.ndarray
    x: np.ndarray
    w: np.ndarray
    x_norm: np.ndarray | None
    w_norm: np.ndarray | None
    dot: np.ndarray
    bias: np.ndarray | float
    n: np.ndarray  # dot + bias
    dist: np.ndarray  # squared distance, >= 0
    epsilon: np.ndarray | float
    epsilon_raw: np.ndarray | None
    d: np.ndarray  # dist + epsilon
    ratio: np.ndarray  # n^2 / d
    alpha: np.ndarray | float
    y: np.ndarray
    spherical: bool
    bias_is_array: bool
    alpha_is_array: bool
    alpha_given: bool  # False: no alpha at all (no multiplication)


def softplus64(raw: Any) -> np.ndarray:
    """``log(1 + exp(raw))`` in float64, without overflow."""
    return np.logaddexp(0.0, np.asarray(raw, dtype=F64))


def squared_distances(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``|x_b - w_j|^2`` for every row pair, by direct differences (float64)."""
    batch, k = x.shape
    out = np.empty((batch, w.shape[0]), dtype=F64)
    step = max(1, _CHUNK // max(1, batch * k))
    for j0 in range(0, w.shape[0], step):
        diff = x[:, None, :] - w[None, j0 : j0 + step, :]
        out[:, j0 : j0 + step] = np.einsum("bjk,bjk->bj", diff, diff)
    return out


def _normalise(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.maximum(np.sqrt(np.sum(a * a, axis=-1, keepdims=True)), SPHERICAL_NORM_EPS)
    return a / norm, norm


def _as64(v: Any) -> Any:
    # Only Python numbers are constants; NumPy scalars (np.float64 subclasses float) are arrays.
    if v is None:
        return None
    return float(v) if type(v) in (int, float) else np.asarray(v, dtype=F64)


def yat_forward64(
    x: np.ndarray,
    w: np.ndarray,
    *,
    bias: Any = None,
    alpha: Any = None,
    epsilon: float | None = 1e-5,
    epsilon_raw: Any = None,
    spherical: bool = False,
) -> YatOracle:
    """The ⵟ-product in float64 with all intermediates (``epsilon_raw`` overrides
    ``epsilon``: then ``epsilon = softplus(epsilon_raw)``)."""
    x_raw, w_raw = np.asarray(x, dtype=F64), np.asarray(w, dtype=F64)
    bias64, alpha64 = _as64(bias), _as64(alpha)
    if spherical:
        xu, x_norm = _normalise(x_raw)
        wu, w_norm = _normalise(w_raw)
        dot = xu @ wu.T
        dist = np.maximum(2.0 - 2.0 * dot, 0.0)
    else:
        xu, wu, x_norm, w_norm = x_raw, w_raw, None, None
        dot = x_raw @ w_raw.T
        dist = squared_distances(x_raw, w_raw)
    raw64 = None if epsilon_raw is None else np.asarray(epsilon_raw, dtype=F64)
    eps = softplus64(raw64) if raw64 is not None else float(epsilon)
    n = dot if bias64 is None else dot + bias64
    d = dist + eps
    ratio = n * n / d
    y = ratio if alpha64 is None else alpha64 * ratio
    return YatOracle(
        x_raw,
        w_raw,
        xu,
        wu,
        x_norm,
        w_norm,
        dot,
        0.0 if bias64 is None else bias64,
        n,
        dist,
        eps,
        raw64,
        d,
        ratio,
        1.0 if alpha64 is None else alpha64,
        y,
        spherical,
        isinstance(bias64, np.ndarray),
        isinstance(alpha64, np.ndarray),
        alpha64 is not None,
    )


def yat_oracle(inp: Any) -> YatOracle:
    """:func:`yat_forward64` of a :class:`~verification.cases.YatInputs`."""
    return yat_forward64(
        inp.x,
        inp.w,
        bias=inp.bias,
        alpha=inp.alpha,
        epsilon=inp.epsilon,
        epsilon_raw=inp.epsilon_raw,
        spherical=inp.spherical,
    )


def _unit_vjp(g_unit: np.ndarray, unit: np.ndarray, norm: np.ndarray) -> np.ndarray:
    # Below the floor the map is a scaling by 1/floor; above it, project out the radial part.
    radial = np.sum(g_unit * unit, axis=-1, keepdims=True)
    return np.where(norm <= SPHERICAL_NORM_EPS, g_unit, g_unit - unit * radial) / norm


def yat_vjp64(o: YatOracle, g: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of ``sum(g * y)`` for every array input of the product.

    Keys: ``"x"``, ``"w"``, and ``"bias"``, ``"alpha"``, ``"epsilon_raw"`` where
    those were arrays.
    """
    g = np.asarray(g, dtype=F64)
    g_ratio = g * o.alpha
    g_numer = 2.0 * g_ratio * o.n / o.d
    g_denom = -g_ratio * o.ratio / o.d
    g_dist = np.where(o.dist > 0, g_denom, 0.0)
    if o.spherical:
        g_dot = g_numer - 2.0 * g_dist  # dist = 2 - 2 dot
        g_x = _unit_vjp(g_dot @ o.w, o.x, o.x_norm)
        g_w = _unit_vjp(g_dot.T @ o.x, o.w, o.w_norm)
    else:
        # d dist / dx_b = 2 (x_b - w_j), kept as a difference of the rows.
        g_x = g_numer @ o.w + 2.0 * (o.x * np.sum(g_dist, axis=1, keepdims=True) - g_dist @ o.w)
        g_w = g_numer.T @ o.x + 2.0 * (o.w * np.sum(g_dist, axis=0)[:, None] - g_dist.T @ o.x)
    grads = {"x": g_x, "w": g_w}
    if o.bias_is_array:
        grads["bias"] = np.sum(g_numer, axis=0)
    if o.alpha_is_array:
        grads["alpha"] = np.reshape(np.sum(g * o.ratio), np.shape(o.alpha))
    if o.epsilon_raw is not None:
        sigmoid = 1.0 / (1.0 + np.exp(-o.epsilon_raw))
        grads["epsilon_raw"] = np.reshape(np.sum(g_denom) * sigmoid, np.shape(o.epsilon_raw))
    return grads


def yat_oracle_vjp(inp: Any) -> dict[str, np.ndarray]:
    """:func:`yat_vjp64` of a :class:`~verification.cases.YatInputs` and its ``g``."""
    return yat_vjp64(yat_oracle(inp), inp.g)


# -- convolutions and pooling --------------------------------------------------------------
#
# The unfold is a loop over kernel offsets on the padded (or, for the direct form of a
# transposed convolution, cropped) input, one strided slice per offset; each group's
# patches then go through the dense oracle above, and the gradient of the input is the
# adjoint of the unfold (a fold: the same slices, added back). Nothing here calls
# ``yat_core.conv``.

Pads = list[tuple[int, int]]


def conv_pads64(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> Pads:
    """``(lo, hi)`` per spatial dimension: ints, ``"valid"``, or ``"same"`` (the odd unit
    of an odd total on the high side, as PyTorch and Keras place it)."""
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(int(p), int(p)) for p in padding]


def _reach(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> list[int]:
    return [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]


def unfold64(
    x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...], pads: Pads
) -> np.ndarray:
    """``(N, *out, C, prod(kernel))`` patches of ``x`` ``(N, C, *spatial)`` padded by ``pads``
    (a negative entry crops), by a loop over kernel offsets; offsets in row-major order,
    so ``patches[..., c, :]`` lines up with ``w[o, c].reshape(-1)``."""
    x = np.asarray(x, dtype=F64)
    for axis, (lo, hi) in enumerate(pads, start=2):
        if lo < 0 or hi < 0:
            x = np.take(x, range(max(-lo, 0), x.shape[axis] - max(-hi, 0)), axis=axis)
        x = np.pad(x, [(0, 0)] * axis + [(max(lo, 0), max(hi, 0))] + [(0, 0)] * (x.ndim - axis - 1))
    out = [(s - r) // t + 1 for s, r, t in zip(x.shape[2:], _reach(kernel, dilation), stride)]
    cols = []
    for offset in itertools.product(*[range(k) for k in kernel]):
        index = tuple(slice(o * d, o * d + (m - 1) * t + 1, t) for o, d, m, t in zip(offset, dilation, out, stride))
        cols.append(x[(slice(None), slice(None), *index)])
    return np.moveaxis(np.stack(cols, axis=-1), 1, -2)


def fold64(
    cols: np.ndarray,
    x_shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
) -> np.ndarray:
    """The adjoint of :func:`unfold64`: patch gradients ``(N, *out, C, prod(kernel))`` added
    back onto an input of shape ``x_shape``."""
    spatial = [s - max(-lo, 0) - max(-hi, 0) + max(lo, 0) + max(hi, 0) for s, (lo, hi) in zip(x_shape[2:], pads)]
    padded = np.zeros((*x_shape[:2], *spatial), dtype=F64)
    cols = np.moveaxis(np.asarray(cols, dtype=F64), -2, 1)  # (N, C, *out, K)
    out = cols.shape[2:-1]
    for j, offset in enumerate(itertools.product(*[range(k) for k in kernel])):
        index = tuple(slice(o * d, o * d + (m - 1) * t + 1, t) for o, d, m, t in zip(offset, dilation, out, stride))
        padded[(slice(None), slice(None), *index)] += cols[..., j]
    g = padded
    for axis, (lo, hi) in reversed(list(enumerate(pads, start=2))):
        g = np.take(g, range(max(lo, 0), g.shape[axis] - max(hi, 0)), axis=axis)
        if lo < 0 or hi < 0:
            width = [(0, 0)] * g.ndim
            width[axis] = (max(-lo, 0), max(-hi, 0))
            g = np.pad(g, width)
    return g


def transpose_as_direct64(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> tuple[np.ndarray, np.ndarray, Pads]:
    """A transposed convolution as a direct one (DESIGN.md): the input with ``stride - 1``
    zeros inserted, the kernel ``(in, out/groups, *k)`` regrouped to
    ``(out, in/groups, *k)`` and flipped, padding ``d (k - 1) - p`` (plus
    ``output_padding`` on the high side; negative: a crop), stride 1."""
    x, w = np.asarray(x, dtype=F64), np.asarray(w, dtype=F64)
    n = len(stride)
    up = np.zeros((*x.shape[:2], *[(s - 1) * t + 1 for s, t in zip(x.shape[2:], stride)]))
    up[(slice(None), slice(None), *[slice(None, None, t) for t in stride])] = x
    cin, cout_g, kernel = w.shape[0], w.shape[1], w.shape[2:]
    w = (
        w.reshape(groups, cin // groups, cout_g, *kernel)
        .swapaxes(1, 2)
        .reshape(groups * cout_g, cin // groups, *kernel)
    )
    w = np.flip(w, axis=tuple(range(2, 2 + n)))
    pads = [(d * (k - 1) - p, d * (k - 1) - p + op) for d, k, p, op in zip(dilation, kernel, padding, output_padding)]
    return up, np.ascontiguousarray(w), pads


class ConvOracle(NamedTuple):
    """A convolution in float64: its geometry and, per group, the :class:`YatOracle` of the
    group's patches (Yat kinds) or the patches themselves (the plain convolution)."""

    x_shape: tuple[int, ...]  # the direct convolution's input (zero-inserted for a transposed one)
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: Pads
    lead: tuple[int, ...]  # (N, *out)
    groups: list[Any]  # YatOracle per group, or the group's patches (rows, C/groups * prod(k))
    w: np.ndarray | None  # the plain convolution's kernel rows (out, C/groups * prod(k))


def _group_patches(
    x: np.ndarray, kernel: tuple[int, ...], stride: tuple, dilation: tuple, pads: Pads, groups: int
) -> tuple[tuple[int, ...], list[np.ndarray]]:
    cols = unfold64(x, kernel, stride, dilation, pads)
    lead, per = cols.shape[:-2], cols.shape[-2] // groups
    return lead, [cols[..., j * per : (j + 1) * per, :].reshape(math.prod(lead), -1) for j in range(groups)]


def yat_conv64(
    x: np.ndarray,
    w: np.ndarray,
    *,
    stride: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
    groups: int,
    bias: Any = None,
    alpha: Any = None,
    epsilon: float | None = 1e-5,
    epsilon_raw: Any = None,
    spherical: bool = False,
) -> tuple[np.ndarray, ConvOracle]:
    """The Yat convolution ``(N, out, *out_spatial)`` of ``x`` ``(N, C, *spatial)`` and ``w``
    ``(out, C/groups, *k)`` padded by ``pads``: every patch through :func:`yat_forward64`."""
    x, w = np.asarray(x, dtype=F64), np.asarray(w, dtype=F64)
    kernel, cout = tuple(w.shape[2:]), w.shape[0]
    lead, patches = _group_patches(x, kernel, stride, dilation, pads, groups)
    per, bias64 = cout // groups, _as64(bias)
    oracles = []
    for j, p in enumerate(patches):
        b = bias64[j * per : (j + 1) * per] if isinstance(bias64, np.ndarray) else bias
        rows = w[j * per : (j + 1) * per].reshape(per, -1)
        oracles.append(
            yat_forward64(p, rows, bias=b, alpha=alpha, epsilon=epsilon, epsilon_raw=epsilon_raw, spherical=spherical)
        )
    y = np.concatenate([o.y.reshape(*lead, per) for o in oracles], axis=-1)
    return np.moveaxis(y, -1, 1), ConvOracle(tuple(x.shape), kernel, stride, dilation, pads, lead, oracles, None)


def yat_conv_vjp64(c: ConvOracle, g: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of ``sum(g * y)`` of :func:`yat_conv64`: keys as :func:`yat_vjp64`'s,
    ``"w"`` in the kernel's shape."""
    g = np.moveaxis(np.asarray(g, dtype=F64), 1, -1).reshape(math.prod(c.lead), -1)
    per = g.shape[1] // len(c.groups)
    parts = [yat_vjp64(o, g[:, j * per : (j + 1) * per]) for j, o in enumerate(c.groups)]
    cols = np.concatenate([p["x"].reshape(*c.lead, -1, math.prod(c.kernel)) for p in parts], axis=-2)
    grads = {
        "x": fold64(cols, c.x_shape, c.kernel, c.stride, c.dilation, c.pads),
        "w": np.concatenate([p["w"] for p in parts]).reshape(-1, c.x_shape[1] // len(c.groups), *c.kernel),
    }
    for name in ("alpha", "epsilon_raw"):  # one scalar shared by every group
        if name in parts[0]:
            grads[name] = sum(p[name] for p in parts)
    if "bias" in parts[0]:
        grads["bias"] = np.concatenate([p["bias"] for p in parts])
    return grads


def conv64(
    x: np.ndarray,
    w: np.ndarray,
    *,
    stride: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
    groups: int,
    bias: Any = None,
) -> tuple[np.ndarray, ConvOracle]:
    """The plain convolution (cross-correlation, as ``torch.nn.functional.conv2d``) plus bias."""
    x, w = np.asarray(x, dtype=F64), np.asarray(w, dtype=F64)
    kernel, cout = tuple(w.shape[2:]), w.shape[0]
    lead, patches = _group_patches(x, kernel, stride, dilation, pads, groups)
    per, rows = cout // groups, w.reshape(cout, -1)
    y = np.concatenate([p @ rows[j * per : (j + 1) * per].T for j, p in enumerate(patches)], axis=-1)
    if bias is not None:
        y = y + _as64(bias)
    y = np.moveaxis(y.reshape(*lead, cout), -1, 1)
    return y, ConvOracle(tuple(x.shape), kernel, stride, dilation, pads, lead, patches, rows)


def conv_vjp64(c: ConvOracle, g: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of ``sum(g * y)`` of :func:`conv64` (``"x"``, ``"w"``, ``"bias"``)."""
    g = np.moveaxis(np.asarray(g, dtype=F64), 1, -1).reshape(math.prod(c.lead), -1)
    per = g.shape[1] // len(c.groups)
    g_cols, g_rows = [], []
    for j, p in enumerate(c.groups):
        gj = g[:, j * per : (j + 1) * per]
        g_rows.append(gj.T @ p)
        g_cols.append((gj @ c.w[j * per : (j + 1) * per]).reshape(*c.lead, -1, math.prod(c.kernel)))
    return {
        "x": fold64(np.concatenate(g_cols, axis=-2), c.x_shape, c.kernel, c.stride, c.dilation, c.pads),
        "w": np.concatenate(g_rows).reshape(-1, c.x_shape[1] // len(c.groups), *c.kernel),
        "bias": g.sum(axis=0),
    }


def pool_windows64(x: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """``(N, C, *out, prod(window))``: each window's elements in row-major order, by a loop over
    window offsets (the remainder that the window does not divide is dropped)."""
    out = [s // k for s, k in zip(x.shape[2:], window)]
    cols = []
    for offset in itertools.product(*[range(k) for k in window]):
        index = tuple(slice(o, o + m * k, k) for o, m, k in zip(offset, out, window))
        cols.append(x[(slice(None), slice(None), *index)])
    return np.stack(cols, axis=-1)


def _unpool(spread: np.ndarray, x_shape: tuple[int, ...], window: tuple[int, ...]) -> np.ndarray:
    """The adjoint of :func:`pool_windows64` (the remainder gets zero)."""
    g = np.zeros(x_shape, dtype=F64)
    out = spread.shape[2:-1]
    for j, offset in enumerate(itertools.product(*[range(k) for k in window])):
        index = tuple(slice(o, o + m * k, k) for o, m, k in zip(offset, out, window))
        g[(slice(None), slice(None), *index)] = spread[..., j]
    return g


def max_pool64(x: np.ndarray, window: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Max over non-overlapping windows, and the index of each window's first maximum
    (row-major: where PyTorch's and the core's gradient goes at a tie)."""
    cols = pool_windows64(np.asarray(x, dtype=F64), window)
    first = np.argmax(cols, axis=-1)
    return np.take_along_axis(cols, first[..., None], axis=-1)[..., 0], first


def max_pool_vjp64(x_shape: tuple[int, ...], first: np.ndarray, g: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """Gradient of ``sum(g * max_pool)``: each window's ``g`` on its first maximum."""
    spread = (np.arange(math.prod(window)) == first[..., None]) * np.asarray(g, dtype=F64)[..., None]
    return _unpool(spread, x_shape, window)


def avg_pool64(x: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """Mean over non-overlapping windows."""
    return pool_windows64(np.asarray(x, dtype=F64), window).mean(axis=-1)


def avg_pool_vjp64(x_shape: tuple[int, ...], g: np.ndarray, window: tuple[int, ...]) -> np.ndarray:
    """Gradient of ``sum(g * avg_pool)``: ``g / prod(window)`` on every element of the window."""
    k = math.prod(window)
    spread = np.repeat(np.asarray(g, dtype=F64)[..., None] / k, k, axis=-1)
    return _unpool(spread, x_shape, window)


# -- the MLP -----------------------------------------------------------------------------


def _yat_options(layer: Any, params: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    return {
        "bias": params[prefix + "bias"] if layer.bias == "learnable" else layer.bias,
        "alpha": params[prefix + "alpha"] if layer.alpha == "learnable" else layer.alpha,
        "epsilon": layer.epsilon,
        "epsilon_raw": params[prefix + "epsilon_raw"] if layer.learnable_epsilon else None,
        "spherical": layer.spherical,
    }


def _affine64(h: np.ndarray, kernel: Any, bias: Any) -> np.ndarray:
    """``h @ kernel.T + bias`` on the last axis (a learnable bias is an array, a constant a float)."""
    out = h @ np.asarray(kernel, dtype=F64).T
    return out if bias is None else out + _as64(bias)


def _linear64(layer: Any, params: dict[str, np.ndarray], prefix: str, h: np.ndarray) -> np.ndarray:
    bias = params[prefix + "bias"] if layer.bias == "learnable" else layer.bias
    out = _affine64(h, params[prefix + "kernel"], bias)
    return np.maximum(out, 0.0) if layer.activation == "relu" else out


def patches64(x: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """``(N, C, H, W) -> (N, tokens, C * ph * pw)``: one token per patch position, row-major
    over the positions, each patch's pixels flattened channels first."""
    x = np.asarray(x, dtype=F64)
    (ph, pw), (n, _, height, width) = patch, x.shape
    tokens = [x[:, :, r : r + ph, c : c + pw].reshape(n, -1) for r in range(0, height, ph) for c in range(0, width, pw)]
    return np.stack(tokens, axis=1)


def patches_vjp64(g: np.ndarray, x_shape: tuple[int, ...], patch: tuple[int, ...]) -> np.ndarray:
    """The adjoint of :func:`patches64`: each token's gradient written back onto its patch."""
    (ph, pw), (n, ch, height, width) = patch, x_shape
    out = np.zeros(x_shape, dtype=F64)
    positions = [(r, c) for r in range(0, height, ph) for c in range(0, width, pw)]
    for t, (r, c) in enumerate(positions):
        out[:, :, r : r + ph, c : c + pw] = np.asarray(g[:, t], dtype=F64).reshape(n, ch, ph, pw)
    return out


class AttentionLayer64(NamedTuple):
    """An attention layer's forward pass: the projected ``q``, ``k``, ``v`` split into heads
    ``(N, T, H, D/H)``, the attention's oracle, and its output ``(N, T, D)`` before the
    output projection."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    attention: Any  # AttentionOracle ("yat_attention") or SoftmaxAttentionOracle ("attention")
    merged: np.ndarray


def _projection(params: dict[str, np.ndarray], prefix: str, p: str, layer: Any, h: np.ndarray) -> np.ndarray:
    bias = params[f"{prefix}{p}_bias"] if layer.bias == "learnable" else None
    return _affine64(h, params[f"{prefix}{p}_kernel"], bias)


def _attention_layer64(layer: Any, params: dict[str, np.ndarray], prefix: str, h: np.ndarray) -> AttentionLayer64:
    n, t, dim = h.shape
    split = (n, t, layer.heads, dim // layer.heads)  # head j: features j*d .. (j+1)*d - 1
    q, k, v = (_projection(params, prefix, p, layer, h).reshape(split) for p in ("q", "k", "v"))
    if layer.kind == "attention":
        att: Any = softmax_attention64(q, k, v)
    else:
        alpha = params[prefix + "alpha"] if layer.alpha == "learnable" else layer.alpha
        eps = softplus64(params[prefix + "epsilon_raw"]) if layer.learnable_epsilon else layer.epsilon
        att = yat_attention64(q, k, v, alpha=alpha, epsilon=eps, spherical=layer.spherical)
    return AttentionLayer64(q, k, v, att, att.out.reshape(n, t, dim))


def _conv_geometry(layer: Any) -> dict[str, Any]:
    n = len(layer.kernel_size)
    padding = layer.padding if layer.padding != () else (0,) * n
    return {
        "stride": layer.stride or (1,) * n,
        "padding": padding,
        "dilation": layer.dilation or (1,) * n,
        "groups": layer.groups,
        "output_padding": layer.output_padding or (0,) * n,
    }


def _layer_forward64(layer: Any, params: dict[str, np.ndarray], prefix: str, h: np.ndarray) -> tuple[np.ndarray, Any]:
    """One layer's own output (before any residual) and what its backward pass needs (see
    :class:`MLPBackward`)."""
    if layer.kind == "yat":  # on the last axis: a token sequence's rows are rows of the product
        o = yat_forward64(h.reshape(-1, h.shape[-1]), params[prefix + "kernel"], **_yat_options(layer, params, prefix))
        return o.y.reshape(*h.shape[:-1], -1), o
    if layer.kind == "linear":
        out = _linear64(layer, params, prefix, h)
        return out, (out if layer.activation == "relu" else None)
    if layer.kind in ("yat_attention", "attention"):
        a = _attention_layer64(layer, params, prefix, h)
        return _projection(params, prefix, "o", layer, a.merged), a
    if layer.kind == "patches":
        return patches64(h, layer.kernel_size), None
    if layer.kind == "pos_embed":
        return h + np.asarray(params[prefix + "table"], dtype=F64), None
    if layer.kind == "token_mean":
        return np.mean(h, axis=1), None
    if layer.kind in ("yat_conv", "yat_conv_transpose", "conv"):
        geo, w = _conv_geometry(layer), params[prefix + "kernel"]
        if layer.kind == "yat_conv_transpose":
            h, w, pads = transpose_as_direct64(
                h, w, geo["stride"], geo["padding"], geo["output_padding"], geo["dilation"], geo["groups"]
            )
            stride = (1,) * len(layer.kernel_size)
        else:
            pads, stride = conv_pads64(geo["padding"], layer.kernel_size, geo["dilation"]), geo["stride"]
        common = {"stride": stride, "pads": pads, "dilation": geo["dilation"], "groups": geo["groups"]}
        if layer.kind != "conv":
            return yat_conv64(h, w, **common, **_yat_options(layer, params, prefix))
        bias = params[prefix + "bias"] if layer.bias == "learnable" else layer.bias
        y, c = conv64(h, w, **common, bias=bias)
        return (np.maximum(y, 0.0) if layer.activation == "relu" else y), c
    if layer.kind == "max_pool":
        return max_pool64(h, layer.kernel_size)
    if layer.kind == "avg_pool":
        return avg_pool64(h, layer.kernel_size), None
    if layer.kind == "flatten":
        return h.reshape(h.shape[0], -1), None
    raise ValueError(f"the oracle has no layer kind {layer.kind!r}")


def mlp_forward64(params: dict[str, np.ndarray], x: np.ndarray, spec: MLPSpec) -> tuple[list[np.ndarray], list[Any]]:
    """Every layer's input and the logits (``acts``), and what each layer's backward pass
    needs (``saved``: see :class:`MLPBackward`), for any :class:`~yat_core.spec.ModelSpec`
    (``x`` of shape ``(n, *spec.input_shape)``)."""
    acts = [np.asarray(x, dtype=F64)]
    saved: list[Any] = []
    for i, layer in enumerate(spec.layers):
        out, keep = _layer_forward64(layer, params, f"{i}.", acts[-1])
        acts.append(acts[-1] + out if layer.residual else out)
        saved.append(keep)
    return acts, saved


class MLPBackward(NamedTuple):
    """The oracle's forward and backward pass of a model.

    ``saved[i]`` is a :class:`YatOracle` for a ``"yat"`` layer (on a token sequence, of its
    ``(N * T, features)`` rows), a :class:`ConvOracle` for a convolution, each window's
    first-maximum index for ``"max_pool"``, an :class:`AttentionLayer64` for an attention
    layer, a ReLU ``"linear"`` layer's own output (before any residual), None otherwise.
    ``acts[i + 1]`` includes a residual layer's input.
    """

    loss: float
    grads: dict[str, np.ndarray]
    acts: list[np.ndarray]  # every layer's input, then the logits
    saved: list[Any]
    upstream: list[np.ndarray]  # gradient of the loss with respect to each layer's output


def cross_entropy64(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    g = np.exp(log_p)
    g[rows, labels] -= 1.0
    return float(-log_p[rows, labels].mean()), g / len(labels)


def _store(grads: dict[str, np.ndarray], prefix: str, parts: dict[str, np.ndarray]) -> None:
    grads[prefix + "kernel"] = parts["w"]
    for name in ("bias", "alpha", "epsilon_raw"):
        if name in parts:
            grads[prefix + name] = parts[name]


def _affine_vjp64(g: np.ndarray, h: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``h @ w.T + b`` (on the last axis) for ``g`` on its output: input, kernel, bias."""
    # On 2-D contiguous rows: a stacked matmul of strided tokens is far slower in NumPy.
    g2, h2 = np.ascontiguousarray(g).reshape(-1, g.shape[-1]), np.ascontiguousarray(h).reshape(-1, h.shape[-1])
    return (g2 @ w).reshape(*g.shape[:-1], w.shape[1]), g2.T @ h2, g2.sum(axis=0)


def _attention_layer_vjp64(
    layer: Any,
    params: dict[str, np.ndarray],
    prefix: str,
    h: np.ndarray,
    a: AttentionLayer64,
    g: np.ndarray,
    grads: dict[str, np.ndarray],
) -> np.ndarray:
    """Back through the output projection, the attention and the q/k/v projections; the
    parameters' gradients go into ``grads``, the input's is returned."""
    learnable_bias = layer.bias == "learnable"
    w = {p: np.asarray(params[f"{prefix}{p}_kernel"], dtype=F64) for p in ("q", "k", "v", "o")}
    g_merged, grads[prefix + "o_kernel"], g_b = _affine_vjp64(g, a.merged, w["o"])
    if learnable_bias:
        grads[prefix + "o_bias"] = g_b
    g_att = g_merged.reshape(a.v.shape)
    if layer.kind == "attention":
        parts = softmax_attention_vjp64(a.attention, g_att)
    else:
        parts = yat_attention_vjp64(a.attention, g_att)
        if "alpha" in parts:
            grads[prefix + "alpha"] = parts["alpha"]
        if "epsilon" in parts:  # epsilon = softplus(raw): d eps / d raw = sigmoid(raw)
            raw = np.asarray(params[prefix + "epsilon_raw"], dtype=F64)
            grads[prefix + "epsilon_raw"] = parts["epsilon"] / (1.0 + np.exp(-raw))
    g_h = np.zeros_like(h)
    for p in ("q", "k", "v"):
        g_p = parts[p].reshape(h.shape)
        g_x, grads[f"{prefix}{p}_kernel"], g_b = _affine_vjp64(g_p, h, w[p])
        if learnable_bias:
            grads[f"{prefix}{p}_bias"] = g_b
        g_h += g_x
    return g_h


def _layer_backward64(
    layer: Any, params: dict[str, np.ndarray], prefix: str, h: np.ndarray, out: np.ndarray, saved: Any, g: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The gradient of the layer's input and of its parameters, for ``g`` on its output (its
    own output: a residual's identity path is added by the caller)."""
    grads: dict[str, np.ndarray] = {}
    if layer.kind == "linear" and layer.activation == "relu":
        g = np.where(saved > 0, g, 0.0)  # the layer's own output: a residual is added after the ReLU
    if layer.kind == "conv" and layer.activation == "relu":
        g = np.where(out > 0, g, 0.0)
    if layer.kind == "linear":
        w = np.asarray(params[prefix + "kernel"], dtype=F64)
        g_x, grads[prefix + "kernel"], g_b = _affine_vjp64(g, h, w)
        if layer.bias == "learnable":
            grads[prefix + "bias"] = g_b
        return g_x, grads
    if layer.kind == "yat":
        parts = yat_vjp64(saved, g.reshape(-1, g.shape[-1]))
        _store(grads, prefix, parts)
        return parts["x"].reshape(h.shape), grads
    if layer.kind in ("yat_attention", "attention"):
        return _attention_layer_vjp64(layer, params, prefix, h, saved, g, grads), grads
    if layer.kind == "patches":
        return patches_vjp64(g, h.shape, layer.kernel_size), grads
    if layer.kind == "pos_embed":
        grads[prefix + "table"] = g.sum(axis=0)
        return g, grads
    if layer.kind == "token_mean":
        return np.repeat(g[:, None, :] / h.shape[1], h.shape[1], axis=1), grads
    if layer.kind == "conv":
        parts = conv_vjp64(saved, g)
        if layer.bias != "learnable":
            del parts["bias"]
        _store(grads, prefix, parts)
        return parts["x"], grads
    if layer.kind == "yat_conv":
        parts = yat_conv_vjp64(saved, g)
        _store(grads, prefix, parts)
        return parts["x"], grads
    if layer.kind == "yat_conv_transpose":  # back through transpose_as_direct64
        parts = yat_conv_vjp64(saved, g)
        geo, n, groups = _conv_geometry(layer), len(layer.kernel_size), layer.groups
        w = np.flip(parts["w"], axis=tuple(range(2, 2 + n)))
        cout, cin_g = w.shape[:2]
        w = w.reshape(groups, cout // groups, cin_g, *layer.kernel_size).swapaxes(1, 2)
        parts["w"] = w.reshape(groups * cin_g, cout // groups, *layer.kernel_size)
        _store(grads, prefix, parts)
        return parts["x"][(slice(None), slice(None), *[slice(None, None, t) for t in geo["stride"]])], grads
    if layer.kind == "max_pool":
        return max_pool_vjp64(h.shape, saved, g, layer.kernel_size), grads
    if layer.kind == "avg_pool":
        return avg_pool_vjp64(h.shape, g, layer.kernel_size), grads
    return g.reshape(h.shape), grads  # flatten


def mlp_backward64(params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray, spec: MLPSpec) -> MLPBackward:
    """Loss, every parameter gradient, and the intermediates the error model needs."""
    acts, saved = mlp_forward64(params, x, spec)
    loss, g = cross_entropy64(acts[-1], labels)
    grads: dict[str, np.ndarray] = {}
    upstream: list[np.ndarray] = [np.empty(0)] * len(spec.layers)
    for i in reversed(range(len(spec.layers))):
        upstream[i] = g
        layer = spec.layers[i]
        g_in, layer_grads = _layer_backward64(layer, params, f"{i}.", acts[i], acts[i + 1], saved[i], g)
        g = g_in + g if layer.residual else g_in
        grads.update(layer_grads)
    return MLPBackward(loss, {name: grads[name] for name in params}, acts, saved, upstream)


def mlp_loss_grad64(
    params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray, spec: MLPSpec
) -> tuple[float, dict[str, np.ndarray], list[np.ndarray]]:
    """Mean softmax cross-entropy, its gradient for every parameter, and the activations."""
    out = mlp_backward64(params, x, labels, spec)
    return out.loss, out.grads, out.acts


# -- attention -----------------------------------------------------------------------------
#
# Each (batch, head) slice of the scores is the dense product above with the slice's
# queries as rows of ``x`` and its keys as rows of ``w`` (so the distance is again a direct
# sum of squared differences), ``alpha / sqrt(d)`` as its scale; the softmax, the weighted
# sum and their backward pass are written out here. Nothing here calls
# ``yat_core.attention``.


class AttentionOracle(NamedTuple):
    """Yat attention in float64 with its intermediates.

    Arrays named ``*h`` and the score-shaped ones are heads first: ``lead = (*batch, heads)``,
    scores ``(*lead, Tq, Tk)``. ``scores[i]`` is the :class:`YatOracle` of the ``i``-th
    slice of ``lead`` (row-major), whose ``y`` is the score ``scale * (q.k)^2 / (dist + eps)``.
    """

    q: np.ndarray  # (..., Tq, H, d) as given
    k: np.ndarray
    v: np.ndarray  # (..., Tk, H, dv)
    allowed: np.ndarray  # (*lead, Tq, Tk): True where the query attends to the key
    scores: list[YatOracle]
    s: np.ndarray  # (*lead, Tq, Tk): the scores (masked entries too)
    weights: np.ndarray  # (*lead, Tq, Tk): softmax over the allowed keys, 0 elsewhere
    out: np.ndarray  # (..., Tq, H, dv)
    scale: float  # alpha / sqrt(d)
    alpha: np.ndarray | float  # as given (1.0 when None)
    alpha_is_array: bool
    epsilon: float
    epsilon_is_array: bool
    epsilon_shape: tuple[int, ...]
    head_size: int
    spherical: bool


def _heads_first64(a: np.ndarray) -> np.ndarray:
    """``(..., T, H, d)`` -> ``(..., H, T, d)`` (its own inverse)."""
    return np.swapaxes(a, -3, -2)


def attention_allowed64(mask: Any, causal: bool, batch: tuple[int, ...], heads: int, tq: int, tk: int) -> np.ndarray:
    """The boolean ``(*batch, heads, Tq, Tk)`` of the (query, key) pairs that count: ``mask``
    broadcast (True: may attend) and, when ``causal``, key ``j <= i`` for query ``i``."""
    allowed = np.ones((*batch, heads, tq, tk), dtype=bool)
    if mask is not None:
        allowed = allowed & np.broadcast_to(np.asarray(mask, dtype=bool), allowed.shape)
    if causal:
        allowed = allowed & (np.arange(tq)[:, None] >= np.arange(tk)[None, :])
    return allowed


def _softmax_rows64(s: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Softmax over the last axis restricted to ``allowed``; a row with nothing allowed is 0."""
    top = np.max(np.where(allowed, s, -np.inf), axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.where(allowed, np.exp(np.where(allowed, s, top) - top), 0.0)
    total = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def yat_attention64(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: Any = None,
    causal: bool = False,
    alpha: Any = None,
    epsilon: Any = 1e-5,
    spherical: bool = False,
) -> AttentionOracle:
    """Yat attention in float64: ``q (..., Tq, H, d)``, ``k (..., Tk, H, d)``,
    ``v (..., Tk, H, dv)`` -> ``out (..., Tq, H, dv)`` (``.out``) and the weights
    ``(..., H, Tq, Tk)`` (``.weights``).

    The score of query ``i`` and key ``j`` is ``alpha (q_i.k_j)^2 / ((|q_i - k_j|^2 + eps) sqrt(d))``
    (the distance summed directly; in spherical mode ``2 - 2 q.k`` of the normalised rows,
    clamped at 0), the weights its softmax over the keys the mask and ``causal`` allow,
    and a query with no key allowed gets zero weights. ``alpha`` and ``epsilon`` may be
    scalar arrays (their gradients are then part of :func:`yat_attention_vjp64`).
    """
    q64, k64, v64 = (np.asarray(a, dtype=F64) for a in (q, k, v))
    *batch, tq, heads, d = q64.shape
    tk = k64.shape[-3]
    alpha64 = _as64(alpha)
    alpha_value = 1.0 if alpha64 is None else float(np.reshape(alpha64, -1)[0])
    eps64 = _as64(epsilon)
    eps_value = float(np.reshape(eps64, -1)[0])
    scale = alpha_value / math.sqrt(d)
    qh = _heads_first64(q64).reshape(-1, tq, d)
    kh = _heads_first64(k64).reshape(-1, tk, d)
    scores = [yat_forward64(qs, ks, alpha=scale, epsilon=eps_value, spherical=spherical) for qs, ks in zip(qh, kh)]
    lead = (*batch, heads)
    s = np.stack([o.y for o in scores]).reshape(*lead, tq, tk)
    allowed = attention_allowed64(mask, causal, tuple(batch), heads, tq, tk)
    weights = _softmax_rows64(s, allowed)
    out = _heads_first64(weights @ _heads_first64(v64))
    return AttentionOracle(
        q64,
        k64,
        v64,
        allowed,
        scores,
        s,
        weights,
        out,
        scale,
        1.0 if alpha64 is None else alpha64,
        isinstance(alpha64, np.ndarray),
        eps_value,
        isinstance(eps64, np.ndarray),
        tuple(np.shape(eps64)),
        d,
        spherical,
    )


def attention_score_grad64(o: AttentionOracle, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The backward pass down to the scores, for ``g`` on the output ``(..., Tq, H, dv)``:
    ``(g_s, g_a, g_v)`` with ``g_s`` and ``g_a = g . v`` (the weights' gradient) heads first
    ``(*lead, Tq, Tk)`` and ``g_v`` in ``v``'s layout."""
    gh, vh = _heads_first64(np.asarray(g, dtype=F64)), _heads_first64(o.v)
    g_v = _heads_first64(np.swapaxes(o.weights, -1, -2) @ gh)
    g_a = gh @ np.swapaxes(vh, -1, -2)
    # Softmax adjoint; zero wherever the weight is (masked keys, fully masked rows).
    g_s = o.weights * (g_a - np.sum(o.weights * g_a, axis=-1, keepdims=True))
    return g_s, g_a, g_v


def yat_attention_vjp64(o: AttentionOracle, g: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of ``sum(g * out)`` of :func:`yat_attention64`.

    Keys ``"q"``, ``"k"``, ``"v"`` (the inputs' shapes), and ``"alpha"``, ``"epsilon"``
    where those were arrays. Each slice's score gradient goes through :func:`yat_vjp64`
    (the distance's gradient kept as a difference of the rows).
    """
    g_s, _, g_v = attention_score_grad64(o, g)
    *batch, tq, heads, d = o.q.shape
    tk = o.k.shape[-3]
    flat = g_s.reshape(-1, tq, tk)
    parts = [yat_vjp64(so, gs) for so, gs in zip(o.scores, flat)]
    lead = (*batch, heads)
    grads = {
        "q": _heads_first64(np.stack([p["x"] for p in parts]).reshape(*lead, tq, d)),
        "k": _heads_first64(np.stack([p["w"] for p in parts]).reshape(*lead, tk, d)),
        "v": g_v,
    }
    if o.alpha_is_array:  # s = alpha * ratio / sqrt(d)
        ratio = np.stack([so.ratio for so in o.scores])
        grads["alpha"] = np.reshape(np.sum(flat * ratio) / math.sqrt(d), np.shape(o.alpha))
    if o.epsilon_is_array:  # d s / d eps = -scale * ratio / (dist + eps)
        g_eps = sum(float(np.sum(-gs * so.alpha * so.ratio / so.d)) for so, gs in zip(o.scores, flat))
        grads["epsilon"] = np.reshape(np.asarray(g_eps, dtype=F64), o.epsilon_shape)
    return grads


class SoftmaxAttentionOracle(NamedTuple):
    """Scaled dot-product attention in float64 (the baseline): layouts as :class:`AttentionOracle`."""

    q: np.ndarray  # (..., Tq, H, d)
    k: np.ndarray
    v: np.ndarray
    s: np.ndarray  # (*lead, Tq, Tk): q.k / sqrt(d)
    weights: np.ndarray
    out: np.ndarray  # (..., Tq, H, dv)


def softmax_attention64(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> SoftmaxAttentionOracle:
    """``softmax(q.k / sqrt(d)) v`` over every key, in float64."""
    q64, k64, v64 = (np.asarray(a, dtype=F64) for a in (q, k, v))
    s = _heads_first64(q64) @ np.swapaxes(_heads_first64(k64), -1, -2) / math.sqrt(q64.shape[-1])
    weights = _softmax_rows64(s, np.ones(s.shape, dtype=bool))
    return SoftmaxAttentionOracle(q64, k64, v64, s, weights, _heads_first64(weights @ _heads_first64(v64)))


def softmax_attention_vjp64(o: SoftmaxAttentionOracle, g: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients ``"q"``, ``"k"``, ``"v"`` of ``sum(g * out)`` of :func:`softmax_attention64`."""
    g_s, _, g_v = attention_score_grad64(o, g)  # type: ignore[arg-type]  # reads weights and v only
    g_dot = g_s / math.sqrt(o.q.shape[-1])
    g_q = g_dot @ _heads_first64(o.k)
    g_k = np.swapaxes(g_dot, -1, -2) @ _heads_first64(o.q)
    return {"q": _heads_first64(g_q), "k": _heads_first64(g_k), "v": g_v}
