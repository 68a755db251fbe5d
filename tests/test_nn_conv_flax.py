"""yat_core.nn.nnx / yat_core.nn.linen: YatConv and YatConvTranspose against the core and against Flax.

Two references: the core's :func:`~yat_core.conv.yat_conv` /
:func:`~yat_core.conv.yat_conv_transpose` (and their analytic VJPs) on NumPy float64
given the same weights, for everything the core can say; and, for Flax's own padding
modes (``"SAME"`` at stride > 1, unequal pairs, ``"CIRCULAR"``, ``"REFLECT"``,
``"CAUSAL"``, the transposed ``"SAME"`` / ``"VALID"``), the Yat formula written with
Flax's own ``nnx.Conv`` / ``nnx.ConvTranspose(transpose_kernel=True)`` for the dot and
patch-norm terms. Each core test runs for both Flax APIs through a small adapter.
"""

from __future__ import annotations

import inspect
import math
from functools import partial
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx, serialization
from test_interchange import core_layer_kwargs

from yat_core.conv import yat_conv, yat_conv_transpose, yat_conv_transpose_vjp, yat_conv_vjp
from yat_core.mlp import init_layer_numpy
from yat_core.nn import linen as ylinen
from yat_core.nn import nnx as ynnx
from yat_core.nn._flax import to_core_kernel, to_flax_kernel
from yat_core.nn.options import conv_layer_spec

# ------------------------------------------------------------------ adapters

#: Layers whose values the tests import start at zero: drawing random kernels compiles per shape, slowly.
BLANK = {"kernel_init": jax.nn.initializers.zeros, "bias_init": jax.nn.initializers.zeros}
#: The layers' own initialisers: the core's distributions.
CORE_INIT = {"kernel_init": None, "bias_init": None}


@nnx.jit
def _nnx_apply(layer: Any, x: jax.Array) -> jax.Array:
    return layer(x)


class NNX:
    """How the tests build, load and run an NNX layer."""

    name = "nnx"

    @staticmethod
    def layer(transpose: bool, n_in: int, n_out: int, kernel_size: Any, **kwargs: Any) -> Any:
        cls = ynnx.YatConvTranspose if transpose else ynnx.YatConv
        return cls(n_in, n_out, kernel_size, rngs=nnx.Rngs(0), **{**BLANK, **kwargs})

    @staticmethod
    def spec(layer: Any, n_in: int) -> Any:
        return layer.spec

    @staticmethod
    def load(layer: Any, params: dict[str, np.ndarray]) -> Any:
        return layer.import_params(params)

    @staticmethod
    def export(layer: Any) -> dict[str, np.ndarray]:
        return layer.export_params()

    @staticmethod
    def apply(layer: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(_nnx_apply(layer, jnp.asarray(x, jnp.float32)))

    @staticmethod
    def grads(layer: Any, x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """d sum(g * layer(x)) / d (x, every parameter), parameters in Flax's layout."""

        def loss(m: Any, x: jax.Array) -> jax.Array:
            return jnp.sum(jnp.asarray(g, jnp.float32) * m(x))

        grads, dx = nnx.jit(nnx.grad(loss, argnums=(0, 1)))(layer, jnp.asarray(x, jnp.float32))
        return np.asarray(dx), {k: np.asarray(v) for k, v in nnx.to_pure_dict(grads).items()}


class Linen:
    """How the tests build, load and run a Linen layer (bound to its parameters)."""

    name = "linen"

    @staticmethod
    def layer(transpose: bool, n_in: int, n_out: int, kernel_size: Any, **kwargs: Any) -> Any:
        cls = ylinen.YatConvTranspose if transpose else ylinen.YatConv
        return cls(n_out, kernel_size, **{**BLANK, **kwargs})

    @staticmethod
    def spec(layer: Any, n_in: int) -> Any:
        return layer.layer_spec(n_in)

    @staticmethod
    def load(layer: Any, params: dict[str, np.ndarray]) -> Any:
        return layer.import_params(params)

    @staticmethod
    def export(layer: Any) -> dict[str, np.ndarray]:
        return layer.export_params()

    @staticmethod
    def apply(layer: Any, x: np.ndarray) -> np.ndarray:
        module, variables = layer.unbind()
        return np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x, jnp.float32)))

    @staticmethod
    def grads(layer: Any, x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        module, variables = layer.unbind()

        def loss(params: Any, x: jax.Array) -> jax.Array:
            return jnp.sum(jnp.asarray(g, jnp.float32) * module.apply({"params": params}, x))

        grads, dx = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], jnp.asarray(x, jnp.float32))
        return np.asarray(dx), {k: np.asarray(v) for k, v in grads.items()}


@pytest.fixture(params=[NNX, Linen], ids=["nnx", "linen"])
def api(request: pytest.FixtureRequest) -> type:
    return request.param


