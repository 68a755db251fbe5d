"""TensorFlow models of any ModelSpec (the CNN) built by yat_core.nn.tf, and their training, against the core.

The reference for every number is the core in NumPy float64 (:func:`yat_core.mlp.mlp_forward`,
its training loop) and, for the plain convolution, :func:`test_nn_cnn_keras.numpy_conv`,
which uses nothing of :mod:`yat_core.conv`. The specs and helpers are shared with
``test_nn_cnn_keras``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_interchange import core_logits, random_params  # noqa: E402
from test_nn_cnn_keras import (  # noqa: E402
    CNN_SHAPES,
    CONV_CASES,
    assert_logits,
    conv_case_logits,
    conv_case_spec,
    every_kind_spec,
    inputs,
    trains_like_the_core,
)

from yat_core.mlp import init_mlp_numpy  # noqa: E402
from yat_core.nn import tf as ytf  # noqa: E402
from yat_core.spec import cnn_relu_spec, cnn_spec, count_params  # noqa: E402


def with_params(spec, seed=3):
    params = random_params(spec, seed)
    return ytf.import_params(ytf.build_model(spec, 0), params), params


@pytest.fixture(scope="module")
def cnn():
    return with_params(cnn_spec())


def test_cnn_is_tensorflows_and_equals_the_core_in_every_input_layout(cnn):
    model, params = cnn
    spec = cnn_spec()
    assert isinstance(model, ytf.YatModel) and ytf.YatMLP is ytf.YatModel and model.layout == (28, 28, 1)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["YatConv2D", "_Pool", "YatConv2D", "_Pool", "_Flatten", "YatNMN", "Linear"], kinds
    assert ytf.count_params(model) == count_params(spec) == 225037
    assert {k: v.shape for k, v in ytf.export_params(model).items()} == CNN_SHAPES == spec.param_shapes
    assert tuple(model.layers[2].kernel.shape) == (3, 3, 32, 64)  # Keras's layout, not the core's
    assert len(model.trainable_variables) == len(spec.param_shapes)
    x = inputs(spec)
    want = core_logits(params, x, spec)
    assert_logits(ytf.predict(model, x), want, "predict, core layout")
    last = np.moveaxis(x, 1, -1)  # the model's own layout
    for name, value in (("(n, 28, 28, 1)", last), ("(n, 784)", x.reshape(4, -1)), ("(n, 28, 28)", x[:, 0])):
        assert_logits(model(tf.constant(value)).numpy(), want, f"__call__ {name}")
        assert_logits(model.call(tf.constant(value)).numpy(), want, f"call {name}")


def test_cnn_refuses_channels_first_inputs_it_cannot_read(cnn):
    model, _ = cnn
    with pytest.raises(ValueError, match=r"yat_cnn takes inputs \(n, 28, 28, 1\).*got shape \(4, 2, 28, 28\)"):
        model.call(tf.zeros((4, 2, 28, 28)))
    with pytest.raises(ValueError, match=r"\(n, 1, 28, 28\) in the core's layout, or flat \(n, 784\)"):
        ytf.predict(model, np.zeros((4, 3, 28, 28), np.float32))


def test_cnn_relu_uses_tensorflows_convolution_and_equals_the_core():
    spec = cnn_relu_spec()
    model, params = with_params(spec)
    assert [type(layer).__name__ for layer in model.layers][:3] == ["_Conv", "_Pool", "_Conv"]
    assert ytf.count_params(model) == count_params(spec) == 225034
    x = inputs(spec)
    assert_logits(ytf.predict(model, x), core_logits(params, x, spec), "cnn_relu_spec")


def test_every_kind_equals_the_core():
    spec = every_kind_spec()
    model, params = with_params(spec)
    assert ytf.count_params(model) == count_params(spec)
    assert {k: v.shape for k, v in ytf.export_params(model).items()} == spec.param_shapes
    assert [type(layer).__name__ for layer in model.layers][:5] == [
        "YatConv2D",
        "YatConv2D",
        "YatConv2DTranspose",
        "_Pool",
        "_Conv",
    ]
    x = inputs(spec)
    want = core_logits(params, x, spec)
    assert_logits(ytf.predict(model, x), want, "every kind")
    assert_logits(model.call(tf.constant(np.moveaxis(x, 1, -1))).numpy(), want, "every kind, channels last")


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_plain_conv_equals_a_numpy_loop(case):
    spec = conv_case_spec(case)
    model, params = with_params(spec)
    x = inputs(spec)
    assert_logits(ytf.predict(model, x), conv_case_logits(params, x, spec), case)


def test_weights_are_init_mlp_numpy_and_round_trip():
    spec = every_kind_spec()
    fresh = ytf.export_params(ytf.build_model(spec, 5))
    for name, value in init_mlp_numpy(spec, 5).items():
        np.testing.assert_array_equal(fresh[name], value, err_msg=f"initial {name}")
    model, params = with_params(spec)
    exported = ytf.export_params(model)
    for name, value in params.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    again = ytf.import_params(ytf.build_model(spec, 1), exported)
    x = inputs(spec)
    np.testing.assert_array_equal(ytf.predict(again, x), ytf.predict(model, x))


def test_import_of_a_bad_mapping_is_refused_and_changes_nothing(cnn):
    model, params = cnn
    before = ytf.export_params(model)
    native = np.transpose(params["2.kernel"], (2, 3, 1, 0))  # the module's layout is not the interchange's
    for bad, error, match in (
        ({**params, "2.kernel": native}, ValueError, r"2.kernel has shape \(3, 3, 32, 64\), expected \(64, 32, 3, 3\)"),
        ({k: v for k, v in params.items() if k != "0.alpha"}, ValueError, r"missing 0.alpha"),
        ({**params, "1.kernel": params["0.kernel"]}, ValueError, "unexpected 1.kernel"),
        ({**params, "0.bias": params["0.bias"].astype(np.int32)}, TypeError, "real floating"),
    ):
        with pytest.raises(error, match=match):
            ytf.import_params(model, bad)
        after = ytf.export_params(model)
        assert all(np.array_equal(before[k], after[k]) for k in before), f"{match}: a refused import changed the model"


def test_checkpoint_holds_every_layer(tmp_path, cnn):
    model, _ = cnn
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "cnn"))
    other = ytf.build_model(cnn_spec(), 9)
    tf.train.Checkpoint(model=other).read(path).assert_consumed()
    want = ytf.export_params(model)
    assert all(np.array_equal(v, want[k]) for k, v in ytf.export_params(other).items())


def test_saved_model_round_trip(tmp_path, cnn):
    """A plain ``tf.saved_model.save`` keeps the CNN (any input shape) and its serving signature."""
    model, _ = cnn
    x = np.moveaxis(inputs(cnn_spec()), 1, -1)
    tf.saved_model.save(model, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_array_equal(loaded(tf.constant(x)).numpy(), model(tf.constant(x)).numpy())
    assert "serving_default" in loaded.signatures


@pytest.fixture
def tf_keras() -> None:
    """The runner's optimizer is tf.keras, which needs Keras on its tensorflow backend in this process."""
    keras = sys.modules.get("keras")
    active = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    if active != "tensorflow":
        pytest.skip(f"Keras runs on {active!r} in this test process; tf.keras optimizers need 'tensorflow'")


def test_runner_trains_the_cnn_like_the_core(tf_keras):
    """The XLA-compiled step trains the CNN as the core does: its losses, and its parameters to 1e-6."""
    assert trains_like_the_core("tf").framework == "tf"
