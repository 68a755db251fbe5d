"""Tests for yat_core.product: the ⵟ-product, its analytic VJP, dense and softplus.

Reference values come from a direct float64 NumPy evaluation of the formula written
here: the squared distance is ``sum((x - w)**2)`` (the direct form, not the
``|x|^2 + |w|^2 - 2 x.w`` expansion the implementation uses).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import pytest
from conftest import namespace_for, require_backend, to_numpy

from yat_core.product import (
    DEFAULT_EPSILON,
    SPHERICAL_NORM_EPS,
    dense,
    softplus,
    softplus_inverse,
    validate_epsilon,
    yat_backward,
    yat_forward,
    yat_product,
    yat_product_vjp,
)

# ---------------------------------------------------------------- the reference


def direct_yat(x, w, *, bias=None, alpha=None, epsilon=DEFAULT_EPSILON, spherical=False) -> np.ndarray:
    """The ⵟ-product in float64, straight from its definition, with explicit loops over units."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if spherical:
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), SPHERICAL_NORM_EPS)
        w = w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), SPHERICAL_NORM_EPS)
    out = np.empty(x.shape[:-1] + (w.shape[0],))
    b = np.broadcast_to(np.asarray(0.0 if bias is None else bias, dtype=np.float64), (w.shape[0],))
    a = 1.0 if alpha is None else float(np.asarray(alpha))
    eps = float(np.asarray(epsilon))
    for j in range(w.shape[0]):
        dot = np.sum(x * w[j], axis=-1)
        dist = np.linalg.norm(x - w[j], axis=-1) ** 2  # the direct |x - w_j|^2
        out[..., j] = a * (dot + b[j]) ** 2 / (dist + eps)
    return out


# ---------------------------------------------------------------- option grid

BIAS_KINDS = ("none", "float", "array")
ALPHA_KINDS = ("none", "float", "array")
EPS_KINDS = ("float", "array")
SPHERICAL = (False, True)

OPTION_GRID = list(itertools.product(BIAS_KINDS, ALPHA_KINDS, EPS_KINDS, SPHERICAL))


def option_id(case: tuple[str, str, str, bool]) -> str:
    bias, alpha, eps, sph = case
    return f"bias={bias}-alpha={alpha}-eps={eps}-{'spherical' if sph else 'euclid'}"


OPTION_IDS = [option_id(c) for c in OPTION_GRID]


def make_inputs(batch: tuple[int, ...] = (3,), n_in: int = 4, n_out: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(*batch, n_in))
    w = rng.normal(size=(n_out, n_in))
    return x, w


