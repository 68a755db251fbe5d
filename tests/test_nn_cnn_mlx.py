"""yat_core.nn.mlx: the model of any ModelSpec (the Yat CNN, its Conv+ReLU twin, every layer kind) against the core.

The reference for every number is the core in NumPy float64 (:func:`yat_core.mlp.mlp_forward`
and its analytic gradients) at the same float32 weights; MLX runs in float32, channels
last. ``predict`` takes the core's channels-first inputs; the model's own call MLX's
``(n, *spatial, C)``; its flatten gives the core's ``(C, *spatial)`` order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
mlx_nn = pytest.importorskip("mlx.nn")

from mlx.utils import tree_flatten  # noqa: E402
from test_interchange import (  # noqa: E402
    EVERY_KIND,
    MODEL_SPECS,
    assert_matches_core,
    assert_trains_like_the_core,
    core_logits,
    random_params,
)

from yat_core.config import TrainConfig  # noqa: E402
from yat_core.mlp import init_mlp_numpy  # noqa: E402
from yat_core.nn import mlx as ymlx  # noqa: E402
from yat_core.runners import make_runner  # noqa: E402
from yat_core.spec import LayerSpec, ModelSpec, cnn_relu_spec, cnn_spec, count_params  # noqa: E402


def mlx_loss_and_grads(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """MLX's own loss and gradients (``nn.value_and_grad``) under the core's names and layouts.

    ``x`` is flat ``(n, features)`` in the core's order, which the model reshapes; no
    logits, as ``core_logits`` takes the core's layout: they are checked apart.
    """

    def loss_fn(m: Any, inputs: mx.array, labels: mx.array) -> mx.array:
        return mlx_nn.losses.cross_entropy(m(inputs), labels, reduction="mean")

    loss, grads = mlx_nn.value_and_grad(model, loss_fn)(model, mx.array(x), mx.array(y))
    out = {}
    for key, value in tree_flatten(grads):
        _, index, attr = key.split(".", 2)
        layer, g = model.spec.layers[int(index)], np.array(value)
        if attr == "weight":  # a convolution's gradient is in MLX's layout, as its kernel is
            attr, g = "kernel", ymlx.kernel_to_core(layer, g) if layer.kind != "yat" and g.ndim > 2 else g
        out[f"{index}.{attr}"] = g
    return loss.item(), out


def pixels(n: int, spec: ModelSpec, seed: int = 0) -> np.ndarray:
    """Float32 inputs in [0, 1] in the core's layout ``(n, *input_shape)``."""
    return np.random.default_rng(seed).uniform(0, 1, (n, *spec.input_shape)).astype(np.float32)


# ------------------------------------------------------------------ the CNN and its baseline


@pytest.mark.parametrize(("make", "n_params"), [(cnn_spec, 225037), (cnn_relu_spec, 225034)], ids=["yat", "relu"])
def test_build_model_of_the_cnn_is_the_core_model(make, n_params):
    spec = make()
    model = ymlx.build_model(spec, 3)
    assert ymlx.count_params(model) == count_params(spec) == n_params
    exported, expected = ymlx.export_params(model), init_mlp_numpy(spec, 3)
    assert list(exported) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    x = pixels(6, spec)
    logits = ymlx.predict(model, x)
    ref = core_logits(expected, x, spec)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-6)  # as assert_matches_core holds logits
    # Its own call takes MLX's (n, 28, 28, 1), and flat, (n, 28, 28) or (n, 1, 28, 28) in the core's order.
    for shape in ((6, 28, 28, 1), (6, 784), (6, 28, 28), (6, 1, 28, 28)):
        np.testing.assert_array_equal(np.array(model(mx.array(x.reshape(shape)))), logits, err_msg=str(shape))


def test_cnn_layers_parameter_names_and_layouts():
    model = ymlx.build_model(cnn_spec(), 0)
    assert [type(layer).__name__ for layer in model.layers] == [
        "YatConv2d",
        "MaxPool2d",
        "YatConv2d",
        "MaxPool2d",
        "_Flatten",
        "YatNMN",
        "_Linear",
    ]
    assert {k: v.shape for k, v in tree_flatten(model.parameters())} == {
        "layers.0.weight": (32, 3, 3, 1),  # MLX's (out, *k, in/groups)
        "layers.0.bias": (32,),
        "layers.0.alpha": (),
        "layers.2.weight": (64, 3, 3, 32),
        "layers.2.bias": (64,),
        "layers.2.alpha": (),
        "layers.5.weight": (128, 1600),
        "layers.5.bias": (128,),
        "layers.5.alpha": (),
        "layers.6.weight": (10, 128),
        "layers.6.bias": (10,),
    }
    assert {k: v.shape for k, v in ymlx.export_params(model).items()} == cnn_spec().param_shapes  # the core's
    relu = ymlx.build_model(cnn_relu_spec(), 0)
    assert isinstance(relu.layers[0], mlx_nn.Conv2d) and relu.layers[0].weight.shape == (32, 3, 3, 1)
    assert isinstance(relu.layers[1], mlx_nn.MaxPool2d)
    # The Conv+ReLU layer is nn.Conv2d's own call followed by a ReLU.
    x = mx.array(pixels(2, cnn_relu_spec()).transpose(0, 2, 3, 1))
    expected = mlx_nn.relu(mlx_nn.Conv2d.__call__(relu.layers[0], x))
    np.testing.assert_array_equal(np.array(relu.layers[0](x)), np.array(expected))


