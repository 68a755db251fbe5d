"""yat_core.nn.tf and yat_core.runners.tf: the TensorFlow modules and runner against the core.

The reference for every number is the core in NumPy float64 (forward and analytic
gradients); the TensorFlow model runs in float32 unless a test says otherwise.
Besides the numbers, the modules are held to TensorFlow's conventions: ``Dense``'s
kernel layout ``(in, units)`` and argument names, plain ``tf.saved_model``
round trips, initial weights that follow ``tf.random.set_seed``, every variable
in ``trainable_variables`` and checkpoints. Also the array-API namespace of
TensorFlow tensors (:mod:`yat_core.namespaces.tf`), which the modules run on.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from test_interchange import (  # noqa: E402
    LAYER_CASES,
    MODEL_CASES,
    assert_matches_core,
    assert_trains_like_the_core,
    batch,
    case_spec,
    core_layer_kwargs,
    core_logits,
    framework,
    random_params,
    small_spec,
    tiny_data,
)
from test_nn_keras import (  # noqa: E402
    CORE_CASES,
    NAMESPACE_CASES,
    adamw_reference,
    assert_isdtype_matches_numpy,
    assert_namespace_case,
    assert_trains_like_core_adamw,
    tf_export_batch,
)

from yat_core.errors import BackendUnavailableError  # noqa: E402
from yat_core.mlp import LayerSpec, MLPSpec, init_layer_numpy, init_mlp_numpy, seed_spec  # noqa: E402
from yat_core.namespaces.tf import namespace  # noqa: E402
from yat_core.nn import tf as ytf  # noqa: E402
from yat_core.nn.interchange import load_npz, save_npz  # noqa: E402
from yat_core.optim import AdamWConfig  # noqa: E402
from yat_core.product import softplus_inverse, yat_product  # noqa: E402
from yat_core.runners import make_runner  # noqa: E402
from yat_core.train import TrainConfig, train  # noqa: E402


def variables_by_name(module: tf.Module) -> dict[str, tf.Variable]:
    """A layer's trainable variables under their own names (``kernel``, ``bias``, ...)."""
    return {v.name.split("/")[-1].split(":")[0]: v for v in module.trainable_variables}


def native_options(options: dict[str, Any]) -> dict[str, Any]:
    """Layer options in the core's spelling (``bias``, ``alpha``) as the TF module names them."""
    renamed = {"bias": "use_bias", "alpha": "use_alpha"}
    return {renamed.get(k, k): v for k, v in options.items()}


def tf_loss_and_grads(model: ytf.YatMLP, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """TensorFlow's own loss and GradientTape gradients, under the core's names and layouts."""
    names = {id(getattr(layer, n)): f"{i}.{n}" for i, layer in enumerate(model.layers) for n in layer.spec.param_shapes}
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x)))
    grads = tape.gradient(loss, variables)
    # Kernels are (in, units) here, (out, in) in the core.
    return float(loss), {
        names[id(v)]: g.numpy().T if names[id(v)].endswith("kernel") else g.numpy() for v, g in zip(variables, grads)
    }


@pytest.fixture
def tf_keras() -> None:
    """The runner's optimizer is tf.keras, which needs Keras on its tensorflow backend in this process."""
    keras = sys.modules.get("keras")
    active = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    if active != "tensorflow":
        pytest.skip(f"Keras runs on {active!r} in this test process; tf.keras optimizers need 'tensorflow'")


# ------------------------------------------------------------------ the namespace


@pytest.mark.parametrize("case", NAMESPACE_CASES)
def test_namespace_matches_numpy(case):
    assert_namespace_case(namespace(), lambda t: t.numpy(), case, NAMESPACE_CASES)


@pytest.mark.parametrize("case", CORE_CASES)
def test_core_functions_run_on_the_namespace(case):
    assert_namespace_case(namespace(), lambda t: t.numpy(), case, CORE_CASES, rtol=1e-5)


def test_namespace_isdtype_matches_numpy():
    assert_isdtype_matches_numpy(namespace(), lambda d: tf.as_dtype(d).name)