def make_options(case, n_out: int, to_array) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(kwargs for yat_product in some namespace, the same options as NumPy float64)``."""
    bias_kind, alpha_kind, eps_kind, spherical = case
    ref: dict[str, Any] = {"spherical": spherical}
    kw: dict[str, Any] = {"spherical": spherical}
    if bias_kind == "float":
        ref["bias"] = kw["bias"] = 0.3
    elif bias_kind == "array":
        ref["bias"] = np.linspace(-0.5, 0.7, n_out)
        kw["bias"] = to_array(ref["bias"])
    if alpha_kind == "float":
        ref["alpha"] = kw["alpha"] = 1.7
    elif alpha_kind == "array":
        ref["alpha"] = np.asarray(0.8)
        kw["alpha"] = to_array(ref["alpha"])
    if eps_kind == "float":
        ref["epsilon"] = kw["epsilon"] = 0.05
    else:  # learnable: softplus(raw), computed in the namespace under test
        raw = np.asarray(-2.0)
        ref["epsilon"] = np.log1p(np.exp(raw))
        kw["epsilon"] = softplus(to_array(raw))
    return kw, ref


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("case", OPTION_GRID, ids=OPTION_IDS)
def test_numpy_float64_matches_direct_formula(case):
    x, w = make_inputs()
    kw, ref = make_options(case, w.shape[0], np.asarray)
    got = yat_product(x, w, **kw)
    want = direct_yat(x, w, **ref)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, err_msg=f"numpy float64, options {option_id(case)}")
    assert got.dtype == np.float64 and got.shape == (3, 2)


@pytest.mark.parametrize("case", OPTION_GRID, ids=OPTION_IDS)
def test_array_api_strict_matches_direct_formula(case):
    xs = pytest.importorskip("array_api_strict")
    x, w = make_inputs()
    kw, ref = make_options(case, w.shape[0], xs.asarray)
    got = yat_product(xs.asarray(x), xs.asarray(w), **kw)
    assert got.dtype == xs.float64, f"array-api-strict: dtype {got.dtype} for float64 inputs"
    want = direct_yat(x, w, **ref)
    np.testing.assert_allclose(
        np.asarray(got), want, rtol=1e-10, atol=1e-13, err_msg=f"array-api-strict float64, options {option_id(case)}"
    )


def test_docstring_example_value():
    x = np.array([[1.0, 0.0]])
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(yat_product(x, w, epsilon=1.0), [[1.0, 0.0]])


def test_x_equal_to_a_kernel_row_gives_squared_numerator_over_epsilon():
    # |w0|^2 = 14, dist exactly 0 (integers: no rounding) -> alpha (|w0|^2 + b0)^2 / eps
    w = np.array([[1.0, 2.0, 3.0], [3.0, -1.0, 0.5]])
    x = w[:1].copy()
    bias = np.array([0.5, -1.0])
    y = yat_product(x, w, bias=bias, alpha=2.0, epsilon=0.25)
    assert y[0, 0] == 2.0 * (14.0 + 0.5) ** 2 / 0.25 == 1682.0, f"x == w[0]: got {y[0, 0]}, expected 1682"
    np.testing.assert_allclose(y, direct_yat(x, w, bias=bias, alpha=2.0, epsilon=0.25), rtol=1e-12)


def test_x_equal_to_a_random_kernel_row_stays_close_to_the_limit_value():
    # The expansion cancels to ~1e-16 |x|^2 here; with eps = 1e-5 that is a 1e-10 relative error.
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 16))
    x = w[2:3].copy()
    y = yat_product(x, w)
    limit = float(np.sum(w[2] ** 2)) ** 2 / DEFAULT_EPSILON
    assert y[0, 2] == pytest.approx(limit, rel=1e-8), f"numpy float64 at x == w[2]: {y[0, 2]} vs {limit}"
    assert np.all(y >= 0)


def test_spherical_x_parallel_to_kernel_row_has_zero_distance():
    w = np.array([[3.0, 4.0]])
    x = np.array([[6.0, 8.0]])  # same direction: unit vectors coincide, dot 1, dist 0
    y = yat_product(x, w, spherical=True, epsilon=0.5)
    assert y[0, 0] == pytest.approx(1.0 / 0.5, rel=1e-12)


@pytest.mark.parametrize("alpha", [None, 3.0], ids=["no-alpha", "alpha=3"])
def test_orthogonal_inputs_without_bias_give_exactly_zero(alpha):
    x = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    w = np.array([[0.0, 5.0, 0.0], [0.0, 0.0, -1.0]])
    y = yat_product(x, w, alpha=alpha, epsilon=1e-5)
    expected = np.array([[0.0, 0.0], [direct_yat(x[1:], w[:1], alpha=alpha, epsilon=1e-5)[0, 0], 0.0]])
    assert y[0, 0] == 0.0 and y[0, 1] == 0.0 and y[1, 1] == 0.0, f"orthogonal pairs not exactly 0: {y}"
    np.testing.assert_allclose(y, expected, rtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_output_is_non_negative_and_finite(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=10.0 ** rng.integers(-3, 3), size=(8, 5)).astype(np.float32)
    w = np.concatenate([x[:2], rng.normal(size=(3, 5)).astype(np.float32)])  # includes x == w rows
    y = yat_product(x, w, bias=rng.normal(size=5).astype(np.float32), alpha=0.5)
    assert np.all(np.isfinite(y)) and np.all(y >= 0), f"seed {seed}: min {y.min()}"


def test_property_matches_direct_formula_and_is_non_negative():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    hnp = pytest.importorskip("hypothesis.extra.numpy")

    floats = st.floats(-10.0, 10.0, allow_nan=False, width=64)

    @hypothesis.settings(max_examples=60, derandomize=True, deadline=None, database=None)
    @hypothesis.given(
        n_in=st.integers(1, 5),
        n_out=st.integers(1, 4),
        data=st.data(),
        eps=st.floats(1e-3, 10.0),
        alpha=st.floats(0.0, 5.0),
        spherical=st.booleans(),
    )
    def check(n_in, n_out, data, eps, alpha, spherical):
        x = data.draw(hnp.arrays(np.float64, (3, n_in), elements=floats), label="x")
        w = data.draw(hnp.arrays(np.float64, (n_out, n_in), elements=floats), label="w")
        bias = data.draw(hnp.arrays(np.float64, (n_out,), elements=floats), label="bias")
        if spherical:  # the direct |x_u - w_u|^2 equals 2 - 2 x_u.w_u only for unit vectors
            hypothesis.assume(np.all(np.linalg.norm(x, axis=-1) > 1e-3) and np.all(np.linalg.norm(w, axis=-1) > 1e-3))
        y = yat_product(x, w, bias=bias, alpha=alpha, epsilon=eps, spherical=spherical)
        assert np.all(y >= 0) and np.all(np.isfinite(y))
        want = direct_yat(x, w, bias=bias, alpha=alpha, epsilon=eps, spherical=spherical)
        # expansion vs direct distance: absolute error ~1e-15 (|x|^2 + |w|^2), relative to dist + eps
        scale = 1 + np.sum(x**2, -1, keepdims=True) + np.sum(w**2, -1)
        np.testing.assert_allclose(y, want, rtol=1e-9 * float(np.max(scale / eps)) + 1e-12, atol=1e-12)

    check()


def test_batched_leading_dimensions():
    x, w = make_inputs(batch=(2, 3, 5))
    bias = np.array([0.1, -0.2])
    y = yat_product(x, w, bias=bias, alpha=1.5, epsilon=0.1)
    assert y.shape == (2, 3, 5, 2)
    np.testing.assert_allclose(y, direct_yat(x, w, bias=bias, alpha=1.5, epsilon=0.1), rtol=1e-10)
    np.testing.assert_allclose(y[1, 2], yat_product(x[1, 2], w, bias=bias, alpha=1.5, epsilon=0.1), rtol=1e-14)
    # a single sample of shape (in,)
    assert yat_product(x[0, 0, 0], w).shape == (2,)


# ---------------------------------------------------------------- dtype, shape, every namespace

NAMESPACES = ("numpy", "array_api_strict", "torch", "jax", "mlx")


def _namespace(name: str):
    if name == "array_api_strict":
        return pytest.importorskip("array_api_strict")
    return namespace_for(name)


def _asarray(xp, name: str, a: np.ndarray, dtype: str):
    if name == "torch":
        import torch

        return torch.asarray(a.astype(dtype))
    return xp.asarray(a.astype(dtype))


DTYPE_CASES = [
    pytest.param(ns, dt, id=f"{ns}-{dt}")
    for ns in NAMESPACES
    for dt in ("float32", "float64")
    if not (dt == "float64" and ns in ("jax", "mlx"))  # jax needs x64 mode; MLX CPU computes float32
]


@pytest.mark.parametrize(("namespace", "dtype"), DTYPE_CASES)
@pytest.mark.parametrize("batch", [(3,), (2, 3)], ids=["2d", "3d"])
def test_dtype_and_shape_preserved(namespace, dtype, batch):
    xp = _namespace(namespace)
    x, w = make_inputs(batch=batch, n_in=4, n_out=5)
    bias = np.linspace(-1, 1, 5)
    xa, wa, ba = (_asarray(xp, namespace, a, dtype) for a in (x, w, bias))
    y = yat_product(xa, wa, bias=ba, alpha=1.25, epsilon=0.01, xp=None)
    assert tuple(y.shape) == (*batch, 5), f"{namespace}-{dtype}: shape {tuple(y.shape)}"
    assert str(y.dtype).endswith(dtype), f"{namespace}-{dtype}: output dtype {y.dtype}"
    assert type(y).__module__.split(".")[0] == type(xa).__module__.split(".")[0], f"{namespace}: output {type(y)}"
    rtol = 2e-5 if dtype == "float32" else 1e-10
    want = direct_yat(x.astype(dtype), w.astype(dtype), bias=bias.astype(dtype), alpha=1.25, epsilon=0.01)
    np.testing.assert_allclose(
        to_numpy(y) if namespace != "array_api_strict" else np.asarray(y),
        want,
        rtol=rtol,
        atol=1e-6,
        err_msg=f"{namespace}-{dtype}: value vs direct float64 formula",
    )


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "epsilon", [0.0, 0, -1e-3, math.nan, math.inf, -math.inf], ids=["0.0", "int0", "negative", "nan", "inf", "-inf"]
)
def test_bad_constant_epsilon_is_rejected(epsilon):
    x, w = make_inputs()
    with pytest.raises(ValueError, match=r"epsilon must be a finite number > 0, got"):
        yat_product(x, w, epsilon=epsilon)
    with pytest.raises(ValueError, match=r"epsilon must be a finite number > 0"):
        validate_epsilon(epsilon)


@pytest.mark.parametrize("epsilon", [None, True], ids=["None", "bool"])
def test_non_number_epsilon_is_a_type_error(epsilon):
    x, w = make_inputs()
    with pytest.raises(TypeError, match="epsilon must be a number > 0 or an array"):
        yat_product(x, w, epsilon=epsilon)


def _err(**kw):
    x, w = make_inputs()
    base = {"x": x, "w": w}
    base.update(kw)
    x, w = base.pop("x"), base.pop("w")
    return yat_product(x, w, **base)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param(
            {"x": np.ones((3, 3))},
            ValueError,
            r"x has 3 features but the kernel expects 4 \(x.shape=\(3, 3\), w.shape=\(2, 4\)",
            id="feature-mismatch",
        ),
        pytest.param({"w": np.ones(4)}, ValueError, r"kernel w must be 2-D \(out, in\), got shape \(4,\)", id="w-1d"),
        pytest.param({"w": np.ones((1, 2, 4))}, ValueError, r"kernel w must be 2-D", id="w-3d"),
        pytest.param({"x": np.float64(1.0)}, ValueError, r"x must have at least 1 dimension", id="x-0d"),
        pytest.param({"bias": np.ones(3)}, ValueError, r"bias must have shape \(2,\), got \(3,\)", id="bias-shape"),
        pytest.param({"bias": np.ones((1, 2))}, ValueError, r"bias must have shape \(2,\), got \(1, 2\)", id="bias-2d"),
        pytest.param({"alpha": np.ones(2)}, ValueError, r"alpha must be a scalar, got shape \(2,\)", id="alpha-vector"),
        pytest.param(
            {"x": np.ones((3, 4), np.int64), "w": np.ones((2, 4), np.int64)},
            TypeError,
            r"x must be a real floating array, got dtype int64",
            id="int-dtype",
        ),
        pytest.param({"w": np.ones((2, 4), np.int32)}, TypeError, r"w must be a real floating array", id="int-kernel"),
        pytest.param(
            {"x": np.ones((3, 4), np.float32)},
            TypeError,
            r"x and w must share a dtype, got float32 and float64",
            id="float32-x-float64-w",
        ),
    ],
)
def test_invalid_inputs_raise_helpful_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        _err(**kwargs)


def test_mixing_numpy_and_torch_names_both_libraries():
    torch = pytest.importorskip("torch")
    x, w = make_inputs()
    with pytest.raises(TypeError, match=r"different array libraries \(numpy, torch\)"):
        yat_product(x, torch.asarray(w))
    with pytest.raises(TypeError, match=r"different array libraries \(numpy, torch\)"):
        yat_product(torch.asarray(x), w)


def test_alpha_of_shape_one_is_accepted():
    x, w = make_inputs()
    y = yat_product(x, w, alpha=np.array([2.0]), epsilon=0.1)
    np.testing.assert_allclose(y, direct_yat(x, w, alpha=2.0, epsilon=0.1), rtol=1e-12)


# ---------------------------------------------------------------- analytic VJP vs finite differences


def _objective(x, w, g, opts):
    return float(np.sum(g * yat_product(x, w, **opts)))


def _fd_grad(f, a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central finite differences of scalar ``f(a)`` with respect to every element of ``a``."""
    a = np.array(a, dtype=np.float64)
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        plus, minus = a.copy(), a.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (f(plus) - f(minus)) / (2 * h)
    return grad