def test_flatten_gives_the_core_order():
    first = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (n, C, H, W)
    last = mx.array(first.transpose(0, 2, 3, 1))  # what MLX holds
    flat = np.array(ymlx.layer_from_spec(LayerSpec("flatten", 3, 60))(last))
    np.testing.assert_array_equal(flat, first.reshape(2, 60))


# ------------------------------------------------------------------ every kind


@pytest.mark.parametrize("case", MODEL_SPECS)
def test_every_layer_kind_matches_the_core_values_and_gradients(case):
    spec = MODEL_SPECS[case]
    params = random_params(spec, 1)
    model = ymlx.import_params(ymlx.YatModel(spec), params)
    assert ymlx.count_params(model) == count_params(spec)
    x = pixels(6, spec)
    np.testing.assert_allclose(ymlx.predict(model, x), core_logits(params, x, spec), rtol=1e-5, atol=1e-6)
    assert_matches_core(mlx_loss_and_grads, model, params, spec, case, n=6)


def test_a_grouped_3d_conv_is_refused_as_mlx_has_none():
    with pytest.raises(ValueError, match=r"mlx\.nn\.Conv3d has no groups, so a 3-D 'conv' layer cannot have groups=2"):
        ymlx.layer_from_spec(LayerSpec("conv", 4, 4, kernel_size=(1, 2, 1), groups=2))


def test_the_model_refuses_inputs_of_another_size():
    model = ymlx.YatModel(cnn_spec())
    with pytest.raises(ValueError, match=r"inputs of shape \(n, 28, 28, 1\) or any \(n, \.\.\.\) of 784 values"):
        model(mx.zeros((2, 27, 28, 1)))


# ------------------------------------------------------------------ interchange


def test_export_import_round_trip_is_exact():
    params = random_params(EVERY_KIND, 4)
    model = ymlx.import_params(ymlx.YatModel(EVERY_KIND), params)
    assert model.layers[4].weight.shape == (8, 2, 2, 3)  # the plain conv in MLX's layout
    exported = ymlx.export_params(model)
    assert list(exported) == list(EVERY_KIND.param_shapes)
    for name, value in params.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    again = ymlx.export_params(ymlx.import_params(ymlx.build_model(EVERY_KIND, 0), exported))
    assert all(np.array_equal(again[k], exported[k]) for k in exported)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: p.pop("4.kernel"), ValueError, r"missing 4\.kernel"),
        (lambda p: p.update({"3.kernel": np.zeros((6, 6), np.float32)}), ValueError, r"unexpected 3\.kernel"),
        (  # MLX's own (out, *k, in/groups) kernel instead of the core's (out, in/groups, *k)
            lambda p: p.update({"0.kernel": np.zeros((4, 3, 3, 1), np.float32)}),
            ValueError,
            r"0\.kernel has shape \(4, 3, 3, 1\), expected \(4, 1, 3, 3\)",
        ),
        (lambda p: p.update({"4.bias": np.zeros(8, np.int64)}), TypeError, r"4\.bias \(int64\)"),
    ],
    ids=["missing", "pool-has-none", "conv-layout", "dtype"],
)
def test_import_refuses_a_bad_mapping_and_changes_nothing(mutate, error, match):
    params = random_params(EVERY_KIND, 5)
    mutate(params)
    model = ymlx.build_model(EVERY_KIND, 0)
    before = ymlx.export_params(model)
    with pytest.raises(error, match=match):
        ymlx.import_params(model, params)
    after = ymlx.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a refused import changed the model"


# ------------------------------------------------------------------ training


def test_runner_trains_the_cnn_like_the_core():
    # The step runs under mx.compile, the CNN's as the MLP's.
    receipt = assert_trains_like_the_core("mlx", model="cnn")
    assert receipt["framework"] == "mlx" and receipt["params"] == 225037


def test_runner_steps_the_relu_baseline_as_the_core_does():
    config = {"model": "cnn", "batch_size": 8}
    runners = [
        make_runner(cnn_relu_spec(), TrainConfig(framework="mlx", **config)),
        make_runner(cnn_relu_spec(), TrainConfig(backend="numpy", **config)),
    ]
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), rng.integers(0, 10, 8).astype(np.uint8)
    losses = [r.to_float(r.step(r.put(images), r.put(labels), r.put(np.arange(8)))) for r in runners]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    ours, theirs = (r.export_params() for r in runners)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=1e-6, err_msg=name)
