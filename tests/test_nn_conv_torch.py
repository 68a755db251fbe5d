"""yat_core.nn.torch: the Yat convolutions (1-3-D, direct and transposed) against the core.

The reference for every number is the core's array-API unfold in NumPy float64
(:func:`yat_core.conv.yat_conv` / :func:`~yat_core.conv.yat_conv_transpose`); the
layers run in float32 on PyTorch's own convolution (``native=True``).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from yat_core.conv import yat_conv, yat_conv_transpose  # noqa: E402
from yat_core.mlp import init_layer_numpy  # noqa: E402
from yat_core.nn import torch as ynn  # noqa: E402
from yat_core.nn.options import conv_layer_spec  # noqa: E402
from yat_core.product import softplus, softplus_inverse  # noqa: E402
from yat_core.spec import LayerSpec, cnn_spec  # noqa: E402

#: name -> (layer class, positional args, keyword args, input shape (N, C, *spatial)).
CASES: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any], tuple[int, ...]]] = {
    "1d-stride-padding-groups": (ynn.YatConv1d, (4, 6, 3), {"stride": 2, "padding": 1, "groups": 2}, (2, 4, 11)),
    "1d-same-even-kernel-dilation-learnable-eps": (
        ynn.YatConv1d,
        (3, 5, 4),
        {"padding": "same", "dilation": 3, "learnable_epsilon": True, "epsilon": 0.1},  # pads 4 left, 5 right
        (2, 3, 12),
    ),
    "2d-defaults": (ynn.YatConv2d, (3, 4, 3), {}, (2, 3, 8, 8)),
    "2d-per-dim-no-bias-constant-alpha": (
        ynn.YatConv2d,
        (2, 4, (3, 2)),
        {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "bias": False, "alpha": 2.0},
        (2, 2, 9, 8),
    ),
    "2d-valid-spherical-constant-bias-groups": (
        ynn.YatConv2d,
        (3, 6, 2),
        {"padding": "valid", "groups": 3, "spherical": True, "bias": 0.5},
        (2, 3, 5, 6),
    ),
    "2d-same-no-alpha": (ynn.YatConv2d, (2, 3, 3), {"padding": "same", "alpha": False}, (1, 2, 6, 5)),
    "3d-stride-padding-groups-learnable-eps": (
        ynn.YatConv3d,
        (4, 4, (2, 3, 2)),
        {"stride": 2, "padding": 1, "groups": 2, "learnable_epsilon": True},
        (2, 4, 5, 6, 5),
    ),
    "t1d-stride-output-padding-groups": (
        ynn.YatConvTranspose1d,
        (4, 6, 3),
        {"stride": 2, "output_padding": 1, "groups": 2},
        (2, 4, 6),
    ),
    "t2d-per-dim-spherical-learnable-eps": (
        ynn.YatConvTranspose2d,
        (3, 4, (3, 2)),
        {"stride": (2, 3), "padding": (1, 0), "output_padding": (1, 2), "spherical": True, "learnable_epsilon": True},
        (2, 3, 4, 3),
    ),
    "t2d-dilation-no-bias-no-alpha": (
        ynn.YatConvTranspose2d,
        (2, 3, 3),
        {"dilation": 2, "padding": 1, "bias": False, "alpha": False, "epsilon": 0.01},
        (2, 2, 4, 4),
    ),
    "t3d-stride-padding-groups": (
        ynn.YatConvTranspose3d,
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


def core_reference(spec: LayerSpec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The core's unfold in NumPy float64 with ``params`` (core names and layout)."""
    p = {name: value.astype(np.float64) for name, value in params.items()}
    conv = yat_conv_transpose if spec.kind == "yat_conv_transpose" else yat_conv
    return conv(
        x.astype(np.float64),
        p["kernel"],
        **spec.conv_options,
        bias=p.get("bias", spec.bias),
        alpha=p.get("alpha", spec.alpha),
        epsilon=softplus(p["epsilon_raw"]) if spec.learnable_epsilon else spec.epsilon,
        spherical=spec.spherical,
    )