def _check_vjp(case, batch=(3,)):
    x, w = make_inputs(batch=batch, seed=1)
    rng = np.random.default_rng(2)
    g = rng.normal(size=(*batch, w.shape[0]))
    kw, _ = make_options(case, w.shape[0], np.asarray)
    if case[2] == "array":
        kw["epsilon"] = np.asarray(0.12)  # an array epsilon: differentiate with respect to it
    grads = yat_product_vjp(x, w, g, **kw)
    label = f"numpy float64 VJP, options {option_id(case)}, batch {batch}"

    def close(got, want, what):
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * scale, err_msg=f"{label}: d/d{what}")

    close(grads.x, _fd_grad(lambda a: _objective(a, w, g, kw), x), "x")
    close(grads.w, _fd_grad(lambda a: _objective(x, a, g, kw), w), "w")
    for name in ("bias", "alpha", "epsilon"):
        value = kw.get(name)
        got = getattr(grads, name)
        if isinstance(value, np.ndarray):
            assert got is not None and got.shape == value.shape, f"{label}: grad of {name} has shape {np.shape(got)}"
            close(got, _fd_grad(lambda a, n=name: _objective(x, w, g, {**kw, n: a}), value), name)
        else:
            assert got is None, f"{label}: constant {name}={value!r} should have no gradient, got {got!r}"


