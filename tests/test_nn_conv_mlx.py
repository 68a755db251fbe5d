"""yat_core.nn.mlx: the Yat convolutions (1-3-D, direct and transposed) against the core.

The reference for every number is the core's array-API unfold in NumPy float64
(:func:`yat_core.conv.yat_conv` / :func:`~yat_core.conv.yat_conv_transpose`, and
their analytic gradients); the layers run channels last in float32 on MLX's own
convolution (``native=True``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
mlx_nn = pytest.importorskip("mlx.nn")

from mlx.utils import tree_flatten  # noqa: E402

from yat_core.conv import yat_conv, yat_conv_transpose, yat_conv_transpose_vjp, yat_conv_vjp  # noqa: E402
from yat_core.mlp import init_layer_numpy  # noqa: E402
from yat_core.nn import mlx as ymlx  # noqa: E402
from yat_core.nn.options import conv_layer_spec  # noqa: E402
from yat_core.product import softplus, softplus_inverse  # noqa: E402
from yat_core.spec import LayerSpec, cnn_spec  # noqa: E402

#: name -> (layer class name, positional args, keyword args, input shape channels FIRST (N, C, *spatial)).
CASES: dict[str, tuple[str, tuple[Any, ...], dict[str, Any], tuple[int, ...]]] = {
    "1d-stride-padding-groups": ("YatConv1d", (4, 6, 3), {"stride": 2, "padding": 1, "groups": 2}, (2, 4, 11)),
    "1d-same-even-kernel-dilation-learnable-eps": (
        "YatConv1d",
        (3, 5, 4),
        {"padding": "same", "dilation": 3, "learnable_epsilon": True, "epsilon": 0.1},  # pads 4 left, 5 right
        (2, 3, 12),
    ),
    "2d-defaults": ("YatConv2d", (3, 4, 3), {}, (2, 3, 8, 8)),
    "2d-per-dim-no-bias-constant-alpha": (
        "YatConv2d",
        (2, 4, (3, 2)),
        {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "bias": False, "alpha": 2.0},
        (2, 2, 9, 8),
    ),
    "2d-valid-spherical-constant-bias-groups": (
        "YatConv2d",
        (3, 6, 2),
        {"padding": "valid", "groups": 3, "spherical": True, "bias": 0.5},
        (2, 3, 5, 6),
    ),
    "2d-same-no-alpha": ("YatConv2d", (2, 3, 3), {"padding": "same", "alpha": False}, (1, 2, 6, 5)),
    "3d-stride-padding-learnable-eps": (
        "YatConv3d",
        (2, 4, (2, 3, 2)),
        {"stride": 2, "padding": 1, "learnable_epsilon": True},
        (2, 2, 5, 6, 5),
    ),
    "3d-groups": ("YatConv3d", (4, 4, 2), {"groups": 2, "dilation": (1, 2, 1)}, (1, 4, 4, 5, 3)),
    "t1d-stride-output-padding-groups": (
        "YatConvTranspose1d",
        (4, 6, 3),
        {"stride": 2, "output_padding": 1, "groups": 2},
        (2, 4, 6),
    ),
    "t2d-per-dim-spherical-learnable-eps": (
        "YatConvTranspose2d",
        (3, 4, (3, 2)),
        {"stride": (2, 3), "padding": (1, 0), "output_padding": (1, 2), "spherical": True, "learnable_epsilon": True},
        (2, 3, 4, 3),
    ),
    "t2d-dilation-no-bias-no-alpha": (
        "YatConvTranspose2d",
        (2, 3, 3),
        {"dilation": 2, "padding": 1, "bias": False, "alpha": False, "epsilon": 0.01},
        (2, 2, 4, 4),
    ),
    "t3d-stride-padding-groups": (
        "YatConvTranspose3d",
        (4, 2, 3),
        {"stride": 2, "padding": 1, "groups": 2, "bias": 0.25},
        (1, 4, 3, 2, 3),
    ),
}


def random_params(spec: LayerSpec, seed: int) -> dict[str, np.ndarray]:
    """Values unlike any initialisation (an import that did nothing shows), alpha and epsilon in range."""
    rng = np.random.default_rng(seed)
    values = {
        "kernel": lambda shape: rng.normal(0.0, 0.3, shape),
        "bias": lambda shape: rng.normal(0.0, 0.3, shape),
        "alpha": lambda shape: rng.uniform(0.5, 2.0, shape),
        "epsilon_raw": lambda shape: rng.uniform(-2.0, 0.0, shape),
    }
    return {name: np.asarray(values[name](shape), np.float32) for name, shape in spec.param_shapes.items()}


def core_kwargs(spec: LayerSpec, params: dict[str, np.ndarray]) -> dict[str, Any]:
    p = {name: value.astype(np.float64) for name, value in params.items()}
    return {
        **spec.conv_options,
        "bias": p.get("bias", spec.bias),
        "alpha": p.get("alpha", spec.alpha),
        "epsilon": softplus(p["epsilon_raw"]) if spec.learnable_epsilon else spec.epsilon,
        "spherical": spec.spherical,
    }


def core_reference(spec: LayerSpec, params: dict[str, np.ndarray], x_first: np.ndarray) -> np.ndarray:
    """The core's unfold in NumPy float64 (channels first in and out)."""
    conv = yat_conv_transpose if spec.kind == "yat_conv_transpose" else yat_conv
    return conv(x_first.astype(np.float64), params["kernel"].astype(np.float64), **core_kwargs(spec, params))