def random_values(spec: Any, seed: int) -> dict[str, np.ndarray]:
    """The core's initial values for ``spec``, moved off their defaults (alpha != 1, a random bias)."""
    rng = np.random.default_rng(seed)
    values = init_layer_numpy(spec, rng)
    return {k: np.asarray(v + 0.3 * rng.normal(size=v.shape)) if k != "kernel" else v for k, v in values.items()}


def channels_first(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def core_reference(spec: Any, values: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The core on NumPy float64, channels last in and out."""
    conv = yat_conv_transpose if spec.kind == "yat_conv_transpose" else yat_conv
    out = conv(channels_first(x), values["kernel"], **spec.conv_options, **core_layer_kwargs(spec, values))
    return channels_last(out)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    """Within float32 rounding: ``|actual - expected| <= rtol * max(1, |expected|)``."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol)


# ------------------------------------------------------------- the core's numbers

#: id -> (transposed?, in, out, kernel_size, layer arguments, spatial input shape)
CASES: dict[str, tuple[bool, int, int, Any, dict[str, Any], tuple[int, ...]]] = {
    "1d-stride-pad": (False, 3, 4, 3, {"strides": 2, "padding": 1}, (9,)),
    "2d-groups-same-dilation": (
        False,
        4,
        6,
        (3, 2),
        {"padding": "SAME", "feature_group_count": 2, "kernel_dilation": (1, 2), "use_bias": False},
        (7, 8),
    ),
    "2d-pairs-spherical-constants": (
        False,
        3,
        4,
        (3, 3),
        {"strides": (2, 1), "padding": ((1, 1), (0, 0)), "spherical": True, "use_alpha": 2.0, "use_bias": 0.5},
        (8, 7),
    ),
    "3d-valid-learnable-eps": (
        False,
        2,
        3,
        (2, 2, 2),
        {"padding": "VALID", "strides": (1, 2, 1), "learnable_epsilon": True, "epsilon": 0.1},
        (4, 5, 4),
    ),
    "t1d-stride-pad-outpad": (True, 3, 4, 3, {"strides": 2, "padding": 1, "output_padding": 1}, (5,)),
    "t2d-groups-dilation-spherical": (
        True,
        4,
        6,
        (3, 2),
        {
            "strides": (2, 1),
            "padding": (1, 0),
            "kernel_dilation": (2, 1),
            "feature_group_count": 2,
            "learnable_epsilon": True,
            "spherical": True,
        },
        (4, 5),
    ),
    "t3d-valid": (True, 2, 2, (2, 2, 2), {"strides": 2, "padding": "VALID", "use_alpha": False}, (3, 2, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_layer_equals_the_core_given_the_same_weights(api, case):
    transpose, n_in, n_out, kernel_size, kwargs, spatial = CASES[case]
    layer = api.layer(transpose, n_in, n_out, kernel_size, precision="highest", **kwargs)
    spec = api.spec(layer, n_in)
    values = random_values(spec, 1)
    layer = api.load(layer, values)
    x = np.random.default_rng(2).normal(size=(2, *spatial, n_in))
    assert_close(api.apply(layer, x), core_reference(spec, values, x))


def test_transposed_same_where_torch_cannot_say_it_drops_one_computed_output(api):
    # A 3x3 kernel at stride 2: Flax pads the zero-inserted input (2, 1); torch's pair says (1, 1) + 1 at most,
    # so the core computes with padding 0 (pads (2, 2)) and the layer drops the last row and column.
    layer = api.layer(True, 3, 2, (3, 3), strides=2, padding="SAME", precision="highest")
    spec = api.spec(layer, 3)
    assert (spec.padding, spec.output_padding) == ((0, 0), (0, 0))
    values = random_values(spec, 3)
    x = np.random.default_rng(4).normal(size=(2, 4, 5, 3))
    out = api.apply(api.load(layer, values), x)
    assert out.shape == (2, 8, 10, 2)  # size * stride, as Flax's "SAME"
    assert_close(out, core_reference(spec, values, x)[:, :-1, :-1, :])


@pytest.mark.parametrize(
    ("transpose", "kwargs"),
    [
        (False, {"strides": 2, "padding": 1, "feature_group_count": 2, "use_bias": True}),
        (True, {"strides": 2, "padding": 1, "output_padding": 1, "feature_group_count": 2}),
    ],
    ids=["conv", "transpose"],
)
def test_gradients_reach_every_parameter_and_equal_the_core_vjp(api, transpose, kwargs):
    layer = api.layer(transpose, 4, 6, (3, 2), learnable_epsilon=True, epsilon=0.2, precision="highest", **kwargs)
    spec = api.spec(layer, 4)
    assert sorted(spec.param_shapes) == ["alpha", "bias", "epsilon_raw", "kernel"]
    values = random_values(spec, 5)
    layer = api.load(layer, values)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 5, 4, 4))
    g = rng.normal(size=core_reference(spec, values, x).shape)
    dx, grads = api.grads(layer, x, g)
    vjp = yat_conv_transpose_vjp if transpose else yat_conv_vjp
    ref = vjp(
        channels_first(x), values["kernel"], channels_first(g), **spec.conv_options, **core_layer_kwargs(spec, values)
    )
    raw = values["epsilon_raw"]
    expected = {
        "kernel": to_flax_kernel(ref.w),
        "bias": ref.bias,
        "alpha": ref.alpha,
        "epsilon_raw": ref.epsilon / (1 + np.exp(-raw)),  # d softplus = sigmoid
    }
    assert sorted(grads) == sorted(expected)
    for name, value in expected.items():
        assert np.all(np.isfinite(grads[name])) and np.any(grads[name] != 0), name
        scale = max(1.0, float(np.max(np.abs(value))))
        np.testing.assert_allclose(grads[name], value, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    np.testing.assert_allclose(dx, channels_last(ref.x), rtol=1e-4, atol=1e-5 * max(1.0, np.max(np.abs(ref.x))))


# ------------------------------------------------------- Flax's padding, Flax's numbers


def flax_formula(
    x: np.ndarray, kernel: np.ndarray, values: dict[str, Any], *, transpose: bool, groups: int = 1, **conv: Any
) -> np.ndarray:
    """The Yat formula with Flax's own layers for ``dot`` and ``|patch|^2`` (float32, HIGHEST), channels last.

    ``kernel`` is in Flax's layout; ``conv`` holds the Flax layer's geometry (``padding``, ``strides``, ...).
    """
    n = kernel.ndim - 2
    if transpose:  # (*k, out, in): the gradient of a convolution, as torch's conv_transpose
        n_out, n_in = kernel.shape[-2], kernel.shape[-1]

        def make() -> Any:
            return nnx.ConvTranspose(
                n_in,
                n_out,
                kernel.shape[:n],
                transpose_kernel=True,
                kernel_init=jax.nn.initializers.zeros,
                use_bias=False,
                precision="highest",
                rngs=nnx.Rngs(0),
                **conv,
            )

        wsq = np.sum(kernel.astype(np.float64) ** 2, axis=(*range(n), n + 1))
    else:  # (*k, in/groups, out)
        n_in, n_out = kernel.shape[-2] * groups, kernel.shape[-1]

        def make() -> Any:
            return nnx.Conv(
                n_in,
                n_out,
                kernel.shape[:n],
                feature_group_count=groups,
                kernel_init=jax.nn.initializers.zeros,
                use_bias=False,
                precision="highest",
                rngs=nnx.Rngs(0),
                **conv,
            )

        wsq = np.sum(kernel.astype(np.float64) ** 2, axis=(*range(n), n))
    dot_layer, norm_layer = make(), make()
    dot_layer.kernel.set_value(jnp.asarray(kernel, jnp.float32))
    norm_layer.kernel.set_value(jnp.ones(kernel.shape, jnp.float32))
    terms = nnx.jit(lambda a, b, x: (a(x), b(x * x)))(dot_layer, norm_layer, jnp.asarray(x, jnp.float32))
    dot, psq = (np.asarray(t, np.float64) for t in terms)
    dist = np.maximum(psq + wsq - 2 * dot, 0.0)
    bias = values.get("bias", 0.0)
    return values.get("alpha", 1.0) * (dot + bias) ** 2 / (dist + values.get("epsilon", 1e-5))


#: id -> (kernel_size, layer arguments, spatial input shape): Flax's padding the core has no word for.
FLAX_PADDINGS: dict[str, tuple[Any, dict[str, Any], tuple[int, ...]]] = {
    "same-stride2": ((3, 2), {"padding": "SAME", "strides": 2}, (7, 6)),
    "same-lower-stride2": ((4, 3), {"padding": "SAME_LOWER", "strides": (2, 3)}, (7, 8)),
    "unequal-pairs": ((3, 3), {"padding": ((0, 2), (1, 0)), "feature_group_count": 2}, (5, 6)),
    "circular": ((3, 2), {"padding": "CIRCULAR"}, (5, 4)),
    "reflect-1d": ((4,), {"padding": "REFLECT", "kernel_dilation": 2}, (9,)),
    "causal-1d": (3, {"padding": "CAUSAL", "kernel_dilation": 2}, (8,)),
}


@pytest.mark.parametrize("case", list(FLAX_PADDINGS))
def test_conv_pads_as_flax_conv(case):
    kernel_size, kwargs, spatial = FLAX_PADDINGS[case]
    layer = ynnx.YatConv(4, 6, kernel_size, precision="highest", rngs=nnx.Rngs(0), **BLANK, **kwargs)
    values = random_values(layer.spec, 7)
    layer.import_params(values)
    x = np.random.default_rng(8).normal(size=(2, *spatial, 4))
    kernel = np.asarray(layer.kernel.get_value())
    geometry = {k: v for k, v in kwargs.items() if k != "feature_group_count"}
    expected = flax_formula(x, kernel, values, transpose=False, groups=layer.spec.groups, **geometry)
    assert_close(NNX.apply(layer, x), expected, rtol=1e-4)


@pytest.mark.parametrize(
    ("k", "s", "d"),
    [(3, 2, 1), (4, 2, 1), (2, 3, 1), (3, 1, 1), (3, 2, 2), (1, 3, 1), (5, 2, 1), (5, 3, 1)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("padding", ["SAME", "VALID", "int"])
def test_transposed_padding_maps_onto_flax_conv_transpose_with_transpose_kernel(padding, k, s, d):
    # "SAME" and "VALID" are Flax's; an int p is torch's, which is Flax's int K - 1 - p (K the dilated kernel).
    K = d * (k - 1) + 1
    ours, theirs = (min(1, K - 1), K - 1 - min(1, K - 1)) if padding == "int" else (padding, padding)
    layer = ynnx.YatConvTranspose(
        3, 2, (k,), strides=s, kernel_dilation=d, padding=ours, precision="highest", rngs=nnx.Rngs(0), **BLANK
    )
    values = random_values(layer.spec, 9)
    layer.import_params(values)
    x = np.random.default_rng(10).normal(size=(2, 5, 3))
    kernel = np.asarray(layer.kernel.get_value())
    expected = flax_formula(x, kernel, values, transpose=True, padding=theirs, strides=s, kernel_dilation=d)
    assert_close(NNX.apply(layer, x), expected, rtol=1e-4)


def test_linen_transposed_same_in_2d_is_flax_conv_transpose():
    layer = ylinen.YatConvTranspose(2, (3, 4), strides=(2, 2), padding="SAME", precision="highest")
    values = random_values(layer.layer_spec(3), 11)
    bound = layer.import_params(values)
    x = np.random.default_rng(12).normal(size=(1, 4, 3, 3))
    kernel = np.asarray(bound.variables["params"]["kernel"])
    expected = flax_formula(x, kernel, values, transpose=True, padding="SAME", strides=(2, 2))
    assert_close(Linen.apply(bound, x), expected, rtol=1e-4)


# ------------------------------------------------------------------ interchange


def test_kernels_are_laid_out_as_flax_lays_them_out():
    def shape(make: Any) -> tuple[int, ...]:
        return tuple(nnx.eval_shape(make).kernel.shape)  # abstract: nothing drawn

    conv = shape(lambda: ynnx.YatConv(4, 6, (3, 2), feature_group_count=2, rngs=nnx.Rngs(0)))
    assert conv == shape(lambda: nnx.Conv(4, 6, (3, 2), feature_group_count=2, rngs=nnx.Rngs(0))) == (3, 2, 2, 6)
    transposed = shape(lambda: ynnx.YatConvTranspose(4, 6, (3, 2), rngs=nnx.Rngs(0)))
    theirs = shape(lambda: nnx.ConvTranspose(4, 6, (3, 2), transpose_kernel=True, rngs=nnx.Rngs(0)))
    assert transposed == theirs == (3, 2, 6, 4)
    assert shape(lambda: ynnx.YatConvTranspose(4, 6, (3, 2), feature_group_count=2, rngs=nnx.Rngs(0))) == (3, 2, 3, 4)
    x = jnp.zeros((1, 5, 5, 4))
    linen_conv = jax.eval_shape(ylinen.YatConv(6, (3, 2), feature_group_count=2).init, jax.random.key(0), x)
    linen_t = jax.eval_shape(ylinen.YatConvTranspose(6, (3, 2)).init, jax.random.key(0), x)
    assert (linen_conv["params"]["kernel"].shape, linen_t["params"]["kernel"].shape) == ((3, 2, 2, 6), (3, 2, 6, 4))
    # export gives the core's layouts: (out, in/groups, *k) and torch's (in, out/groups, *k)
    layer = ynnx.YatConvTranspose(4, 6, (3, 2), feature_group_count=2, rngs=nnx.Rngs(0), **BLANK)
    assert layer.export_params()["kernel"].shape == (4, 3, 3, 2)


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "transpose"])
def test_export_import_round_trip_is_exact(api, transpose):
    layer = api.layer(transpose, 4, 6, (3, 2, 2), learnable_epsilon=True, feature_group_count=2, padding=1)
    spec = api.spec(layer, 4)
    values = {k: v.astype(np.float32) for k, v in random_values(spec, 13).items()}
    exported = api.export(api.load(layer, values))
    assert list(exported) == list(spec.param_shapes) == ["kernel", "bias", "alpha", "epsilon_raw"]
    for name, value in values.items():
        assert exported[name].dtype == np.float32 and exported[name].shape == value.shape, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    # float64 values are cast to the parameters' dtype
    again = api.export(api.load(layer, {k: v.astype(np.float64) for k, v in values.items()}))
    assert all(again[k].dtype == np.float32 and np.array_equal(again[k], values[k]) for k in values)


def test_layout_converters_invert_each_other():
    kernel = np.arange(2 * 3 * 4 * 5 * 6.0).reshape(2, 3, 4, 5, 6)
    np.testing.assert_array_equal(to_core_kernel(to_flax_kernel(kernel)), kernel)
    assert to_flax_kernel(kernel)[3, 4, 5, 2, 1] == kernel[1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: p.pop("alpha"), ValueError, r"missing alpha \(shape \(\)\)"),
        (lambda p: p.update({"gamma": np.zeros(2, np.float32)}), ValueError, "unexpected gamma"),
        (lambda p: p.update({"bias": np.zeros(5, np.float32)}), ValueError, r"bias has shape \(5,\), expected \(6,\)"),
        (
            lambda p: p.update({"kernel": np.zeros((6, 2, 2, 3), np.float32)}),
            ValueError,
            r"kernel has shape \(6, 2, 2, 3\), expected \(6, 2, 3, 2\)",
        ),
        (lambda p: p.update({"bias": np.zeros(6, np.int32)}), TypeError, r"bias \(int32\)"),
    ],
    ids=["missing", "unexpected", "bias-shape", "kernel-layout", "dtype"],
)
def test_import_rejects_bad_parameters_and_changes_nothing(api, mutate, error, match):
    layer = api.layer(False, 4, 6, (3, 2), feature_group_count=2)
    spec = api.spec(layer, 4)
    layer = api.load(layer, random_values(spec, 15))
    before = api.export(layer)
    params = random_values(spec, 16)
    mutate(params)
    with pytest.raises(error, match=match):
        api.load(layer, params)
    after = api.export(layer)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a rejected import changed the layer"


def test_linen_export_needs_variables_or_a_bound_module():
    with pytest.raises(ValueError, match="not bound"):
        ylinen.YatConv(4, 3).export_params()
    with pytest.raises(ValueError, match="missing kernel"):
        ylinen.YatConv(4, 3).import_params({"alpha": np.ones(())})


@pytest.mark.parametrize(
    "spec",
    [
        conv_layer_spec(4, 6, (3, 3), n_spatial=2, stride=2, padding=1, groups=2, bias=0.5, learnable_epsilon=True),
        conv_layer_spec(2, 4, 3, n_spatial=1, padding="same", dilation=2, alpha=None, spherical=True),
        conv_layer_spec(4, 2, (2, 3, 2), n_spatial=3, stride=(2, 1, 2), padding=(1, 0, 0), output_padding=(1, 0, 0)),
    ],
    ids=["conv2d", "conv1d-same", "transpose3d"],
)
def test_from_spec_builds_the_layer_the_spec_describes(api, spec):
    transpose = spec.kind == "yat_conv_transpose"
    if api is NNX:
        cls = ynnx.YatConvTranspose if transpose else ynnx.YatConv
        layer = cls.from_spec(spec, rngs=nnx.Rngs(0), precision="highest", **BLANK)
    else:
        cls = ylinen.YatConvTranspose if transpose else ylinen.YatConv
        layer = cls.from_spec(spec, precision="highest")
    assert api.spec(layer, spec.in_features) == spec
    values = random_values(spec, 17)
    x = np.random.default_rng(18).normal(size=(2, *(5,) * len(spec.kernel_size), spec.in_features))
    assert_close(api.apply(api.load(layer, values), x), core_reference(spec, values, x))
    wrong = {NNX: (ynnx.YatConv, ynnx.YatConvTranspose), Linen: (ylinen.YatConv, ylinen.YatConvTranspose)}[api]
    with pytest.raises(ValueError, match="built from a spec of kind"):
        wrong[not transpose].from_spec(spec, **({"rngs": nnx.Rngs(0)} if api is NNX else {}))


# ------------------------------------------------------- the framework's conventions

#: Arguments of nnx.Conv / linen.Conv (and the transposed ones) the Yat layers have no use for.
NOT_TAKEN = {
    "self",
    "parent",
    "name",
    "input_dilation",
    "mask",
    "conv_general_dilated",
    "conv_general_dilated_cls",
    "promote_dtype",
    "preferred_element_type",
    "transpose_kernel",
}
YAT_ONLY = {"use_alpha", "epsilon", "learnable_epsilon", "spherical"}
TRANSPOSE_ONLY = {"output_padding", "feature_group_count"}  # torch's, and the core's groups


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "transpose"])
def test_layers_take_the_arguments_of_flax_convolutions(api, transpose):
    if api is NNX:
        pairs = {False: (ynnx.YatConv, nnx.Conv), True: (ynnx.YatConvTranspose, nnx.ConvTranspose)}
        ours, theirs = (inspect.signature(c.__init__).parameters for c in pairs[transpose])
    else:
        pairs = {False: (ylinen.YatConv, nn.Conv), True: (ylinen.YatConvTranspose, nn.ConvTranspose)}
        ours, theirs = (inspect.signature(c).parameters for c in pairs[transpose])
    extra = YAT_ONLY | (TRANSPOSE_ONLY if transpose else set())
    assert set(ours) - extra - NOT_TAKEN == set(theirs) - NOT_TAKEN
    for name in set(theirs) - NOT_TAKEN - {"kernel_init", "bias_init"}:  # those default to the core's
        assert (ours[name].kind, ours[name].default) == (theirs[name].kind, theirs[name].default), name


