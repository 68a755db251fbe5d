"""Tests for yat_core.conv: Yat convolution, transposed convolution, pooling and their VJPs.

Two references, neither of them the implementation's unfold:

- ``torch_formula``: DESIGN.md's definition built from torch's own convolutions,
  ``dot = conv(x, w)``, ``psq = conv(x*x, ones)``, ``wsq`` per filter (the dot part
  checked against ``torch.nn.functional.conv{1,2,3}d`` / ``conv_transpose{1,2,3}d``);
- ``direct_conv`` / ``direct_conv_transpose``: float64 loops over output positions and
  filters, with the direct distance ``sum((patch - w_o)**2)``. The transposed one
  builds each patch from the scatter definition of ``conv_transpose`` (input ``i``
  reaches output ``i*stride - padding + k*dilation``), not from zero insertion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import namespace_for, to_numpy

from yat_core.conv import (
    ConvGrads,
    avg_pool,
    avg_pool_vjp,
    conv_output_shape,
    conv_transpose_output_shape,
    linear_conv,
    linear_conv_vjp,
    max_pool,
    max_pool_vjp,
    yat_conv,
    yat_conv_backward,
    yat_conv_forward,
    yat_conv_transpose,
    yat_conv_transpose_vjp,
    yat_conv_vjp,
)
from yat_core.product import SPHERICAL_NORM_EPS, softplus

# ---------------------------------------------------------------- references


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return (v,) * n if isinstance(v, int) else tuple(v)


def _pads(padding: Any, k: tuple[int, ...], dil: tuple[int, ...]) -> list[tuple[int, int]]:
    if padding == "valid":
        return [(0, 0)] * len(k)
    if padding == "same":
        return [((d * (kk - 1)) // 2, d * (kk - 1) - (d * (kk - 1)) // 2) for kk, d in zip(k, dil)]
    return [(p, p) for p in _tuple(padding, len(k))]


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), SPHERICAL_NORM_EPS)


def _yat_of(patch: np.ndarray, kern: np.ndarray, b: float, a: float, eps: float, spherical: bool) -> np.ndarray:
    """One filter against a batch of flattened patches ``(N, F)``, direct distance.

    Spherical mode defines the distance as ``2 - 2 dot`` of the unit vectors (DESIGN.md),
    which is the direct one except for a zero patch (norm floored): there it is 2.
    """
    if spherical:
        patch, kern = _unit(patch), _unit(kern)
    dot = patch @ kern
    dist = np.maximum(2 - 2 * dot, 0.0) if spherical else np.sum((patch - kern) ** 2, axis=-1)
    return a * (dot + b) ** 2 / (dist + eps)


def _scalars(bias, alpha, epsilon, n_out):
    b = np.broadcast_to(np.asarray(0.0 if bias is None else bias, dtype=np.float64), (n_out,))
    a = 1.0 if alpha is None else float(np.asarray(alpha).reshape(()))
    return b, a, float(np.asarray(epsilon).reshape(()))


def direct_conv(
    x, w, *, stride=1, padding=0, dilation=1, groups=1, bias=None, alpha=None, epsilon=1e-5, spherical=False
):
    """Yat convolution in float64 by loops over output positions and filters."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n_sp = w.ndim - 2
    k = w.shape[2:]
    s, dil = _tuple(stride, n_sp), _tuple(dilation, n_sp)
    pads = _pads(padding, k, dil)
    xpad = np.pad(x, [(0, 0), (0, 0), *pads])
    out = tuple((xpad.shape[2 + i] - dil[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(n_sp))
    n_out, cg = w.shape[:2]
    og = n_out // groups
    b, a, eps = _scalars(bias, alpha, epsilon, n_out)
    y = np.empty((x.shape[0], n_out, *out))
    for pos in np.ndindex(*out):
        window = tuple(slice(p * s[i], p * s[i] + dil[i] * (k[i] - 1) + 1, dil[i]) for i, p in enumerate(pos))
        patches = xpad[(slice(None), slice(None), *window)]  # (N, C, *k)
        for o in range(n_out):
            gi = o // og
            patch = patches[:, gi * cg : (gi + 1) * cg].reshape(x.shape[0], -1)
            y[(slice(None), o, *pos)] = _yat_of(patch, w[o].reshape(-1), b[o], a, eps, spherical)
    return y


def direct_conv_transpose(
    x,
    w,
    *,
    stride=1,
    padding=0,
    output_padding=0,
    dilation=1,
    groups=1,
    bias=None,
    alpha=None,
    epsilon=1e-5,
    spherical=False,
):
    """Yat transposed convolution in float64: each patch from the scatter definition of conv_transpose."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n_sp = w.ndim - 2
    k = w.shape[2:]
    s, p, op, dil = (_tuple(v, n_sp) for v in (stride, padding, output_padding, dilation))
    size = x.shape[2:]
    out = tuple((size[i] - 1) * s[i] - 2 * p[i] + dil[i] * (k[i] - 1) + op[i] + 1 for i in range(n_sp))
    cin, og = w.shape[:2]
    cg = cin // groups
    n_out = og * groups
    b, a, eps = _scalars(bias, alpha, epsilon, n_out)
    y = np.empty((x.shape[0], n_out, *out))
    for pos in np.ndindex(*out):
        for o in range(n_out):
            gi, ol = divmod(o, og)
            kern = w[gi * cg : (gi + 1) * cg, ol]  # (Cg, *k)
            patch = np.zeros((x.shape[0], cg, *k))
            for kk in np.ndindex(*k):
                # input index i feeds output i*s - p + kk*d: solve for i
                num = [pos[j] + p[j] - kk[j] * dil[j] for j in range(n_sp)]
                if all(v % s[j] == 0 and 0 <= v // s[j] < size[j] for j, v in enumerate(num)):
                    src = tuple(v // s[j] for j, v in enumerate(num))
                    patch[(slice(None), slice(None), *kk)] = x[(slice(None), slice(gi * cg, (gi + 1) * cg), *src)]
            y[(slice(None), o, *pos)] = _yat_of(
                patch.reshape(x.shape[0], -1), kern.reshape(-1), b[o], a, eps, spherical
            )
    return y


def torch_formula(x, w, *, transpose=False, bias=None, epsilon=0.1, **geometry):
    """DESIGN.md's formula with torch's convolutions for ``dot`` and ``|patch|^2`` (float64)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    n_sp = w.ndim - 2
    tx, tw = torch.asarray(np.asarray(x, np.float64)), torch.asarray(np.asarray(w, np.float64))
    groups = geometry.get("groups", 1)
    if transpose:
        conv = getattr(F, f"conv_transpose{n_sp}d")
        cin, og = w.shape[:2]
        wsq = (np.asarray(w) ** 2).reshape(groups, cin // groups, og, -1).sum(axis=(1, 3)).reshape(-1)
    else:
        conv = getattr(F, f"conv{n_sp}d")
        wsq = (np.asarray(w) ** 2).reshape(w.shape[0], -1).sum(axis=1)
    dot = conv(tx, tw, **geometry).numpy()
    psq = conv(tx * tx, torch.ones_like(tw), **geometry).numpy()
    shape = (1, -1) + (1,) * n_sp
    b = 0.0 if bias is None else np.reshape(bias, shape)
    dist = np.maximum(psq + wsq.reshape(shape) - 2 * dot, 0.0)
    return dot, (dot + b) ** 2 / (dist + epsilon)


# ---------------------------------------------------------------- cases

# (id, x shape, w shape, geometry)
CONV_CASES = [
    ("1d-basic", (2, 3, 9), (4, 3, 3), {}),
    ("1d-stride2-pad1", (2, 3, 9), (4, 3, 3), {"stride": 2, "padding": 1}),
    ("1d-same-even-kernel-dil2", (2, 2, 8), (3, 2, 4), {"padding": "same", "dilation": 2}),
    ("1d-groups3-valid", (1, 6, 7), (6, 2, 2), {"groups": 3, "padding": "valid"}),
    (
        "2d-tuples-groups2",
        (2, 4, 7, 8),
        (6, 2, 3, 2),
        {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2},
    ),
    ("2d-same-depthwise", (1, 3, 5, 6), (3, 1, 3, 3), {"padding": "same", "groups": 3}),
    ("2d-pad-beyond-kernel", (1, 2, 4, 4), (2, 2, 3, 3), {"padding": 3, "stride": 3}),
    ("2d-kernel-equals-input", (2, 2, 3, 3), (3, 2, 3, 3), {}),
    ("3d-stride2-groups2", (1, 4, 5, 4, 5), (4, 2, 3, 2, 3), {"stride": 2, "padding": 1, "groups": 2}),
    ("3d-same-even", (1, 2, 4, 3, 4), (2, 2, 2, 2, 2), {"padding": "same"}),
]

# (id, x shape, w shape (in, out/groups, *k), geometry)
TRANSPOSE_CASES = [
    ("1d-stride2-op1", (2, 3, 4), (3, 2, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
    ("1d-dil2", (2, 2, 5), (2, 3, 3), {"dilation": 2}),
    ("1d-groups2-stride3", (1, 4, 3), (4, 1, 2), {"stride": 3, "groups": 2}),
    (
        "2d-tuples-groups2",
        (2, 4, 3, 4),
        (4, 2, 3, 2),
        {"stride": (2, 3), "padding": (1, 0), "output_padding": (1, 2), "groups": 2},
    ),
    ("2d-pad-beyond-dk-crops", (1, 2, 6, 6), (2, 2, 3, 3), {"padding": 3}),
    (
        "2d-dil2-stride2-op1-groups2",
        (1, 4, 3, 3),
        (4, 3, 2, 2),
        {"stride": 2, "dilation": 2, "output_padding": 1, "groups": 2},
    ),
    (
        "3d-stride2-groups2",
        (1, 4, 3, 2, 3),
        (4, 1, 3, 2, 2),
        {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2},
    ),
]


def _data(x_shape, w_shape, seed=0, n_out=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=x_shape)
    w = rng.normal(size=w_shape)
    bias = rng.normal(size=n_out if n_out is not None else w_shape[0])
    return x, w, bias


def _n_out_transpose(w_shape, geometry):
    return w_shape[1] * geometry.get("groups", 1)


def _options(kind: str, n_out: int, to_array=np.asarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(kwargs for the namespace under test, the same options as NumPy float64)`` for option set ``kind``."""
    rng = np.random.default_rng(11)
    bias = np.round(rng.normal(size=n_out), 3)
    raw = np.asarray(-1.5)
    table: dict[str, dict[str, Any]] = {
        "plain": {},
        "bias-array-alpha-array-eps-learnable": {"bias": bias, "alpha": np.asarray(0.8), "epsilon": "learnable"},
        "bias-float-alpha-float": {"bias": 0.3, "alpha": 1.7, "epsilon": 0.05},
        "spherical-bias-array": {"bias": bias, "alpha": 2.0, "epsilon": 0.2, "spherical": True},
        "spherical-learnable-eps": {"alpha": np.asarray([1.3]), "epsilon": "learnable", "spherical": True},
    }
    ref = dict(table[kind])
    kw: dict[str, Any] = {}
    for name, value in ref.items():
        if name == "epsilon" and isinstance(value, str):
            kw[name] = softplus(to_array(raw))
            ref[name] = float(np.log1p(np.exp(raw)))
        elif isinstance(value, np.ndarray):
            kw[name] = to_array(value)
        else:
            kw[name] = value
    return kw, ref


OPTION_KINDS = (
    "plain",
    "bias-array-alpha-array-eps-learnable",
    "bias-float-alpha-float",
    "spherical-bias-array",
    "spherical-learnable-eps",
)


def _rel_close(got, want, rtol, what):
    """Elementwise relative error, against a floor of ``rtol * max|want|`` for tiny outputs."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    floor = 1e-3 * float(np.max(np.abs(want))) + 1e-12
    err = np.abs(got - want) / np.maximum(np.abs(want), floor)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert float(err.max()) <= rtol, (
        f"{what}: relative error {err.max():.3g} at {worst} (got {got[worst]}, want {want[worst]})"
    )


# ---------------------------------------------------------------- values: the dot part and the formula via torch


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "geometry"), [c[1:] for c in CONV_CASES], ids=[c[0] for c in CONV_CASES]
)
def test_conv_equals_design_formula_with_torch_convolutions(x_shape, w_shape, geometry):
    x, w, bias = _data(x_shape, w_shape)
    dot, want = torch_formula(x, w, bias=bias, epsilon=0.1, **geometry)
    got = yat_conv(x, w, bias=bias, epsilon=0.1, **geometry)
    assert got.shape == want.shape == conv_output_shape(x.shape, w.shape, **geometry)
    _rel_close(got, want, 1e-9, "numpy float64 yat_conv vs torch-built formula")
    one = yat_conv(x, w, bias=1.0, epsilon=0.1, **geometry)
    minus = yat_conv(x, w, bias=-1.0, epsilon=0.1, **geometry)
    zero = yat_conv(x, w, epsilon=0.1, **geometry)
    np.testing.assert_allclose(
        _dot_from_yat(one, minus, zero), dot, rtol=1e-7, atol=1e-9, err_msg="dot part vs torch conv"
    )


def _dot_from_yat(one, minus, zero):
    """The dot part, read off the output at bias +1, -1 and 0 (same distance, same denominator D).

    ``(d+1)^2 - (d-1)^2 = 4d`` and ``(d+1)^2 + (d-1)^2 - 2 d^2 = 2``, so
    ``d = (y+ - y-) / (2 (y+ + y- - 2 y0))``.
    """
    return (one - minus) / (2 * (one + minus - 2 * zero))


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "geometry"), [c[1:] for c in TRANSPOSE_CASES], ids=[c[0] for c in TRANSPOSE_CASES]
)
def test_conv_transpose_equals_design_formula_with_torch_conv_transpose(x_shape, w_shape, geometry):
    n_out = _n_out_transpose(w_shape, geometry)
    x, w, bias = _data(x_shape, w_shape, n_out=n_out)
    dot, want = torch_formula(x, w, transpose=True, bias=bias, epsilon=0.1, **geometry)
    got = yat_conv_transpose(x, w, bias=bias, epsilon=0.1, **geometry)
    assert got.shape == want.shape == conv_transpose_output_shape(x.shape, w.shape, **geometry)
    _rel_close(got, want, 1e-9, "numpy float64 yat_conv_transpose vs torch-built formula")
    one = yat_conv_transpose(x, w, bias=1.0, epsilon=0.1, **geometry)
    minus = yat_conv_transpose(x, w, bias=-1.0, epsilon=0.1, **geometry)
    zero = yat_conv_transpose(x, w, epsilon=0.1, **geometry)
    np.testing.assert_allclose(
        _dot_from_yat(one, minus, zero), dot, rtol=1e-7, atol=1e-9, err_msg="dot part vs torch conv_transpose"
    )


# ---------------------------------------------------------------- values: the float64 loop reference


def _expansion_rtol(x, w, eps):
    # expansion |p|^2 + |w|^2 - 2 p.w vs the direct distance: ~1e-15 (|p|^2 + |w|^2) absolute, over dist + eps
    return 1e-13 * (1.0 + float(np.sum(x**2)) + float(np.sum(w**2))) / eps + 1e-11


@pytest.mark.parametrize("kind", OPTION_KINDS)
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "geometry"), [c[1:] for c in CONV_CASES], ids=[c[0] for c in CONV_CASES]
)
def test_conv_matches_loop_reference(x_shape, w_shape, geometry, kind):
    x, w, _ = _data(x_shape, w_shape, seed=1)
    kw, ref = _options(kind, w_shape[0])
    got = yat_conv(x, w, **geometry, **kw)
    want = direct_conv(x, w, **geometry, **ref)
    eps = ref.get("epsilon", 1e-5)
    _rel_close(got, want, _expansion_rtol(x, w, eps), f"numpy float64 yat_conv, {kind}, {geometry}")
    assert got.dtype == np.float64 and np.all(got >= 0)


