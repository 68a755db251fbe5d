"""yat_core.nn.nnx and yat_core.nn.linen: the Flax layers and models against the core.

The reference for every number is the core in NumPy float64 (forward and analytic
gradients); the Flax models run in float32. Each test runs for both Flax APIs
(``[nnx]``, ``[linen]``) through a small adapter that hides how each one holds
its parameters.
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
optax = pytest.importorskip("optax")

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx, serialization
from jax.sharding import PartitionSpec as P
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

from yat_core.config import TrainConfig
from yat_core.errors import BackendUnavailableError
from yat_core.mlp import LayerSpec, MLPSpec, init_mlp_numpy, seed_spec
from yat_core.nn import linen as ylinen
from yat_core.nn import nnx as ynnx
from yat_core.nn.options import native_option
from yat_core.product import softplus_inverse, yat_product
from yat_core.runners import make_runner


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
        values = {
            name: np.asarray(getattr(layer, name).get_value(), np.float64)
            for name in ("kernel", "bias", "alpha", "epsilon_raw")
            if getattr(layer, name) is not None
        }
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
    assert_matches_core(
        api.loss_and_grads, model, api.module.export_params(model), seed_spec(), f"{api.name} seed model", n=8
    )


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
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"use_bias": "yes"}, "bias must be True"),
        ({"use_alpha": [1.0]}, "alpha must be True"),
    ],
)
def test_layer_rejects_bad_options(api, kwargs, match):
    with pytest.raises(ValueError, match=match):
        api.layer(kwargs, 5, 3)


def test_linen_layer_reads_its_input_size_from_the_input():
    variables = ylinen.YatNMN(3).init(jax.random.key(0), jnp.zeros((2, 7)))
    assert variables["params"]["kernel"].shape == (7, 3)


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
        (
            lambda p: p.update({"0.kernel": np.zeros((12, 8), np.float32)}),
            ValueError,
            r"0\.kernel has shape \(12, 8\), expected \(8, 12\)",
        ),
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
    receipt = assert_trains_like_the_core(api.name)
    assert receipt["device"].startswith(("cpu", "gpu", "cuda", "tpu"))
    assert receipt["framework"] == api.name


def test_runner_uses_optax_adamw_and_counts_natively(api):
    runner = make_runner(seed_spec(), TrainConfig(framework=api.name))
    assert (runner.name, runner.framework, runner.n_params()) == (api.name, api.name, 235148)
    assert runner.distributions == ("flax", "jax", "jaxlib", "optax")
    assert type(runner).__module__ == f"yat_core.runners.{api.name}"
    if api is NNX:
        assert isinstance(runner.optimizer, nnx.Optimizer)
        assert isinstance(runner.model, ynnx.YatMLP)
    else:
        from flax.training.train_state import TrainState

        assert isinstance(runner.state, TrainState)
        assert ylinen.count_params(runner.model) == 235148  # bound to the training state's parameters


def test_float64_without_x64_mode_is_a_clear_error(api):
    if jax.config.read("jax_enable_x64"):
        pytest.skip("JAX runs in 64-bit mode here")
    with pytest.raises(BackendUnavailableError, match="^--dtype float64 on JAX .*JAX_ENABLE_X64"):
        make_runner(seed_spec(), TrainConfig(framework=api.name, dtype="float64"))


# ------------------------------------------------------- the framework's conventions
#
# Each Yat layer takes what its framework's own dense layer takes (nnx.Linear,
# linen.Dense) and behaves as it does; the checks compare the two side by side.

#: nnx.Linear / linen.Dense arguments the Yat layer has no use for: the core computes the product.
NOT_TAKEN = {"self", "dot_general", "dot_general_cls", "promote_dtype", "preferred_element_type", "parent", "name"}
YAT_ONLY = {"use_alpha", "epsilon", "learnable_epsilon", "spherical"}


def _build(api: type, cls: Any, in_features: int, out_features: int, **kwargs: Any) -> Any:
    if api is NNX:
        return cls(in_features, out_features, rngs=nnx.Rngs(0), **kwargs)
    return cls(out_features, **kwargs)


def _yat(api: type, in_features: int, out_features: int, **kwargs: Any) -> Any:
    return _build(api, api.module.YatNMN, in_features, out_features, **kwargs)


def _dense(api: type, in_features: int, out_features: int, **kwargs: Any) -> Any:
    """The framework's own dense layer, built as :func:`_yat` builds ours."""
    return _build(api, nnx.Linear if api is NNX else nn.Dense, in_features, out_features, **kwargs)