def _call(api: type, layer: Any, x: jax.Array) -> Any:
    """``layer(x)`` as a jitted function of x (Linen: initialised on x first)."""
    if api is NNX:
        return jax.jit(lambda x: layer(x))
    variables = jax.jit(layer.init)(jax.random.key(0), x)
    return jax.jit(lambda x: layer.apply(variables, x))


def _pure(api: type, make: Any, x: jax.Array) -> tuple[Any, Any]:
    """``(fn, state)`` with ``fn(state, x)`` the layer ``make()`` builds and ``state`` its abstract parameters.

    Nothing is computed: enough to trace the layer (its jaxpr, its output's dtype).
    """
    if api is NNX:
        graphdef, state = nnx.split(nnx.eval_shape(make))
        return (lambda state, x: nnx.merge(graphdef, state)(x)), state
    module = make()
    return (lambda variables, x: module.apply(variables, x)), jax.eval_shape(module.init, jax.random.key(0), x)


def _flax_conv(api: type, n_in: int, n_out: int, kernel_size: Any, **kwargs: Any) -> Any:
    if api is NNX:
        return nnx.Conv(n_in, n_out, kernel_size, rngs=nnx.Rngs(0), **kwargs)
    return nn.Conv(n_out, kernel_size, **kwargs)


def _conv_precisions(api: type, make: Any, x: jax.Array) -> list[Any]:
    """The ``precision`` of every convolution in the jaxpr of ``make()``'s layer on ``x``, and of its gradient."""

    def walk(jaxpr: Any) -> list[Any]:
        found = []
        for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.append(eqn.params["precision"])
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                        found += walk(sub)
        return found

    fn, state = _pure(api, make, x)
    grad = jax.grad(lambda x, state: fn(state, x).sum())
    return walk(jax.make_jaxpr(fn)(state, x)) + walk(jax.make_jaxpr(grad)(x, state))