def last(a: np.ndarray) -> np.ndarray:
    """Channels first -> channels last."""
    return np.moveaxis(a, 1, -1)


def assert_close_to_core(out: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    """``|out - ref| <= rtol * max(1, |ref|)`` everywhere: float32 rounding against float64."""
    assert out.shape == ref.shape
    err = np.max(np.abs(out.astype(np.float64) - ref) / np.maximum(1.0, np.abs(ref)))
    assert err <= rtol, f"max scaled error {err:.3g} > {rtol}"


def build(case: str) -> Any:
    cls, args, kwargs, _ = CASES[case]
    return getattr(ymlx, cls)(*args, **kwargs)


def make(case: str, seed: int = 0) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """The case's layer with random core parameters imported, and a channels-first float32 input."""
    layer = build(case)
    params = random_params(layer.spec, seed)
    layer.import_params(params)
    x = np.random.default_rng(seed + 100).normal(size=CASES[case][3]).astype(np.float32)
    return layer, params, x


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("case", CASES)
def test_layer_equals_the_core_unfold_in_float64(case):
    layer, params, x = make(case)
    out = np.array(layer(mx.array(last(x))))
    assert_close_to_core(out, last(core_reference(layer.spec, params, x)))


def test_parameters_follow_mlx_layout():
    conv = ymlx.YatConv2d(4, 6, (3, 2), groups=2, learnable_epsilon=True)
    assert [(n, v.shape) for n, v in tree_flatten(conv.parameters())] == [
        ("weight", (6, 3, 2, 2)),
        ("bias", (6,)),
        ("alpha", ()),
        ("epsilon_raw", ()),
    ]
    assert conv.weight.shape == mlx_nn.Conv2d(4, 6, (3, 2), groups=2).weight.shape
    transposed = ymlx.YatConvTranspose2d(4, 6, 3, bias=False, alpha=1.5)
    assert [(n, v.shape) for n, v in tree_flatten(transposed.parameters())] == [("weight", (6, 3, 3, 4))]
    assert transposed.weight.shape == mlx_nn.ConvTranspose2d(4, 6, 3).weight.shape
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.groups) == (
        4,
        6,
        (3, 2),
        (1, 1),
        2,
    )
    assert transposed.output_padding == (0, 0) and transposed.transposed and not conv.transposed


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transpose"])
def test_weight_means_what_mlx_own_convolution_means(transposed, groups):
    # With a huge epsilon, y * epsilon -> (x conv w)^2: the layer's kernel layout is the one
    # mx.conv1d / mx.conv_transpose1d read, groups included.
    eps = 1e8
    cls = ymlx.YatConvTranspose1d if transposed else ymlx.YatConv1d
    layer = cls(4, 6, 3, stride=2, groups=groups, bias=False, alpha=False, epsilon=eps)
    rng = np.random.default_rng(groups)
    layer.weight = mx.array(rng.normal(size=layer.weight.shape).astype(np.float32))
    x = mx.array(rng.normal(size=(2, 5, 4)).astype(np.float32))
    own = (mx.conv_transpose1d if transposed else mx.conv1d)(x, layer.weight, stride=2, groups=groups)
    np.testing.assert_allclose(np.array(layer(x)) * eps, np.array(own) ** 2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["2d-per-dim-no-bias-constant-alpha", "t2d-per-dim-spherical-learnable-eps"])
