"""The headline number: on the seed model's domain (128 real MNIST images, Xavier
weights), every float32 backend within 1e-6 (relative to max(1, |ref|)) of the
float64 oracle and of every other backend, for the forward pass and for every
parameter gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from verification import backends
from verification.headline import (
    ORACLE,
    TARGET,
    forward_bound_ratios,
    forward_outputs,
    gradient_outputs,
    metrics,
    oracle_self_check,
    pair_table,
)
from verification.results import STORE

FORWARD = backends.provider_ids("mlp")
GRADIENTS = backends.gradient_ids("mlp_grad")
REPRO = "python -m verification.repro headline {}"


def _installed(ids: list[str]) -> list[str]:
    return [
        i
        for i in ids
        if not backends.PROVIDERS[backends.split_gradient_id(i)[0] if i not in backends.PROVIDERS else i].missing()
    ]


@pytest.fixture(scope="session")
def forward() -> dict[str, dict[str, np.ndarray]]:
    out = forward_outputs(_installed(FORWARD))
    STORE.headline["forward"] = pair_table(out)
    STORE.headline["forward_error_model_ratio_layer1"] = forward_bound_ratios(out)
    STORE.headline["target"] = TARGET
    return out


@pytest.fixture(scope="session")
def gradients() -> dict[str, dict[str, np.ndarray]]:
    out = gradient_outputs(_installed(GRADIENTS))
    STORE.headline["gradient"] = pair_table(out)
    return out


def _assert_close(label: str, a: str, outputs: dict[str, dict[str, np.ndarray]], b: str) -> None:
    ref = outputs[ORACLE]
    for key in (k for k in ref if k in outputs[a] and k in outputs[b]):
        m = metrics(outputs[a][key], outputs[b][key], ref[key])
        assert m["headline"] < TARGET, (
            f"{label} {key}: {a} vs {b} differ by {m['headline']:.3e} (max abs {m['max_abs']:.3e}) "
            f">= {TARGET:g} relative to max(1, |ref|); inputs: seed model, first batch of 128 MNIST "
            f"images, seed 0\n  reproduce: {REPRO.format(a)}"
        )


@pytest.mark.parametrize("backend", FORWARD)
def test_forward_vs_oracle_and_every_backend(
    backend: str, forward: dict[str, Any], require_backend: Callable[[str], Any]
) -> None:
    require_backend(backend)
    for other in forward:
        if other != backend:
            _assert_close("forward", backend, forward, other)


@pytest.mark.parametrize("grad_id", GRADIENTS)
def test_gradients_vs_oracle_and_every_backend(
    grad_id: str, gradients: dict[str, Any], require_backend: Callable[[str], Any]
) -> None:
    require_backend(grad_id)
    for other in gradients:
        if other != grad_id:
            _assert_close("gradient", grad_id, gradients, other)


def test_core_float64_gradients_equal_oracle() -> None:
    """The core's analytic backward pass in float64 against the independent oracle."""
    gap = oracle_self_check()
    STORE.headline["core_float64_vs_oracle"] = gap
    assert gap < 1e-12, f"core float64 analytic gradients differ from the oracle by {gap:.3e}"