@pytest.mark.parametrize("kind", OPTION_KINDS)
@pytest.mark.parametrize(
    ("x_shape", "w_shape", "geometry"), [c[1:] for c in TRANSPOSE_CASES], ids=[c[0] for c in TRANSPOSE_CASES]
)
def test_conv_transpose_matches_loop_reference(x_shape, w_shape, geometry, kind):
    x, w, _ = _data(x_shape, w_shape, seed=2)
    kw, ref = _options(kind, _n_out_transpose(w_shape, geometry))
    got = yat_conv_transpose(x, w, **geometry, **kw)
    want = direct_conv_transpose(x, w, **geometry, **ref)
    eps = ref.get("epsilon", 1e-5)
    _rel_close(got, want, _expansion_rtol(x, w, eps), f"numpy float64 yat_conv_transpose, {kind}, {geometry}")


def test_conv_transpose_with_groups_uses_each_groups_own_inputs_and_kernel_norm():
    # nmn's transposed convolution mixed the groups up: here each output channel sees only its group.
    x = np.zeros((1, 4, 3))
    x[0, 2:] = 1.0  # only group 1's inputs are non-zero
    w = np.ones((4, 1, 2))
    w[2:] = 2.0  # group 1's kernel is larger
    y = yat_conv_transpose(x, w, groups=2, epsilon=1.0)
    # group 0: zero patches -> dot 0 -> y 0; group 1: interior patches [1,1,1,1] vs kernel [2,2,2,2]
    np.testing.assert_array_equal(y[0, 0], 0.0)
    np.testing.assert_allclose(y[0, 1, 1:3], 8.0**2 / (4 * 1.0 + 1.0), rtol=1e-14)
    np.testing.assert_allclose(y, direct_conv_transpose(x, w, groups=2, epsilon=1.0), rtol=1e-12)