def test_yat_product_finds_the_namespace_of_tf_tensors():
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(4, 5)), rng.normal(size=(3, 5))
    got = yat_product(tf.constant(x), tf.constant(w), bias=0.5, alpha=2.0)
    assert tf.is_tensor(got) and got.dtype == tf.float64
    np.testing.assert_allclose(got.numpy(), yat_product(x, w, bias=0.5, alpha=2.0), rtol=1e-12)


def test_model_runs_inside_tf_function_with_unknown_batch():
    model = ytf.build_model(seed_spec(), 0)
    x = tf_export_batch()
    signature = [tf.TensorSpec([None, 784], tf.float32)]
    nested = tf.function(lambda t: model(t), input_signature=signature)  # the traced __call__ inside another
    inline = tf.function(lambda t: model.call(t), input_signature=signature)  # the plain forward traced in
    for traced in (nested, inline):
        np.testing.assert_allclose(traced(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ the seed model


def test_seed_model_tracks_all_235148_parameters():
    model = ytf.build_model(seed_spec(), 0)
    assert ytf.count_params(model) == 235148
    assert sum(int(tf.size(v)) for v in model.variables) == 235148
    names = [v.name for v in model.trainable_variables]
    assert len(names) == 8 and "yat_mlp/linear_2/kernel:0" in names and "yat_mlp/linear_2/bias:0" in names


@pytest.mark.parametrize("seed", [0, 7])
def test_build_model_weights_are_init_mlp_numpy_bit_for_bit(seed):
    expected = init_mlp_numpy(seed_spec(), seed)
    model = ytf.build_model(seed_spec(), seed)
    exported = ytf.export_params(model)
    assert list(exported) == list(expected)
    for name, value in expected.items():
        assert exported[name].dtype == np.float32, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    np.testing.assert_array_equal(model.layers[1].kernel.numpy(), expected["1.kernel"].T)


def test_seed_model_forward_and_gradients_match_the_core():
    model = ytf.build_model(seed_spec(), 0)
    assert_matches_core(tf_loss_and_grads, model, ytf.export_params(model), seed_spec(), "seed model", n=8)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_every_option_matches_the_core(case):
    spec = case_spec(case)
    params = random_params(spec, 1)
    model = ytf.import_params(ytf.build_model(spec, 12345), params)
    x, _ = batch(spec)
    np.testing.assert_allclose(ytf.predict(model, x), core_logits(params, x, spec), rtol=1e-5, atol=1e-6)
    assert_matches_core(tf_loss_and_grads, model, params, spec, case)


def test_float64_model_matches_the_core_closely():
    spec = small_spec(learnable_epsilon=True, spherical=True)
    params = {k: v.astype(np.float64) for k, v in random_params(spec, 2).items()}
    model = ytf.import_params(ytf.build_model(spec, 0, dtype=tf.float64), params)
    assert all(v.dtype == tf.float64 for v in model.trainable_variables)
    x, _ = batch(spec)
    reference = core_logits(params, x, spec)
    np.testing.assert_allclose(ytf.predict(model, x), reference, rtol=1e-12, atol=1e-12 * np.abs(reference).max())


def test_model_flattens_image_shaped_inputs():
    model = ytf.build_model(seed_spec(), 0)
    x = tf_export_batch()
    np.testing.assert_array_equal(ytf.predict(model, x.reshape(-1, 28, 28)), ytf.predict(model, x))


# ---------------------------------------------------------------------- the layer


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_options_create_the_right_variables(case):
    options, expected_params = LAYER_CASES[case]
    layer = ytf.YatNMN(5, 3, seed=0, **native_options(options))
    values = {n: np.asarray(v.numpy(), np.float64) for n, v in variables_by_name(layer).items()}
    assert sorted(values) == expected_params
    if "epsilon_raw" in values:
        assert float(values["epsilon_raw"]) == pytest.approx(softplus_inverse(0.1), rel=1e-6)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    spec = LayerSpec("yat", 5, 3, **options)
    expected = yat_product(x.astype(np.float64), values["kernel"].T, **core_layer_kwargs(spec, values))
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_layer_defaults_are_the_cores():
    layer = ytf.YatNMN(784, 256, seed=3)
    assert layer.spec == LayerSpec("yat", 784, 256) and (layer.in_features, layer.units) == (784, 256)
    assert ytf.count_params(layer) == 200961 and float(layer.alpha.numpy()) == 1.0
    expected = init_layer_numpy(LayerSpec("yat", 784, 256), np.random.default_rng(3))
    for name, variable in variables_by_name(layer).items():
        value = expected[name].T if name == "kernel" else expected[name]
        np.testing.assert_array_equal(variable.numpy(), value.astype(np.float32), err_msg=name)
    assert ytf.YatNMN.from_spec(layer.spec).spec == layer.spec


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epsilon": 0.0}, ValueError, "epsilon must be a finite number > 0"),
        ({"use_bias": "yes"}, ValueError, "bias must be True"),
        ({"use_alpha": [1.0]}, ValueError, "alpha must be True"),
        ({"units": 4.9}, TypeError, "units must be a positive integer, got 4.9"),
        ({"in_features": True}, TypeError, "in_features must be a positive integer"),
        ({"dtype": tf.int32}, TypeError, "dtype must be a floating dtype, got int32"),
    ],
)
def test_layer_rejects_bad_options(kwargs, error, match):
    args = {"in_features": 5, "units": 3, **kwargs}
    with pytest.raises(error, match=match):
        ytf.YatNMN(**args)


