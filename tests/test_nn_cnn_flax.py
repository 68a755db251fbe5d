"""yat_core.nn.nnx and yat_core.nn.linen: the model of any ModelSpec (the Yat CNN and its baseline) against the core.

The reference is the core's :func:`~yat_core.mlp.mlp_forward` on NumPy float64 with
the same weights (:func:`~yat_core.mlp.init_mlp_numpy`); the Flax models run in
float32, channels last. Every test runs for both Flax APIs (``[nnx]``, ``[linen]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp
from flax import nnx
from test_interchange import assert_trains_like_the_core

from yat_core.mlp import init_mlp_numpy, mlp_forward
from yat_core.nn import linen as ylinen
from yat_core.nn import nnx as ynnx
from yat_core.spec import LayerSpec, ModelSpec, cnn_relu_spec, cnn_spec, count_params

MODULES = {"nnx": ynnx, "linen": ylinen}


@pytest.fixture(params=list(MODULES))
def api(request: pytest.FixtureRequest) -> str:
    return request.param


def every_kind_spec() -> ModelSpec:
    """A small 2-D network with every layer kind and the geometry options (shapes in the comments, channels first)."""
    return ModelSpec(
        (
            LayerSpec("yat_conv", 2, 4, kernel_size=(3, 3), padding="same", groups=2),  # (4, 9, 9)
            LayerSpec(
                "yat_conv",
                4,
                6,
                kernel_size=(3, 2),
                stride=(2, 2),
                padding=(1, 1),
                dilation=(1, 2),
                learnable_epsilon=True,
            ),  # (6, 5, 5)
            LayerSpec(
                "yat_conv_transpose",
                6,
                4,
                kernel_size=(3, 3),
                stride=(2, 2),
                padding=(1, 1),
                output_padding=(1, 1),
                groups=2,
            ),  # (4, 10, 10)
            LayerSpec("avg_pool", 4, 4, kernel_size=(2, 2)),  # (4, 5, 5)
            LayerSpec("conv", 4, 6, kernel_size=(3, 3), padding=(1, 1), groups=2, activation="relu"),  # (6, 5, 5)
            LayerSpec("max_pool", 6, 6, kernel_size=(2, 2)),  # (6, 2, 2): the fifth row and column dropped
            LayerSpec("flatten", 6, 24),
            LayerSpec("yat", 24, 8, bias=None, alpha=2.0, spherical=True),
            LayerSpec("linear", 8, 3, activation="relu"),
            LayerSpec("linear", 3, 2, bias=0.25),
        ),
        input_shape=(2, 9, 9),
    )


def one_d_spec() -> ModelSpec:
    return ModelSpec(
        (
            LayerSpec("conv", 3, 4, kernel_size=(3,), padding="valid", activation="relu"),  # (4, 10)
            LayerSpec("yat_conv", 4, 4, kernel_size=(3,), stride=(2,), padding="valid"),  # (4, 4)
            LayerSpec("max_pool", 4, 4, kernel_size=(2,)),  # (4, 2)
            LayerSpec("flatten", 4, 8),
            LayerSpec("linear", 8, 2),
        ),
        input_shape=(3, 12),
    )


SPECS = {"cnn": cnn_spec, "cnn_relu": cnn_relu_spec, "every_kind": every_kind_spec, "1d": one_d_spec}


def core_input(spec: ModelSpec, n: int = 3, seed: int = 0) -> np.ndarray:
    """Float64 samples in the core's layout, ``(n, C, *spatial)``."""
    return np.random.default_rng(seed).random((n, *spec.input_shape))


