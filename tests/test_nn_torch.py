"""yat_core.nn.torch: the PyTorch layer and model against the core.

The reference for every number is the core in NumPy float64 (forward and analytic
gradients); the PyTorch model runs in float32.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

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

from yat_core.mlp import LayerSpec, MLPSpec, init_mlp_numpy, seed_spec  # noqa: E402
from yat_core.nn import torch as ynn  # noqa: E402
from yat_core.nn.options import native_option  # noqa: E402
from yat_core.optim import AdamWConfig  # noqa: E402
from yat_core.product import softplus_inverse, yat_product  # noqa: E402
from yat_core.runners import make_runner  # noqa: E402
from yat_core.runners.torch import TorchRunner  # noqa: E402
from yat_core.train import TrainConfig  # noqa: E402


def core_name(native: str) -> str:
    """``0.weight`` -> ``0.kernel``."""
    index, attr = native.split(".", 1)
    return f"{index}.{'kernel' if attr == 'weight' else attr}"


def torch_loss_and_grads(model: torch.nn.Module, x: np.ndarray, y: np.ndarray):
    """PyTorch's own loss and autograd gradients (under the core's parameter names), and the logits."""
    model.zero_grad(set_to_none=True)
    logits = model(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).long())
    loss.backward()
    grads = {core_name(name): p.grad.numpy().copy() for name, p in model.named_parameters()}
    return loss.item(), grads, logits.detach().numpy()


# ------------------------------------------------------------------ the seed model


def test_seed_model_has_235148_parameters_counted_by_torch():
    model = ynn.build_model(seed_spec(), 0)
    assert ynn.count_params(model) == 235148
    assert sum(p.numel() for p in model.parameters()) == 235148
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "0.alpha",
        "1.weight",
        "1.bias",
        "1.alpha",
        "2.weight",
        "2.bias",
    ]


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
    torch.manual_seed(7)  # a fixed draw: a kernel row nearly parallel to an input amplifies rounding ~100x
    layer = ynn.YatNMN(5, 3, **native)
    values = {
        ("kernel" if name == "weight" else name): p.detach().numpy().astype(np.float64)
        for name, p in layer.named_parameters()
    }
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
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"bias": "yes"}, "bias must be True"),
        ({"alpha": [1.0]}, "alpha must be True"),
    ],
)
def test_layer_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ynn.YatNMN(5, 3, **kwargs)


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
@pytest.mark.parametrize("which", ["in_features", "out_features"])
def test_layer_refuses_sizes_that_are_not_positive_integers(which, size, error, match):
    sizes = {"in_features": 5, "out_features": 3, which: size}
    with pytest.raises(error, match=f"^torch YatNMN: {which} {match}$"):
        ynn.YatNMN(**sizes)


def test_constant_options_are_not_parameters():
    layer = ynn.YatNMN(5, 3, bias=0.5, alpha=False)
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert layer.bias is None and layer.alpha is None and layer.epsilon_raw is None
    assert "bias=0.5, alpha=False" in repr(layer)


# -------------------------------------------------------- PyTorch's conventions

#: Every option except the spherical one (whose core norm breaks torch.compile's graph), and the spherical one.
CONVENTION_SPECS = {
    "all-options": MLPSpec(
        (
            LayerSpec("yat", 12, 8, learnable_epsilon=True),
            LayerSpec("yat", 8, 6, bias=0.5, alpha=2.0),
            LayerSpec("linear", 6, 6, bias=0.25, activation="relu"),
            LayerSpec("linear", 6, 3),
        )
    ),
    "spherical": MLPSpec((LayerSpec("yat", 12, 8, spherical=True, bias=None), LayerSpec("linear", 8, 3))),
}


def _inputs(n: int = 5, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3, 4))).to(dtype)


@pytest.mark.parametrize("case", CONVENTION_SPECS)
def test_state_dict_round_trip_through_torch_save(case):
    spec = CONVENTION_SPECS[case]
    model = ynn.import_params(ynn.YatMLP(spec), random_params(spec, 6))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = ynn.YatMLP(spec)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # strict: every key and no other
    assert list(fresh.state_dict()) == list(model.state_dict())
    for name, value in ynn.export_params(model).items():
        np.testing.assert_array_equal(ynn.export_params(fresh)[name], value, err_msg=name)
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_state_dict_of_a_layer_names_only_its_learnable_parameters():
    layer = ynn.YatNMN(5, 3, alpha=2.0, learnable_epsilon=True)
    assert list(layer.state_dict()) == ["weight", "bias", "epsilon_raw"]
    with pytest.raises(RuntimeError, match="Missing key"):
        ynn.YatNMN(5, 3, alpha=2.0, learnable_epsilon=True).load_state_dict({"weight": torch.zeros(3, 5)})


@pytest.mark.parametrize("case", CONVENTION_SPECS)
def test_torch_export_of_the_model_with_a_dynamic_batch(case):
    spec = CONVENTION_SPECS[case]
    model = ynn.import_params(ynn.YatMLP(spec), random_params(spec, 7))
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (_inputs(),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    for n in (5, 9):  # another batch size than the traced one
        x = _inputs(n, seed=n)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-6, atol=1e-6)


def test_torch_export_of_the_layer_lists_its_parameters():
    layer = ynn.YatNMN(5, 3, learnable_epsilon=True, spherical=True)
    x = torch.randn(4, 5)
    program = torch.export.export(layer, (x,))
    assert list(program.graph_signature.parameters) == ["weight", "bias", "alpha", "epsilon_raw"]
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), layer(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("case", "fullgraph"),
    [
        ("all-options", True),
        ("spherical", True),
    ],
)
def test_torch_compile_gives_eager_outputs_and_gradients(case, fullgraph):
    # aot_eager traces what inductor traces (Dynamo, then AOT autograd) without generating C++, which would
    # cost ~10 s per graph on a 2-core machine.
    spec = CONVENTION_SPECS[case]
    model = ynn.import_params(ynn.YatMLP(spec), random_params(spec, 8))
    x = _inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=fullgraph)
    eager_out = model(x)
    eager_out.square().sum().backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-6, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_vmap_of_the_layer_and_per_sample_gradients():
    torch.manual_seed(0)
    layer = ynn.YatNMN(5, 3, learnable_epsilon=True)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    with torch.no_grad():
        torch.testing.assert_close(
            torch.func.vmap(layer)(x), layer(x), rtol=1e-6, atol=1e-7
        )  # one sample (in,) per call
    params = {name: p.detach() for name, p in layer.named_parameters()}

    def loss(p, xi, yi):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(layer, p, (xi[None],)), yi[None])

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    assert {name: tuple(g.shape) for name, g in per_sample.items()} == {
        "weight": (6, 3, 5),
        "bias": (6, 3),
        "alpha": (6,),
        "epsilon_raw": (6,),
    }
    for i in range(6):
        layer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(layer(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in layer.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-5, atol=1e-7, msg=f"sample {i}: {name}")


def test_vmap_over_stacked_models():
    spec = CONVENTION_SPECS["all-options"]
    models = [ynn.import_params(ynn.YatMLP(spec), random_params(spec, seed)) for seed in (1, 2, 3)]
    params, buffers = torch.func.stack_module_state(models)
    x = _inputs()

    def run(p, b):
        return torch.func.functional_call(models[0], (p, b), (x,))

    with torch.no_grad():
        out = torch.func.vmap(run)(params, buffers)
        torch.testing.assert_close(out, torch.stack([m(x) for m in models]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [{}, {"learnable_epsilon": True, "spherical": True}, {"bias": 0.5, "alpha": 2.0, "epsilon": 0.1}],
    ids=["defaults", "learnable-epsilon-spherical", "constants"],
)
def test_gradcheck_in_float64(options):
    torch.manual_seed(1)
    layer = ynn.YatNMN(4, 3, dtype=torch.float64, **options)
    names = [name for name, _ in layer.named_parameters()]
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in layer.parameters())

    def fn(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


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
    model = ynn.YatMLP(spec)
    before = ynn.export_params(model)
    with pytest.raises(error, match=match):
        ynn.import_params(model, params)
    after = ynn.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a rejected import changed the model"


# ---------------------------------------------------------------------- training


def test_runner_trains_like_the_core():
    receipt = assert_trains_like_the_core("torch")
    assert receipt["framework"] == "torch" and "torch" in receipt["versions"]


def test_runner_uses_torch_adamw_with_the_recipe():
    runner = make_runner(seed_spec(), TrainConfig(framework="torch"))
    assert isinstance(runner, TorchRunner)
    assert (runner.name, runner.framework, runner.distributions, runner.n_params()) == (
        "torch",
        "torch",
        ("torch",),
        235148,
    )
    assert isinstance(runner.optimizer, torch.optim.AdamW)
    (group,) = runner.optimizer.param_groups
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (3e-4, (0.9, 0.999), 1e-8, 0.01)
    assert len(group["params"]) == 8  # decay applies to every parameter, alpha and biases included
    custom = make_runner(seed_spec(), TrainConfig(framework="torch", optimizer=AdamWConfig(weight_decay=0.5, eps=1e-4)))
    (group,) = custom.optimizer.param_groups
    assert (group["eps"], group["weight_decay"]) == (1e-4, 0.5)


def test_runner_trains_in_float64():
    runner = make_runner(small_spec(), TrainConfig(framework="torch", dtype="float64"))
    assert all(p.dtype == torch.float64 for p in runner.model.parameters())
    images = runner.put(np.arange(4 * 12, dtype=np.uint8).reshape(4, 12))
    loss = runner.step(images, runner.put(np.array([0, 1, 2, 3], np.uint8)), runner.put(np.arange(4)))
    assert loss.dtype == torch.float64 and runner.host_losses(loss) == [pytest.approx(runner.to_float(loss))]