def test_kernel_layout_conversion_round_trips(case):
    spec = build(case).spec
    core = np.random.default_rng(0).normal(size=spec.param_shapes["kernel"])
    native = ymlx.kernel_from_core(spec, core)
    np.testing.assert_array_equal(ymlx.kernel_to_core(spec, native), core)
    np.testing.assert_array_equal(np.array(ymlx.kernel_to_core(spec, mx.array(native))), core.astype(np.float32))


def test_fresh_layer_draws_the_core_distributions():
    mx.random.seed(0)
    layer = ymlx.YatConv2d(16, 32, 3, groups=2, learnable_epsilon=True, epsilon=0.1)
    fan_in, fan_out = layer.spec.fans  # per group: 8*9 and 16*9
    assert float(np.std(np.array(layer.weight))) == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    assert float(mx.abs(layer.bias).max()) <= 1 / math.sqrt(fan_in)
    assert layer.alpha.item() == 1.0
    assert layer.epsilon_raw.item() == pytest.approx(softplus_inverse(0.1), rel=1e-6)


@pytest.mark.parametrize("spec", [s for s in cnn_spec().layers if s.kind == "yat_conv"], ids=["conv1", "conv2"])
def test_from_spec_with_init_layer_numpy_is_the_core_layer(spec):
    layer = ymlx.conv_from_spec(spec)
    assert type(layer) is ymlx.YatConv2d and ymlx.YatConv2d.from_spec(spec).spec == layer.spec
    values = {k: v.astype(np.float32) for k, v in init_layer_numpy(spec, np.random.default_rng(0)).items()}
    layer.import_params(values)
    for name, value in layer.export_params().items():
        np.testing.assert_array_equal(value, values[name], err_msg=name)
    x = np.random.default_rng(1).uniform(size=(2, spec.in_features, 12, 12)).astype(np.float32)
    assert_close_to_core(np.array(layer(mx.array(last(x)))), last(core_reference(spec, values, x)))


def test_from_spec_refuses_another_kind_or_rank():
    spec = conv_layer_spec(2, 4, 3, n_spatial=2, stride=2, output_padding=1)
    assert type(ymlx.conv_from_spec(spec)) is ymlx.YatConvTranspose2d
    with pytest.raises(ValueError, match=r"YatConv2d is built from a 'yat_conv' spec with 2 spatial"):
        ymlx.YatConv2d.from_spec(spec)
    with pytest.raises(ValueError, match="not 'yat'"):
        ymlx.conv_from_spec(LayerSpec("yat", 3, 2))


def test_repr_reads_like_mlx():
    assert repr(ymlx.YatConvTranspose1d(8, 4, 3, stride=2, output_padding=1, learnable_epsilon=True)) == (
        "YatConvTranspose1d(8, 4, kernel_size=(3,), stride=(2,), padding=(0,), dilation=(1,), output_padding=(1,), "
        "groups=1, bias=True, alpha=True, epsilon=1e-05, learnable_epsilon=True, spherical=False)"
    )


# ------------------------------------------------------------------ interchange


