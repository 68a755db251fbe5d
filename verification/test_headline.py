"""The headline number: on each model's own domain (128 real MNIST images, the model's
initial weights), every float32 backend within 1e-6 (relative to max(1, |ref|)) of the
float64 oracle and of every other backend, for the forward pass and for every
parameter gradient.

Models: the seed MLP, the Yat CNN (``cnn_spec()``, channels-first images) and its
Conv+ReLU baseline, the Yat vision transformer (``vit_spec()``) and its softmax
baseline (``vit_softmax_spec()``), as the profile lists them; the logits of every
framework-native model too. The oracle's convolution, pooling, token kinds (patches,
position table, both attentions with their projections, residuals, token mean) and
their backward passes are checked against finite differences here, and the core's
float64 analytic gradients against the oracle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from verification import backends, profiles
from verification.headline import (
    ORACLE,
    TARGET,
    first_layer_length,
    forward_bound_ratios,
    forward_outputs,
    gradient_outputs,
    metrics,
    oracle_self_check,
    pair_table,
)
from verification.oracle import mlp_backward64
from verification.results import STORE
from yat_core.mlp import init_mlp_numpy, mlp_value_and_grad
from yat_core.spec import LayerSpec, ModelSpec

FORWARD = backends.provider_ids("mlp")
GRADIENTS = backends.gradient_ids("mlp_grad")
HEADLINE_MODELS = profiles.active().headline_models
REPRO = "python -m verification.repro headline {} --model {}"


def _installed(ids: list[str]) -> list[str]:
    return [
        i
        for i in ids
        if not backends.PROVIDERS[backends.split_gradient_id(i)[0] if i not in backends.PROVIDERS else i].missing()
    ]


def _entry(model: str) -> dict[str, Any]:
    STORE.headline["target"] = TARGET
    return STORE.headline.setdefault(model, {})


@functools.cache
def _forward(model: str) -> dict[str, dict[str, np.ndarray]]:
    out = forward_outputs(_installed(FORWARD), model)
    entry = _entry(model)
    entry["forward"] = pair_table(out)
    entry["forward_error_model_ratio_layer1"] = forward_bound_ratios(out, model)
    entry["first_layer_k"] = first_layer_length(model)
    return out


@functools.cache
def _gradients(model: str) -> dict[str, dict[str, np.ndarray]]:
    out = gradient_outputs(_installed(GRADIENTS), model)
    _entry(model)["gradient"] = pair_table(out)
    return out


def _assert_close(label: str, model: str, a: str, outputs: dict[str, dict[str, np.ndarray]], b: str) -> None:
    ref = outputs[ORACLE]
    for key in (k for k in ref if k in outputs[a] and k in outputs[b]):
        m = metrics(outputs[a][key], outputs[b][key], ref[key])
        assert m["headline"] < TARGET, (
            f"{label} {key}: {a} vs {b} differ by {m['headline']:.3e} (max abs {m['max_abs']:.3e}) "
            f">= {TARGET:g} relative to max(1, |ref|); inputs: {model} model, first batch of 128 MNIST "
            f"images, seed 0\n  reproduce: {REPRO.format(a, model)}"
        )


def _cases(ids: list[str]) -> list[Any]:
    return [pytest.param(model, i, id=f"{model}-{i}") for model in HEADLINE_MODELS for i in ids]


@pytest.mark.parametrize(("model", "backend"), _cases(FORWARD))
def test_forward_vs_oracle_and_every_backend(model: str, backend: str, require_backend: Callable[[str], Any]) -> None:
    require_backend(backend)
    forward = _forward(model)
    for other in forward:
        if other != backend:
            _assert_close("forward", model, backend, forward, other)


@pytest.mark.parametrize(("model", "grad_id"), _cases(GRADIENTS))
def test_gradients_vs_oracle_and_every_backend(model: str, grad_id: str, require_backend: Callable[[str], Any]) -> None:
    require_backend(grad_id)
    gradients = _gradients(model)
    for other in gradients:
        if other != grad_id:
            _assert_close("gradient", model, grad_id, gradients, other)


@pytest.mark.parametrize("model", HEADLINE_MODELS)
def test_core_float64_gradients_equal_oracle(model: str) -> None:
    """The core's analytic backward pass in float64 against the independent oracle."""
    gap = oracle_self_check(model)
    _entry(model)["core_float64_vs_oracle"] = gap
    assert gap < 1e-12, f"core float64 analytic gradients of the {model} model differ from the oracle by {gap:.3e}"