# ---------------------------------------------------------------- hard cases


@pytest.mark.parametrize("groups", [1, 2])
def test_patch_equal_to_a_filter_gives_squared_numerator_over_epsilon(groups):
    # Integers: the expansion is exact, the distance exactly 0.
    rng = np.random.default_rng(5)
    w = rng.integers(-3, 4, size=(2 * groups, 2, 3, 3)).astype(np.float64)
    x = np.zeros((1, 2 * groups, 6, 6))
    x[0, :, 1:4, 2:5] = np.concatenate([w[0]] + [w[g * 2] for g in range(1, groups)])  # group g's first filter
    b = np.array([0.5, -1.0, 2.0, 0.25][: 2 * groups])
    y = yat_conv(x, w, groups=groups, bias=b, alpha=2.0, epsilon=0.25)
    for g in range(groups):
        o = 2 * g
        want = 2.0 * (float(np.sum(w[o] ** 2)) + b[o]) ** 2 / 0.25
        assert y[0, o, 1, 2] == want, f"groups={groups}, filter {o}: {y[0, o, 1, 2]} != {want}"
    np.testing.assert_allclose(y, direct_conv(x, w, groups=groups, bias=b, alpha=2.0, epsilon=0.25), rtol=1e-12)


def test_transposed_patch_equal_to_a_filter_gives_squared_numerator_over_epsilon():
    w = np.array([[[1.0, -2.0, 3.0]], [[2.0, 0.0, 1.0]]])  # (in=2, out=1, k=3)
    x = np.zeros((1, 2, 5))
    # output position 4 sees x[c, 4 - k] against w[c, 0, k]: put the filter there, reversed
    x[0, :, 2:5] = w[:, 0, ::-1]
    y = yat_conv_transpose(x, w, epsilon=0.5, bias=np.array([1.0]))
    assert y[0, 0, 4] == (float(np.sum(w**2)) + 1.0) ** 2 / 0.5
    np.testing.assert_allclose(y, direct_conv_transpose(x, w, epsilon=0.5, bias=np.array([1.0])), rtol=1e-12)


@pytest.mark.parametrize("spherical", [False, True], ids=["euclid", "spherical"])
def test_zero_patches_give_bias_squared_over_kernel_norm_and_finite_gradients(spherical):
    w = np.random.default_rng(0).normal(size=(3, 2, 2, 2))
    x = np.zeros((1, 2, 4, 4))
    b = np.array([0.0, 1.0, -2.0])
    y = yat_conv(x, w, bias=b, epsilon=0.1, spherical=spherical, padding=1)
    # spherical: dist = 2 - 2 dot = 2 for a zero patch (its unit vector is 0), as the dense product defines it
    wsq = 2.0 if spherical else np.sum(w**2, axis=(1, 2, 3))
    want = np.broadcast_to((b**2 / (wsq + 0.1)).reshape(1, 3, 1, 1), y.shape)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    assert np.all(y[:, 0] == 0.0)
    grads = yat_conv_vjp(x, w, np.ones_like(y), bias=b, epsilon=np.asarray(0.1), spherical=spherical, padding=1)
    for name in ("x", "w", "bias", "epsilon"):
        assert np.all(np.isfinite(getattr(grads, name))), f"{name}: non-finite gradient at zero patches"


# ---------------------------------------------------------------- every namespace

NAMESPACES = ("numpy", "array_api_strict", "torch", "jax", "mlx")

BACKEND_CASES = [
    ("conv1d", False, (2, 4, 9), (4, 2, 3), {"stride": 2, "padding": 1, "groups": 2}),
    (
        "conv2d",
        False,
        (2, 4, 6, 7),
        (6, 2, 3, 2),
        {"stride": (1, 2), "padding": "valid", "dilation": (2, 1), "groups": 2},
    ),
    ("conv2d-same", False, (1, 3, 5, 5), (2, 3, 2, 3), {"padding": "same"}),
    ("conv3d", False, (1, 2, 4, 5, 4), (3, 2, 2, 3, 2), {"padding": (1, 0, 1), "stride": (2, 1, 1)}),
    ("transpose1d", True, (2, 4, 4), (4, 1, 3), {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}),
    ("transpose2d", True, (1, 4, 3, 4), (4, 2, 2, 3), {"stride": (2, 1), "dilation": (1, 2), "groups": 2}),
    ("transpose3d", True, (1, 2, 2, 3, 2), (2, 2, 2, 2, 2), {"stride": 2, "output_padding": (1, 0, 1)}),
]


def _namespace(name: str):
    if name == "array_api_strict":
        return pytest.importorskip("array_api_strict")
    return namespace_for(name)


def _to(xp, name: str, a: np.ndarray, dtype: str = "float32"):
    if name == "torch":
        import torch

        return torch.asarray(a.astype(dtype))
    return xp.asarray(a.astype(dtype))


def _host(a: Any) -> np.ndarray:
    return np.asarray(a) if type(a).__module__.startswith("array_api_strict") else to_numpy(a)


def _backend_run(name: str, case, dtype="float32", *, jit=False):
    _, transpose, x_shape, w_shape, geometry = case
    xp = _namespace(name)
    n_out = _n_out_transpose(w_shape, geometry) if transpose else w_shape[0]
    x, w, _ = _data(x_shape, w_shape, seed=3)
    kw, ref = _options("bias-array-alpha-array-eps-learnable", n_out, lambda a: _to(xp, name, a, dtype))
    fn = yat_conv_transpose if transpose else yat_conv
    xa, wa = _to(xp, name, x, dtype), _to(xp, name, w, dtype)
    if jit:
        import jax

        y = jax.jit(lambda a, b, opts: fn(a, b, **geometry, **opts))(xa, wa, kw)
    else:
        y = fn(xa, wa, **geometry, **kw)
    ref_fn = direct_conv_transpose if transpose else direct_conv
    want = ref_fn(x.astype(dtype), w.astype(dtype), **geometry, **ref)
    return xa, y, want


