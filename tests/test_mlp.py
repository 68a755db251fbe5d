"""Tests for yat_core.mlp: layer specs, parameter counts, initialisation, forward and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import namespace_for, to_numpy

from yat_core.losses import softmax_cross_entropy
from yat_core.mlp import (
    LayerSpec,
    MLPSpec,
    count_params,
    flatten_images,
    init_mlp,
    init_mlp_numpy,
    layer_inputs,
    mlp_forward,
    mlp_loss,
    mlp_value_and_grad,
    relu_spec,
    seed_spec,
)
from yat_core.product import softplus_inverse

# ---------------------------------------------------------------- counts and shapes


def test_seed_model_has_235148_parameters():
    assert count_params(seed_spec()) == 235148 == (784 * 256 + 256 + 1) + (256 * 128 + 128 + 1) + (128 * 10 + 10)


def test_relu_baseline_has_two_parameters_fewer():
    assert count_params(relu_spec()) == 235146
    assert [layer.activation for layer in relu_spec().layers] == ["relu", "relu", None]


def test_seed_spec_parameter_names_and_shapes():
    assert seed_spec().param_shapes == {
        "0.kernel": (256, 784),
        "0.bias": (256,),
        "0.alpha": (),
        "1.kernel": (128, 256),
        "1.bias": (128,),
        "1.alpha": (),
        "2.kernel": (10, 128),
        "2.bias": (10,),
    }


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, 200961, id="default"),
        pytest.param({"alpha": None}, 200960, id="no-alpha"),
        pytest.param({"alpha": 2.0**0.5, "bias": None}, 200704, id="const-alpha-no-bias"),
        pytest.param({"bias": 0.5, "learnable_epsilon": True}, 200706, id="const-bias-learnable-eps"),
    ],
)
def test_layer_parameter_count_follows_options(options, expected):
    assert LayerSpec("yat", 784, 256, **options).n_params == expected


def test_seed_spec_options_apply_to_both_yat_layers():
    spec = seed_spec(alpha=None, learnable_epsilon=True, spherical=True)
    assert [(lay.alpha, lay.learnable_epsilon, lay.spherical) for lay in spec.layers[:2]] == [(None, True, True)] * 2
    assert spec.layers[2].kind == "linear" and not spec.layers[2].spherical
    assert count_params(spec) == 235148 - 2 + 2  # alpha dropped, epsilon_raw added, per yat layer


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"kind": "deconv"}, r"unknown layer kind 'deconv'", id="bad-kind"),
        pytest.param({"kind": "conv"}, r"a conv layer needs a kernel_size", id="conv-without-kernel"),
        pytest.param({"kind": "linear", "kernel_size": (3,)}, r"apply to convolutions and pooling", id="linear-kernel"),
        pytest.param({"kind": "max_pool", "kernel_size": (2,)}, r"pooling keeps the channels", id="pool-channels"),
        pytest.param(
            {"kind": "yat_conv", "kernel_size": (3,), "groups": 2},
            r"groups=2 must divide 4 and 3 channels",
            id="conv-groups",
        ),
        pytest.param({"in_features": 0}, r"layer sizes must be >= 1, got 0 -> 3", id="zero-in"),
        pytest.param({"out_features": -1}, r"layer sizes must be >= 1", id="negative-out"),
        pytest.param({"bias": "yes"}, r"bias must be 'learnable', a number or None, got 'yes'", id="bad-bias"),
        pytest.param({"alpha": "auto"}, r"alpha must be 'learnable', a number or None", id="bad-alpha"),
        pytest.param({"epsilon": 0.0}, r"epsilon must be a finite number > 0", id="epsilon-0"),
        pytest.param({"epsilon": -1e-5}, r"epsilon must be a finite number > 0", id="epsilon-negative"),
        pytest.param({"epsilon": math.nan}, r"epsilon must be a finite number > 0", id="epsilon-nan"),
        pytest.param({"activation": "relu"}, r"a yat layer takes no activation", id="yat-with-relu"),
        pytest.param({"activation": "tanh"}, r"activation must be None or 'relu', got 'tanh'", id="bad-activation"),
        pytest.param({"kind": "linear", "alpha": 2.0}, r"apply to Yat layers only", id="linear-with-alpha"),
        pytest.param({"kind": "linear", "spherical": True}, r"apply to Yat layers only", id="linear-spherical"),
        pytest.param(
            {"kind": "linear", "learnable_epsilon": True}, r"apply to Yat layers only", id="linear-learnable-eps"
        ),
    ],
)
def test_layer_spec_rejects_bad_options(kwargs, match):
    args = {"kind": "yat", "in_features": 4, "out_features": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        LayerSpec(**args)


@pytest.mark.parametrize("option", ["bias", "alpha"])
def test_layer_spec_rejects_bool_options(option):
    # A bool is not "a number": bias=True would otherwise be accepted as the constant 1
    # and crash later inside yat_product ("'bool' object has no attribute 'shape'").
    with pytest.raises((ValueError, TypeError), match=option):
        LayerSpec("yat", 4, 3, **{option: True})


def test_linear_layer_accepts_relu_and_no_alpha():
    layer = LayerSpec("linear", 4, 3, activation="relu", alpha=None)
    assert layer.param_shapes == {"kernel": (3, 4), "bias": (3,)}


def test_mlp_spec_rejects_sizes_that_do_not_chain():
    with pytest.raises(
        ValueError, match=r"layer 1 \(linear\): a linear layer takes \(4,\) features or \(tokens, 4\), got \(5,\)"
    ):
        MLPSpec((LayerSpec("yat", 6, 5), LayerSpec("linear", 4, 3)))


def test_model_spec_tracks_shapes_through_convolutions_and_pooling():
    from yat_core.spec import cnn_spec

    assert cnn_spec().shapes() == [
        (1, 28, 28),
        (32, 26, 26),
        (32, 13, 13),
        (64, 11, 11),
        (64, 5, 5),
        (1600,),
        (128,),
        (10,),
    ]
    flat = LayerSpec("flatten", 64, 1600)
    with pytest.raises(ValueError, match=r"layer 1 \(flatten\): flatten of \(64, 6, 6\) gives 2304 features"):
        MLPSpec(
            (LayerSpec("max_pool", 64, 64, kernel_size=(2, 2)), flat, LayerSpec("linear", 1600, 10)),
            input_shape=(64, 12, 12),
        )
    with pytest.raises(ValueError, match=r"must end in features"):
        MLPSpec((LayerSpec("yat_conv", 1, 4, kernel_size=(3,)),), input_shape=(1, 8))


def test_mlp_spec_needs_a_layer():
    with pytest.raises(ValueError, match="at least one layer"):
        MLPSpec(())


# ---------------------------------------------------------------- initialisation


def test_init_is_deterministic_per_seed_and_differs_between_seeds(make_spec):
    spec = make_spec(relu_layer=True, learnable_epsilon=True)
    a, b, c = init_mlp_numpy(spec, 0), init_mlp_numpy(spec, 0), init_mlp_numpy(spec, 1)
    assert list(a) == list(spec.param_shapes)
    for name in a:
        assert a[name].dtype == np.float32 and a[name].shape == spec.param_shapes[name], name
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"seed 0 twice: {name} differs")
    for name in ("0.kernel", "0.bias", "1.kernel", "2.kernel", "3.bias"):
        assert not np.array_equal(a[name], c[name]), f"seeds 0 and 1 give the same {name}"


def test_init_float32_is_the_float64_draw_rounded(make_spec):
    spec = make_spec(relu_layer=True)
    f64 = init_mlp_numpy(spec, 7, np.float64)
    f32 = init_mlp_numpy(spec, 7, np.float32)
    for name in f64:
        assert f64[name].dtype == np.float64
        np.testing.assert_array_equal(f32[name], f64[name].astype(np.float32), err_msg=name)
    assert not np.array_equal(f64["0.kernel"], f32["0.kernel"].astype(np.float64)), "float64 draw has float32 bits"


def test_init_statistics_of_the_seed_model():
    params = init_mlp_numpy(seed_spec(), 0, np.float64)
    for name, (fan_in, fan_out) in {"0.kernel": (784, 256), "1.kernel": (256, 128)}.items():
        k = params[name]
        target = math.sqrt(2.0 / (fan_in + fan_out))
        assert abs(k.std() / target - 1) < 0.05, f"{name}: std {k.std():.5f}, Xavier-normal {target:.5f}"
        assert abs(k.mean()) < 0.05 * target, f"{name}: mean {k.mean()}"
    for name, fan_in in {"0.bias": 784, "1.bias": 256, "2.bias": 128, "2.kernel": 128}.items():
        bound = 1.0 / math.sqrt(fan_in)
        v = params[name]
        assert np.all(np.abs(v) <= bound), f"{name}: max |v| {np.abs(v).max()} > 1/sqrt({fan_in})"
        assert np.abs(v).max() > 0.8 * bound, f"{name}: not spread over ±1/sqrt({fan_in})"
        assert abs(v.std() / (bound / math.sqrt(3)) - 1) < 0.2, f"{name}: std {v.std()} is not uniform's"
    assert float(params["0.alpha"]) == 1.0 and float(params["1.alpha"]) == 1.0
    assert params["0.alpha"].shape == ()


def test_init_learnable_epsilon_raw_is_softplus_inverse():
    spec = seed_spec(learnable_epsilon=True, epsilon=1e-3)
    params = init_mlp_numpy(spec, 0, np.float64)
    assert float(params["0.epsilon_raw"]) == softplus_inverse(1e-3)
    assert float(params["1.epsilon_raw"]) == softplus_inverse(1e-3)


def test_init_mlp_is_bit_identical_on_every_backend(backend_name):
    spec = seed_spec()
    xp = namespace_for(backend_name)
    ref = init_mlp_numpy(spec, 3)
    got = init_mlp(spec, 3, xp=xp)
    assert list(got) == list(ref)
    for name, value in got.items():
        host = to_numpy(value)
        assert host.dtype == np.float32, f"{backend_name}: {name} has dtype {value.dtype}"
        assert np.array_equal(host, ref[name]), f"{backend_name}: init_mlp({name}) differs from init_mlp_numpy"


def test_init_mlp_accepts_framework_dtypes_and_device():
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as torch_xp

    spec = seed_spec()
    params = init_mlp(spec, 0, xp=torch_xp, dtype=torch.float64, device="cpu")
    assert params["0.kernel"].dtype == torch.float64 and params["0.kernel"].device.type == "cpu"
    np.testing.assert_array_equal(params["0.kernel"].numpy(), init_mlp_numpy(spec, 0, np.float64)["0.kernel"])


def test_init_mlp_rejects_integer_dtype():
    with pytest.raises(TypeError, match="parameters must be floating point, got dtype"):
        init_mlp(seed_spec(), 0, dtype=np.int32)


# ---------------------------------------------------------------- forward


def test_forward_shapes_and_layer_inputs(make_spec):
    spec = make_spec(relu_layer=True)
    params = init_mlp(spec, 0, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(7, 6))
    acts = layer_inputs(params, x, spec)
    assert [a.shape for a in acts] == [(7, 6), (7, 5), (7, 4), (7, 4), (7, 3)]
    assert np.all(acts[1] >= 0) and np.all(acts[3] >= 0), "yat outputs and relu outputs are non-negative"
    np.testing.assert_array_equal(mlp_forward(params, x, spec), acts[-1])
    # the relu layer by hand
    pre = acts[2] @ params["2.kernel"].T + params["2.bias"]
    np.testing.assert_allclose(acts[3], np.maximum(pre, 0), rtol=1e-14)


def test_seed_model_forward_on_zeros():
    spec = seed_spec()
    logits = mlp_forward(init_mlp(spec, 0), np.zeros((2, 784), np.float32), spec)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("shape", [(3, 5), (3,), (2, 3, 6)], ids=["too-few-features", "1d", "3d"])
def test_forward_rejects_wrong_input_shape(make_spec, shape):
    spec = make_spec()
    params = init_mlp(spec, 0, dtype=np.float64)
    with pytest.raises(ValueError, match=r"the model expects inputs of shape \(n, 6\), got " + re_shape(shape)):
        mlp_forward(params, np.zeros(shape), spec)
    with pytest.raises(ValueError, match=r"the model expects inputs of shape \(n, 6\)"):
        mlp_value_and_grad(params, np.zeros(shape), np.zeros(shape[0], np.int64), spec)


def re_shape(shape) -> str:
    return r"\(" + r", ".join(str(s) for s in shape) + (r",\)" if len(shape) == 1 else r"\)")


def test_flatten_images_scales_to_unit_interval():
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    flat = flatten_images(images, np.float32)
    assert flat.dtype == np.float32 and flat.shape == (1, 4)
    np.testing.assert_allclose(flat, [[0.0, 1.0, 0.2, 0.4]], rtol=1e-7)


def test_mlp_loss_on_uint8_images_equals_loss_on_scaled_floats():
    spec = seed_spec()
    params = init_mlp(spec, 0, dtype=np.float64)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5)
    loss = mlp_loss(params, images, labels, spec)
    x = images.reshape(5, 784).astype(np.float64) / 255.0
    assert float(loss) == pytest.approx(float(softmax_cross_entropy(mlp_forward(params, x, spec), labels)), rel=1e-14)
    loss2, grads = mlp_value_and_grad(params, images, labels, spec)
    assert float(loss2) == pytest.approx(float(loss), rel=1e-14)
    assert list(grads) == list(params) and all(grads[k].shape == params[k].shape for k in params)


# ---------------------------------------------------------------- gradients vs finite differences

GRAD_SPECS = {
    "default+relu": {"relu_layer": True},
    "learnable-eps+spherical": {"learnable_epsilon": True, "spherical": True, "epsilon": 0.05},
    "const-alpha-const-bias+learnable-eps": {
        "alpha": 1.5,
        "bias": 0.2,
        "learnable_epsilon": True,
        "epsilon": 0.02,
        "relu_layer": True,
    },
    "no-alpha-no-bias": {"alpha": None, "bias": None, "epsilon": 0.1},
    "spherical-const-alpha": {"alpha": 2.0**0.5, "spherical": True, "relu_layer": True},
}


@pytest.mark.parametrize("options", list(GRAD_SPECS.values()), ids=list(GRAD_SPECS))
def test_value_and_grad_matches_finite_differences(make_spec, options):
    spec = make_spec(**options)
    params = init_mlp(spec, 1, dtype=np.float64)
    if "learnable_epsilon" in options:  # move epsilon off its initial value for a sharper check
        params = {k: (np.asarray(v + 0.3) if k.endswith("epsilon_raw") else v) for k, v in params.items()}
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(8, 6))
    labels = rng.integers(0, 3, 8)
    loss, grads = mlp_value_and_grad(params, x, labels, spec)
    assert float(loss) == pytest.approx(float(mlp_loss(params, x, labels, spec)), rel=1e-14)
    assert list(grads) == list(params)
    h = 1e-6
    for name, value in params.items():
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[idx] += h
            minus[idx] -= h
            fd[idx] = (
                float(mlp_loss({**params, name: plus}, x, labels, spec))
                - float(mlp_loss({**params, name: minus}, x, labels, spec))
            ) / (2 * h)
        np.testing.assert_allclose(
            grads[name],
            fd,
            rtol=1e-5,
            atol=1e-8,
            err_msg=f"numpy float64 analytic gradient of {name}, spec options {options}",
        )