@pytest.mark.parametrize(
    "precision",
    [None, "highest", "float32", jax.lax.Precision.HIGH, ("highest", "highest"), "bfloat16", "F32_F32_F32"],
    ids=["none", "highest", "float32", "HIGH", "pair", "bfloat16", "F32_F32_F32"],
)
def test_precision_reaches_the_convolutions_as_in_flax_conv(api, precision):
    x = jnp.ones((2, 6, 6, 4))
    if precision == "F32_F32_F32":
        precision = jax.lax.DotAlgorithmPreset.F32_F32_F32
    ours = _conv_precisions(api, lambda: api.layer(False, 4, 3, (3, 3), precision=precision), x)
    theirs = _conv_precisions(api, lambda: _flax_conv(api, 4, 3, (3, 3), precision=precision), x)
    assert len(ours) >= 3 and set(ours) == set(theirs), (precision, ours, theirs)  # the dot and its VJPs
    transposed = _conv_precisions(api, lambda: api.layer(True, 4, 3, (3, 3), strides=2, precision=precision), x)
    assert set(transposed) == set(theirs)


def test_precision_none_inherits_the_default(api):
    x = jnp.ones((1, 5, 4))
    with jax.default_matmul_precision("highest"):
        precisions = _conv_precisions(api, lambda: api.layer(False, 4, 3, 3), x)
    assert set(precisions) == {(jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)}


