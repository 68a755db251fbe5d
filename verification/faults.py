"""Deliberately wrong backends, to show that the suite's checks catch real mistakes.

Each fault is the NumPy backend with one classic slip:

``epsilon-twice``
    the denominator is ``dist + eps + eps``;
``bias-in-distance``
    the bias enters the distance too: ``|x|^2 + |w|^2 - 2 (dot + b)``;
``no-clamp``
    the cancelling distance is not clamped at 0 (it can go negative near ``x == w``);
``dropped-distance-gradient``
    the forward pass is right, but the analytic gradient forgets that the distance
    depends on ``x`` and ``w`` (only the numerator's term is kept).
"""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as np_xp
import numpy as np

from verification.backends import CoreImpl
from yat_core.mlp import MLPSpec
from yat_core.product import softplus

__all__ = ["FAULTS", "FaultyImpl"]

FAULTS = ("epsilon-twice", "bias-in-distance", "no-clamp", "dropped-distance-gradient")


def _faulty_product(x: Any, w: Any, *, bias: Any, alpha: Any, epsilon: Any, fault: str) -> Any:
    """The product with ``fault`` (non-spherical), written out in NumPy."""
    dot = x @ w.T
    b = 0.0 if bias is None else bias
    x_sq = np.sum(x * x, axis=-1, keepdims=True)
    w_sq = np.sum(w * w, axis=-1)
    raw = x_sq + w_sq - 2.0 * (dot + b if fault == "bias-in-distance" else dot)
    dist = raw if fault == "no-clamp" else np.where(raw > 0, raw, np.zeros_like(raw))
    denom = dist + epsilon + (epsilon if fault == "epsilon-twice" else 0.0)
    n = dot + b
    y = n * n / denom
    return y if alpha is None else alpha * y


class FaultyImpl(CoreImpl):
    """The NumPy backend with one fault injected (see :data:`FAULTS`)."""

    def __init__(self, fault: str) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {FAULTS}")
        super().__init__(f"fault:{fault}", np_xp, np.asarray, np.asarray)
        self.fault = fault

    def _forward(self, params: dict[str, Any], const: dict[str, Any]) -> Any:
        if self.fault == "dropped-distance-gradient" or const.get("spherical"):
            return super()._forward(params, const)
        eps = softplus(params["epsilon_raw"], xp=np_xp) if "epsilon_raw" in params else const["epsilon"]
        return _faulty_product(
            params["x"],
            params["w"],
            bias=params.get("bias", const.get("bias")),
            alpha=params.get("alpha", const.get("alpha")),
            epsilon=eps,
            fault=self.fault,
        )

    def _analytic_yat_grads(self, arrays: dict[str, Any], const: dict[str, Any]) -> dict[str, Any]:
        grads = super()._analytic_yat_grads(arrays, const)
        if self.fault != "dropped-distance-gradient" or const.get("spherical"):
            return grads
        # Keep only the numerator's path: d(dot)/dx = w, d(dot)/dw = x.
        x, w, g = arrays["x"], arrays["w"], arrays["g"]
        alpha = arrays.get("alpha", const.get("alpha"))
        eps = softplus(arrays["epsilon_raw"], xp=np_xp) if "epsilon_raw" in arrays else const["epsilon"]
        dot = x @ w.T
        bias = arrays.get("bias", const.get("bias"))
        n = dot if bias is None else dot + bias
        raw = np.sum(x * x, axis=-1, keepdims=True) + np.sum(w * w, axis=-1) - 2.0 * dot
        d = np.where(raw > 0, raw, 0.0) + eps
        g_numer = 2.0 * g * (1.0 if alpha is None else alpha) * n / d
        grads["x"], grads["w"] = g_numer @ w, g_numer.T @ x
        return grads

    def mlp_forward(
        self, params: dict[str, np.ndarray], x: np.ndarray, spec: MLPSpec, dtype: Any = np.float32
    ) -> np.ndarray:
        h = np.asarray(x, dtype=dtype)
        for i, layer in enumerate(spec.layers):
            p = {k.split(".", 1)[1]: np.asarray(v, dtype=dtype) for k, v in params.items() if k.startswith(f"{i}.")}
            bias = p.get("bias", layer.bias if layer.bias != "learnable" else None)
            if layer.kind == "linear":
                h = h @ p["kernel"].T + (0.0 if bias is None else bias)
                continue
            alpha = p.get("alpha", layer.alpha if layer.alpha != "learnable" else None)
            eps = softplus(p["epsilon_raw"], xp=np_xp) if layer.learnable_epsilon else layer.epsilon
            h = _faulty_product(h, p["kernel"], bias=bias, alpha=alpha, epsilon=eps, fault=self.fault)
        return h
