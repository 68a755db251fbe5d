"""The headline number: how far apart the backends are on the seed model's own domain.

Inputs: the first training batch of the seed recipe (128 real MNIST images, pixels
in [0, 1]), the seed model's Xavier-initialised weights (seed 0). Compared, for
every pair of float32 backends and each backend against the float64 oracle:

- forward: each Yat layer's output (layer 1 on the images; layer 2 on the float32
  rounding of the oracle's layer-1 output, so each layer is compared on identical
  inputs) and the logits of the whole ``mlp_forward``;
- gradients: every parameter gradient of the mean cross-entropy, per gradient mode.

The metric is ``max |a - b| / max(1, |ref|)`` over elements (``ref``: the oracle);
the tables also give the max absolute difference and the normwise relative one
``max |a - b| / max |ref|``.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import numpy as np

from verification import backends
from verification.cases import YatInputs
from verification.error_model import precision_for, total_bound, yat_bound
from verification.oracle import mlp_backward64, yat_forward64
from verification.trajectory import seed_batch
from yat_core.mlp import init_mlp_numpy, mlp_value_and_grad, seed_spec

__all__ = [
    "TARGET",
    "ORACLE",
    "metrics",
    "seed_problem",
    "forward_outputs",
    "forward_bound_ratios",
    "gradient_outputs",
    "pair_table",
    "oracle_self_check",
]

#: The issue's target for every pair, forward and gradients.
TARGET = 1e-6
ORACLE = "oracle-float64"


def metrics(a: np.ndarray, b: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max absolute, normwise relative, and headline (``max(1, |ref|)``-relative) difference."""
    diff = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    ref = np.abs(np.asarray(ref, dtype=np.float64))
    scale = float(ref.max()) if ref.size else 0.0
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / scale) if scale > 0 else float(diff.max()),
        "headline": float(np.max(diff / np.maximum(1.0, ref))),
    }


@functools.cache
def seed_problem() -> dict[str, Any]:
    """The seed model, its float32 initial weights, the first batch and the oracle."""
    spec = seed_spec()
    params = init_mlp_numpy(spec, 0, np.float32)
    x, labels = seed_batch()
    back = mlp_backward64(params, x, labels, spec)
    return {"spec": spec, "params": params, "x": x, "labels": labels, "oracle": back}


def _layer_inputs(layer: int) -> YatInputs:
    """The inputs of Yat layer ``layer`` (0 or 1) as a :class:`YatInputs`."""
    p = seed_problem()
    params, spec = p["params"], p["spec"]
    x = p["x"] if layer == 0 else p["oracle"].acts[1].astype(np.float32)
    ls = spec.layers[layer]
    return YatInputs(
        x,
        params[f"{layer}.kernel"],
        params[f"{layer}.bias"],
        params[f"{layer}.alpha"],
        ls.epsilon,
        None,
        False,
        np.zeros((x.shape[0], ls.out_features), np.float32),
    )


def forward_outputs(names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{backend: {"yat layer 1": y, "yat layer 2": y, "logits": y}}``, oracle included."""
    p = seed_problem()
    out: dict[str, dict[str, np.ndarray]] = {ORACLE: {}}
    for layer in (0, 1):
        inp = _layer_inputs(layer)
        out[ORACLE][f"yat layer {layer + 1}"] = yat_forward64(
            inp.x, inp.w, bias=inp.bias, alpha=inp.alpha, epsilon=inp.epsilon
        ).y
    out[ORACLE]["logits"] = p["oracle"].acts[-1]
    for name in names:
        impl = backends.load(name)
        out[name] = {}
        if "yat" in backends.PROVIDERS[name].capabilities:  # native models give logits only
            out[name] = {f"yat layer {layer + 1}": impl.yat(_layer_inputs(layer)) for layer in (0, 1)}
        out[name]["logits"] = impl.mlp_forward(p["params"], p["x"], p["spec"])
    return out


def forward_bound_ratios(outputs: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Observed error / error-model bound on layer 1 of the seed model, per backend."""
    inp = _layer_inputs(0)
    o = yat_forward64(inp.x, inp.w, bias=inp.bias, alpha=inp.alpha, epsilon=inp.epsilon)
    ratios = {}
    for name, tensors in outputs.items():
        if name == ORACLE or "yat layer 1" not in tensors:
            continue
        bound = total_bound(lambda p: yat_bound(o, p).y, precision_for(name, np.float32))
        ratios[name] = float(np.max(np.abs(tensors["yat layer 1"] - o.y) / bound))
    return ratios


def gradient_outputs(grad_ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """``{gradient id: {parameter: gradient}}`` of the seed loss, oracle included."""
    p = seed_problem()
    out = {ORACLE: dict(p["oracle"].grads)}
    for gid in grad_ids:
        name, mode = backends.split_gradient_id(gid)
        _, out[gid] = backends.load(name).mlp_loss_grad(p["params"], p["x"], p["labels"], p["spec"], mode)
    return out


def pair_table(outputs: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Every pair of entries (oracle first): per-tensor metrics and their maximum."""
    ref = outputs[ORACLE]
    table = {}
    for a, b in itertools.combinations(list(outputs), 2):
        per = {k: metrics(outputs[a][k], outputs[b][k], ref[k]) for k in ref if k in outputs[a] and k in outputs[b]}
        worst = {m: max(v[m] for v in per.values()) for m in ("max_abs", "max_rel", "headline")}
        worst_tensor = max(per, key=lambda k: per[k]["headline"])
        table[f"{a} vs {b}"] = {"a": a, "b": b, **worst, "worst_tensor": worst_tensor, "tensors": per}
    return table


def oracle_self_check() -> float:
    """Headline distance between the oracle and the core's own float64 analytic gradients."""
    p = seed_problem()
    params64 = {k: v.astype(np.float64) for k, v in p["params"].items()}
    _, core = mlp_value_and_grad(params64, p["x"].astype(np.float64), p["labels"], p["spec"])
    return max(metrics(core[k], p["oracle"].grads[k], p["oracle"].grads[k])["headline"] for k in core)