@pytest.mark.parametrize("precision", [("highest", "default"), "fast"])
def test_bad_precision_is_a_clear_error(api, precision):
    with pytest.raises(ValueError, match="precision"):
        _pure(api, lambda: api.layer(False, 4, 3, 3, precision=precision), jnp.ones((1, 5, 4)))


@pytest.mark.parametrize(
    ("x_dtype", "dtype", "param_dtype"),
    [
        ("float32", None, "float32"),
        ("bfloat16", None, "float32"),
        ("bfloat16", None, "bfloat16"),
        ("float32", "bfloat16", "float32"),
        ("float32", None, "bfloat16"),
        ("int32", None, "float32"),
    ],
)
def test_dtype_and_param_dtype_promote_as_flax_conv_does(api, x_dtype, dtype, param_dtype):
    x = jnp.ones((2, 5, 5, 4), x_dtype)
    options = {"dtype": dtype if dtype is None else jnp.dtype(dtype), "param_dtype": jnp.dtype(param_dtype)}
    theirs = jax.eval_shape(*_pure(api, lambda: _flax_conv(api, 4, 3, (3, 3), **options), x), x)
    for transpose in (False, True):
        fn, state = _pure(api, partial(api.layer, transpose, 4, 3, (3, 3), **options), x)
        ours = jax.eval_shape(fn, state, x)
        assert ours.dtype == theirs.dtype, (transpose, ours.dtype, theirs.dtype)
        assert {str(leaf.dtype) for leaf in jax.tree.leaves(state)} == {param_dtype}