def assert_close_to_core(out: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    """``|out - ref| <= rtol * max(1, |ref|)`` everywhere: float32 rounding against float64."""
    assert out.shape == ref.shape
    err = np.max(np.abs(out.astype(np.float64) - ref) / np.maximum(1.0, np.abs(ref)))
    assert err <= rtol, f"max scaled error {err:.3g} > {rtol}"


def make(case: str, seed: int = 0, **factory: Any) -> tuple[Any, dict[str, np.ndarray], torch.Tensor]:
    cls, args, kwargs, x_shape = CASES[case]
    layer = cls(*args, **kwargs, **factory)
    params = random_params(layer.spec, seed)
    layer.import_params(params)
    x = torch.from_numpy(np.random.default_rng(seed + 100).normal(size=x_shape).astype(np.float32))
    return layer, params, x


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("case", CASES)
def test_layer_equals_the_core_unfold_in_float64(case):
    layer, params, x = make(case)
    with torch.no_grad():
        out = layer(x).numpy()
    assert_close_to_core(out, core_reference(layer.spec, params, x.numpy()))


@pytest.mark.parametrize("case", ["1d-stride-padding-groups", "t2d-per-dim-spherical-learnable-eps"])
def test_unbatched_input_as_torch_convolutions_take_it(case):
    layer, _, x = make(case)
    with torch.no_grad():
        torch.testing.assert_close(layer(x[0]), layer(x)[0], rtol=1e-6, atol=1e-6)


def test_parameters_follow_torch_layout_and_the_core_spec():
    conv = ynn.YatConv2d(4, 6, (3, 2), groups=2, learnable_epsilon=True)
    assert [(n, tuple(p.shape)) for n, p in conv.named_parameters()] == [
        ("weight", (6, 2, 3, 2)),
        ("bias", (6,)),
        ("alpha", ()),
        ("epsilon_raw", ()),
    ]
    assert tuple(conv.weight.shape) == tuple(torch.nn.Conv2d(4, 6, (3, 2), groups=2).weight.shape)
    transposed = ynn.YatConvTranspose3d(4, 6, 2, groups=2, bias=False, alpha=1.5)
    assert [(n, tuple(p.shape)) for n, p in transposed.named_parameters()] == [("weight", (4, 3, 2, 2, 2))]
    assert transposed.weight.shape == torch.nn.ConvTranspose3d(4, 6, 2, groups=2).weight.shape
    assert transposed.bias is None and transposed.alpha is None and transposed.epsilon_raw is None
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.groups) == (
        4,
        6,
        (3, 2),
        (1, 1),
        2,
    )
    assert transposed.transposed and not conv.transposed


def test_fresh_layer_draws_the_core_distributions():
    torch.manual_seed(0)
    layer = ynn.YatConv2d(16, 32, 3, groups=2, learnable_epsilon=True, epsilon=0.1)
    fan_in, fan_out = layer.spec.fans  # per group: 8*9 and 16*9
    with torch.no_grad():
        assert float(layer.weight.std()) == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
        assert float(layer.bias.abs().max()) <= 1 / math.sqrt(fan_in)
    assert layer.alpha.item() == 1.0
    assert layer.epsilon_raw.item() == pytest.approx(softplus_inverse(0.1), rel=1e-6)


@pytest.mark.parametrize("spec", [s for s in cnn_spec().layers if s.kind == "yat_conv"], ids=["conv1", "conv2"])
def test_from_spec_with_init_layer_numpy_is_the_core_layer(spec):
    layer = ynn.conv_from_spec(spec)
    assert type(layer) is ynn.YatConv2d and ynn.YatConv2d.from_spec(spec).spec == layer.spec
    values = {k: v.astype(np.float32) for k, v in init_layer_numpy(spec, np.random.default_rng(0)).items()}
    layer.import_params(values)
    for name, value in layer.export_params().items():
        np.testing.assert_array_equal(value, values[name], err_msg=name)
    x = np.random.default_rng(1).uniform(size=(2, spec.in_features, 12, 12)).astype(np.float32)
    with torch.no_grad():
        assert_close_to_core(layer(torch.from_numpy(x)).numpy(), core_reference(spec, values, x))


