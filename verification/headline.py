"""The headline number: how far apart the backends are on a model's own domain.

Inputs: the first training batch of the recipe (128 real MNIST images, pixels in
[0, 1], the first 128 of epoch 1's batch order with seed 0; channels-first
``(128, 1, 28, 28)`` for the CNN and the vision transformers), the model's initial
weights (seed 0, float32). Models (:data:`MODELS`): the seed MLP, the Yat CNN and the
CNN's Conv+ReLU baseline, the Yat vision transformer (``vit_spec()``) and its softmax
baseline (``vit_softmax_spec()``). Compared, for every pair of float32 backends and each
backend against the float64 oracle:

- forward: each Yat layer's output on identical inputs (the first layer on the
  images, a later one on the float32 rounding of the oracle's input to it; dense
  layers through the backend's ``yat_product`` (on a token sequence, its
  ``(128 * tokens, features)`` rows, the product without the residual), convolutions
  and Yat attention layers through the model of that one layer), for the core
  backends; and the logits of the whole model for every backend and every
  framework-native model;
- gradients: every parameter gradient of the mean cross-entropy, per gradient mode.

The metric is ``max |a - b| / max(1, |ref|)`` over elements (``ref``: the oracle);
the tables also give the max absolute difference and the normwise relative one
``max |a - b| / max |ref|``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from verification import backends
from verification.cases import YatInputs
from verification.error_model import precision_for, total_bound, yat_bound
from verification.oracle import ConvOracle, YatOracle, mlp_backward64, mlp_forward64, yat_forward64
from verification.trajectory import seed_batch
from yat_core.mlp import init_mlp_numpy, mlp_value_and_grad
from yat_core.spec import LayerSpec, ModelSpec, cnn_relu_spec, cnn_spec, seed_spec, vit_softmax_spec, vit_spec

__all__ = [
    "TARGET",
    "ORACLE",
    "MODELS",
    "metrics",
    "problem",
    "seed_problem",
    "layer_keys",
    "forward_outputs",
    "forward_bound_ratios",
    "gradient_outputs",
    "pair_table",
    "oracle_self_check",
]

#: The issue's target for every pair, forward and gradients.
TARGET = 1e-6
ORACLE = "oracle-float64"
#: The models of the headline (names as in the report and ``STORE.headline``).
MODELS: dict[str, Callable[[], ModelSpec]] = {
    "seed": seed_spec,
    "cnn": cnn_spec,
    "cnn-relu": cnn_relu_spec,
    "vit": vit_spec,
    "vit-softmax": vit_softmax_spec,
}
#: Layer kinds compared on their own (before the logits).
_LAYER_KINDS = ("yat", "yat_conv", "yat_attention")
#: Layer kinds the error model bounds on their own (the forward's bound ratio: the first of them).
_BOUNDED_KINDS = ("yat", "yat_conv")


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
def problem(model: str = "seed") -> dict[str, Any]:
    """A model of :data:`MODELS`, its float32 initial weights, the first batch (in the
    model's input shape) and the oracle."""
    spec = MODELS[model]()
    params = init_mlp_numpy(spec, 0, np.float32)
    x, labels = seed_batch()
    x = x.reshape(len(x), *spec.input_shape)
    back = mlp_backward64(params, x, labels, spec)
    return {"spec": spec, "params": params, "x": x, "labels": labels, "oracle": back}


def seed_problem() -> dict[str, Any]:
    """:func:`problem` of the seed model."""
    return problem("seed")


def layer_keys(model: str) -> dict[str, int]:
    """``{"yat layer 1": 0, ...}``: the layers compared on their own, by spec index."""
    spec = problem(model)["spec"]
    return {f"{layer.kind} layer {i + 1}": i for i, layer in enumerate(spec.layers) if layer.kind in _LAYER_KINDS}


def _layer_input(model: str, i: int) -> np.ndarray:
    p = problem(model)
    return p["x"] if i == 0 else p["oracle"].acts[i].astype(np.float32)


def _dense_inputs(model: str, i: int) -> YatInputs:
    """The inputs of dense Yat layer ``i`` as a :class:`YatInputs`."""
    p = problem(model)
    params, ls = p["params"], p["spec"].layers[i]
    x = _layer_input(model, i)
    x = x.reshape(-1, x.shape[-1])  # a token sequence's rows are rows of the product

    def option(name: str) -> Any:
        value = getattr(ls, name)
        return params[f"{i}.{name}"] if value == "learnable" else value

    raw = params[f"{i}.epsilon_raw"] if ls.learnable_epsilon else None
    return YatInputs(
        x,
        params[f"{i}.kernel"],
        option("bias"),
        option("alpha"),
        None if ls.learnable_epsilon else ls.epsilon,
        raw,
        ls.spherical,
        np.zeros((x.shape[0], ls.out_features), np.float32),
    )


def _single_layer(model: str, i: int) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """Layer ``i`` alone as a model (then a flatten, so it ends in features) and its parameters."""
    p = problem(model)
    spec, layer = p["spec"], p["spec"].layers[i]
    shape = spec.shapes()[i + 1]
    single = ModelSpec((layer, LayerSpec("flatten", shape[0], int(np.prod(shape)))), input_shape=spec.shapes()[i])
    prefix = f"{i}."
    return single, {"0." + k[len(prefix) :]: v for k, v in p["params"].items() if k.startswith(prefix)}


def _layer_reference(model: str, i: int) -> tuple[np.ndarray, Any]:
    """The oracle's output of layer ``i`` on the float32 input, and its saved intermediates."""
    if problem(model)["spec"].layers[i].kind == "yat":
        inp = _dense_inputs(model, i)
        o = yat_forward64(
            inp.x,
            inp.w,
            bias=inp.bias,
            alpha=inp.alpha,
            epsilon=inp.epsilon,
            epsilon_raw=inp.epsilon_raw,
            spherical=inp.spherical,
        )
        return o.y, o
    single, params = _single_layer(model, i)
    acts, saved = mlp_forward64(params, _layer_input(model, i), single)
    return acts[-1], saved[0]


def _layer_output(impl: Any, model: str, i: int) -> np.ndarray:
    if problem(model)["spec"].layers[i].kind == "yat":
        return impl.yat(_dense_inputs(model, i))
    single, params = _single_layer(model, i)
    return impl.mlp_forward(params, _layer_input(model, i), single)


def forward_outputs(names: list[str], model: str = "seed") -> dict[str, dict[str, np.ndarray]]:
    """``{backend: {"yat layer 1": y, ..., "logits": y}}``, oracle included."""
    p = problem(model)
    layers = layer_keys(model)
    out: dict[str, dict[str, np.ndarray]] = {ORACLE: {k: _layer_reference(model, i)[0] for k, i in layers.items()}}
    out[ORACLE]["logits"] = p["oracle"].acts[-1]
    for name in names:
        impl = backends.load(name)
        out[name] = {}
        if "yat" in backends.PROVIDERS[name].capabilities:  # native models give logits only
            out[name] = {k: _layer_output(impl, model, i) for k, i in layers.items()}
        out[name]["logits"] = impl.mlp_forward(p["params"], p["x"], p["spec"])
    return out


def _first_bounded(model: str) -> tuple[str, int] | None:
    """Key and index of the first compared layer the error model bounds on its own."""
    spec = problem(model)["spec"]
    return next(((k, i) for k, i in layer_keys(model).items() if spec.layers[i].kind in _BOUNDED_KINDS), None)


def _first_layer_bound(model: str, name: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """The first bounded layer's key, its oracle output and its error-model bound (as laid out
    in :func:`forward_outputs`)."""
    first = _first_bounded(model)
    if first is None:
        return None
    key, i = first
    ref, saved = _layer_reference(model, i)
    prec = precision_for(name, np.float32)
    if isinstance(saved, YatOracle):
        return key, ref, total_bound(lambda q: yat_bound(saved, q).y, prec)
    c: ConvOracle = saved
    parts = [total_bound(lambda q, o=o: yat_bound(o, q).y, prec).reshape(*c.lead, -1) for o in c.groups]
    bound = np.moveaxis(np.concatenate(parts, axis=-1), -1, 1)
    return key, ref, bound.reshape(len(bound), -1)


def forward_bound_ratios(outputs: dict[str, dict[str, np.ndarray]], model: str = "seed") -> dict[str, float]:
    """Observed error / error-model bound on the model's first Yat layer, per backend."""
    ratios = {}
    for name, tensors in outputs.items():
        first = None if name == ORACLE else _first_layer_bound(model, name)
        if first is None or first[0] not in tensors:
            continue
        key, ref, bound = first
        ratios[name] = float(np.max(np.abs(tensors[key] - ref) / bound))
    return ratios


def first_layer_length(model: str) -> int | None:
    """The dot-product length ``k`` of the first bounded layer (784 for the seed, 9 for the CNN,
    64 for the ViT's first dense Yat layer)."""
    first = _first_bounded(model)
    if first is None:
        return None
    layer = problem(model)["spec"].layers[first[1]]
    return layer.in_features // layer.groups * int(np.prod(layer.kernel_size or (1,)))


def gradient_outputs(grad_ids: list[str], model: str = "seed") -> dict[str, dict[str, np.ndarray]]:
    """``{gradient id: {parameter: gradient}}`` of the model's loss, oracle included."""
    p = problem(model)
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


def oracle_self_check(model: str = "seed") -> float:
    """Headline distance between the oracle and the core's own float64 analytic gradients."""
    p = problem(model)
    params64 = {k: v.astype(np.float64) for k, v in p["params"].items()}
    _, core = mlp_value_and_grad(params64, p["x"].astype(np.float64), p["labels"], p["spec"])
    return max(metrics(core[k], p["oracle"].grads[k], p["oracle"].grads[k])["headline"] for k in core)