@pytest.mark.parametrize("case", BACKEND_CASES, ids=[c[0] for c in BACKEND_CASES])
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_namespace_matches_the_float64_reference(namespace, case):
    xa, y, want = _backend_run(namespace, case)
    what = f"{namespace}-float32 {case[0]} {case[4]}"
    assert tuple(y.shape) == want.shape, f"{what}: shape {tuple(y.shape)}"
    assert str(y.dtype).endswith("float32"), f"{what}: dtype {y.dtype}"
    assert type(y).__module__.split(".")[0] == type(xa).__module__.split(".")[0], f"{what}: output type {type(y)}"
    # float32: dot products of length in/groups*prod(k) <= 18 and the patch norm; eps ~ 0.2
    _rel_close(_host(y), want, 2e-4, what)


@pytest.mark.parametrize("namespace", ["numpy", "array_api_strict", "torch"])
def test_float64_is_kept_and_exact_on_float64_namespaces(namespace):
    case = BACKEND_CASES[1]
    _, y, want = _backend_run(namespace, case, dtype="float64")
    assert str(y.dtype).endswith("float64")
    _rel_close(_host(y), want, 1e-10, f"{namespace}-float64")


@pytest.mark.parametrize("case", [BACKEND_CASES[1], BACKEND_CASES[5]], ids=["conv2d", "transpose2d"])
def test_runs_under_jax_jit(case):
    namespace_for("jax")
    _, y, want = _backend_run("jax", case, jit=True)
    _rel_close(to_numpy(y), want, 2e-4, f"jax.jit {case[0]}")


def test_runs_under_mx_compile():
    xp = namespace_for("mlx")
    import mlx.core as mx

    x, w, bias = _data((1, 4, 5, 6), (4, 2, 3, 3), seed=4)
    geometry = {"stride": 2, "padding": 1, "groups": 2}
    f = mx.compile(lambda a, b, c: yat_conv(a, b, bias=c, epsilon=0.3, **geometry))
    y = f(xp.asarray(x.astype("float32")), xp.asarray(w.astype("float32")), xp.asarray(bias.astype("float32")))
    _rel_close(np.array(y), direct_conv(x, w, bias=bias, epsilon=0.3, **geometry), 2e-4, "mx.compile yat_conv")


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_traces_under_torch_compile_without_graph_breaks():
    torch = pytest.importorskip("torch")
    x, w, bias = _data((1, 2, 5, 5), (2, 1, 2, 2), seed=6)
    tx, tw, tb = torch.asarray(x), torch.asarray(w), torch.asarray(bias)
    geometry = {"stride": 2, "padding": 1, "groups": 2}
    compiled = torch.compile(
        lambda a, b, c: yat_conv(a, b, bias=c, epsilon=0.3, **geometry), backend="eager", fullgraph=True
    )
    np.testing.assert_allclose(
        compiled(tx, tw, tb).numpy(), direct_conv(x, w, bias=bias, epsilon=0.3, **geometry), rtol=1e-10
    )


# ---------------------------------------------------------------- the native fast path

NATIVE_CASES = [
    *BACKEND_CASES,
    ("conv2d-same-even-asymmetric", False, (1, 2, 5, 6), (4, 1, 2, 4), {"padding": "same", "groups": 2}),
    ("transpose2d-crop", True, (1, 2, 5, 5), (2, 3, 3, 3), {"padding": 3, "dilation": (1, 2)}),
]


@pytest.mark.parametrize("kind", ["bias-array-alpha-array-eps-learnable", "spherical-bias-array"])
@pytest.mark.parametrize("case", NATIVE_CASES, ids=[c[0] for c in NATIVE_CASES])
@pytest.mark.parametrize("framework", ["torch", "jax", "mlx"])
def test_native_path_equals_the_unfold(framework, case, kind):
    from yat_core.namespaces.native import native_conv

    xp = namespace_for(framework)
    assert native_conv(xp) is not None, f"{framework}: no native convolution registered"
    name, transpose, x_shape, w_shape, geometry = case
    n_out = _n_out_transpose(w_shape, geometry) if transpose else w_shape[0]
    x, w, _ = _data(x_shape, w_shape, seed=19)
    kw, ref = _options(kind, n_out, lambda a: _to(xp, framework, a))
    fn = yat_conv_transpose if transpose else yat_conv
    xa, wa = _to(xp, framework, x), _to(xp, framework, w)
    fast, slow = fn(xa, wa, native=True, **geometry, **kw), fn(xa, wa, **geometry, **kw)
    want = (direct_conv_transpose if transpose else direct_conv)(
        x.astype("float32"), w.astype("float32"), **geometry, **ref
    )
    what = f"{framework}-float32 native {name} {kind}"
    assert str(fast.dtype).endswith("float32") and tuple(fast.shape) == want.shape, what
    _rel_close(to_numpy(fast), want, 2e-4, what + " vs float64 reference")
    _rel_close(to_numpy(fast), to_numpy(slow), 2e-4, what + " vs unfold")


def test_native_path_gradients_equal_the_unfold_under_torch_autograd():
    torch = pytest.importorskip("torch")
    x, w, bias = _data((2, 4, 6, 5), (6, 2, 3, 3), seed=20)
    geometry = {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 2}
    grads = []
    for native in (False, True):
        leaves = [torch.tensor(a, requires_grad=True) for a in (x, w, bias)]
        y = yat_conv(leaves[0], leaves[1], bias=leaves[2], epsilon=0.2, native=native, **geometry)
        torch.sum(y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).backward()
        grads.append([leaf.grad.numpy() for leaf in leaves])
    for name, slow, fast in zip(("x", "w", "bias"), *grads):
        np.testing.assert_allclose(
            fast, slow, rtol=1e-9, atol=1e-12, err_msg=f"torch float64 native vs unfold d/d{name}"
        )


NATIVE_VJP_KINDS = ["bias-array-alpha-array-eps-learnable", "bias-float-alpha-float", "plain", "spherical-bias-array"]


@pytest.mark.parametrize("kind", NATIVE_VJP_KINDS)
@pytest.mark.parametrize("case", NATIVE_CASES, ids=[c[0] for c in NATIVE_CASES])
@pytest.mark.parametrize("framework", ["torch", "jax", "mlx"])
def test_native_vjp_equals_the_unfold_vjp(framework, case, kind):
    # The native backward (one backward convolution pair fed by the formula's gradient of dot,
    # the patch norm's gradient by the window spread) against the unfold's analytic VJP.
    from yat_core.namespaces.native import native_conv_vjp

    xp = namespace_for(framework)
    assert native_conv_vjp(xp) is not None, f"{framework}: no native convolution gradient registered"
    dtype = "float64" if framework == "torch" else "float32"
    name, transpose, x_shape, w_shape, geometry = case
    n_out = _n_out_transpose(w_shape, geometry) if transpose else w_shape[0]
    x, w, _ = _data(x_shape, w_shape, seed=23)
    kw, _ = _options(kind, n_out, lambda a: _to(xp, framework, a, dtype))
    out_shape = (conv_transpose_output_shape if transpose else conv_output_shape)(x_shape, w_shape, **geometry)
    g = np.random.default_rng(24).normal(size=out_shape)
    vjp = yat_conv_transpose_vjp if transpose else yat_conv_vjp
    args = [_to(xp, framework, a, dtype) for a in (x, w, g)]
    fast, slow = vjp(*args, native=True, **geometry, **kw), vjp(*args, **geometry, **kw)
    rtol = 1e-9 if dtype == "float64" else 2e-4
    for field in ConvGrads._fields:
        a, b = getattr(fast, field), getattr(slow, field)
        assert (a is None) == (b is None), f"{framework} {name} {kind}: d/d{field} present in one path only"
        if a is not None:
            what = f"{framework}-{dtype} native vjp {name} {kind} d/d{field}"
            assert tuple(a.shape) == tuple(b.shape), what
            _rel_close(to_numpy(a), to_numpy(b), rtol, what)


