"""yat_core.nn.nnx and yat_core.nn.linen: the Flax layers and models against the core.

The reference for every number is the core in NumPy float64 (forward and analytic
gradients); the Flax models run in float32. Each test runs for both Flax APIs
(``[nnx]``, ``[linen]``) through a small adapter that hides how each one holds
its parameters.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
optax = pytest.importorskip("optax")

import jax.numpy as jnp
from flax import nnx

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
from yat_core.mlp import LayerSpec, MLPSpec, init_mlp_numpy, seed_spec
from yat_core.nn import linen as ylinen
from yat_core.nn import nnx as ynnx
from yat_core.nn.interchange import native_option
from yat_core.product import softplus_inverse, yat_product
from yat_core.train import TrainConfig


def _cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# Compiled, as the runners compile them (op-by-op JAX would compile every primitive instead).
@nnx.jit
def _nnx_loss_and_grads(model: Any, x: jax.Array, y: jax.Array) -> Any:
    def loss_fn(m: Any) -> tuple[jax.Array, jax.Array]:
        logits = m(x)
        return _cross_entropy(logits, y), logits

    return nnx.value_and_grad(loss_fn, has_aux=True)(model)


@partial(jax.jit, static_argnums=0)
def _linen_loss_and_grads(module: Any, params: Any, x: jax.Array, y: jax.Array) -> Any:
    def loss_fn(p: Any) -> tuple[jax.Array, jax.Array]:
        logits = module.apply({"params": p}, x)
        return _cross_entropy(logits, y), logits

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


class NNX:
    """How the tests reach into an NNX model."""

    name, module = "nnx", ynnx

    @staticmethod
    def fresh(spec: MLPSpec) -> Any:
        return ynnx.YatMLP(spec, rngs=nnx.Rngs(3))

    @staticmethod
    def native_count(model: Any) -> int:
        return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    @staticmethod
    def loss_and_grads(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        (loss, logits), grads = _nnx_loss_and_grads(model, jnp.asarray(x), jnp.asarray(y))
        out = {}
        for i, layer in enumerate(model.spec.layers):
            for name in layer.param_shapes:
                value = np.asarray(getattr(grads.layers[i], name).get_value())
                out[f"{i}.{name}"] = value.T if name == "kernel" else value
        return float(loss), out, np.asarray(logits)

    @staticmethod
    def layer(options: dict[str, Any], in_features: int, out_features: int) -> tuple[Any, dict[str, np.ndarray]]:
        """A native layer and its learnable values (core names, kernel ``(out, in)``, float64)."""
        layer = ynnx.YatNMN(in_features, out_features, **options, rngs=nnx.Rngs(0))
        values = {name: np.asarray(getattr(layer, name).get_value(), np.float64)
                  for name in ("kernel", "bias", "alpha", "epsilon_raw") if getattr(layer, name) is not None}
        values["kernel"] = values["kernel"].T
        return layer, values

    @staticmethod
    def apply_layer(layer: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(layer(jnp.asarray(x)))


class Linen:
    """How the tests reach into a bound Linen model."""

    name, module = "linen", ylinen

    @staticmethod
    def fresh(spec: MLPSpec) -> Any:
        module = ylinen.YatMLP(spec)
        return module.bind(module.init(jax.random.key(3), jnp.zeros((1, spec.in_features))))

    @staticmethod
    def native_count(model: Any) -> int:
        return sum(x.size for x in jax.tree.leaves(model.variables["params"]))

    @staticmethod
    def loss_and_grads(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        module, variables = model.unbind()
        (loss, logits), grads = _linen_loss_and_grads(module, variables["params"], jnp.asarray(x), jnp.asarray(y))
        return float(loss), ylinen.tree_to_params(module.spec, grads), np.asarray(logits)

    @staticmethod
    def layer(options: dict[str, Any], in_features: int, out_features: int) -> tuple[Any, dict[str, np.ndarray]]:
        layer = ylinen.YatNMN(out_features, **options)
        variables = layer.init(jax.random.key(0), jnp.zeros((1, in_features)))
        values = {k: np.asarray(v, np.float64) for k, v in variables["params"].items()}
        values["kernel"] = values["kernel"].T
        return layer.bind(variables), values

    @staticmethod
    def apply_layer(layer: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(layer(jnp.asarray(x)))


@pytest.fixture(params=[NNX, Linen], ids=["nnx", "linen"])
def api(request: pytest.FixtureRequest) -> type:
    return request.param


def flax_options(options: dict[str, Any]) -> dict[str, Any]:
    """Core-spelled layer options in Flax's spelling (``use_bias``, ``use_alpha``)."""
    renamed = {"bias": "use_bias", "alpha": "use_alpha"}
    return {renamed.get(k, k): native_option(v) if k in renamed else v for k, v in options.items()}


# ------------------------------------------------------------------ the seed model


def test_seed_model_has_235148_parameters_counted_by_flax(api):
    model = api.module.build_model(seed_spec(), 0)
    assert api.module.count_params(model) == 235148
    assert api.native_count(model) == 235148


