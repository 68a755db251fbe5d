"""The float64 NumPy oracle: the reference for every check of the suite.

Written from the definition, independently of :mod:`yat_core.product`:

- the squared distance is computed directly as ``sum((x - w)^2)`` (no expansion,
  so no cancellation: it is exact to a few float64 ulps even when ``x == w`` or the
  norms are large); in spherical mode it is the definition's ``2 - 2 dot`` of the
  normalised rows, clamped at 0;
- gradients come from a hand-derived backward pass in float64 whose distance terms
  use ``x - w`` directly.

Inputs are float32 arrays read exactly in float64; constant options (a Python
``epsilon``, bias or alpha) are used at their float64 value, so the float32
rounding of a constant is counted as part of a backend's error.
"""

from __future__ import annotations

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


# -- the MLP -----------------------------------------------------------------------------


def _yat_options(layer: Any, params: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    return {
        "bias": params[prefix + "bias"] if layer.bias == "learnable" else layer.bias,
        "alpha": params[prefix + "alpha"] if layer.alpha == "learnable" else layer.alpha,
        "epsilon": layer.epsilon,
        "epsilon_raw": params[prefix + "epsilon_raw"] if layer.learnable_epsilon else None,
        "spherical": layer.spherical,
    }


def _linear64(layer: Any, params: dict[str, np.ndarray], prefix: str, h: np.ndarray) -> np.ndarray:
    out = h @ np.asarray(params[prefix + "kernel"], dtype=F64).T
    if layer.bias == "learnable":
        out = out + np.asarray(params[prefix + "bias"], dtype=F64)
    elif layer.bias is not None:
        out = out + float(layer.bias)
    return np.maximum(out, 0.0) if layer.activation == "relu" else out


def mlp_forward64(params: dict[str, np.ndarray], x: np.ndarray, spec: MLPSpec) -> tuple[list[np.ndarray], list[Any]]:
    """Every layer's input and the logits (``acts``), and each Yat layer's :class:`YatOracle`."""
    acts = [np.asarray(x, dtype=F64)]
    saved: list[Any] = []
    for i, layer in enumerate(spec.layers):
        prefix = f"{i}."
        if layer.kind == "yat":
            o = yat_forward64(acts[-1], params[prefix + "kernel"], **_yat_options(layer, params, prefix))
            saved.append(o)
            acts.append(o.y)
        else:
            saved.append(None)
            acts.append(_linear64(layer, params, prefix, acts[-1]))
    return acts, saved


class MLPBackward(NamedTuple):
    """The oracle's forward and backward pass of the MLP."""

    loss: float
    grads: dict[str, np.ndarray]
    acts: list[np.ndarray]  # every layer's input, then the logits
    saved: list[Any]  # each Yat layer's YatOracle (None for linear layers)
    upstream: list[np.ndarray]  # gradient of the loss with respect to each layer's output


def cross_entropy64(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    g = np.exp(log_p)
    g[rows, labels] -= 1.0
    return float(-log_p[rows, labels].mean()), g / len(labels)


def mlp_backward64(params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray, spec: MLPSpec) -> MLPBackward:
    """Loss, every parameter gradient, and the intermediates the error model needs."""
    acts, saved = mlp_forward64(params, x, spec)
    loss, g = cross_entropy64(acts[-1], labels)
    grads: dict[str, np.ndarray] = {}
    upstream: list[np.ndarray] = [np.empty(0)] * len(spec.layers)
    for i in reversed(range(len(spec.layers))):
        layer, prefix = spec.layers[i], f"{i}."
        upstream[i] = g
        if layer.kind == "linear":
            if layer.activation == "relu":
                g = np.where(acts[i + 1] > 0, g, 0.0)
            grads[prefix + "kernel"] = g.T @ acts[i]
            if layer.bias == "learnable":
                grads[prefix + "bias"] = g.sum(axis=0)
            g = g @ np.asarray(params[prefix + "kernel"], dtype=F64)
            continue
        parts = yat_vjp64(saved[i], g)
        grads[prefix + "kernel"] = parts["w"]
        for name in ("bias", "alpha", "epsilon_raw"):
            if name in parts:
                grads[prefix + name] = parts[name]
        g = parts["x"]
    return MLPBackward(loss, {name: grads[name] for name in params}, acts, saved, upstream)


def mlp_loss_grad64(
    params: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray, spec: MLPSpec
) -> tuple[float, dict[str, np.ndarray], list[np.ndarray]]:
    """Mean softmax cross-entropy, its gradient for every parameter, and the activations."""
    out = mlp_backward64(params, x, labels, spec)
    return out.loss, out.grads, out.acts