DIRECT_NATIVE_CASES = [c for c in NATIVE_CASES if not c[1]]


@pytest.mark.parametrize("kind", NATIVE_VJP_KINDS)
@pytest.mark.parametrize("case", DIRECT_NATIVE_CASES, ids=[c[0] for c in DIRECT_NATIVE_CASES])
@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_forward_backward_split_equals_the_conv_and_its_vjp(framework, case, kind):
    # yat_conv_forward keeps the formula's intermediates where the native convolution runs
    # channels first (torch, not spherical); the backward from them is the VJP's.
    from yat_core.namespaces import array_namespace

    name, _, x_shape, w_shape, geometry = case
    x, w, _ = _data(x_shape, w_shape, seed=29)
    dtype = "float32" if framework == "jax" else "float64"
    conv = (lambda a: a) if framework == "numpy" else (lambda a: _to(namespace_for(framework), framework, a, dtype))
    kw, _ = _options(kind, w_shape[0], conv)
    g = conv(np.random.default_rng(30).normal(size=conv_output_shape(x_shape, w_shape, **geometry)))
    xa, wa = conv(x), conv(w)
    y, res = yat_conv_forward(xa, wa, native=True, **geometry, **kw)
    assert (res.parts is not None) == (framework == "torch" and "spherical" not in kind), f"{framework} {kind}"
    rtol = 1e-12 if dtype == "float64" else 1e-6
    what = f"{framework} {name} {kind}"
    _rel_close(to_numpy(y), to_numpy(yat_conv(xa, wa, native=True, **geometry, **kw)), rtol, f"{what} y")
    split = yat_conv_backward(res, g, xp=array_namespace(xa))
    whole = yat_conv_vjp(xa, wa, g, native=True, **geometry, **kw)
    for field in ConvGrads._fields:
        a, b = getattr(split, field), getattr(whole, field)
        assert (a is None) == (b is None), f"{what}: d/d{field} present in one path only"
        if a is not None:
            _rel_close(to_numpy(a), to_numpy(b), rtol, f"{what} d/d{field}")


@pytest.mark.parametrize("framework", ["torch", "jax", "mlx"])
def test_native_linear_conv_vjp_equals_the_unfold(framework):
    xp = namespace_for(framework)
    x, w, _ = _data((2, 4, 7, 6), (6, 2, 3, 2), seed=25)
    geometry = {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 2}
    g = np.random.default_rng(26).normal(size=conv_output_shape(x.shape, w.shape, **geometry))
    bias = np.linspace(-1.0, 1.0, 6)
    args = [_to(xp, framework, a) for a in (x, w, g)]
    fast = linear_conv_vjp(*args, bias=_to(xp, framework, bias), native=True, **geometry)
    slow = linear_conv_vjp(*args, bias=_to(xp, framework, bias), **geometry)
    for field in ("x", "w", "bias"):
        _rel_close(to_numpy(getattr(fast, field)), to_numpy(getattr(slow, field)), 2e-4, f"{framework} d/d{field}")
    assert fast.alpha is None and fast.epsilon is None


def test_native_vjp_falls_back_to_the_unfold_without_a_native_convolution():
    x, w, bias = _data((2, 4, 5, 6), (6, 2, 3, 2), seed=27)
    geometry = {"stride": (1, 2), "padding": (2, 1), "groups": 2}
    g = np.random.default_rng(28).normal(size=conv_output_shape(x.shape, w.shape, **geometry))
    fast = yat_conv_vjp(x, w, g, bias=bias, epsilon=0.1, native=True, **geometry)
    slow = yat_conv_vjp(x, w, g, bias=bias, epsilon=0.1, **geometry)
    for a, b in zip(fast, slow):
        assert (a is None and b is None) or np.array_equal(a, b)
    with pytest.raises(TypeError, match="native must be a bool"):
        yat_conv_vjp(x, w, g, native="yes", **geometry)
    with pytest.raises(TypeError, match="native must be a bool"):
        linear_conv_vjp(x, w, g, native=1, **geometry)


def test_registered_native_conv_is_used_and_numpy_falls_back_to_the_unfold():
    from yat_core.namespaces.native import native_conv, register_native_conv

    x, w, bias = _data((2, 4, 5, 6), (6, 2, 3, 2), seed=21)
    geometry = {"stride": (1, 2), "padding": (2, 1), "groups": 2}
    unfold = yat_conv(x, w, bias=bias, epsilon=0.1, **geometry)
    np.testing.assert_array_equal(yat_conv(x, w, bias=bias, epsilon=0.1, native=True, **geometry), unfold)
    calls = []

    def numpy_conv(a, k, *, stride, padding, dilation, groups):
        # a plain loop convolution, so the test does not lean on the code under test
        calls.append((stride, padding, dilation, groups))
        a = np.pad(a, [(0, 0), (0, 0), *padding])
        o, cg = k.shape[:2]
        out = [(a.shape[2 + i] - dilation[i] * (k.shape[2 + i] - 1) - 1) // stride[i] + 1 for i in range(2)]
        y = np.zeros((a.shape[0], o, *out))
        for i, j in np.ndindex(*out):
            win = a[:, :, i * stride[0] :: dilation[0], j * stride[1] :: dilation[1]][:, :, : k.shape[2], : k.shape[3]]
            for f in range(o):
                gi = f // (o // groups)
                y[:, f, i, j] = np.sum(win[:, gi * cg : (gi + 1) * cg] * k[f], axis=(1, 2, 3))
        return y

    import array_api_compat.numpy as xnp

    assert native_conv(xnp) is None
    register_native_conv("numpy", numpy_conv)
    try:
        assert native_conv(xnp) is numpy_conv
        got = yat_conv(x, w, bias=bias, epsilon=0.1, native=True, **geometry)
    finally:
        register_native_conv("numpy", None)
    assert native_conv(xnp) is None
    assert calls and calls[0] == ((1, 2), ((2, 2), (1, 1)), (1, 1), 2), calls
    _rel_close(got, unfold, 1e-11, "registered numpy convolution vs unfold")


# ---------------------------------------------------------------- gradients


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


GRAD_CASES = [
    ("conv1d-stride2-pad1-groups2", False, (2, 4, 7), (4, 2, 3), {"stride": 2, "padding": 1, "groups": 2}),
    ("conv1d-same-dil2", False, (1, 2, 6), (3, 2, 2), {"padding": "same", "dilation": 2}),
    ("conv1d-same-even-kernel", False, (1, 2, 5), (2, 2, 4), {"padding": "same"}),  # pads (1, 2): asymmetric
    ("conv2d-tuples", False, (1, 2, 5, 4), (2, 2, 2, 3), {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)}),
    ("transpose1d-groups2", True, (1, 4, 3), (4, 1, 3), {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}),
    ("transpose2d-dil2", True, (1, 2, 2, 3), (2, 2, 2, 2), {"stride": (2, 1), "dilation": 2, "padding": (0, 1)}),
]
GRAD_KINDS = ("bias-array-alpha-array-eps-learnable", "spherical-bias-array", "bias-float-alpha-float")


def _grad_options(kind: str, n_out: int) -> dict[str, Any]:
    kw, _ = _options(kind, n_out)
    if "learnable" in kind:
        kw["epsilon"] = np.asarray(0.15)  # an array epsilon: differentiate with respect to it
    return kw


