"""AdamW as a pure ``init`` / ``update`` pair with explicit state.

One implementation serves every backend, so the "same recipe" is the same numbers:
decoupled weight decay (Loshchilov & Hutter), bias correction on, the update
applied to every parameter. Works on dicts of arrays of any array-API namespace
and traces under ``jax.jit`` / ``mx.compile``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from yat_core.namespaces import array_namespace, device_of

__all__ = ["AdamWConfig", "AdamWState", "adamw_init", "adamw_update"]

Params = dict[str, Any]


class AdamWConfig(NamedTuple):
    """AdamW hyperparameters, recorded verbatim in every receipt.

    Examples
    --------
    >>> AdamWConfig().lr, AdamWConfig().weight_decay
    (0.0003, 0.01)
    """

    lr: float = 3e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01

    def validate(self) -> None:
        """Raise :class:`ValueError` for a hyperparameter outside its valid range."""
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        for label, value in (("learning rate", self.lr), ("eps", self.eps), ("weight decay", self.weight_decay)):
            # inf passes the range checks above and trains to NaN.
            if not math.isfinite(value):
                raise ValueError(f"{label} must be finite, got {value}")


class AdamWState(NamedTuple):
    """Step count and first / second moment estimates, one entry per parameter."""

    count: Any
    mu: Params
    nu: Params


def adamw_init(params: Params, /, *, xp: Any = None) -> AdamWState:
    """Zero moments shaped like ``params``, on their device.

    Examples
    --------
    >>> import numpy as np
    >>> state = adamw_init({"w": np.ones(3)})
    >>> int(state.count), state.mu["w"].tolist()
    (0, [0.0, 0.0, 0.0])
    """
    first = next(iter(params.values()))
    xp = array_namespace(first) if xp is None else xp
    mu = {k: xp.zeros_like(v) for k, v in params.items()}
    nu = {k: xp.zeros_like(v) for k, v in params.items()}
    count = xp.zeros((), dtype=xp.int32, device=device_of(first))
    return AdamWState(count, mu, nu)


def _power(beta: float, t: Any, xp: Any) -> Any:
    """``beta ** t`` for a step count ``t`` (an array), as ``exp(t * log(beta))``.

    The same number to float rounding, written with ``exp`` because compilers
    treat it as costly and compute the step's few bias-correction scalars once:
    inductor's CPU kernels otherwise recompute ``pow`` in the loop over every
    parameter's elements, which doubled the update's time (305 -> 148 us for the
    seed model's 235,148 parameters on 2 cores).
    """
    return 0.0 if beta == 0.0 else xp.exp(t * math.log(beta))


def adamw_update(
    grads: Params, state: AdamWState, params: Params, config: AdamWConfig, /, *, xp: Any = None
) -> tuple[Params, AdamWState]:
    """One AdamW step; returns new parameters and state (inputs are not modified).

    Examples
    --------
    >>> import numpy as np
    >>> p = {"w": np.array([1.0])}; s = adamw_init(p)
    >>> p, s = adamw_update({"w": np.array([0.5])}, s, p, AdamWConfig(lr=0.1, weight_decay=0.0))
    >>> p["w"].round(6).tolist()  # the first bias-corrected step moves by lr
    [0.9]
    """
    first = next(iter(params.values()))
    xp = array_namespace(first) if xp is None else xp
    lr, b1, b2, eps, wd = config
    count = state.count + 1
    t = xp.astype(count, first.dtype)
    # Bias corrections folded into the step size and epsilon, as PyTorch does.
    step_size = lr / (1.0 - _power(b1, t, xp))
    root_bc2 = xp.sqrt(1.0 - _power(b2, t, xp))
    new_params, mu, nu = {}, {}, {}
    for name, p in params.items():
        g = grads[name]
        mu[name] = b1 * state.mu[name] + (1.0 - b1) * g
        nu[name] = b2 * state.nu[name] + (1.0 - b2) * (g * g)
        decayed = p * (1.0 - lr * wd) if wd else p
        new_params[name] = decayed - step_size * mu[name] / (xp.sqrt(nu[name]) / root_bc2 + eps)
    return new_params, AdamWState(count, mu, nu)