def test_layer_rejects_inputs_that_do_not_fit_its_signature():
    layer = ytf.YatNMN(5, 3, seed=0)
    with pytest.raises(TypeError, match=r"shape=\(None, 5\)"):
        layer(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        layer(tf.zeros((2, 5), tf.float64))
    # NumPy inputs are converted to the signature's dtype, as tf.function converts them.
    x = np.random.default_rng(0).normal(size=(2, 5))
    np.testing.assert_array_equal(layer(x).numpy(), layer(x.astype(np.float32)).numpy())
    # The model flattens any input per example, then holds it to its input size.
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"\[2,10\] is not compatible with expected shape \[\?,12\]"
    ):
        ytf.build_model(small_spec(), 0)(np.zeros((2, 5, 2), np.float32))


def test_linear_layer_constant_bias_and_relu_match_the_core():
    layer = ytf.Linear(6, 4, "relu", use_bias=0.5, seed=0)
    assert [v.name for v in layer.trainable_variables] == ["linear/kernel:0"]
    x = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    kernel = layer.kernel.numpy().astype(np.float64)
    np.testing.assert_allclose(layer(x).numpy(), np.maximum(x @ kernel + 0.5, 0), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ TensorFlow's conventions


def test_kernel_has_dense_layout_and_dense_argument_names():
    """Kernel (in, units) as Dense; Dense's names (units, use_bias, activation); Keras's layer agrees."""
    linear, yat = ytf.Linear(6, 4, seed=0), ytf.YatNMN(6, 4, seed=0)
    assert tuple(linear.kernel.shape) == tuple(yat.kernel.shape) == (6, 4)
    x = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
    # Dense's forward on the same variables: inputs @ kernel + bias.
    dense_out = tf.matmul(x, linear.kernel) + linear.bias
    np.testing.assert_allclose(linear(x).numpy(), dense_out.numpy(), rtol=1e-6, atol=1e-6)
    yat_names = set(inspect.signature(ytf.YatNMN).parameters)
    assert {"units", "use_bias", "use_alpha"} <= yat_names and not {"out_features", "bias", "alpha"} & yat_names
    assert list(inspect.signature(ytf.Linear).parameters)[:4] == ["in_features", "units", "activation", "use_bias"]
    if importlib.util.find_spec("keras") is not None:
        from yat_core.nn import keras as ykeras

        shared = yat_names - {"in_features", "seed", "dtype", "name"}
        assert shared <= set(inspect.signature(ykeras.YatNMN).parameters), "TF and Keras layers name options alike"


@pytest.mark.parametrize("what", ["layer", "layer-float64", "seed-model"])
def test_plain_saved_model_round_trip_gives_identical_outputs(what, tmp_path):
    dtype = tf.float64 if what.endswith("float64") else tf.float32
    if what == "seed-model":
        module: Any = ytf.import_params(ytf.build_model(seed_spec(), 0), random_params(seed_spec(), 4))
        x = tf_export_batch()
    else:
        module = ytf.YatNMN(6, 3, use_bias=0.5, learnable_epsilon=True, spherical=True, seed=1, dtype=dtype)
        x = np.random.default_rng(1).normal(size=(7, 6)).astype(dtype.as_numpy_dtype)
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    for n in (len(x), 1):  # any batch size: the saved signature's batch dimension is None
        np.testing.assert_array_equal(loaded(x[:n]).numpy(), module(x[:n]).numpy(), err_msg=what)
    serving = loaded.signatures["serving_default"]
    out = serving(tf.constant(x[:2]))["output_0"]
    np.testing.assert_array_equal(out.numpy(), module(x[:2]).numpy())
    if what == "seed-model":
        np.testing.assert_array_equal(loaded(x.reshape(-1, 28, 28)).numpy(), module(x).numpy())
        np.testing.assert_array_equal(loaded.layers[0].kernel.numpy(), module.layers[0].kernel.numpy())
    else:
        assert serving.structured_input_signature[1]["inputs"].shape.as_list() == [None, 6]


@pytest.mark.parametrize(
    "make",
    [lambda: ytf.YatNMN(8, 4), lambda: ytf.Linear(8, 4), lambda: ytf.YatMLP(small_spec())],
    ids=["yat", "linear", "mlp"],
)
def test_unseeded_weights_follow_tensorflows_global_seed(make):
    def weights() -> list[np.ndarray]:
        return [v.numpy() for v in make().trainable_variables]

    def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
        return all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))

    tf.random.set_seed(11)
    first, next_one = weights(), weights()
    tf.random.set_seed(11)
    assert same(weights(), first), "tf.random.set_seed(s) then construction must repeat the weights"
    assert not same(next_one, first), "two constructions after one set_seed draw new weights, as TF ops do"
    tf.random.set_seed(12)
    assert not same(weights(), first), "another global seed gives other weights"