@pytest.mark.parametrize("seed", [0, 7])
def test_build_model_weights_are_init_mlp_numpy_bit_for_bit(api, seed):
    expected = init_mlp_numpy(seed_spec(), seed)
    exported = api.module.export_params(api.module.build_model(seed_spec(), seed))
    assert list(exported) == list(expected)
    for name, value in expected.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_flax_layout_is_in_by_out():
    spec = seed_spec()
    init = init_mlp_numpy(spec, 0)
    model = ynnx.build_model(spec, 0)
    np.testing.assert_array_equal(np.asarray(model.layers[0].kernel.get_value()), init["0.kernel"].T)
    np.testing.assert_array_equal(np.asarray(model.layers[2].kernel.get_value()), init["2.kernel"].T)
    bound = ylinen.build_model(spec, 0)
    np.testing.assert_array_equal(np.asarray(bound.variables["params"]["1"]["kernel"]), init["1.kernel"].T)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_linen_parameter_tree_is_the_one_init_creates(case):
    # build_model writes the tree directly; it must be exactly what the module's own init makes.
    spec = case_spec(case)
    module = ylinen.YatMLP(spec)
    made = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, spec.in_features)))["params"]
    built = ylinen.build_model(spec, 0).variables["params"]
    shape_of = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)  # noqa: E731
    assert shape_of(built) == shape_of(made)


def test_seed_model_forward_and_gradients_match_the_core(api):
    model = api.module.build_model(seed_spec(), 0)
    assert_matches_core(api.loss_and_grads, model, api.module.export_params(model), seed_spec(),
                        f"{api.name} seed model", n=8)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_every_option_matches_the_core(api, case):
    spec = case_spec(case)
    params = random_params(spec, 1)
    model = api.module.import_params(api.fresh(spec), params)
    assert_matches_core(api.loss_and_grads, model, params, spec, f"{api.name} {case}")


# ---------------------------------------------------------------------- the layer


def test_layer_defaults_follow_the_core(api):
    layer, values = api.layer({}, 784, 256)
    assert sorted(values) == ["alpha", "bias", "kernel"]
    assert (values["kernel"].shape, values["bias"].shape, values["alpha"].shape) == ((256, 784), (256,), ())
    assert values["alpha"] == 1.0
    assert np.max(np.abs(values["bias"])) <= 1 / math.sqrt(784)
    assert np.std(values["kernel"]) == pytest.approx(math.sqrt(2 / (784 + 256)), rel=0.05)


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_options_compute_the_core_product(api, case):
    options, expected_params = LAYER_CASES[case]
    layer, values = api.layer(flax_options(options), 5, 3)
    assert sorted(values) == expected_params
    if "epsilon_raw" in values:
        assert float(values["epsilon_raw"]) == pytest.approx(softplus_inverse(0.1), rel=1e-6)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    spec = LayerSpec("yat", 5, 3, **options)
    expected = yat_product(x.astype(np.float64), values["kernel"], **core_layer_kwargs(spec, values))
    np.testing.assert_allclose(api.apply_layer(layer, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"epsilon": 0.0}, "epsilon must be a finite number > 0"), ({"use_bias": "yes"}, "bias must be True"),
     ({"use_alpha": [1.0]}, "alpha must be True")],
)
def test_layer_rejects_bad_options(api, kwargs, match):
    with pytest.raises(ValueError, match=match):
        api.layer(kwargs, 5, 3)


def test_linen_layer_reads_its_input_size_from_the_input():
    variables = ylinen.YatNMN(3).init(jax.random.key(0), jnp.zeros((2, 7)))
    assert variables["params"]["kernel"].shape == (7, 3)


def test_nnx_layer_computes_in_the_requested_dtype():
    layer = ynnx.YatNMN(4, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert layer(jnp.ones((2, 4))).dtype == jnp.bfloat16
    assert layer.kernel.get_value().dtype == jnp.float32


# ------------------------------------------------------------------ interchange


def test_export_import_round_trip_is_exact(api):
    spec = small_spec(learnable_epsilon=True)
    params = random_params(spec, 3)
    exported = api.module.export_params(api.module.import_params(api.fresh(spec), params))
    assert list(exported) == list(spec.param_shapes)
    for name, value in params.items():
        assert exported[name].dtype == np.float32 and exported[name].shape == value.shape, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_import_casts_float64_to_the_model_dtype(api):
    spec = small_spec()
    params = {k: v.astype(np.float64) for k, v in random_params(spec, 4).items()}
    exported = api.module.export_params(api.module.import_params(api.fresh(spec), params))
    assert all(v.dtype == np.float32 for v in exported.values())
    np.testing.assert_array_equal(exported["0.kernel"], params["0.kernel"].astype(np.float32))


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
def test_import_rejects_bad_parameters_by_name(api, mutate, error, match):
    spec = small_spec()
    params = random_params(spec, 5)
    mutate(params)
    model = api.fresh(spec)
    before = api.module.export_params(model)
    with pytest.raises(error, match=match):
        api.module.import_params(model, params)
    after = api.module.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a rejected import changed the model"


def test_linen_export_needs_a_bound_module():
    with pytest.raises(ValueError, match="not bound"):
        ylinen.export_params(ylinen.YatMLP(small_spec()))


# ---------------------------------------------------------------------- training


def test_runner_trains_like_the_core(api):
    receipt = assert_trains_like_the_core(api.module.make_runner, api.name)
    assert receipt["device"].startswith(("cpu", "gpu", "cuda", "tpu"))


def test_runner_uses_optax_adamw_and_counts_natively(api):
    runner = api.module.make_runner(seed_spec(), TrainConfig(backend=api.name))
    assert (runner.name, runner.framework, runner.n_params()) == (api.name, "flax", 235148)
    if api is NNX:
        assert isinstance(runner.optimizer, nnx.Optimizer)
    else:
        from flax.training.train_state import TrainState

        assert isinstance(runner.state, TrainState)
        assert ylinen.count_params(runner.model) == 235148  # bound to the training state's parameters


def test_float64_without_x64_mode_is_a_clear_error(api):
    if jax.config.jax_enable_x64:
        pytest.skip("JAX runs in 64-bit mode here")
    with pytest.raises(ValueError, match="JAX_ENABLE_X64"):
        api.module.make_runner(seed_spec(), TrainConfig(backend=api.name, dtype="float64"))