def test_bfloat16_compute_tracks_float32(api):
    x = jnp.asarray(np.random.default_rng(19).normal(size=(2, 6, 6, 4)), jnp.float32)
    full = _call(api, api.layer(False, 4, 3, (3, 3), **CORE_INIT), x)(x)
    half = _call(api, api.layer(False, 4, 3, (3, 3), dtype=jnp.bfloat16, **CORE_INIT), x)(x)  # same key: same weights
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(full), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "transpose"])
def test_layer_under_jit_equals_eager(api, transpose):
    x = np.random.default_rng(20).normal(size=(2, 7, 4))
    layer = api.layer(transpose, 4, 3, 3, strides=2, spherical=True, precision="highest")
    layer = api.load(layer, random_values(api.spec(layer, 4), 21))
    eager = np.asarray(layer(jnp.asarray(x, jnp.float32)))  # NNX: the module; Linen: the bound module
    np.testing.assert_allclose(api.apply(layer, x), eager, rtol=1e-5, atol=1e-6)  # XLA fuses differently


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "transpose"])
def test_batch_axes_as_flax_conv_none_or_several(api, transpose):
    layer = api.layer(transpose, 3, 2, (3,), strides=2, padding=1)
    layer = api.load(layer, random_values(api.spec(layer, 3), 22))
    x = np.random.default_rng(23).normal(size=(6, 7, 3))
    batched = api.apply(layer, x)
    np.testing.assert_allclose(api.apply(layer, x[0]), batched[0], rtol=1e-6, atol=1e-6)
    several = api.apply(layer, x.reshape(2, 3, 7, 3))
    np.testing.assert_allclose(several, batched.reshape(2, 3, *batched.shape[1:]), rtol=1e-6, atol=1e-6)


