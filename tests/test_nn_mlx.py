"""yat_core.nn.mlx: the MLX layer and model against the core.

The reference for every number is the core in NumPy float64 (forward and analytic
gradients); the MLX model runs in float32.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
mlx_nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")

from mlx.utils import tree_flatten  # noqa: E402
from test_interchange import (  # noqa: E402
    LAYER_CASES,
    MODEL_CASES,
    assert_matches_core,
    assert_trains_like_the_core,
    case_spec,
    core_layer_kwargs,
    random_params,
    small_spec,
)

from yat_core.errors import BackendUnavailableError  # noqa: E402
from yat_core.mlp import LayerSpec, MLPSpec, init_mlp_numpy, seed_spec  # noqa: E402
from yat_core.nn import mlx as ymlx  # noqa: E402
from yat_core.nn.options import native_option  # noqa: E402
from yat_core.optim import AdamWConfig  # noqa: E402
from yat_core.product import softplus_inverse, yat_product  # noqa: E402
from yat_core.runners import make_runner  # noqa: E402
from yat_core.runners.mlx import MLXRunner  # noqa: E402
from yat_core.train import TrainConfig  # noqa: E402


def core_name(native: str) -> str:
    """``layers.0.weight`` -> ``0.kernel``."""
    _, index, attr = native.split(".", 2)
    return f"{index}.{'kernel' if attr == 'weight' else attr}"


def mlx_loss_and_grads(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """MLX's own loss and gradients (``nn.value_and_grad``, under the core's names), and the logits."""

    def loss_fn(m: Any, inputs: mx.array, labels: mx.array) -> mx.array:
        return mlx_nn.losses.cross_entropy(m(inputs), labels, reduction="mean")

    loss, grads = mlx_nn.value_and_grad(model, loss_fn)(model, mx.array(x), mx.array(y))
    return loss.item(), {core_name(k): np.array(v) for k, v in tree_flatten(grads)}, ymlx.predict(model, x)


# ------------------------------------------------------------------ the seed model


def test_seed_model_has_235148_parameters_counted_by_mlx():
    model = ymlx.build_model(seed_spec(), 0)
    assert ymlx.count_params(model) == 235148
    assert sum(v.size for _, v in tree_flatten(model.trainable_parameters())) == 235148
    assert [k for k, _ in tree_flatten(model.parameters())] == [
        "layers.0.weight",
        "layers.0.bias",
        "layers.0.alpha",
        "layers.1.weight",
        "layers.1.bias",
        "layers.1.alpha",
        "layers.2.weight",
        "layers.2.bias",
    ]


@pytest.mark.parametrize("seed", [0, 7])
def test_build_model_weights_are_init_mlp_numpy_bit_for_bit(seed):
    expected = init_mlp_numpy(seed_spec(), seed)
    exported = ymlx.export_params(ymlx.build_model(seed_spec(), seed))
    assert list(exported) == list(expected)
    for name, value in expected.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_seed_model_forward_and_gradients_match_the_core():
    model = ymlx.build_model(seed_spec(), 0)
    assert_matches_core(mlx_loss_and_grads, model, ymlx.export_params(model), seed_spec(), "seed model", n=8)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_every_option_matches_the_core(case):
    spec = case_spec(case)
    params = random_params(spec, 1)
    model = ymlx.import_params(ymlx.YatMLP(spec), params)
    assert_matches_core(mlx_loss_and_grads, model, params, spec, case)


# ---------------------------------------------------------------------- the layer


def test_layer_defaults_follow_the_core():
    layer = ymlx.YatNMN(784, 256)
    values = dict(tree_flatten(layer.trainable_parameters()))
    assert sorted(values) == ["alpha", "bias", "weight"]
    assert (values["weight"].shape, values["bias"].shape, values["alpha"].shape) == ((256, 784), (256,), ())
    assert values["alpha"].item() == 1.0 and layer.spec == LayerSpec("yat", 784, 256)
    assert float(mx.abs(values["bias"]).max()) <= 1 / math.sqrt(784)
    assert float(np.std(np.array(values["weight"]))) == pytest.approx(math.sqrt(2 / (784 + 256)), rel=0.05)


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_options_compute_the_core_product(case):
    options, expected_params = LAYER_CASES[case]
    native = {k: native_option(v) if k in ("bias", "alpha") else v for k, v in options.items()}
    mx.random.seed(7)  # a fixed draw: a kernel row nearly parallel to an input amplifies rounding ~100x
    layer = ymlx.YatNMN(5, 3, **native)
    values = {
        ("kernel" if name == "weight" else name): np.array(v).astype(np.float64)
        for name, v in tree_flatten(layer.trainable_parameters())
    }
    assert sorted(values) == expected_params
    if "epsilon_raw" in values:
        assert float(values["epsilon_raw"]) == pytest.approx(softplus_inverse(0.1), rel=1e-6)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    spec = LayerSpec("yat", 5, 3, **options)
    expected = yat_product(x.astype(np.float64), values["kernel"], **core_layer_kwargs(spec, values))
    np.testing.assert_allclose(np.array(layer(mx.array(x))), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"bias": "yes"}, "bias must be True"),
        ({"alpha": [1.0]}, "alpha must be True"),
    ],
)
def test_layer_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ymlx.YatNMN(5, 3, **kwargs)


def test_constant_options_are_not_parameters():
    layer = ymlx.YatNMN(5, 3, bias=0.5, alpha=2.0)
    assert sorted(k for k, _ in tree_flatten(layer.parameters())) == ["weight"]
    assert "bias=0.5, alpha=2.0" in repr(layer)


@pytest.mark.parametrize(
    ("size", "error", "match"),
    [
        (4.9, TypeError, "must be a positive integer, got 4.9"),
        (True, TypeError, "must be a positive integer, got True"),
        ("4", TypeError, "must be a positive integer, got '4'"),
        (0, ValueError, "must be >= 1, got 0"),
    ],
    ids=["float", "bool", "str", "zero"],
)
@pytest.mark.parametrize("which", ["input_dims", "output_dims"])
def test_layer_refuses_sizes_that_are_not_positive_integers(which, size, error, match):
    sizes = {"input_dims": 5, "output_dims": 3, which: size}
    with pytest.raises(error, match=f"^mlx YatNMN: {which} {match}$"):
        ymlx.YatNMN(**sizes)


# ------------------------------------------------------------ MLX's conventions

#: Every option of the Yat layer, both linear forms.
CONVENTION_SPEC = MLPSpec(
    (
        LayerSpec("yat", 12, 8, learnable_epsilon=True),
        LayerSpec("yat", 8, 6, bias=0.5, alpha=2.0, spherical=True),
        LayerSpec("linear", 6, 6, bias=0.25, activation="relu"),
        LayerSpec("linear", 6, 3),
    )
)


def _inputs(n: int = 5, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).normal(size=(n, 3, 4)).astype(np.float32))


@pytest.mark.parametrize("suffix", ["safetensors", "npz"])
def test_save_weights_load_weights_round_trip(tmp_path, suffix):
    model = ymlx.import_params(ymlx.YatMLP(CONVENTION_SPEC), random_params(CONVENTION_SPEC, 6))
    path = str(tmp_path / f"weights.{suffix}")
    model.save_weights(path)
    fresh = ymlx.YatMLP(CONVENTION_SPEC)
    fresh.load_weights(path)  # strict: every parameter and no other
    for name, value in ymlx.export_params(model).items():
        np.testing.assert_array_equal(ymlx.export_params(fresh)[name], value, err_msg=name)
    x = _inputs()
    np.testing.assert_array_equal(np.array(fresh(x)), np.array(model(x)))


def test_load_weights_refuses_a_file_of_another_model(tmp_path):
    path = str(tmp_path / "layer.safetensors")
    ymlx.YatNMN(5, 3, alpha=2.0).save_weights(path)
    with pytest.raises(ValueError, match="alpha"):
        ymlx.YatNMN(5, 3).load_weights(path)


def test_mx_compile_of_the_model_follows_its_weights():
    model = ymlx.import_params(ymlx.YatMLP(CONVENTION_SPEC), random_params(CONVENTION_SPEC, 7))
    x = _inputs()
    np.testing.assert_allclose(np.array(mx.compile(model)(x)), np.array(model(x)), rtol=1e-6, atol=1e-6)
    # Declared as an input, the state is read at each call: new weights need no recompilation.
    forward = mx.compile(lambda inputs: model(inputs), inputs=model.state)
    before = np.array(forward(x))
    ymlx.import_params(model, random_params(CONVENTION_SPEC, 8))
    after = np.array(forward(x))
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, np.array(model(x)), rtol=1e-6, atol=1e-6)
    # The compiled training step, nn.value_and_grad under mx.compile, is checked by the runner's tests.


# ------------------------------------------------------------------ interchange


def test_export_import_round_trip_is_exact():
    spec = small_spec(learnable_epsilon=True)
    params = random_params(spec, 3)
    exported = ymlx.export_params(ymlx.import_params(ymlx.YatMLP(spec), params))
    assert list(exported) == list(spec.param_shapes)
    for name, value in params.items():
        assert exported[name].dtype == np.float32 and exported[name].shape == value.shape, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_import_casts_float64_to_the_model_dtype():
    spec = small_spec()
    params = {k: v.astype(np.float64) for k, v in random_params(spec, 4).items()}
    model = ymlx.import_params(ymlx.YatMLP(spec), params)
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(model.parameters()))
    np.testing.assert_array_equal(ymlx.export_params(model)["0.kernel"], params["0.kernel"].astype(np.float32))


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: p.pop("1.alpha"), ValueError, r"missing 1\.alpha"),
        (lambda p: p.update({"9.kernel": np.zeros(2, np.float32)}), ValueError, r"unexpected 9\.kernel"),
        (
            lambda p: p.update({"0.kernel": np.zeros((12, 8), np.float32)}),
            ValueError,
            r"0\.kernel has shape \(12, 8\), expected \(8, 12\)",
        ),
        (lambda p: p.update({"2.bias": np.zeros(4, np.int32)}), TypeError, r"2\.bias \(int32\)"),
    ],
)
def test_import_rejects_bad_parameters_by_name(mutate, error, match):
    spec = small_spec()
    params = random_params(spec, 5)
    mutate(params)
    model = ymlx.YatMLP(spec)
    before = ymlx.export_params(model)
    with pytest.raises(error, match=match):
        ymlx.import_params(model, params)
    after = ymlx.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a rejected import changed the model"


# ---------------------------------------------------------------------- training


def test_runner_trains_like_the_core():
    receipt = assert_trains_like_the_core("mlx")
    assert receipt["framework"] == "mlx" and "mlx" in receipt["versions"]


def test_runner_uses_mlx_adamw_with_bias_correction():
    runner = make_runner(seed_spec(), TrainConfig(framework="mlx"))
    assert isinstance(runner, MLXRunner)
    assert (runner.name, runner.framework, runner.distributions, runner.n_params()) == ("mlx", "mlx", ("mlx",), 235148)
    opt = runner.optimizer
    assert isinstance(opt, optim.AdamW) and opt.bias_correction is True
    assert (opt.learning_rate.item(), *opt.betas, opt.eps, opt.weight_decay) == pytest.approx(
        (3e-4, 0.9, 0.999, 1e-8, 0.01)
    )
    custom = make_runner(seed_spec(), TrainConfig(framework="mlx", optimizer=AdamWConfig(weight_decay=0.5, eps=1e-4)))
    assert (custom.optimizer.eps, custom.optimizer.weight_decay) == (1e-4, 0.5)


def test_runner_refuses_float64_as_the_mlx_backend_does():
    with pytest.raises(BackendUnavailableError, match="float64") as native:
        make_runner(small_spec(), TrainConfig(framework="mlx", dtype="float64"))
    with pytest.raises(BackendUnavailableError) as core:
        make_runner(small_spec(), TrainConfig(backend="mlx", dtype="float64"))
    assert str(native.value) == str(core.value)
