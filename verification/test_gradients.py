"""Gradient parity: every backend and gradient mode (the core's analytic backward
pass; the framework's autodiff) against the float64 oracle's hand-derived gradients
under the gradient error model, and against finite differences of the oracle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, target

from verification import backends
from verification.cases import MLPCase, YatCase, mlp_cases, mlp_inputs, yat_cases, yat_inputs
from verification.checks import (
    OracleImpl,
    check_mlp_fd,
    check_mlp_grads,
    check_yat_fd,
    check_yat_grads,
    in_gradient_range,
)
from verification.profiles import examples

YAT_GRADS = backends.gradient_ids("yat_grad")
MLP_GRADS = backends.gradient_ids("mlp_grad")
AUTODIFF = [gid for gid in YAT_GRADS if gid.endswith("-autodiff")]
#: Inputs small enough for finite differences (dozens of oracle evaluations each).
FD_CASES = yat_cases(max_batch=8, max_in=64, max_out=16, hard=("none", "zero", "orthogonal", "large"))
FD_MLPS = mlp_cases(max_batch=8, max_in=48, max_hidden=16)


def _spherical_zero_row(case: YatCase) -> bool:
    """A zero row in spherical mode sits on the norm's floor, where ``a / max(|a|, 1e-12)``
    is a scaling by 1e12: no finite-difference step resolves it."""
    if not case.spherical:
        return False
    inp = yat_inputs(case)
    return bool(np.any(~inp.x.any(axis=1)) or np.any(~inp.w.any(axis=1)))


def _known_autodiff_nan(grad_id: str, case: YatCase) -> bool:
    # See test_spherical_zero_row_autodiff_gradient: differentiating sqrt at 0 gives NaN.
    return grad_id.endswith("-autodiff") and _spherical_zero_row(case)


def _mlp_known_autodiff_nan(grad_id: str, case: MLPCase) -> bool:
    # The same, for an all-zero input row (sparse MNIST-like inputs with few features);
    # a zero row with no bias also gives a zero row of the first layer's output.
    return grad_id.endswith("-autodiff") and case.spherical and bool(np.any(~mlp_inputs(case).x.any(axis=1)))


@pytest.mark.parametrize("grad_id", YAT_GRADS)
@examples(16)
@given(case=yat_cases())
def test_yat_gradients_within_error_model(grad_id: str, case: YatCase, require_backend: Callable[[str], Any]) -> None:
    require_backend(grad_id)
    assume(in_gradient_range(case) and not _known_autodiff_nan(grad_id, case))
    results = check_yat_grads(grad_id, case)
    target(min(max(r.max_ratio for r in results), 1e6), label="error / bound")


@pytest.mark.parametrize("grad_id", YAT_GRADS)
@examples(6)
@given(case=FD_CASES)
def test_yat_gradients_match_finite_differences(
    grad_id: str, case: YatCase, require_backend: Callable[[str], Any]
) -> None:
    require_backend(grad_id)
    assume(in_gradient_range(case) and not _spherical_zero_row(case))
    check_yat_fd(grad_id, case)


@examples(20)
@given(case=FD_CASES)
def test_oracle_gradients_match_finite_differences(case: YatCase) -> None:
    """The oracle's own backward pass, in float64, against finite differences."""
    assume(in_gradient_range(case) and not _spherical_zero_row(case))
    check_yat_fd("oracle-analytic", case, impl=OracleImpl(), dtype=np.float64)


@pytest.mark.parametrize("grad_id", MLP_GRADS)
@examples(5)
@given(case=mlp_cases())
def test_mlp_gradients_within_error_model(grad_id: str, case: MLPCase, require_backend: Callable[[str], Any]) -> None:
    require_backend(grad_id)
    assume(not _mlp_known_autodiff_nan(grad_id, case))
    results = check_mlp_grads(grad_id, case)
    target(min(max(r.max_ratio for r in results), 1e6), label="error / bound")


@pytest.mark.parametrize("grad_id", MLP_GRADS)
@examples(3)
@given(case=FD_MLPS)
def test_mlp_gradients_match_finite_differences(
    grad_id: str, case: MLPCase, require_backend: Callable[[str], Any]
) -> None:
    require_backend(grad_id)
    assume(not _mlp_known_autodiff_nan(grad_id, case))
    check_mlp_fd(grad_id, case)


@examples(8)
@given(case=FD_MLPS)
def test_oracle_mlp_gradients_match_finite_differences(case: MLPCase) -> None:
    check_mlp_fd("oracle-analytic", case, impl=OracleImpl(), dtype=np.float64)


@pytest.mark.parametrize("grad_id", AUTODIFF)
def test_spherical_zero_row_autodiff_gradient(grad_id: str, require_backend: Callable[[str], Any]) -> None:
    require_backend(grad_id)
    # The norm's floor sits under the square root, so autodiff of a zero row stays finite.
    case = YatCase(4, 6, 3, seed=1, hard="zero", spherical=True)
    check_yat_grads(grad_id, case)