def test_seeded_weights_ignore_the_global_seed():
    tf.random.set_seed(1)
    a = ytf.export_params(ytf.build_model(small_spec(), 5))
    tf.random.set_seed(2)
    b = ytf.export_params(ytf.build_model(small_spec(), 5))
    expected = init_mlp_numpy(small_spec(), 5)
    assert all(np.array_equal(a[k], expected[k]) and np.array_equal(b[k], expected[k]) for k in expected)
    tf.random.set_seed(2)
    layer = ytf.YatNMN(8, 4, seed=9)
    np.testing.assert_array_equal(
        layer.kernel.numpy().T, init_layer_numpy(layer.spec, np.random.default_rng(9))["kernel"].astype(np.float32)
    )


def test_trainable_variables_and_checkpoint_see_every_layer_variable(tmp_path):
    layer = ytf.YatNMN(5, 3, learnable_epsilon=True, seed=0)
    assert sorted(variables_by_name(layer)) == ["alpha", "bias", "epsilon_raw", "kernel"]
    saved = {n: v.numpy() for n, v in variables_by_name(layer).items()}
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    entries = {name.split("/")[1] for name, _ in tf.train.list_variables(path) if name.startswith("layer/")}
    assert entries == set(saved)
    for v in layer.trainable_variables:
        v.assign(tf.zeros_like(v))
    tf.train.Checkpoint(layer=layer).restore(path).assert_consumed()
    for name, variable in variables_by_name(layer).items():
        np.testing.assert_array_equal(variable.numpy(), saved[name], err_msg=name)