def test_nnx_split_merge_and_a_serialized_state_round_trip():
    def make(seed: int) -> Any:
        return ynnx.YatConvTranspose(
            4,
            2,
            (3, 3),
            strides=2,
            padding=1,
            output_padding=1,
            learnable_epsilon=True,
            use_bias=0.5,
            rngs=nnx.Rngs(seed),
            **BLANK,
        )

    layer = make(4)
    layer.import_params(random_values(layer.spec, 24))
    x = jnp.asarray(np.random.default_rng(22).normal(size=(1, 4, 4, 4)), jnp.float32)
    graphdef, state = nnx.split(layer)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), layer(x))
    data = serialization.to_bytes(nnx.to_pure_dict(state))  # plain msgpack, no orbax
    graphdef2, abstract = nnx.split(nnx.eval_shape(lambda: make(9)))
    nnx.replace_by_pure_dict(abstract, serialization.from_bytes(nnx.to_pure_dict(abstract), data))
    restored = nnx.merge(graphdef2, abstract)
    assert sorted(nnx.to_pure_dict(nnx.state(restored))) == ["alpha", "epsilon_raw", "kernel"]
    np.testing.assert_array_equal(restored(x), layer(x))


def test_linen_init_apply_and_the_params_tree():
    layer = ylinen.YatConv(6, (3, 2), feature_group_count=2, learnable_epsilon=True, use_alpha=2.0)
    x = jnp.asarray(np.random.default_rng(23).normal(size=(2, 5, 5, 4)), jnp.float32)
    variables = jax.jit(layer.init)(jax.random.key(4), x)
    assert list(variables) == ["params"]
    assert jax.tree.map(jnp.shape, variables["params"]) == {"kernel": (3, 2, 2, 6), "bias": (6,), "epsilon_raw": ()}
    # import_params builds exactly the tree init makes, and apply reads it
    bound = layer.import_params(layer.export_params(variables))
    shape_of = lambda tree: jax.tree.map(lambda a: (a.shape, str(a.dtype)), tree)  # noqa: E731
    assert shape_of(bound.variables) == shape_of(variables)
    np.testing.assert_array_equal(bound(x), layer.apply(variables, x))
    restored = serialization.from_bytes(jax.jit(layer.init)(jax.random.key(5), x), serialization.to_bytes(variables))
    np.testing.assert_array_equal(layer.apply(restored, x), layer.apply(variables, x))


