"""yat_core.nn.torch: the PyTorch layer and model against the core.

The reference for every number is the core in NumPy float64 (forward and analytic
gradients); the PyTorch model runs in float32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_interchange import (
    LAYER_CASES,
    MODEL_CASES,
    assert_matches_core,
    assert_trains_like_the_core,
    case_spec,
    core_layer_kwargs,
    random_params,
    small_spec,
)
from yat_core.mlp import LayerSpec, init_mlp_numpy, seed_spec
from yat_core.nn import torch as ynn
from yat_core.nn.interchange import native_option
from yat_core.product import softplus_inverse, yat_product
from yat_core.train import TrainConfig


def torch_loss_and_grads(model: torch.nn.Module, x: np.ndarray, y: np.ndarray):
    """PyTorch's own loss and autograd gradients (under the core's parameter names), and the logits."""
    model.zero_grad(set_to_none=True)
    logits = model(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).long())
    loss.backward()
    grads = {ynn._core_name(name): p.grad.numpy().copy() for name, p in model.named_parameters()}
    return loss.item(), grads, logits.detach().numpy()


# ------------------------------------------------------------------ the seed model


def test_seed_model_has_235148_parameters_counted_by_torch():
    model = ynn.build_model(seed_spec(), 0)
    assert ynn.count_params(model) == 235148
    assert sum(p.numel() for p in model.parameters()) == 235148
    assert list(model.state_dict()) == ["0.weight", "0.bias", "0.alpha", "1.weight", "1.bias", "1.alpha",
                                        "2.weight", "2.bias"]


@pytest.mark.parametrize("seed", [0, 7])
def test_build_model_weights_are_init_mlp_numpy_bit_for_bit(seed):
    expected = init_mlp_numpy(seed_spec(), seed)
    exported = ynn.export_params(ynn.build_model(seed_spec(), seed))
    assert list(exported) == list(expected)
    for name, value in expected.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_seed_model_forward_and_gradients_match_the_core():
    model = ynn.build_model(seed_spec(), 0)
    assert_matches_core(torch_loss_and_grads, model, ynn.export_params(model), seed_spec(), "seed model", n=8)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_every_option_matches_the_core(case):
    spec = case_spec(case)
    params = random_params(spec, 1)
    model = ynn.import_params(ynn.YatMLP(spec), params)
    assert_matches_core(torch_loss_and_grads, model, params, spec, case)


# ---------------------------------------------------------------------- the layer


def test_layer_defaults_follow_the_core():
    layer = ynn.YatNMN(784, 256)
    assert sorted(dict(layer.named_parameters())) == ["alpha", "bias", "weight"]
    assert (layer.weight.shape, layer.bias.shape, layer.alpha.shape) == ((256, 784), (256,), ())
    assert layer.alpha.item() == 1.0 and layer.spec == LayerSpec("yat", 784, 256)
    with torch.no_grad():
        assert float(layer.bias.abs().max()) <= 1 / math.sqrt(784)
        assert float(layer.weight.std()) == pytest.approx(math.sqrt(2 / (784 + 256)), rel=0.05)


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_options_compute_the_core_product(case):
    options, expected_params = LAYER_CASES[case]
    native = {k: native_option(v) if k in ("bias", "alpha") else v for k, v in options.items()}
    layer = ynn.YatNMN(5, 3, **native)
    values = {("kernel" if name == "weight" else name): p.detach().numpy().astype(np.float64)
              for name, p in layer.named_parameters()}
    assert sorted(values) == expected_params
    if "epsilon_raw" in values:
        assert float(values["epsilon_raw"]) == pytest.approx(softplus_inverse(0.1), rel=1e-6)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    with torch.no_grad():
        out = layer(torch.from_numpy(x)).numpy()
    spec = LayerSpec("yat", 5, 3, **options)
    expected = yat_product(x.astype(np.float64), values["kernel"], **core_layer_kwargs(spec, values))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"epsilon": 0.0}, "epsilon must be a finite number > 0"), ({"bias": "yes"}, "bias must be True"),
     ({"alpha": [1.0]}, "alpha must be True")],
)
def test_layer_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ynn.YatNMN(5, 3, **kwargs)


# ------------------------------------------------------------------ interchange


def test_export_import_round_trip_is_exact():
    spec = small_spec(learnable_epsilon=True)
    params = random_params(spec, 3)
    exported = ynn.export_params(ynn.import_params(ynn.YatMLP(spec), params))
    assert list(exported) == list(spec.param_shapes)
    for name, value in params.items():
        assert exported[name].dtype == np.float32 and exported[name].shape == value.shape, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_import_casts_float64_to_the_model_dtype():
    spec = small_spec()
    params = {k: v.astype(np.float64) for k, v in random_params(spec, 4).items()}
    model = ynn.import_params(ynn.YatMLP(spec), params)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    np.testing.assert_array_equal(ynn.export_params(model)["0.kernel"], params["0.kernel"].astype(np.float32))


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: p.pop("1.alpha"), ValueError, r"missing 1\.alpha"),
        (lambda p: p.update({"9.kernel": np.zeros(2, np.float32)}), ValueError, r"unexpected 9\.kernel"),
        (lambda p: p.update({"0.kernel": np.zeros((12, 8), np.float32)}), ValueError,
         r"0\.kernel has shape \(12, 8\), expected \(8, 12\)"),
        (lambda p: p.update({"2.bias": np.zeros(4, np.int32)}), TypeError, r"2\.bias \(int32\)"),
    ],
)
def test_import_rejects_bad_parameters_by_name(mutate, error, match):
    spec = small_spec()
    params = random_params(spec, 5)
    mutate(params)
    model = ynn.YatMLP(spec)
    before = ynn.export_params(model)
    with pytest.raises(error, match=match):
        ynn.import_params(model, params)
    after = ynn.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a rejected import changed the model"


# ---------------------------------------------------------------------- training


def test_runner_trains_like_the_core():
    assert_trains_like_the_core(ynn.make_runner, "torch")


def test_runner_uses_torch_adamw_with_the_recipe():
    runner = ynn.make_runner(seed_spec(), TrainConfig(backend="torch"))
    assert (runner.name, runner.framework, runner.n_params()) == ("torch", "torch", 235148)
    assert isinstance(runner.optimizer, torch.optim.AdamW)
    (group,) = runner.optimizer.param_groups
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (3e-4, (0.9, 0.999), 1e-8, 0.01)
    assert len(group["params"]) == 8  # decay applies to every parameter, alpha and biases included