def test_checkpoint_saves_and_restores_every_model_parameter(tmp_path):
    model = ytf.import_params(ytf.build_model(seed_spec(), 0), random_params(seed_spec(), 1))
    saved = ytf.export_params(model)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    entries = {name: shape for name, shape in tf.train.list_variables(path) if name.startswith("model/")}
    assert len(entries) == 8 and sum(math.prod(s) for s in entries.values()) == 235148
    ytf.import_params(model, init_mlp_numpy(seed_spec(), 2))
    tf.train.Checkpoint(model=model).restore(path).assert_consumed()
    for name, value in ytf.export_params(model).items():
        np.testing.assert_array_equal(value, saved[name], err_msg=name)


# ------------------------------------------------------------------ interchange


def test_export_import_round_trip_is_exact_and_keeps_the_core_layout():
    spec = small_spec(learnable_epsilon=True)
    params = random_params(spec, 3)
    model = ytf.import_params(ytf.build_model(spec, 12345), params)
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), params["0.kernel"].T)
    exported = ytf.export_params(model)
    assert list(exported) == list(spec.param_shapes)
    for name, value in params.items():
        assert exported[name].dtype == np.float32 and exported[name].shape == value.shape, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_import_of_core_params_gives_the_cores_logits():
    spec = seed_spec()
    params = {k: v.astype(np.float64) for k, v in init_mlp_numpy(spec, 5).items()}  # cast on import
    model = ytf.import_params(ytf.build_model(spec, 0), params)
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)
    x = tf_export_batch()
    logits = ytf.predict(model, x)
    reference = core_logits({k: v.astype(np.float32) for k, v in params.items()}, x, spec)
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5 * float(np.abs(reference).max()))
    assert np.array_equal(logits.argmax(1), reference.argmax(1))


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
    model = ytf.build_model(spec, 0)
    before = ytf.export_params(model)
    with pytest.raises(error, match=match):
        ytf.import_params(model, params)
    after = ytf.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), "a rejected import changed the model"


def test_export_rejects_other_modules():
    with pytest.raises(TypeError, match="YatMLP"):
        ytf.export_params(ytf.YatNMN(3, 2))