@pytest.mark.parametrize("case", ["2d-defaults", "3d-groups", "t1d-stride-output-padding-groups"])
def test_export_import_round_trip_is_exact(case):
    layer, params, _ = make(case, seed=3)
    exported = ymlx.export_params(layer)  # the module's function takes a single convolution too
    assert list(exported) == list(layer.spec.param_shapes)
    assert layer.weight.shape == ymlx.kernel_from_core(layer.spec, exported["kernel"]).shape  # MLX's layout
    for name, value in params.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    fresh = ymlx.import_params(build(case), {k: v.astype(np.float64) for k, v in exported.items()})
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(fresh.parameters()))
    for name, value in fresh.export_params().items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: p.pop("alpha"), ValueError, r"^parameters do not fit the layer: missing alpha \(shape \(\)\)$"),
        (lambda p: p.update({"gamma": np.zeros(2, np.float32)}), ValueError, "unexpected gamma"),
        # MLX's own layout given where the core's is expected
        (
            lambda p: p.update({"kernel": np.zeros((6, 3, 2), np.float32)}),
            ValueError,
            r"kernel has shape \(6, 3, 2\), expected \(4, 3, 3\)",
        ),
        (lambda p: p.update({"bias": np.zeros(6, np.int32)}), TypeError, r"bias \(int32\)"),
    ],
    ids=["missing", "unexpected", "shape", "dtype"],
)
def test_import_rejects_bad_parameters_and_changes_nothing(mutate, error, match):
    layer, params, _ = make("t1d-stride-output-padding-groups", seed=4)
    before = layer.export_params()
    bad = dict(params)
    mutate(bad)
    with pytest.raises(error, match=match):
        ymlx.import_params(layer, bad)
    after = layer.export_params()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a rejected import changed the layer"


# ------------------------------------------------------------ MLX's conventions


@pytest.mark.parametrize("suffix", ["safetensors", "npz"])
@pytest.mark.parametrize("case", ["2d-per-dim-no-bias-constant-alpha", "t2d-per-dim-spherical-learnable-eps"])
def test_save_weights_load_weights_round_trip(tmp_path, case, suffix):
    layer, _, x = make(case, seed=6)
    path = str(tmp_path / f"weights.{suffix}")
    layer.save_weights(path)
    fresh = build(case)
    fresh.load_weights(path)  # strict: every parameter and no other
    assert [k for k, _ in tree_flatten(fresh.parameters())] == [k for k, _ in tree_flatten(layer.parameters())]
    np.testing.assert_array_equal(np.array(fresh(mx.array(last(x)))), np.array(layer(mx.array(last(x)))))


def test_load_weights_refuses_a_file_of_another_layer(tmp_path):
    path = str(tmp_path / "layer.safetensors")
    ymlx.YatConv2d(2, 3, 3, alpha=2.0).save_weights(path)
    with pytest.raises(ValueError, match="alpha"):
        ymlx.YatConv2d(2, 3, 3).load_weights(path)