def core_logits(spec: ModelSpec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.asarray(mlp_forward({k: v.astype(np.float64) for k, v in params.items()}, x, spec))


def assert_close_to_core(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    # float32 rounding, relative to the logits' size
    err = float(np.max(np.abs(np.asarray(out, np.float64) - ref)))
    assert out.shape == ref.shape and err <= 1e-5 * max(1.0, float(np.max(np.abs(ref)))), f"{what}: error {err}"


@nnx.jit
def _nnx_call(model: Any, x: jax.Array) -> jax.Array:
    return model(x)


def call(api: str, model: Any, x: np.ndarray) -> np.ndarray:
    """The model's own call (compiled: op-by-op JAX would compile every primitive)."""
    if api == "nnx":
        return np.asarray(_nnx_call(model, jnp.asarray(x, jnp.float32)))
    module, variables = model.unbind()
    return np.asarray(jax.jit(module.apply)(variables, jnp.asarray(x, jnp.float32)))


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("name", list(SPECS))
def test_model_of_the_spec_computes_the_core_forward(api, name):
    spec = SPECS[name]()
    module = MODULES[api]
    model = module.build_model(spec, 0)
    assert module.count_params(model) == count_params(spec)
    x = core_input(spec)
    assert_close_to_core(
        module.predict(model, x.astype(np.float32)), core_logits(spec, init_mlp_numpy(spec, 0), x), name
    )


def test_cnn_counts_its_parameters_as_the_spec(api):
    module = MODULES[api]
    assert module.count_params(module.build_model(cnn_spec(), 0)) == 225037
    assert module.count_params(module.build_model(cnn_relu_spec(), 0)) == 225034


def test_model_call_takes_channels_last_and_reads_other_shapes_in_the_cores_order(api):
    spec = every_kind_spec()
    model = MODULES[api].build_model(spec, 0)
    x = core_input(spec)  # (n, C, H, W)
    ref = core_logits(spec, init_mlp_numpy(spec, 0), x)
    assert_close_to_core(call(api, model, x.transpose(0, 2, 3, 1)), ref, "channels last")
    assert_close_to_core(call(api, model, x.reshape(len(x), -1)), ref, "flat, channels first")
    with pytest.raises(ValueError, match=r"inputs \(n, 9, 9, 2\), channels last, or \(n, 162\) flat"):
        call(api, model, x[:, :, :8])


def test_mnist_shaped_pixels_reach_the_cnn(api):
    # (n, 28, 28), as the runners' batches come before flattening; one channel: no order to get wrong
    spec = cnn_spec()
    model = MODULES[api].build_model(spec, 0)
    x = core_input(spec, n=2)
    assert_close_to_core(call(api, model, x[:, 0]), core_logits(spec, init_mlp_numpy(spec, 0), x), "(n, 28, 28)")


# ---------------------------------------------------------------- layers and interchange


def test_cnn_is_built_from_the_frameworks_layers_in_flax_layouts(api):
    yat, relu = MODULES[api].build_model(cnn_spec(), 0), MODULES[api].build_model(cnn_relu_spec(), 0)
    if api == "nnx":
        assert [type(layer).__name__ for layer in yat.layers] == [
            "YatConv",
            "NoneType",
            "YatConv",
            "NoneType",
            "NoneType",
            "YatNMN",
            "Linear",
        ]
        assert isinstance(relu.layers[0], nnx.Conv) and isinstance(relu.layers[5], nnx.Linear)
        kernels = {str(i): layer.kernel.get_value().shape for i, layer in enumerate(relu.layers) if layer is not None}
    else:
        assert sorted(yat.variables["params"]) == ["0", "2", "5", "6"]
        assert sorted(yat.variables["params"]["0"]) == ["alpha", "bias", "kernel"]
        kernels = {name: tree["kernel"].shape for name, tree in relu.variables["params"].items()}
    # (*k, in/groups, out) and (in, out), as nnx.Conv / linen.Conv and Linear / Dense keep them
    assert kernels == {"0": (3, 3, 1, 32), "2": (3, 3, 32, 64), "5": (1600, 128), "6": (128, 10)}


@pytest.mark.parametrize("spec_fn", [cnn_spec, every_kind_spec], ids=["cnn", "every_kind"])
def test_export_is_the_cores_names_layouts_and_bits(api, spec_fn):
    spec = spec_fn()
    exported = MODULES[api].export_params(MODULES[api].build_model(spec, 0))
    assert {k: v.shape for k, v in exported.items()} == spec.param_shapes  # the core's layouts ...
    assert list(exported) == list(spec.param_shapes)  # ... and order
    for name, value in init_mlp_numpy(spec, 0).items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_export_import_round_trip_is_exact_and_sets_the_forward(api):
    spec = every_kind_spec()
    module = MODULES[api]
    params = init_mlp_numpy(spec, 7)
    model = module.import_params(module.build_model(spec, 0), {k: v.astype(np.float64) for k, v in params.items()})
    exported = module.export_params(model)
    for name, value in params.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    x = core_input(spec, seed=1)
    assert_close_to_core(module.predict(model, x.astype(np.float32)), core_logits(spec, params, x), "imported")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        # a kernel in Flax's layout is not the core's
        (lambda p: p.update({"0.kernel": p["0.kernel"].transpose(2, 3, 1, 0)}), r"0\.kernel has shape \(3, 3, 1, 32\)"),
        (lambda p: p.pop("2.alpha"), r"missing 2\.alpha"),
        (lambda p: p.update({"1.kernel": np.zeros((2, 2), np.float32)}), r"unexpected 1\.kernel"),  # the pooling
    ],
)
def test_bad_import_is_refused_and_leaves_the_model_unchanged(api, mutate, match):
    spec = cnn_spec()
    module = MODULES[api]
    model = module.build_model(spec, 0)
    params = init_mlp_numpy(spec, 1)
    mutate(params)
    with pytest.raises(ValueError, match=match):
        module.import_params(model, params)
    after = module.export_params(model)
    for name, value in init_mlp_numpy(spec, 0).items():
        np.testing.assert_array_equal(after[name], value, err_msg=f"a refused import changed {name}")


# ---------------------------------------------------------------- training


def test_runner_trains_the_cnn_like_the_core(api):
    receipt = assert_trains_like_the_core(api, model="cnn")
    assert receipt["framework"] == api and receipt["params"] == 225037