@pytest.mark.parametrize("kind", GRAD_KINDS)
@pytest.mark.parametrize("case", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_vjp_matches_finite_differences(case, kind):
    name, transpose, x_shape, w_shape, geometry = case
    n_out = _n_out_transpose(w_shape, geometry) if transpose else w_shape[0]
    x, w, _ = _data(x_shape, w_shape, seed=7)
    kw = _grad_options(kind, n_out)
    fn, vjp = (yat_conv_transpose, yat_conv_transpose_vjp) if transpose else (yat_conv, yat_conv_vjp)
    y = fn(x, w, **geometry, **kw)
    g = np.random.default_rng(8).normal(size=y.shape)
    grads = vjp(x, w, g, **geometry, **kw)
    assert isinstance(grads, ConvGrads)

    def objective(xv, wv, opts):
        return float(np.sum(g * fn(xv, wv, **geometry, **opts)))

    def close(got, want, what):
        scale = max(1.0, float(np.max(np.abs(want))))
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-6 * scale, err_msg=f"numpy float64 VJP {name} {kind}: d/d{what}"
        )

    close(grads.x, _fd_grad(lambda a: objective(a, w, kw), x), "x")
    close(grads.w, _fd_grad(lambda a: objective(x, a, kw), w), "w")
    for opt in ("bias", "alpha", "epsilon"):
        value, got = kw.get(opt), getattr(grads, opt)
        if isinstance(value, np.ndarray):
            assert got is not None and got.shape == value.shape, f"{name}: grad of {opt} has shape {np.shape(got)}"
            close(got, _fd_grad(lambda a, o=opt: objective(x, w, {**kw, o: a}), value), opt)
        else:
            assert got is None, f"{name}: constant {opt}={value!r} should have no gradient"


TORCH_GRAD_CASES = [
    *GRAD_CASES,
    ("conv3d-groups2", False, (1, 4, 4, 3, 4), (2, 2, 2, 2, 3), {"stride": (1, 2, 1), "padding": 1, "groups": 2}),
    ("conv2d-same-depthwise", False, (2, 3, 5, 5), (3, 1, 3, 3), {"padding": "same", "groups": 3}),
    ("transpose3d-groups2", True, (1, 4, 2, 3, 2), (4, 1, 2, 2, 2), {"stride": 2, "output_padding": 1, "groups": 2}),
    ("transpose2d-crop", True, (1, 2, 5, 5), (2, 3, 3, 3), {"padding": 3}),
]


@pytest.mark.parametrize("kind", ("bias-array-alpha-array-eps-learnable", "spherical-bias-array"))
@pytest.mark.parametrize("case", TORCH_GRAD_CASES, ids=[c[0] for c in TORCH_GRAD_CASES])
def test_vjp_matches_torch_autograd(case, kind):
    torch = pytest.importorskip("torch")
    name, transpose, x_shape, w_shape, geometry = case
    n_out = _n_out_transpose(w_shape, geometry) if transpose else w_shape[0]
    x, w, _ = _data(x_shape, w_shape, seed=9)
    kw = _grad_options(kind, n_out)
    fn, vjp = (yat_conv_transpose, yat_conv_transpose_vjp) if transpose else (yat_conv, yat_conv_vjp)
    leaves = {"x": torch.tensor(x, requires_grad=True), "w": torch.tensor(w, requires_grad=True)}
    tkw = {}
    for opt, value in kw.items():
        if isinstance(value, np.ndarray):
            leaves[opt] = tkw[opt] = torch.tensor(value, requires_grad=True)
        else:
            tkw[opt] = value
    y = fn(leaves["x"], leaves["w"], **geometry, **tkw)
    g = np.random.default_rng(10).normal(size=tuple(y.shape))
    torch.sum(y * torch.asarray(g)).backward()
    grads = vjp(x, w, g, **geometry, **kw)
    for leaf, tensor in leaves.items():
        np.testing.assert_allclose(
            getattr(grads, leaf),
            tensor.grad.numpy(),
            rtol=1e-9,
            atol=1e-11 * max(1.0, float(tensor.grad.abs().max())),
            err_msg=f"{name} {kind}: analytic d/d{leaf} vs torch autograd of yat_conv on torch float64",
        )


@pytest.mark.parametrize("framework", ["jax", "mlx"])
def test_framework_autodiff_of_yat_conv_matches_the_analytic_vjp(framework):
    xp = namespace_for(framework)
    x, w, bias = _data((2, 4, 5, 6), (4, 2, 3, 2), seed=17)
    raw = np.asarray(-1.0)
    geometry = {"stride": (2, 1), "padding": (1, 0), "groups": 2}
    eps = float(np.log1p(np.exp(raw)))
    g = np.random.default_rng(18).normal(size=conv_output_shape(x.shape, w.shape, **geometry))
    want = yat_conv_vjp(x, w, g, bias=bias, alpha=np.asarray(0.7), epsilon=np.asarray(eps), **geometry)
    f32 = [xp.asarray(a.astype("float32")) for a in (x, w, bias, np.asarray(0.7), raw, g)]

    def loss(xa, wa, ba, aa, ra, ga):
        y = yat_conv(xa, wa, bias=ba, alpha=aa, epsilon=softplus(ra), **geometry)
        return xp.sum(y * ga)

    if framework == "jax":
        import jax

        got = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*f32)
    else:
        import mlx.core as mx

        got = mx.grad(loss, argnums=(0, 1, 2, 3, 4))(*f32)
    sig = 1.0 / (1.0 + np.exp(-raw))  # d softplus / d raw
    for name, value, ref in zip(("x", "w", "bias", "alpha", "raw"), got, (*want[:4], want.epsilon * sig)):
        ref = np.asarray(ref)
        scale = float(np.max(np.abs(ref))) + 1e-12
        np.testing.assert_allclose(
            np.asarray(value).reshape(ref.shape), ref, rtol=1e-3, atol=1e-4 * scale, err_msg=f"{framework} d/d{name}"
        )