@pytest.mark.parametrize("case", OPTION_GRID, ids=OPTION_IDS)
def test_vjp_matches_finite_differences(case):
    _check_vjp(case)


@pytest.mark.parametrize(
    "case", [("array", "array", "array", False), ("array", "array", "array", True)], ids=["euclid", "spherical"]
)
def test_vjp_batched_leading_dims_matches_finite_differences(case):
    _check_vjp(case, batch=(2, 2))


def test_vjp_on_array_api_strict_equals_numpy():
    xs = pytest.importorskip("array_api_strict")
    x, w = make_inputs(seed=4)
    g = np.random.default_rng(5).normal(size=(3, 2))
    opts = {"bias": np.array([0.2, -0.4]), "alpha": np.asarray(1.3), "epsilon": np.asarray(0.07), "spherical": True}
    ref = yat_product_vjp(x, w, g, **opts)
    got = yat_product_vjp(
        xs.asarray(x),
        xs.asarray(w),
        xs.asarray(g),
        **{k: (xs.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in opts.items()},
    )
    for name in ("x", "w", "bias", "alpha", "epsilon"):
        np.testing.assert_allclose(
            np.asarray(getattr(got, name)),
            getattr(ref, name),
            rtol=1e-12,
            atol=1e-15,
            err_msg=f"array-api-strict vs numpy VJP: d/d{name}",
        )


@pytest.mark.parametrize(
    "case",
    [("array", "array", "array", False), ("float", "none", "float", True)],
    ids=["all-arrays", "constants-spherical"],
)
def test_forward_backward_equal_product_and_vjp(case):
    x, w = make_inputs(seed=7)
    g = np.random.default_rng(8).normal(size=(3, 2))
    kw, _ = make_options(case, 2, np.asarray)
    y, res = yat_forward(x, w, **kw)
    np.testing.assert_array_equal(y, yat_product(x, w, **kw))
    assert res.denom.shape == (3, 2) and res.spherical is case[3]
    a, b = yat_backward(res, g), yat_product_vjp(x, w, g, **kw)
    for name in a._fields:
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None) == (vb is None), name
        if va is not None:
            np.testing.assert_array_equal(va, vb, err_msg=f"yat_backward vs yat_product_vjp: d/d{name}")


