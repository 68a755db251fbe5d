"""yat_core.nn.torch: the model of any ModelSpec (the Yat CNN, its Conv+ReLU twin, every layer kind) against the core.

The reference for every number is the core in NumPy float64 (:func:`yat_core.mlp.mlp_forward`
and its analytic gradients) at the same float32 weights; PyTorch runs in float32.
PyTorch is channels first like the core, so the core's inputs go in as they are.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

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
from yat_core.nn import torch as ynn  # noqa: E402
from yat_core.runners import make_runner  # noqa: E402
from yat_core.spec import LayerSpec, ModelSpec, cnn_relu_spec, cnn_spec, count_params  # noqa: E402


def torch_loss_and_grads(model: torch.nn.Module, x: np.ndarray, y: np.ndarray):
    """PyTorch's own loss and autograd gradients under the core's names (its layouts are the core's).

    ``x`` is flat ``(n, features)``, which the model reshapes; no logits, as
    ``core_logits`` takes the core's layout: they are checked apart.
    """
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y).long())
    loss.backward()
    grads = {name.replace(".weight", ".kernel"): p.grad.numpy().copy() for name, p in model.named_parameters()}
    return loss.item(), grads


def pixels(n: int, spec: ModelSpec, seed: int = 0) -> np.ndarray:
    """Float32 inputs in [0, 1] in the core's layout ``(n, *input_shape)``."""
    return np.random.default_rng(seed).uniform(0, 1, (n, *spec.input_shape)).astype(np.float32)


# ------------------------------------------------------------------ the CNN and its baseline


@pytest.mark.parametrize(("make", "n_params"), [(cnn_spec, 225037), (cnn_relu_spec, 225034)], ids=["yat", "relu"])
def test_build_model_of_the_cnn_is_the_core_model(make, n_params):
    spec = make()
    model = ynn.build_model(spec, 3)
    assert ynn.count_params(model) == count_params(spec) == n_params
    exported, expected = ynn.export_params(model), init_mlp_numpy(spec, 3)
    assert list(exported) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    x = pixels(6, spec)
    logits = ynn.predict(model, x)
    ref = core_logits(expected, x, spec)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-6)  # as assert_matches_core holds logits
    # Its own call takes (n, 1, 28, 28), and flat or (n, 28, 28) pixels reshaped to it: the same numbers.
    with torch.no_grad():
        for shape in ((6, 1, 28, 28), (6, 784), (6, 28, 28)):
            np.testing.assert_array_equal(model(torch.from_numpy(x.reshape(shape))).numpy(), logits, err_msg=shape)


def test_cnn_children_parameter_names_and_layouts():
    model = ynn.build_model(cnn_spec(), 0)
    assert [type(child).__name__ for child in model] == [
        "YatConv2d",
        "MaxPool2d",
        "YatConv2d",
        "MaxPool2d",
        "Flatten",
        "YatNMN",
        "_Linear",
    ]
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "0.weight": (32, 1, 3, 3),
        "0.bias": (32,),
        "0.alpha": (),
        "2.weight": (64, 32, 3, 3),
        "2.bias": (64,),
        "2.alpha": (),
        "5.weight": (128, 1600),
        "5.bias": (128,),
        "5.alpha": (),
        "6.weight": (10, 128),
        "6.bias": (10,),
    }
    assert {k: v.shape for k, v in ynn.export_params(model).items()} == cnn_spec().param_shapes
    relu = ynn.build_model(cnn_relu_spec(), 0)
    assert isinstance(relu[0], torch.nn.Conv2d) and (relu[0].kernel_size, relu[0].padding) == ((3, 3), (0, 0))
    assert isinstance(relu[1], torch.nn.MaxPool2d) and relu[1].stride == (2, 2)
    # The Conv+ReLU layer is nn.Conv2d's forward followed by a ReLU.
    x = torch.from_numpy(pixels(2, cnn_relu_spec()))
    with torch.no_grad():
        torch.testing.assert_close(relu[0](x), torch.relu(torch.nn.Conv2d.forward(relu[0], x)), rtol=0, atol=0)


# ------------------------------------------------------------------ every kind


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # PyTorch's note on a copy
@pytest.mark.parametrize("case", MODEL_SPECS)
def test_every_layer_kind_matches_the_core_values_and_gradients(case):
    spec = MODEL_SPECS[case]
    params = random_params(spec, 1)
    model = ynn.import_params(ynn.YatModel(spec), params)
    assert ynn.count_params(model) == count_params(spec)
    x = pixels(6, spec)
    np.testing.assert_allclose(ynn.predict(model, x), core_logits(params, x, spec), rtol=1e-5, atol=1e-6)
    assert_matches_core(torch_loss_and_grads, model, params, spec, case, n=6)


def test_a_grouped_3d_conv_is_torchs_own():
    spec = ModelSpec(
        (LayerSpec("conv", 4, 4, kernel_size=(1, 2, 1), groups=2), LayerSpec("flatten", 4, 16)),
        input_shape=(4, 2, 3, 1),
    )
    params = random_params(spec, 2)
    model = ynn.import_params(ynn.YatModel(spec), params)
    assert isinstance(model[0], torch.nn.Conv3d) and model[0].groups == 2
    x = pixels(3, spec)
    np.testing.assert_allclose(ynn.predict(model, x), core_logits(params, x, spec), rtol=1e-5, atol=1e-6)


def test_the_model_refuses_inputs_of_another_size():
    model = ynn.YatModel(cnn_spec())
    with pytest.raises(ValueError, match=r"inputs of shape \(n, 1, 28, 28\) or any \(n, \.\.\.\) of 784 values"):
        model(torch.zeros(2, 1, 27, 28))


# ------------------------------------------------------------------ interchange


def test_export_import_round_trip_is_exact():
    params = random_params(EVERY_KIND, 4)
    model = ynn.import_params(ynn.YatModel(EVERY_KIND), params)
    exported = ynn.export_params(model)
    assert list(exported) == list(EVERY_KIND.param_shapes)
    for name, value in params.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    again = ynn.export_params(ynn.import_params(ynn.build_model(EVERY_KIND, 0), exported))
    assert all(np.array_equal(again[k], exported[k]) for k in exported)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: p.pop("4.kernel"), ValueError, r"missing 4\.kernel"),
        (lambda p: p.update({"3.kernel": np.zeros((6, 6), np.float32)}), ValueError, r"unexpected 3\.kernel"),
        (  # a channels-last (out, *k, in/groups) kernel instead of the core's (out, in/groups, *k)
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
    model = ynn.build_model(EVERY_KIND, 0)
    before = ynn.export_params(model)
    with pytest.raises(error, match=match):
        ynn.import_params(model, params)
    after = ynn.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a refused import changed the model"


# ------------------------------------------------------------------ training


def test_runner_trains_the_cnn_like_the_core():
    receipt = assert_trains_like_the_core("torch", model="cnn")
    assert receipt["framework"] == "torch" and receipt["params"] == 225037


def test_runner_steps_the_relu_baseline_as_the_core_does():
    config = {"model": "cnn", "batch_size": 8}
    runners = [
        make_runner(cnn_relu_spec(), TrainConfig(framework="torch", **config)),
        make_runner(cnn_relu_spec(), TrainConfig(backend="numpy", **config)),
    ]
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), rng.integers(0, 10, 8).astype(np.uint8)
    losses = [r.to_float(r.step(r.put(images), r.put(labels), r.put(np.arange(8)))) for r in runners]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    ours, theirs = (r.export_params() for r in runners)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=1e-6, err_msg=name)