def test_vjp_on_array_api_strict_equals_numpy():
    xs = pytest.importorskip("array_api_strict")
    for _, transpose, x_shape, w_shape, geometry in (GRAD_CASES[0], GRAD_CASES[3]):
        n_out = _n_out_transpose(w_shape, geometry) if transpose else w_shape[0]
        x, w, _ = _data(x_shape, w_shape, seed=12)
        kw = _grad_options("spherical-bias-array", n_out)
        fn, vjp = (yat_conv_transpose, yat_conv_transpose_vjp) if transpose else (yat_conv, yat_conv_vjp)
        g = np.random.default_rng(13).normal(size=fn(x, w, **geometry, **kw).shape)
        ref = vjp(x, w, g, **geometry, **kw)
        skw = {k: (xs.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        got = vjp(xs.asarray(x), xs.asarray(w), xs.asarray(g), **geometry, **skw)
        for f in ("x", "w", "bias"):
            np.testing.assert_allclose(np.asarray(getattr(got, f)), getattr(ref, f), rtol=1e-12, atol=1e-14)


def test_vjp_rejects_a_gradient_of_the_wrong_shape():
    x, w, _ = _data((1, 2, 5), (3, 2, 3))
    with pytest.raises(
        ValueError, match=r"upstream gradient g must have the output's shape \(1, 3, 3\), got \(1, 3, 5\)"
    ):
        yat_conv_vjp(x, w, np.ones((1, 3, 5)))


# ---------------------------------------------------------------- pooling

POOL_CASES = [
    ("1d-w2-remainder", (2, 3, 7), 2),
    ("2d-w2", (1, 2, 6, 4), 2),
    ("2d-tuple-remainder", (2, 2, 7, 5), (3, 2)),
    ("3d-w2-remainder", (1, 2, 5, 4, 3), 2),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("shape", "window"), [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES])
def test_pooling_matches_torch(shape, window, kind):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.random.default_rng(14).normal(size=shape)
    torch_pool = getattr(F, f"{kind}_pool{len(shape) - 2}d")
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_pool(tx, window)  # stride defaults to the window; floor mode drops the remainder
    ours = (max_pool if kind == "max" else avg_pool)(x, window)
    np.testing.assert_allclose(ours, ty.detach().numpy(), rtol=1e-14, err_msg=f"{kind}_pool {shape} window {window}")
    g = np.random.default_rng(15).normal(size=ours.shape)
    torch.sum(ty * torch.asarray(g)).backward()
    got = (max_pool_vjp if kind == "max" else avg_pool_vjp)(x, g, window)
    np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-14, err_msg=f"{kind}_pool_vjp vs torch autograd")


def test_max_pool_vjp_sends_ties_to_the_first_maximum_like_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.array([[[[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 2.0]]]])
    g = np.array([[[[3.0, 5.0]]]])
    tx = torch.tensor(x, requires_grad=True)
    torch.sum(F.max_pool2d(tx, 2) * torch.asarray(g)).backward()
    got = max_pool_vjp(x, g, 2)
    np.testing.assert_array_equal(got, tx.grad.numpy())
    np.testing.assert_array_equal(got, [[[[3.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.0]]]])


@pytest.mark.parametrize(("shape", "window"), [c[1:] for c in POOL_CASES], ids=[c[0] for c in POOL_CASES])
def test_native_max_pool_equals_the_array_api_windows(shape, window):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as txp

    # integer values: many ties, so the first-maximum rule is exercised in every window
    x = torch.asarray(np.random.default_rng(17).integers(0, 3, size=shape).astype("float32"))
    ours = max_pool(x, window, xp=txp)
    native = max_pool(x, window, native=True, xp=txp)
    torch.testing.assert_close(native, ours, rtol=0, atol=0)
    g = torch.asarray(np.random.default_rng(18).normal(size=tuple(ours.shape)).astype("float32"))
    want = max_pool_vjp(x, g, window, xp=txp)
    torch.testing.assert_close(max_pool_vjp(x, g, window, native=True, xp=txp), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="g must have the pooled shape"):
        max_pool_vjp(x, g[:1, :, :1], window, native=True, xp=txp)
    with pytest.raises(TypeError, match="native must be a bool"):
        max_pool(x, window, native="yes", xp=txp)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_pooling_on_every_namespace(namespace):
    xp = _namespace(namespace)
    x = np.random.default_rng(16).normal(size=(2, 3, 5, 7)).astype("float32")
    xa = _to(xp, namespace, x)
    blocks = x[:, :, :4, :6].reshape(2, 3, 2, 2, 3, 2)
    for fn, want in ((max_pool, blocks.max(axis=(3, 5))), (avg_pool, blocks.mean(axis=(3, 5)))):
        y = fn(xa, (2, 2))
        assert str(y.dtype).endswith("float32") and tuple(y.shape) == (2, 3, 2, 3)
        np.testing.assert_allclose(_host(y), want, rtol=1e-6, err_msg=f"{namespace} {fn.__name__}")
    g = np.ones((2, 3, 2, 3), "float32")
    back = _host(avg_pool_vjp(xa, _to(xp, namespace, g), 2))
    np.testing.assert_allclose(back[:, :, :4, :6], 0.25)
    assert np.all(back[:, :, 4:] == 0) and np.all(back[:, :, :, 6:] == 0)
    back = _host(max_pool_vjp(xa, _to(xp, namespace, g), 2))
    assert back.sum() == g.sum() and np.all(back[:, :, 4:] == 0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.ones((2, 3)), 2), r"max_pool: x must have 3, 4 or 5 dimensions \(N, C, \*spatial\)"),
        ((np.ones((1, 1, 3, 3)), 4), r"max_pool: window \(4, 4\) is larger than the spatial size \(3, 3\)"),
        ((np.ones((1, 1, 4, 4)), (2, 2, 2)), r"window must be an int or a tuple of 2 ints"),
        ((np.ones((1, 1, 4, 4)), 0), r"window must be >= 1"),
    ],
    ids=["rank", "too-large", "tuple-length", "zero"],
)
def test_pool_errors(args, match):
    with pytest.raises(ValueError, match=match):
        max_pool(*args)


# ---------------------------------------------------------------- errors

X2, W2 = np.ones((1, 4, 5, 5)), np.ones((6, 2, 3, 3))


def _conv_err(**kw):
    x, w = kw.pop("x", X2), kw.pop("w", W2)
    kw.setdefault("groups", 2)
    return yat_conv(x, w, **kw)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param(
            {"w": np.ones((6, 2, 3))}, ValueError, r"x must have 3 dimensions \(N, C, \*spatial\)", id="rank-mismatch"
        ),
        pytest.param({"w": np.ones((6, 2))}, ValueError, r"kernel w must have 3, 4 or 5 dimensions", id="w-2d"),
        pytest.param(
            {"x": np.ones((1, 1, 2, 2, 2, 2, 2)), "w": np.ones((1, 1, 1, 1, 1, 1, 1))},
            ValueError,
            r"kernel w must have 3, 4 or 5 dimensions",
            id="4-spatial-dims",
        ),
        pytest.param(
            {"x": np.ones((1, 6, 5, 5))},
            ValueError,
            r"x has 6 channels but kernel w of shape \(6, 2, 3, 3\) with groups=2 expects w.shape\[1\] \* groups = 4",
            id="channels",
        ),
        pytest.param({"groups": 3}, ValueError, r"groups=3 must divide the 4 input channels", id="groups-in"),
        pytest.param(
            {"w": np.ones((5, 2, 3, 3))}, ValueError, r"groups=2 must divide the 5 output channels", id="groups-out"
        ),
        pytest.param({"groups": 0}, ValueError, r"groups must be an int >= 1, got 0", id="groups-zero"),
        pytest.param(
            {"w": np.ones((6, 2, 6, 3))},
            ValueError,
            r"kernel \(dilated\) of size 6 in spatial dimension 0 is larger than the padded input of size 5",
            id="kernel-too-large",
        ),
        pytest.param(
            {"dilation": 3},
            ValueError,
            r"kernel \(dilated\) of size 7 .* larger than the padded input of size 5",
            id="dilated-too-large",
        ),
        pytest.param({"stride": 0}, ValueError, r"stride must be >= 1 in every dimension, got 0", id="stride-zero"),
        pytest.param(
            {"stride": (1, -1)},
            ValueError,
            r"stride must be >= 1 in every dimension, got \(1, -1\)",
            id="stride-negative",
        ),
        pytest.param({"dilation": 0}, ValueError, r"dilation must be >= 1", id="dilation-zero"),
        pytest.param(
            {"padding": -1}, ValueError, r"padding must be >= 0 in every dimension, got -1", id="padding-negative"
        ),
        pytest.param(
            {"padding": (1, 1, 1)},
            ValueError,
            r"padding must be an int or a tuple of 2 ints \(one per spatial dimension\), got \(1, 1, 1\)",
            id="padding-length",
        ),
        pytest.param({"stride": (1,)}, ValueError, r"stride must be an int or a tuple of 2 ints", id="stride-length"),
        pytest.param(
            {"padding": "full"},
            ValueError,
            r"padding must be an int, a tuple, 'valid' or 'same', got 'full'",
            id="padding-string",
        ),
        pytest.param(
            {"padding": "same", "stride": 2},
            ValueError,
            r"padding='same' needs stride 1 .*torch.nn.functional.conv2d",
            id="same-stride",
        ),
        pytest.param(
            {"padding": 1.5}, TypeError, r"padding must be an int or a tuple of 2 ints, got 1.5", id="padding-float"
        ),
        pytest.param({"stride": (1, 2.0)}, TypeError, r"stride must hold ints", id="stride-float-in-tuple"),
        pytest.param(
            {"x": np.ones((1, 4, 5, 5), np.float32)},
            TypeError,
            r"x and w must share a dtype, got float32 and float64",
            id="dtype-mismatch",
        ),
        pytest.param(
            {"x": np.ones((1, 4, 5, 5), np.int64), "w": np.ones((6, 2, 3, 3), np.int64)},
            TypeError,
            r"x must be a real floating array, got dtype int64",
            id="int-dtype",
        ),
        pytest.param({"epsilon": 0.0}, ValueError, r"epsilon must be a finite number > 0, got 0.0", id="eps-zero"),
        pytest.param({"epsilon": -1.0}, ValueError, r"epsilon must be a finite number > 0", id="eps-negative"),
        pytest.param(
            {"bias": np.ones(4)},
            ValueError,
            r"bias must have shape \(6,\) \(one per output channel\), got \(4,\)",
            id="bias-shape",
        ),
        pytest.param({"alpha": np.ones(2)}, ValueError, r"alpha must be a scalar, got shape \(2,\)", id="alpha-shape"),
        pytest.param({"bias": "1"}, TypeError, r"bias must be an array, a number or None, got str", id="bias-type"),
        pytest.param({"spherical": 1}, TypeError, r"spherical must be a bool", id="spherical-type"),
        pytest.param({"native": "yes"}, TypeError, r"native must be a bool, got 'yes'", id="native-type"),
        pytest.param({"x": [[1.0]]}, TypeError, r"different array libraries \(builtins, numpy\)", id="x-list"),
    ],
)
def test_conv_bad_input_raises_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        _conv_err(**kwargs)