def test_vjp_through_the_clamp_gives_no_distance_gradient_at_x_equal_w():
    # At x == w the clamped distance is 0: the gradient flows only through the numerator.
    w = np.array([[1.0, 2.0], [0.5, -1.0]])
    x = w[:1].copy()
    g = np.array([[1.0, 0.0]])
    grads = yat_product_vjp(x, w, g, epsilon=0.5)
    # y = dot^2 / eps near x == w along any direction that keeps dist at its minimum 0...
    # d/dx of dot^2/(dist + eps) at dist = 0: 2 dot w / eps (+ 0 from dist, whose gradient vanishes there)
    expected_gx = 2 * 5.0 * w[0] / 0.5
    np.testing.assert_allclose(grads.x[0], expected_gx, rtol=1e-12)
    assert np.all(np.isfinite(grads.w))


def _clamped_case():
    """x within 1e-9 of a kernel row, where the expansion's rounding makes the raw distance < 0."""
    rng = np.random.default_rng(0)
    for _ in range(1000):
        w = rng.normal(size=(1, 8))
        x = w + rng.normal(size=(1, 8)) * 1e-9
        _, res = yat_forward(x, w)
        if res.raw_dist[0, 0] < 0:
            return x, w, res
    pytest.fail("no input with a negative expanded distance found")