def _call(api: type, layer: Any, x: jax.Array) -> Any:
    """``layer(x)`` as a jitted function of x (Linen: initialised on x first)."""
    if api is NNX:
        return jax.jit(lambda x: layer(x))
    variables = layer.init(jax.random.key(0), x)
    return jax.jit(lambda x: layer.apply(variables, x))


def _walk_dots(jaxpr: Any) -> list[Any]:
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's Jaxpr
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():  # sub-jaxprs: jit, custom_jvp, ...
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    found += _walk_dots(sub)
    return found


def _dot_precisions(fn: Any, x: jax.Array) -> list[Any]:
    """The ``precision`` of every dot_general in the jaxpr of ``fn(x)`` and of its gradient."""
    return _walk_dots(jax.make_jaxpr(fn)(x)) + _walk_dots(jax.make_jaxpr(jax.grad(lambda x: fn(x).sum()))(x))


def test_layer_takes_the_arguments_of_the_frameworks_dense_layer(api):
    if api is NNX:
        ours, theirs = (inspect.signature(c.__init__).parameters for c in (ynnx.YatNMN, nnx.Linear))
    else:
        ours, theirs = (inspect.signature(c).parameters for c in (ylinen.YatNMN, nn.Dense))
    assert set(ours) - YAT_ONLY - NOT_TAKEN == set(theirs) - NOT_TAKEN
    # The initialisers' defaults are the core's distributions, not Flax's.
    for name in set(theirs) - NOT_TAKEN - {"kernel_init", "bias_init"}:
        assert (ours[name].kind, ours[name].default) == (theirs[name].kind, theirs[name].default), name


@pytest.mark.parametrize(
    "precision",
    [
        None,
        "highest",
        "float32",
        jax.lax.Precision.HIGH,
        ("highest", "highest"),
        "bfloat16",
        jax.lax.DotAlgorithmPreset.F32_F32_F32,
    ],
    ids=["none", "highest", "float32", "HIGH", "pair", "bfloat16", "F32_F32_F32"],
)
def test_precision_reaches_the_matrix_product_as_in_the_dense_layer(api, precision):
    x = jnp.ones((2, 4))
    ours = _dot_precisions(_call(api, _yat(api, 4, 3, precision=precision), x), x)
    theirs = _dot_precisions(_call(api, _dense(api, 4, 3, precision=precision), x), x)
    assert ours and set(ours) == set(theirs), (precision, ours, theirs)
    if precision is not None:
        assert None not in ours


def test_precision_inherits_the_default_when_none(api):
    x = jnp.ones((2, 4))
    with jax.default_matmul_precision("highest"):
        precisions = _dot_precisions(_call(api, _yat(api, 4, 3), x), x)
    assert set(precisions) == {(jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)}


def test_model_precision_reaches_every_layer(api):
    model = api.module.build_model(small_spec(), 0, precision="highest")
    if api is Linen:
        module, variables = model.unbind()
        model = lambda x: module.apply(variables, x)  # noqa: E731
    precisions = _dot_precisions(model, jnp.ones((2, 12)))
    assert len(precisions) >= 6 and set(precisions) == {(jax.lax.Precision.HIGHEST,) * 2}  # 3 layers, fwd + bwd