@pytest.mark.parametrize("case", ["2d-valid-spherical-constant-bias-groups", "t2d-per-dim-spherical-learnable-eps"])
def test_mx_compile_of_a_layer_follows_its_weights_and_gradients(case):
    layer, _, x_first = make(case, seed=7)
    x = mx.array(last(x_first))
    np.testing.assert_allclose(np.array(mx.compile(layer)(x)), np.array(layer(x)), rtol=1e-6, atol=1e-6)
    # Declared as an input, the state is read at each call: new weights need no recompilation.
    forward = mx.compile(lambda inputs: layer(inputs), inputs=layer.state)
    before = np.array(forward(x))
    layer.import_params(random_params(layer.spec, 8))
    after = np.array(forward(x))
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, np.array(layer(x)), rtol=1e-6, atol=1e-6)

    def loss(model: Any, inputs: mx.array) -> mx.array:
        return mx.mean(model(inputs) ** 2)

    value_and_grad = mlx_nn.value_and_grad(layer, loss)
    eager_loss, eager_grads = value_and_grad(layer, x)
    compiled_loss, compiled_grads = mx.compile(lambda inputs: value_and_grad(layer, inputs), inputs=layer.state)(x)
    np.testing.assert_allclose(compiled_loss.item(), eager_loss.item(), rtol=1e-6)
    for (name, g), (_, e) in zip(tree_flatten(compiled_grads), tree_flatten(eager_grads)):
        np.testing.assert_allclose(np.array(g), np.array(e), rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize(
    "case",
    ["1d-same-even-kernel-dilation-learnable-eps", "2d-defaults", "3d-groups", "t2d-per-dim-spherical-learnable-eps"],
)
def test_mx_grad_reaches_every_parameter_and_equals_the_core_vjp(case):
    layer, params, x_first = make(case, seed=10)
    spec = layer.spec
    g_first = np.random.default_rng(11).normal(size=core_reference(spec, params, x_first).shape)
    x, g = mx.array(last(x_first)), mx.array(last(g_first).astype(np.float32))

    def loss(model: Any, inputs: mx.array) -> mx.array:
        return mx.sum(model(inputs) * g)

    grads = dict(tree_flatten(mlx_nn.value_and_grad(layer, loss)(layer, x)[1]))
    assert sorted(grads) == sorted("weight" if n == "kernel" else n for n in spec.param_shapes)
    vjp = yat_conv_transpose_vjp if spec.kind == "yat_conv_transpose" else yat_conv_vjp
    kwargs = core_kwargs(spec, params)
    if spec.learnable_epsilon:  # the core differentiates an array epsilon; the chain rule to the raw value below
        kwargs["epsilon"] = np.asarray(kwargs["epsilon"])
    ref = vjp(x_first.astype(np.float64), params["kernel"].astype(np.float64), g_first, **kwargs)
    expected = {"weight": ymlx.kernel_from_core(spec, ref.w), "bias": ref.bias, "alpha": ref.alpha}
    if spec.learnable_epsilon:
        raw = params["epsilon_raw"].astype(np.float64)
        expected["epsilon_raw"] = ref.epsilon / (1.0 + np.exp(-raw))  # d softplus = sigmoid
    for name, value in grads.items():
        got = np.array(value)
        assert np.all(np.isfinite(got)) and np.any(got != 0), name
        assert_close_to_core(got, np.asarray(expected[name]), rtol=1e-4)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make_layer", "error", "match"),
    [
        (
            lambda: ymlx.YatConv2d(4.0, 6, 3),
            TypeError,
            r"^mlx YatConv2d: in_channels must be a positive integer, got 4\.0$",
        ),
        (
            lambda: ymlx.YatConvTranspose1d(4, True, 3),
            TypeError,
            "^mlx YatConvTranspose1d: out_channels must be a positive integer, got True$",
        ),
        (lambda: ymlx.YatConv2d(4, 6, 3, groups=4), ValueError, "groups=4 must divide 4 and 6 channels"),
        (lambda: ymlx.YatConvTranspose2d(3, 4, 3, groups=2), ValueError, "groups=2 must divide 3 and 4 channels"),
        (lambda: ymlx.YatConv2d(4, 6, (3, 3, 3)), ValueError, "kernel_size must be an int or a tuple of 2 ints"),
        (lambda: ymlx.YatConvTranspose2d(4, 6, 3, padding="same"), ValueError, "got 'same'"),
        (lambda: ymlx.YatConv2d(3, 4, 3, stride=2, padding="same"), ValueError, "padding='same' needs stride 1"),
        (lambda: ymlx.YatConv1d(4, 6, 3, epsilon=0.0), ValueError, "epsilon must be a finite number > 0"),
        (lambda: ymlx.YatConv1d(4, 6, 3, bias="yes"), ValueError, "bias must be True"),
    ],
    ids=[
        "float-channels",
        "bool-channels",
        "groups-out",
        "groups-in",
        "kernel-rank",
        "transpose-same",
        "same-strided",
        "eps",
        "bias",
    ],
)
def test_bad_arguments_get_a_clear_error(make_layer, error, match):
    with pytest.raises(error, match=match):
        make_layer()


@pytest.mark.parametrize(
    ("layer", "x_shape", "match"),
    [
        (ymlx.YatConv2d(3, 4, 3), (8, 8, 3), r"YatConv2d takes channels-last input of shape \(N, \*spatial, C\)"),
        (ymlx.YatConvTranspose1d(3, 4, 3), (1, 2, 3, 8), r"i\.e\. 3 dimensions; got shape \(1, 2, 3, 8\)"),
        # channels first by mistake
        (ymlx.YatConv2d(3, 4, 3), (2, 3, 8, 8), r"takes 3 input channels on the last axis .*got shape \(2, 3, 8, 8\)"),
        (ymlx.YatConv2d(3, 4, 5), (2, 4, 4, 3), "larger than the padded input"),
    ],
    ids=["rank-low", "rank-high", "channels-first", "kernel-too-large"],
)
def test_bad_input_gets_a_clear_error(layer, x_shape, match):
    with pytest.raises(ValueError, match=match):
        layer(mx.zeros(x_shape))