def test_a_dilated_kernel_exactly_as_large_as_the_padded_input_fits():
    y = yat_conv(X2, W2, groups=2, dilation=3, padding=1)  # span 3*(3-1)+1 = 7 = 5 + 2
    assert y.shape == (1, 6, 1, 1)
    np.testing.assert_allclose(y, direct_conv(X2, W2, groups=2, dilation=3, padding=1), rtol=1e-12)


def test_mixing_libraries_names_both():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"different array libraries \(numpy, torch\)"):
        yat_conv(X2, torch.asarray(W2), groups=2)


XT, WT = np.ones((1, 4, 3, 3)), np.ones((4, 3, 2, 2))  # (in, out/groups, *k)


def _transpose_err(**kw):
    x, w = kw.pop("x", XT), kw.pop("w", WT)
    kw.setdefault("groups", 2)
    return yat_conv_transpose(x, w, **kw)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        pytest.param(
            {"x": np.ones((1, 3, 3, 3))},
            ValueError,
            r"x has 3 channels but kernel w of shape \(4, 3, 2, 2\) expects w.shape\[0\] = 4 \(transposed kernel layout is \(in, out/groups, \*kernel\)\)",
            id="channels",
        ),
        pytest.param(
            {"w": np.ones((5, 3, 2, 2)), "x": np.ones((1, 5, 3, 3))},
            ValueError,
            r"groups=2 must divide the 5 input channels",
            id="groups-in",
        ),
        pytest.param({"x": np.ones((1, 4, 3))}, ValueError, r"x must have 4 dimensions", id="rank"),
        pytest.param(
            {"output_padding": 1},
            ValueError,
            r"output_padding must be smaller than either stride or dilation \(as in torch\), got output_padding=1, stride=1, dilation=1",
            id="output-padding-too-large",
        ),
        pytest.param(
            {"output_padding": 2, "stride": 2, "dilation": 2},
            ValueError,
            r"output_padding=2, stride=2, dilation=2",
            id="output-padding-equal",
        ),
        pytest.param({"output_padding": -1}, ValueError, r"output_padding must be >= 0", id="output-padding-negative"),
        pytest.param({"padding": -1}, ValueError, r"padding must be >= 0", id="padding-negative"),
        pytest.param(
            {"padding": "same"},
            ValueError,
            r"transposed convolution must be an int or a tuple \(torch's conv_transpose has no 'same'",
            id="padding-same",
        ),
        pytest.param(
            {"padding": 3}, ValueError, r"transposed convolution output size \(-2, -2\) must be >= 1", id="output-empty"
        ),
        pytest.param({"stride": 0}, ValueError, r"stride must be >= 1", id="stride-zero"),
        pytest.param(
            {"output_padding": (1, 0, 0), "stride": 2},
            ValueError,
            r"output_padding must be an int or a tuple of 2 ints",
            id="op-length",
        ),
        pytest.param({"x": np.ones((1, 4, 3, 3), np.float32)}, TypeError, r"x and w must share a dtype", id="dtype"),
        pytest.param({"bias": np.ones(3)}, ValueError, r"bias must have shape \(6,\)", id="bias-shape"),
        pytest.param({"epsilon": 0}, ValueError, r"epsilon must be a finite number > 0", id="eps"),
    ],
)
def test_conv_transpose_bad_input_raises_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        _transpose_err(**kwargs)


def test_output_padding_below_dilation_is_allowed_as_in_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x, w, _ = _data((1, 2, 3), (2, 1, 2))
    y = yat_conv_transpose(x, w, stride=1, dilation=2, output_padding=1, epsilon=0.1)
    assert y.shape == tuple(F.conv_transpose1d(torch.asarray(x), torch.asarray(w), dilation=2, output_padding=1).shape)


def test_output_shape_helpers_agree_with_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    for _, x_shape, w_shape, geometry in CONV_CASES:
        conv = getattr(F, f"conv{len(x_shape) - 2}d")
        want = tuple(conv(torch.zeros(x_shape), torch.zeros(w_shape), **geometry).shape)
        assert conv_output_shape(x_shape, w_shape, **geometry) == want, geometry
    for _, x_shape, w_shape, geometry in TRANSPOSE_CASES:
        conv = getattr(F, f"conv_transpose{len(x_shape) - 2}d")
        want = tuple(conv(torch.zeros(x_shape), torch.zeros(w_shape), **geometry).shape)
        assert conv_transpose_output_shape(x_shape, w_shape, **geometry) == want, geometry


def test_exported_from_the_package():
    import yat_core

    for name in (
        "yat_conv",
        "yat_conv_transpose",
        "yat_conv_vjp",
        "yat_conv_transpose_vjp",
        "max_pool",
        "avg_pool",
        "linear_conv",
    ):
        assert getattr(yat_core, name) is globals()[name] and name in yat_core.__all__


def test_module_states_the_error_model():
    import yat_core.conv

    doc = " ".join((yat_core.conv.__doc__ or "").split())
    assert "dot products have length ``in/groups * prod(kernel)``" in doc


# ---------------------------------------------------------------- the linear convolution (Conv+ReLU baseline)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_linear_conv_and_its_vjp_equal_torch(case):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    _, x_shape, w_shape, geometry = case
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=x_shape), rng.normal(size=w_shape), rng.normal(size=w_shape[0])
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    want = getattr(F, f"conv{len(x_shape) - 2}d")(tx, tw, tb, **geometry)
    g = rng.normal(size=tuple(want.shape))
    want.backward(torch.tensor(g))
    for native in (False, True):  # the unfold (NumPy) and torch's own convolution
        xs = (x, w, b) if not native else (torch.tensor(x), torch.tensor(w), torch.tensor(b))
        got = to_numpy(linear_conv(xs[0], xs[1], bias=xs[2], native=native, **geometry))
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=f"native={native}")
    grads = linear_conv_vjp(x, w, g, bias=b, **geometry)
    assert grads.alpha is None and grads.epsilon is None
    for got, t in ((grads.x, tx), (grads.w, tw), (grads.bias, tb)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_linear_conv_constant_or_no_bias_and_clear_errors():
    x, w = np.ones((1, 2, 5)), np.ones((3, 2, 2))
    np.testing.assert_array_equal(linear_conv(x, w, bias=0.5), linear_conv(x, w) + 0.5)
    assert linear_conv_vjp(x, w, np.ones((1, 3, 4)), bias=0.5).bias is None
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        linear_conv(x, w, bias=np.ones(2))
    with pytest.raises(ValueError, match="groups"):
        linear_conv(x, w, groups=2)
    with pytest.raises(ValueError, match="larger than"):
        linear_conv(x, np.ones((3, 2, 7)))
    with pytest.raises(TypeError, match="dtype"):
        linear_conv(x.astype(np.float32), w)
