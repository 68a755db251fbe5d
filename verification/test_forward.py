"""Forward parity: every backend's float32 ``yat_product`` and ``mlp_forward`` against
the float64 oracle, under the error model, on inputs Hypothesis draws (every hard
case and every option). Hypothesis is steered towards the largest error/bound ratio
(``target``); the worst one it finds goes into the report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given, target

from verification import backends
from verification.cases import MLPCase, YatCase, mlp_cases, yat_cases
from verification.checks import check_mlp, check_yat, in_float32_range
from verification.profiles import examples


@pytest.mark.parametrize("backend", backends.provider_ids("yat"))
@examples(30)
@given(case=yat_cases())
def test_yat_product_within_error_model(backend: str, case: YatCase, require_backend: Callable[[str], Any]) -> None:
    require_backend(backend)
    assume(in_float32_range(case))
    result = check_yat(backend, case)
    target(min(result.max_ratio, 1e6), label="error / bound")


CORE_MLP = [b for b in backends.provider_ids("mlp") if not b.startswith("nn-")]
NATIVE_MLP = [b for b in backends.provider_ids("mlp") if b.startswith("nn-")]


@pytest.mark.parametrize("backend", CORE_MLP)
@examples(10)
@given(case=mlp_cases())
def test_mlp_forward_within_error_model(backend: str, case: MLPCase, require_backend: Callable[[str], Any]) -> None:
    require_backend(backend)
    result = check_mlp(backend, case)
    target(min(result.max_ratio, 1e6), label="error / bound")


@pytest.mark.parametrize("backend", NATIVE_MLP)
@examples(5)
@given(case=mlp_cases())
def test_native_model_within_error_model(backend: str, case: MLPCase, require_backend: Callable[[str], Any]) -> None:
    """The framework-native models of yat_core.nn, with the core's weights loaded."""
    require_backend(backend)
    result = check_mlp(backend, case)
    target(min(result.max_ratio, 1e6), label="error / bound")