def test_highest_precision_is_as_close_to_float64_as_float32_allows(api):
    # On CPU every precision computes in float32; on GPUs and TPUs DEFAULT uses TF32 or
    # bfloat16 passes (errors ~1e-3), which this bound would catch if precision were dropped.
    x = np.random.default_rng(0).normal(size=(16, 256)).astype(np.float32)
    layer, values = api.layer({"precision": "highest", "use_bias": False}, 256, 8)
    ref = yat_product(x.astype(np.float64), values["kernel"], alpha=float(values["alpha"]))
    err = np.max(np.abs(api.apply_layer(layer, x) - ref)) / np.max(np.abs(ref))
    assert err < 1e-5


@pytest.mark.parametrize(
    "precision", [("highest", "default"), "fast", jax.lax.DotAlgorithm(jnp.float32, jnp.float32, jnp.float32)]
)
def test_bad_precision_is_a_clear_error(api, precision):
    with pytest.raises(ValueError, match="precision"):
        _call(api, _yat(api, 4, 3, precision=precision), jnp.ones((1, 4)))


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
def test_dtype_and_param_dtype_promote_as_the_dense_layer_does(api, x_dtype, dtype, param_dtype):
    x = jnp.arange(8).reshape(2, 4).astype(x_dtype)
    options = {"dtype": dtype if dtype is None else jnp.dtype(dtype), "param_dtype": jnp.dtype(param_dtype)}
    ours = _call(api, _yat(api, 4, 3, **options), x)(x)
    theirs = _call(api, _dense(api, 4, 3, **options), x)(x)
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    yat = _yat(api, 4, 3, **options)
    params = nnx.state(yat, nnx.Param) if api is NNX else yat.init(jax.random.key(0), x)
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(params)} == {param_dtype}


def test_bfloat16_compute_with_float32_parameters_tracks_float32(api):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.float32)
    full = _call(api, _yat(api, 16, 5), x)(x)
    half = _call(api, _yat(api, 16, 5, dtype=jnp.bfloat16), x)(x)  # same initial weights (same key)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(full), rtol=5e-2, atol=5e-2)


def _mesh() -> Any:
    axis_types = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((1, 1), ("in", "out"), axis_types=axis_types, devices=jax.devices()[:1])


def test_nnx_sharding_metadata_as_in_nnx_linear():
    meta = {"kernel_metadata": {"out_sharding": ("in", "out")}, "bias_metadata": {"out_sharding": ("out",)}}
    with jax.set_mesh(_mesh()):
        layer = ynnx.YatNMN(4, 3, **meta, rngs=nnx.Rngs(0))
        linear = nnx.Linear(4, 3, **meta, rngs=nnx.Rngs(0))
        # Sharded when created, as nnx.Linear's parameters are.
        shardings = [(v.kernel.get_value().sharding.spec, v.bias.get_value().sharding.spec) for v in (layer, linear)]
        y = nnx.jit(lambda m, x: m(x))(layer, jnp.ones((2, 4)))
    assert shardings[0] == shardings[1] == (P("in", "out"), P("out"))
    specs = nnx.get_partition_spec(nnx.state(layer))
    assert specs["kernel"].get_value() == P("in", "out") and specs["bias"].get_value() == P("out")
    assert specs["alpha"].get_value() == P()
    assert y.shape == (2, 3)


def test_nnx_with_partitioning_initialisers_annotate_the_parameters():
    with nnx.use_eager_sharding(False):
        layer = ynnx.YatNMN(
            4,
            3,
            kernel_init=nnx.with_partitioning(ynnx.xavier_normal, ("in", "out")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("out",)),
            rngs=nnx.Rngs(0),
        )
    specs = nnx.get_partition_spec(nnx.state(layer))
    assert specs["kernel"].get_value() == P("in", "out") and specs["bias"].get_value() == P("out")
    assert layer.kernel.get_metadata()["out_sharding"] == ("in", "out")