@pytest.mark.parametrize("transpose", [False, True], ids=["conv", "transpose"])
def test_initial_values_follow_the_core_distributions(api, transpose):
    # Grouped: the core's fans count the group's channels (Flax's variance_scaling would count all 64 outputs).
    layer = api.layer(transpose, 64, 64, (3, 3), feature_group_count=4, **CORE_INIT)
    spec = api.spec(layer, 64)
    if api is NNX:
        values = layer.export_params()
    else:
        values = layer.export_params(jax.jit(layer.init)(jax.random.key(0), jnp.zeros((1, 3, 3, 64))))
    fan_in, fan_out = spec.fans
    assert float(values["alpha"]) == 1.0
    assert np.max(np.abs(values["bias"])) <= 1 / math.sqrt(fan_in)
    assert np.std(values["kernel"]) == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    assert abs(float(np.mean(values["kernel"]))) < 0.01


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("transpose", "args", "kwargs", "error", "match"),
    [
        (False, (4, 6, 3), {"feature_group_count": 4}, ValueError, "feature_group_count=4 must divide"),
        (True, (6, 4, 3), {"feature_group_count": 4}, ValueError, "feature_group_count=4 must divide"),
        (False, (4, 6, (3, 3, 3, 3)), {}, ValueError, "kernel_size must be an int"),
        (False, (4, 6, (3, 3)), {"strides": 0}, ValueError, "strides must be >= 1"),
        (False, (4, 6, (3, 3)), {"padding": "FULL"}, ValueError, "padding must be one of"),
        (False, (4, 6, (3, 3)), {"padding": -1}, ValueError, "padding must be"),
        (False, (4, 6, (3, 3)), {"padding": "CAUSAL"}, ValueError, "1-D convolutions only"),
        (True, (4, 6, (3, 3)), {"padding": ((1, 1), (1, 1))}, ValueError, "pairs are not taken"),
        (True, (4, 6, (3, 3)), {"padding": "CIRCULAR"}, ValueError, "must be 'SAME', 'VALID', an int"),
        (True, (4, 6, 3), {"padding": "SAME", "output_padding": 1}, ValueError, "applies to int padding"),
        (True, (4, 6, 3), {"strides": 2, "padding": 0, "output_padding": 2}, ValueError, "output_padding"),
        (False, (4, 6, 3), {"use_bias": "yes"}, ValueError, "bias must be True"),
        (False, (4, 6, 3), {"epsilon": 0.0}, ValueError, "epsilon must be a finite number > 0"),
    ],
)
def test_bad_arguments_are_clear_errors(api, transpose, args, kwargs, error, match):
    n_in, n_out, kernel_size = args
    x = jnp.zeros((1, *(8,) * len(np.atleast_1d(kernel_size)), n_in))
    with pytest.raises(error, match=match):  # when built (NNX) or when it meets its input (Linen)
        _call(api, api.layer(transpose, n_in, n_out, kernel_size, **kwargs), x)(x)


def test_channels_must_be_integers():
    with pytest.raises(TypeError, match="in_features must be a positive integer, got 2.5"):
        ynnx.YatConv(2.5, 4, (3, 3), rngs=nnx.Rngs(0), **BLANK)
    with pytest.raises(TypeError, match="out_features must be a positive integer, got 4.0"):
        ynnx.YatConvTranspose(2, 4.0, (3, 3), rngs=nnx.Rngs(0), **BLANK)
    with pytest.raises(TypeError, match="features must be a positive integer, got 2.5"):
        ylinen.YatConv(2.5, (3, 3)).init(jax.random.key(0), jnp.zeros((1, 5, 5, 2)))


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        (
            (5, 3),
            r"takes inputs \(\*batch, 2 spatial dims, features\), channels last, of rank >= 3; got shape \(5, 3\)",
        ),
        ((1, 2, 2, 3), "larger than the padded input"),
    ],
    ids=["rank", "kernel-larger-than-input"],
)
def test_bad_input_is_a_clear_error(api, shape, match):
    layer = api.layer(False, 3, 2, (3, 3), padding="VALID")
    with pytest.raises(ValueError, match=match):
        _call(api, layer, jnp.zeros(shape))(jnp.zeros(shape))


def test_nnx_wrong_channels_is_a_clear_error():
    layer = ynnx.YatConv(3, 2, (3, 3), rngs=nnx.Rngs(0), **BLANK)
    with pytest.raises(ValueError, match=r"takes inputs with 3 features \(channels last\), got shape \(1, 5, 5, 4\)"):
        layer(jnp.zeros((1, 5, 5, 4)))