def test_clamped_distance_gives_zero_and_no_distance_gradient():
    x, w, res = _clamped_case()
    assert res.denom[0, 0] == DEFAULT_EPSILON, "the clamp must make the distance exactly 0"
    dot = float(x[0] @ w[0])
    assert float(res.y[0, 0]) == pytest.approx(dot**2 / DEFAULT_EPSILON, rel=1e-12)
    grads = yat_backward(res, np.ones((1, 1)))
    # d/dx max(raw, 0) is 0 where raw < 0: only the numerator contributes, 2 dot w / eps (and 2 dot x / eps for w).
    np.testing.assert_allclose(
        grads.x[0],
        2 * dot * w[0] / DEFAULT_EPSILON,
        rtol=1e-10,
        err_msg="numpy float64: gradient through a clamped distance",
    )
    np.testing.assert_allclose(grads.w[0], 2 * dot * x[0] / DEFAULT_EPSILON, rtol=1e-10)


# ---------------------------------------------------------------- dense


def test_dense_matches_matmul_plus_bias():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(5, 4)), rng.normal(size=5)
    np.testing.assert_allclose(dense(x, w, bias=b), np.einsum("...i,oi->...o", x, w) + b, rtol=1e-13)
    np.testing.assert_allclose(dense(x, w), np.einsum("...i,oi->...o", x, w), rtol=1e-13)
    np.testing.assert_array_equal(dense(np.ones((1, 3)), np.ones((2, 3)), bias=np.array([0.0, 1.0])), [[3.0, 4.0]])


@pytest.mark.parametrize(("x_shape", "w_shape"), [((2, 3), (3, 2)), ((2, 3), (3,))], ids=["transposed", "w-1d"])
def test_dense_rejects_kernels_that_do_not_fit(x_shape, w_shape):
    with pytest.raises(ValueError, match=r"dense: x.shape=.* does not fit kernel w.shape=.*\(out, in\)"):
        dense(np.ones(x_shape), np.ones(w_shape))


# ---------------------------------------------------------------- softplus


@pytest.mark.parametrize("value", [1e-8, 1e-5, 0.1, 0.5, 1.0, 5.0, 30.0, 700.0])
def test_softplus_inverse_round_trip(value):
    raw = softplus_inverse(value)
    assert math.isfinite(raw)
    back = float(softplus(np.asarray(raw)))
    assert back == pytest.approx(value, rel=1e-12), f"softplus(softplus_inverse({value})) = {back}"


def test_softplus_inverse_of_default_epsilon_and_zero():
    assert softplus_inverse(math.log(2.0)) == pytest.approx(0.0, abs=1e-12)
    assert softplus_inverse(DEFAULT_EPSILON) == pytest.approx(math.log(math.expm1(DEFAULT_EPSILON)), rel=1e-12)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan], ids=["0", "negative", "nan"])
def test_softplus_inverse_rejects_non_positive(value):
    with pytest.raises(ValueError, match="softplus_inverse needs a value > 0"):
        softplus_inverse(value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_softplus_has_no_overflow_at_extremes(dtype):
    raw = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        out = softplus(raw)
    assert out.dtype == dtype
    assert np.all(np.isfinite(out)), f"softplus({raw}) = {out}"
    assert out[-1] == 1000.0 and out[-2] == pytest.approx(50.0, rel=1e-6)
    assert 0.0 <= out[0] < 1e-30 and out[1] == pytest.approx(math.exp(-50.0), rel=1e-5)
    assert out[2] == pytest.approx(math.log(2.0), rel=1e-7)
    np.testing.assert_allclose(out[1:4], np.log1p(np.exp(raw[1:4].astype(np.float64))), rtol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "jax", "mlx"])
def test_softplus_extremes_on_each_framework(backend):
    xp = namespace_for(backend)
    raw = np.array([-1000.0, 0.0, 1000.0], dtype=np.float32)
    arr = _asarray(xp, backend, raw, "float32")
    out = to_numpy(softplus(arr, xp=xp))
    np.testing.assert_allclose(
        out, [0.0, math.log(2.0), 1000.0], rtol=1e-6, atol=1e-30, err_msg=f"{backend}: softplus at -1000, 0, 1000"
    )


def test_softplus_epsilon_is_accepted_by_yat_product_on_every_installed_framework(backend_name):
    require_backend(backend_name)
    xp = namespace_for(backend_name)
    x, w = make_inputs()
    raw = _asarray(xp, backend_name, np.asarray(-1.5), "float32")
    y = yat_product(
        _asarray(xp, backend_name, x, "float32"), _asarray(xp, backend_name, w, "float32"), epsilon=softplus(raw, xp=xp)
    )
    want = direct_yat(x, w, epsilon=float(np.log1p(np.exp(-1.5))))
    np.testing.assert_allclose(to_numpy(y), want, rtol=2e-5, err_msg=f"{backend_name}: learnable epsilon")