def test_linen_with_partitioning_initialisers_shard_as_in_dense():
    layer = ylinen.YatNMN(
        3,
        kernel_init=nn.with_partitioning(ylinen.xavier_normal, ("in", "out")),
        bias_init=nn.with_partitioning(nn.initializers.zeros, ("out",)),
    )
    x = jnp.ones((2, 4))
    abstract = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert isinstance(abstract["params"]["kernel"], nn.Partitioned)
    assert abstract["params"]["kernel"].names == ("in", "out")
    specs = nn.get_partition_spec(abstract)["params"]
    assert (specs["kernel"], specs["bias"], specs["alpha"]) == (P("in", "out"), P("out"), P())
    mesh = _mesh()
    variables = jax.jit(layer.init, out_shardings=nn.get_sharding(abstract, mesh))(jax.random.key(0), x)
    assert variables["params"]["kernel"].unbox().sharding.spec == P("in", "out")
    unboxed = nn.meta.unbox(variables)
    np.testing.assert_array_equal(layer.apply(variables, x), layer.apply(unboxed, x))


def test_nnx_split_merge_and_a_serialized_state_round_trip():
    layer = ynnx.YatNMN(5, 3, learnable_epsilon=True, epsilon=0.2, use_bias=0.5, rngs=nnx.Rngs(4))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5)), jnp.float32)
    graphdef, state = nnx.split(layer)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), layer(x))
    data = serialization.to_bytes(nnx.to_pure_dict(state))  # plain msgpack, no orbax
    fresh = nnx.eval_shape(
        lambda: ynnx.YatNMN(5, 3, learnable_epsilon=True, epsilon=0.2, use_bias=0.5, rngs=nnx.Rngs(9))
    )
    graphdef2, abstract = nnx.split(fresh)
    nnx.replace_by_pure_dict(abstract, serialization.from_bytes(nnx.to_pure_dict(abstract), data))
    restored = nnx.merge(graphdef2, abstract)
    assert sorted(nnx.to_pure_dict(nnx.state(restored))) == ["alpha", "epsilon_raw", "kernel"]
    np.testing.assert_array_equal(restored(x), layer(x))


def test_linen_variables_serialize_and_restore():
    layer = ylinen.YatNMN(3, learnable_epsilon=True, use_alpha=2.0)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5)), jnp.float32)
    variables = layer.init(jax.random.key(4), x)
    other = layer.init(jax.random.key(5), x)
    restored = serialization.from_bytes(other, serialization.to_bytes(variables))
    np.testing.assert_array_equal(layer.apply(restored, x), layer.apply(variables, x))


def test_layer_under_jit_equals_eager(api):
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 6)), jnp.float32)
    layer = _yat(api, 6, 2, spherical=True, precision="highest")
    if api is NNX:
        jitted = nnx.jit(lambda m, x: m(x))(layer, x)
        eager = layer(x)
    else:
        variables = layer.init(jax.random.key(0), x)
        jitted, eager = jax.jit(layer.apply)(variables, x), layer.apply(variables, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)  # XLA fuses differently


def test_from_spec_builds_the_layer_the_spec_describes(api):
    spec = LayerSpec("yat", 5, 3, bias=0.5, alpha=None, epsilon=0.1, learnable_epsilon=True)
    layer = api.module.YatNMN.from_spec(spec, **({"rngs": nnx.Rngs(0)} if api is NNX else {}))
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    if api is Linen:
        layer = layer.bind(layer.init(jax.random.key(0), jnp.asarray(x)))
        values = {k: np.asarray(v, np.float64) for k, v in layer.variables["params"].items()}
    else:
        values = {k: np.asarray(v, np.float64) for k, v in nnx.to_pure_dict(nnx.state(layer)).items()}
    assert sorted(values) == ["epsilon_raw", "kernel"]
    values["kernel"] = values["kernel"].T  # the core's (out, in)
    expected = yat_product(x.astype(np.float64), values["kernel"], **core_layer_kwargs(spec, values))
    np.testing.assert_allclose(api.apply_layer(layer, x), expected, rtol=1e-5, atol=1e-6)