@pytest.mark.parametrize("other", ["torch", "nnx", "linen", "mlx"])
def test_parameters_move_to_and_from_other_frameworks(other, tmp_path):
    """TF -> npz -> other framework, and back: same parameters, same logits."""
    module = framework(other)
    spec = small_spec(learnable_epsilon=True)
    params = random_params(spec, 1)
    ours = ytf.import_params(ytf.build_model(spec, 12345), params)
    theirs = module.import_params(
        module.build_model(spec, 12345), load_npz(save_npz(tmp_path / "tf.npz", ytf.export_params(ours)))
    )
    back = ytf.import_params(
        ytf.build_model(spec, 0), load_npz(save_npz(tmp_path / "o.npz", module.export_params(theirs)))
    )
    for name, value in params.items():
        np.testing.assert_array_equal(ytf.export_params(back)[name], value, err_msg=f"tf -> {other} -> tf: {name}")
    x, _ = batch(spec, n=64)
    a, b = ytf.predict(ours, x), module.predict(theirs, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
    assert np.array_equal(a.argmax(1), b.argmax(1))


# ---------------------------------------------------------------------- training


def test_runner_recipe_is_a_tf_keras_adamw_stepping_as_the_core(tf_keras):
    from yat_core.runners.tf import RUNNER_CLASS, TFRunner

    runner = make_runner(seed_spec(), TrainConfig(framework="tf"))
    assert RUNNER_CLASS is TFRunner and isinstance(runner, TFRunner)
    assert (runner.name, runner.framework, runner.n_params()) == ("tf", "tf", 235148)
    assert runner.distributions == ("tensorflow", "tensorflow-cpu", "keras")
    assert runner.device_name() in ("CPU:0", "GPU:0") and runner.receipt_facts() == {"framework": "tf"}
    opt = runner.optimizer
    assert isinstance(opt, tf.keras.optimizers.AdamW) and type(opt).__name__ == "CoreAdamW"
    got = (float(opt.learning_rate.numpy()), opt.beta_1, opt.beta_2, opt.epsilon, opt.weight_decay)
    assert got == pytest.approx((3e-4, 0.9, 0.999, 1e-8, 0.01))
    assert not opt.amsgrad and opt.global_clipnorm is None and opt.clipnorm is None
    assert all(isinstance(v, tf.Variable) for v in runner.model.trainable_variables)


def test_runner_trains_like_the_core(tf_keras):
    """The XLA step with the core's AdamW: the core's run to 1e-6 (Keras's stock AdamW is not)."""
    assert assert_trains_like_the_core("tf")["framework"] == "tf"


def test_runner_trains_with_the_cores_adamw_through_the_shared_loop(tf_keras):
    receipt = assert_trains_like_core_adamw("tf", "CPU:0")
    assert receipt["framework"] == "tf"
    assert receipt["versions"].get("tensorflow") or receipt["versions"].get("tensorflow-cpu")
    assert receipt["versions"].get("keras")


def test_runner_places_on_the_asked_device_or_says_why_not(tf_keras):
    runner = make_runner(small_spec(), TrainConfig(framework="tf", device="cpu"))
    assert runner.device_name() == "CPU:0"
    loss = runner.step(
        runner.put(np.zeros((4, 12), np.uint8)),
        runner.put(np.arange(4, dtype=np.int32)),
        runner.put(np.arange(4, dtype=np.int32)),
    )
    assert math.isfinite(runner.to_float(loss)) and runner.host_losses(loss) == [runner.to_float(loss)]
    with pytest.raises(BackendUnavailableError, match="no device 'cuda:99'"):
        make_runner(small_spec(), TrainConfig(framework="tf", device="cuda:99"))


def test_runner_float64_matches_the_core_closely(tf_keras):
    config = TrainConfig(framework="tf", dtype="float64", epochs=1, batch_size=32, optimizer=AdamWConfig(eps=1e-4))
    runners: list[Any] = []

    def make(spec: MLPSpec, cfg: TrainConfig) -> Any:
        runners.append(make_runner(spec, cfg))
        return runners[-1]

    receipt = train(config, data=tiny_data(), runner_factory=make, progress=False, log=None)
    losses, params = adamw_reference(config, tiny_data(), seed_spec())
    np.testing.assert_allclose(receipt["history"][0]["step_loss"], losses, rtol=1e-8)
    ours = runners[0].export_params()
    for name, value in params.items():
        assert ours[name].dtype == np.float64, name
        # tf.keras keeps the learning rate in float32: ~1e-6 of a step, far below float32 training.
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-9, err_msg=name)


def test_runner_evaluate_sums_the_cores_loss_and_counts_correct(tf_keras):
    data = tiny_data(n_train=8, n_test=45)
    runner = make_runner(seed_spec(), TrainConfig(framework="tf"))
    images, labels = data.test_images.reshape(45, -1), data.test_labels.astype(np.int32)
    loss, correct = runner.evaluate(runner.put(images), runner.put(labels))
    logits = core_logits(runner.export_params(), images.astype(np.float32) / np.float32(255), seed_spec())
    assert int(correct) == int(np.sum(logits.argmax(1) == labels))
    shifted = logits - logits.max(1, keepdims=True)
    nll = np.log(np.exp(shifted).sum(1)) - shifted[np.arange(45), labels]
    assert runner.to_float(loss) == pytest.approx(float(nll.sum()), rel=1e-5)


def test_runner_refuses_a_keras_backend_other_than_tensorflow():
    """Run in a fresh process with KERAS_BACKEND=jax: a one-line error, not a failure deep in Keras."""
    pytest.importorskip("jax")
    code = "\n".join(
        [
            "from yat_core.errors import BackendUnavailableError",
            "from yat_core.mlp import seed_spec",
            "from yat_core.runners import make_runner",
            "from yat_core.train import TrainConfig",
            "try:",
            "    make_runner(seed_spec(), TrainConfig(framework='tf'))",
            "except BackendUnavailableError as exc:",
            "    print('REFUSED:', exc)",
        ]
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "REFUSED:" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "needs the tensorflow Keras backend; Keras runs on 'jax'" in proc.stdout