#: Every layer kind the oracle runs, with awkward geometry: strides, dilation, padding
#: (ints, "same", asymmetric), groups, output padding, spherical mode, learnable epsilon.
_L = LayerSpec
_ALL_KINDS = ModelSpec(
    (
        _L("yat_conv", 2, 4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
           learnable_epsilon=True),
        _L("avg_pool", 4, 4, kernel_size=(2, 2)),
        _L("yat_conv_transpose", 4, 6, kernel_size=(3, 3), stride=(2, 2), padding=(1, 0), output_padding=(1, 0),
           groups=2, bias=0.3, alpha=None),
        _L("conv", 6, 4, kernel_size=(3, 3), padding="same", groups=2, activation="relu"),
        _L("yat_conv", 4, 4, kernel_size=(2, 2), padding="same", spherical=True),
        _L("max_pool", 4, 4, kernel_size=(3, 2)),
        _L("flatten", 4, 24),
        _L("yat", 24, 10),
    ),
    input_shape=(2, 13, 9),
)  # fmt: skip


def test_oracle_conv_model_gradients_match_finite_differences() -> None:
    """The oracle's backward pass through every convolution and pooling kind (the folds,
    the transposed regrouping, the pool routing) against central differences of its own
    forward pass, in float64, along a random direction per parameter."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *_ALL_KINDS.input_shape))
    labels = rng.integers(0, 10, 3)
    params = init_mlp_numpy(_ALL_KINDS, 3, np.float64)
    back = mlp_backward64(params, x, labels, _ALL_KINDS)
    for name, value in params.items():
        v = rng.normal(size=value.shape)
        h = 1e-6 * max(1.0, float(np.abs(value).max()))
        plus = mlp_backward64({**params, name: value + h * v}, x, labels, _ALL_KINDS).loss
        minus = mlp_backward64({**params, name: value - h * v}, x, labels, _ALL_KINDS).loss
        fd, analytic = (plus - minus) / (2 * h), float(np.sum(back.grads[name] * v))
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), f"{name}: fd {fd:.9e} vs oracle {analytic:.9e}"


#: Every token kind of the vision transformers: patches (several channels, non-square), a
#: position table, Yat and softmax attention (learnable alpha and epsilon, constant alpha,
#: no projection bias, spherical scores, 2 and 4 heads), dense layers on token sequences,
#: residuals on every kind that takes one (a ReLU baseline's included), the token mean.
_TOKENS = ModelSpec(
    (
        _L("patches", 2, 12, kernel_size=(3, 2)),
        _L("linear", 12, 8),
        _L("pos_embed", 8, 8, tokens=4),
        _L("yat_attention", 8, 8, heads=2, residual=True, epsilon=0.5, learnable_epsilon=True),
        _L("attention", 8, 8, heads=2, bias=None, residual=True),
        _L("yat", 8, 8, residual=True, spherical=True),
        _L("linear", 8, 8, activation="relu", residual=True),
        _L("yat_attention", 8, 8, heads=4, alpha=0.7, bias=None, spherical=True),
        _L("yat", 8, 8, bias=0.2, epsilon=0.5, learnable_epsilon=True),
        _L("token_mean", 8, 8),
        _L("yat", 8, 5),
    ),
    input_shape=(2, 6, 4),
)  # fmt: skip


def test_oracle_token_model_gradients_match_finite_differences() -> None:
    """The oracle's backward pass through every token kind (the patch scatter, the heads'
    split, both attentions with their projections, the residual paths, the token mean)
    against central differences of its own forward pass, in float64, along a random
    direction per parameter; and the core's float64 gradients of the same model."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, *_TOKENS.input_shape))
    labels = rng.integers(0, 5, 3)
    params = init_mlp_numpy(_TOKENS, 3, np.float64)
    back = mlp_backward64(params, x, labels, _TOKENS)
    for name, value in params.items():
        v = rng.normal(size=value.shape)
        h = 1e-6 * max(1.0, float(np.abs(value).max()))
        plus = mlp_backward64({**params, name: value + h * v}, x, labels, _TOKENS).loss
        minus = mlp_backward64({**params, name: value - h * v}, x, labels, _TOKENS).loss
        fd, analytic = (plus - minus) / (2 * h), float(np.sum(back.grads[name] * v))
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(analytic)), f"{name}: fd {fd:.9e} vs oracle {analytic:.9e}"
    _, core = mlp_value_and_grad(params, x, labels, _TOKENS)
    gap = max(metrics(core[k], back.grads[k], back.grads[k])["headline"] for k in core)
    assert gap < 1e-12, f"core float64 gradients of the token model differ from the oracle by {gap:.3e}"
