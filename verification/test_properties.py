"""Properties of the product that every backend must keep, whatever the rounding
(the checks themselves live in :mod:`verification.properties`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from verification import backends, properties
from verification.cases import YatCase, yat_cases
from verification.checks import in_float32_range
from verification.profiles import examples

FORWARD = backends.provider_ids("yat")


@pytest.mark.parametrize("backend", FORWARD)
@examples(8)
@given(case=yat_cases())
def test_non_negative_and_finite(backend: str, case: YatCase, require_backend: Callable[[str], Any]) -> None:
    require_backend(backend)
    assume(in_float32_range(case))
    properties.check_non_negative_and_finite(backend, case)


@pytest.mark.parametrize("backend", FORWARD)
@examples(8)
@given(case=yat_cases(hard=("none",)))
def test_orthogonal_inputs_give_exact_zero(backend: str, case: YatCase, require_backend: Callable[[str], Any]) -> None:
    require_backend(backend)
    properties.check_orthogonal_zero(backend, case)


@pytest.mark.parametrize("backend", FORWARD)
@examples(8)
@given(case=yat_cases(data=("integer",), hard=("equal",), spherical=(False,)), integer_bias=st.booleans())
def test_value_at_x_equal_to_kernel_row(
    backend: str, case: YatCase, integer_bias: bool, require_backend: Callable[[str], Any]
) -> None:
    require_backend(backend)
    inp = properties.equal_row_inputs(case, integer_bias)
    assume(bool(np.any(np.all(inp.x[:, None, :] == inp.w[None, :, :], axis=-1))))
    properties.check_value_at_equal_rows(backend, case, integer_bias)


@pytest.mark.parametrize("backend", FORWARD)
@examples(6)
@given(case=yat_cases(max_batch=16))
def test_rows_are_independent(backend: str, case: YatCase, require_backend: Callable[[str], Any]) -> None:
    require_backend(backend)
    assume(case.batch >= 2 and in_float32_range(case))
    assume(properties.in_range(properties.independence_inputs(case)))
    properties.check_rows_independent(backend, case)


@pytest.mark.parametrize("backend", FORWARD)
@examples(5)
@given(case=yat_cases())
def test_invariant_under_feature_permutation(
    backend: str, case: YatCase, require_backend: Callable[[str], Any]
) -> None:
    require_backend(backend)
    assume(in_float32_range(case))
    properties.check_feature_permutation(backend, case)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", FORWARD)
@examples(5)
@given(case=yat_cases(max_batch=8, max_in=64, max_out=16), leading=st.sampled_from([(), (2,), (2, 3)]))
def test_dtype_shape_and_device_preserved(
    backend: str, dtype: str, case: YatCase, leading: tuple[int, ...], require_backend: Callable[[str], Any]
) -> None:
    require_backend(backend)
    assume(in_float32_range(case))
    properties.check_dtype_shape_device(backend, case, dtype, leading)
