"""Properties of the product every backend must keep, whatever the rounding.

Each check takes a backend name, a case (and optionally an implementation to use
instead of the registered one) and raises :class:`AssertionError` naming the
backend, the inputs and a reproduction line when the property fails. Preconditions
(inputs in float32 range, an ``x`` row equal to a kernel row, ...) are the caller's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from verification import backends
from verification.cases import YatCase, YatInputs, yat_inputs
from verification.checks import repro_command, yat_reference
from verification.error_model import FLOAT32, precision_for, total_bound, yat_bound
from verification.oracle import yat_oracle
from yat_core.namespaces import device_of

__all__ = [
    "check_non_negative_and_finite",
    "check_orthogonal_zero",
    "check_value_at_equal_rows",
    "check_rows_independent",
    "check_feature_permutation",
    "check_dtype_shape_device",
    "orthogonal_inputs",
    "equal_row_inputs",
    "independence_inputs",
    "in_range",
]

U32 = FLOAT32.u


def _impl(backend: str, impl: Any) -> Any:
    return backends.load(backend) if impl is None else impl


def _where(check: str, backend: str, case: YatCase) -> str:
    return (
        f"backend {backend!r}, inputs {case.shape}, seed {case.seed}\n  case: {case!r}\n  reproduce: "
        + repro_command(check, backend, case)
    )


def _bound(inp: YatInputs, backend: str, dtype: Any = np.float32) -> np.ndarray:
    o = yat_oracle(inp)
    return total_bound(lambda p: yat_bound(o, p).y, precision_for(backend, dtype))


def in_range(inp: YatInputs) -> bool:
    """Whether the outputs and squared numerators of ``inp`` fit float32 comfortably."""
    o = yat_oracle(inp)
    peak = max(float(np.max(np.abs(o.y), initial=0.0)), float(np.max(o.n * o.n, initial=0.0)))
    return bool(np.isfinite(peak)) and peak < float(np.finfo(np.float32).max) / 4


def check_non_negative_and_finite(backend: str, case: YatCase, *, impl: Any = None) -> None:
    """alpha >= 0 gives y >= 0; finite inputs in float32 range give finite outputs."""
    y = _impl(backend, impl).yat(yat_reference(case).inputs)
    assert np.all(np.isfinite(y)), f"non-finite output: {_where('nonneg', backend, case)}"
    assert np.all(y >= 0), f"negative output {y.min()!r} with alpha >= 0: {_where('nonneg', backend, case)}"


def orthogonal_inputs(case: YatCase) -> YatInputs:
    """``x`` rows on a random half of the features, kernel rows on the other half, no bias."""
    inp = yat_inputs(case)
    mask = np.random.default_rng(case.seed).random(inp.x.shape[1]) < 0.5
    x, w = inp.x.copy(), inp.w.copy()
    x[:, ~mask] = 0.0
    w[:, mask] = 0.0
    return inp._replace(x=x, w=w, bias=None)


def check_orthogonal_zero(backend: str, case: YatCase, *, impl: Any = None) -> None:
    """With no bias the numerator is a sum of exact zeros: the output is exactly 0."""
    y = _impl(backend, impl).yat(orthogonal_inputs(case))
    assert np.all(y == 0.0), f"max |y| {np.abs(y).max()!r} for orthogonal inputs: {_where('orthogonal', backend, case)}"


def equal_row_inputs(case: YatCase, integer_bias: bool) -> YatInputs:
    """The inputs of an integer-valued case with an integer bias (or none)."""
    inp = yat_inputs(case)
    bias = None
    if integer_bias:
        bias = np.random.default_rng(case.seed).integers(-8, 9, size=inp.w.shape[0]).astype(np.float32)
    return inp._replace(bias=bias)


def check_value_at_equal_rows(backend: str, case: YatCase, integer_bias: bool, *, impl: Any = None) -> None:
    """Where x equals a kernel row, y = alpha (|x|^2 + b)^2 / eps, to a few roundings.

    For integer-valued inputs every sum is exact in float32, so the distance is
    exactly 0 and the only roundings are epsilon's (softplus: ``2 fn_rel + 2u``), the
    square's (u), the division's (2u) and alpha's (2u, and u for a constant).
    """
    inp = equal_row_inputs(case, integer_bias)
    equal = np.all(inp.x[:, None, :] == inp.w[None, :, :], axis=-1)
    o = yat_oracle(inp)
    assert np.all(o.dist[equal] == 0.0)
    x64 = inp.x.astype(np.float64)
    b = 0.0 if inp.bias is None else inp.bias.astype(np.float64)
    expected = (np.sum(x64 * x64, axis=1)[:, None] + b + np.zeros_like(o.y)) ** 2 / o.epsilon * o.alpha
    prec = precision_for(backend, np.float32)
    rel = 2 * prec.fn_rel + 9 * prec.u
    y = _impl(backend, impl).yat(inp).astype(np.float64)
    err, tol = np.abs(y - expected), rel * np.abs(expected)
    worst = float(np.max((err / np.maximum(tol, 1e-300))[equal]))
    assert np.all(err[equal] <= tol[equal]), (
        f"y at x == w off by {worst:.3g} x the tolerance: {_where('equal-rows', backend, case)}"
    )


def independence_inputs(case: YatCase) -> YatInputs:
    """The inputs of ``case`` with every row but the first reshuffled and scaled by -2."""
    inp = yat_inputs(case)
    x2 = inp.x.copy()
    x2[1:] = np.random.default_rng(case.seed).permutation(inp.x[1:]) * np.float32(-2.0)
    return inp._replace(x=x2)


def check_rows_independent(backend: str, case: YatCase, *, impl: Any = None) -> None:
    """Output row 0 depends on input row 0 only: changing every other row leaves it
    where it was, to the error model (the oracle's row 0 is the same for both)."""
    impl = _impl(backend, impl)
    inp, other = yat_inputs(case), independence_inputs(case)
    a, b = impl.yat(inp), impl.yat(other)
    limit = _bound(inp, backend)[0] + _bound(other, backend)[0]
    assert np.all(np.abs(a[0].astype(np.float64) - b[0]) <= limit), (
        f"row 0 changed with the other rows: {_where('rows', backend, case)}"
    )


def check_feature_permutation(backend: str, case: YatCase, *, impl: Any = None) -> None:
    """Permuting the features of x and w together changes only the summation order."""
    impl = _impl(backend, impl)
    inp = yat_inputs(case)
    perm = np.random.default_rng(case.seed).permutation(inp.x.shape[1])
    permuted = inp._replace(x=np.ascontiguousarray(inp.x[:, perm]), w=np.ascontiguousarray(inp.w[:, perm]))
    a, b = impl.yat(inp).astype(np.float64), impl.yat(permuted)
    limit = 2.0 * _bound(inp, backend)  # neither the oracle nor the bound depends on the order
    assert np.all(np.abs(a - b) <= limit), f"feature permutation changed y: {_where('permutation', backend, case)}"


def check_dtype_shape_device(
    backend: str, case: YatCase, dtype: str, leading: tuple[int, ...], *, impl: Any = None
) -> None:
    """Output dtype and device are the input's, shape is ``(..., out)``; in either dtype
    the values meet the error model with that dtype's unit roundoff."""
    impl = _impl(backend, impl)
    inp = yat_inputs(case)
    x = np.ascontiguousarray(np.broadcast_to(inp.x, leading + inp.x.shape))
    where = _where("dtype", backend, case)
    with impl.precision(dtype):
        arrays, y = impl.yat_native(inp._replace(x=x), dtype)
        host = impl.host(y)
        assert host.shape == leading + (case.batch, case.n_out), f"shape {host.shape}: {where}"
        assert host.dtype == np.dtype(dtype), f"dtype {host.dtype}, expected {dtype}: {where}"
        assert str(device_of(y)) == str(device_of(arrays["x"])), f"device {device_of(y)}: {where}"
    o = yat_reference(case).oracle
    bound = _bound(inp, backend, dtype)
    for block in host.reshape((-1, case.batch, case.n_out)):
        err = np.abs(block.astype(np.float64) - o.y)
        assert np.all(err <= bound), f"{dtype} output outside the error model ({np.max(err / bound):.3g}): {where}"