def test_from_spec_refuses_another_kind_or_rank():
    spec = conv_layer_spec(2, 4, 3, n_spatial=2, stride=2, output_padding=1)
    assert type(ynn.conv_from_spec(spec)) is ynn.YatConvTranspose2d
    with pytest.raises(ValueError, match=r"YatConv2d is built from a 'yat_conv' spec with 2 spatial"):
        ynn.YatConv2d.from_spec(spec)
    with pytest.raises(
        ValueError, match=r"YatConvTranspose1d .* got kind 'yat_conv_transpose' with kernel_size \(3, 3\)"
    ):
        ynn.YatConvTranspose1d.from_spec(spec)
    with pytest.raises(ValueError, match="not 'yat'"):
        ynn.conv_from_spec(LayerSpec("yat", 3, 2))


def test_repr_reads_like_torch():
    assert repr(ynn.YatConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, learnable_epsilon=True)) == (
        "YatConvTranspose2d(8, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), output_padding=(1, 1), "
        "bias=True, alpha=True, epsilon=1e-05, learnable_epsilon=True, spherical=False)"
    )


# ------------------------------------------------------------------ interchange


@pytest.mark.parametrize(
    "case", ["2d-defaults", "3d-stride-padding-groups-learnable-eps", "t1d-stride-output-padding-groups"]
)
def test_export_import_round_trip_is_exact(case):
    layer, params, _ = make(case, seed=3)
    exported = ynn.export_params(layer)  # the module's function takes a single convolution too
    assert list(exported) == list(layer.spec.param_shapes)
    assert tuple(layer.weight.shape) == exported["kernel"].shape  # torch keeps the core's layout
    for name, value in params.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    cls, args, kwargs, _ = CASES[case]
    fresh = ynn.import_params(cls(*args, **kwargs), {k: v.astype(np.float64) for k, v in exported.items()})
    assert all(p.dtype == torch.float32 for p in fresh.parameters())
    for name, value in fresh.export_params().items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: p.pop("alpha"), ValueError, r"^parameters do not fit the layer: missing alpha \(shape \(\)\)$"),
        (lambda p: p.update({"gamma": np.zeros(2, np.float32)}), ValueError, "unexpected gamma"),
        # a direct convolution's layout given to the transposed one
        (
            lambda p: p.update({"kernel": np.zeros((6, 2, 3), np.float32)}),
            ValueError,
            r"kernel has shape \(6, 2, 3\), expected \(4, 3, 3\)",
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
        ynn.import_params(layer, bad)
    after = layer.export_params()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a rejected import changed the layer"


# -------------------------------------------------------- PyTorch's conventions


@pytest.mark.parametrize("case", ["2d-per-dim-no-bias-constant-alpha", "t2d-per-dim-spherical-learnable-eps"])
def test_state_dict_round_trip_through_torch_save(case):
    layer, _, x = make(case, seed=6)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    cls, args, kwargs, _ = CASES[case]
    fresh = cls(*args, **kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # strict: every key and no other
    assert (
        list(fresh.state_dict())
        == list(layer.state_dict())
        == ["weight" if n == "kernel" else n for n in layer.spec.param_shapes]
    )
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="Missing key"):
        cls(*args, **kwargs).load_state_dict({})


@pytest.mark.parametrize("case", ["2d-valid-spherical-constant-bias-groups", "t2d-per-dim-spherical-learnable-eps"])
def test_torch_compile_fullgraph_gives_eager_outputs_and_gradients(case):
    # aot_eager traces what inductor traces (Dynamo, then AOT autograd) without generating C++.
    layer, _, x = make(case, seed=8)
    eager = layer(x)
    eager.square().sum().backward()
    eager_grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    layer.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    out = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_torch_export_of_a_layer():
    layer, _, x = make("2d-valid-spherical-constant-bias-groups", seed=9)
    program = torch.export.export(layer, (x,))
    assert list(program.graph_signature.parameters) == ["weight", "alpha"]
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(buffer).module()(x), layer(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("cls", "args", "kwargs", "x_shape"),
    [
        (ynn.YatConv1d, (4, 2, 3), {"stride": 2, "padding": 1, "groups": 2, "learnable_epsilon": True}, (2, 4, 5)),
        (ynn.YatConv2d, (2, 2, 2), {"padding": "same", "dilation": 2, "spherical": True, "bias": 0.5}, (1, 2, 3, 3)),
        (
            ynn.YatConvTranspose1d,
            (4, 2, 2),
            {"stride": 2, "output_padding": 1, "groups": 2, "learnable_epsilon": True},
            (2, 4, 3),
        ),
    ],
    ids=["conv1d", "conv2d-same-spherical", "transpose1d"],
)
def test_gradcheck_in_float64(cls, args, kwargs, x_shape):
    torch.manual_seed(2)
    layer = cls(*args, **kwargs, dtype=torch.float64)
    names = [name for name, _ in layer.named_parameters()]
    x = torch.randn(*x_shape, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())

    def fn(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["3d-stride-padding-groups-learnable-eps", "t2d-per-dim-spherical-learnable-eps"])
def test_gradients_reach_every_parameter_and_the_input(case):
    layer, _, x = make(case, seed=10)
    x.requires_grad_(True)
    layer(x).square().mean().backward()
    assert sorted(name for name, _ in layer.named_parameters()) == sorted(
        "weight" if n == "kernel" else n for n in layer.spec.param_shapes
    )
    for name, p in [*layer.named_parameters(), ("input", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: ynn.YatConv2d(4.0, 6, 3),
            TypeError,
            r"^torch YatConv2d: in_channels must be a positive integer, got 4\.0$",
        ),
        (
            lambda: ynn.YatConvTranspose1d(4, True, 3),
            TypeError,
            "^torch YatConvTranspose1d: out_channels must be a positive integer, got True$",
        ),
        (lambda: ynn.YatConv2d(4, 6, 3, groups=4), ValueError, "groups=4 must divide 4 and 6 channels"),
        (lambda: ynn.YatConvTranspose2d(3, 4, 3, groups=2), ValueError, "groups=2 must divide 3 and 4 channels"),
        (lambda: ynn.YatConv2d(4, 6, (3, 3, 3)), ValueError, "kernel_size must be an int or a tuple of 2 ints"),
        (lambda: ynn.YatConvTranspose2d(4, 6, 3, padding="same"), ValueError, "got 'same'"),
        (lambda: ynn.YatConv2d(3, 4, 3, stride=2, padding="same"), ValueError, "padding='same' needs stride 1"),
        (lambda: ynn.YatConv2d(4, 6, 3, padding="full"), ValueError, "padding must be an int, a tuple of ints"),
        (lambda: ynn.YatConv1d(4, 6, 3, padding_mode="reflect"), ValueError, "padding_mode must be 'zeros'"),
        (lambda: ynn.YatConv1d(4, 6, 3, epsilon=0.0), ValueError, "epsilon must be a finite number > 0"),
        (lambda: ynn.YatConv1d(4, 6, 3, alpha="yes"), ValueError, "alpha must be True"),
    ],
    ids=[
        "float-channels",
        "bool-channels",
        "groups-out",
        "groups-in",
        "kernel-rank",
        "transpose-same",
        "same-strided",
        "bad-padding",
        "padding-mode",
        "epsilon",
        "alpha",
    ],
)
def test_bad_arguments_get_a_clear_error(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("layer", "x_shape", "match"),
    [
        (ynn.YatConv2d(3, 4, 3), (3, 8), r"YatConv2d takes input of shape \(N, C, \*spatial\) or \(C, \*spatial\)"),
        (ynn.YatConvTranspose1d(3, 4, 3), (1, 2, 3, 8), r"got shape \(1, 2, 3, 8\)"),
        (ynn.YatConv2d(3, 4, 3), (2, 5, 8, 8), "x has 5 channels"),
        (ynn.YatConv2d(3, 4, 5), (2, 3, 4, 4), "larger than the padded input"),
    ],
    ids=["rank-low", "rank-high", "channels", "kernel-too-large"],
)
def test_bad_input_gets_a_clear_error(layer, x_shape, match):
    with pytest.raises(ValueError, match=match):
        layer(torch.zeros(x_shape))
