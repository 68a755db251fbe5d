"""The TensorFlow Yat convolutions of yat_core.nn.tf against the core, and TensorFlow's conventions.

The reference for every number is the core in NumPy float64 with each case's geometry
written out by hand (:data:`test_nn_conv_keras.CASES`, shared with the Keras layers,
whose tensorflow-backend process also checks that these modules give the Keras layers'
outputs). Besides the numbers: Keras's argument names and kernel layouts, ``data_format``
both ways, TensorFlow's own convolutions aligned with the Yat ``dot`` term, every
variable in ``trainable_variables`` and checkpoints, ``tf.saved_model`` round trips,
seeds, the core's analytic gradients, and clear errors.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_nn_conv_keras import (  # noqa: E402
    CASES,
    assert_close,
    case_inputs,
    case_params,
    core_reference,
    keras_transposed_size,
)

from yat_core.conv import yat_conv, yat_conv_transpose, yat_conv_transpose_vjp, yat_conv_vjp  # noqa: E402
from yat_core.mlp import init_layer_numpy  # noqa: E402
from yat_core.nn import tf as ytf  # noqa: E402
from yat_core.nn.options import conv_layer_spec, keras_transpose_padding, kernel_from_core  # noqa: E402
from yat_core.product import softplus  # noqa: E402


def make(c: Any, **extra: Any) -> ytf._YatConv:
    """The case's module (seeded)."""
    return ytf._CONV_CLASSES[(c.transposed, c.rank)](c.in_channels, **{"seed": 0, **c.args, **extra})


def shapes(module: ytf._YatConv) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for k, v in module.export_params().items()}


def random_module(c: Any, **extra: Any) -> ytf._YatConv:
    module = make(c, **extra)
    return module.import_params(case_params(shapes(module)))


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("name", list(CASES))
def test_module_equals_the_core_in_both_data_formats(name):
    c = CASES[name]
    module = make(c)
    params = case_params(shapes(module))
    module.import_params(params)
    x = case_inputs(c)
    want = core_reference(c, x, params)
    assert_close(module(x).numpy(), want, f"{name} channels_last")
    first = make(c, data_format="channels_first").import_params(params)
    assert_close(np.moveaxis(first(np.moveaxis(x, -1, 1)).numpy(), 1, -1), want, f"{name} channels_first")
    assert module.kernel.dtype == tf.float32 and module(x).dtype == tf.float32


def test_float64_module_equals_the_core_closely():
    c = CASES["2d-transpose-int-padding-groups-dilated"]
    module = make(c, dtype=tf.float64)
    params = {k: v.astype(np.float64) for k, v in case_params(shapes(module)).items()}
    x = case_inputs(c).astype(np.float64)
    got = module.import_params(params)(x).numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, core_reference(c, x, params), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("k, s", [(1, 1), (2, 1), (3, 1), (2, 2), (3, 2), (4, 2), (3, 3)])
def test_tensorflows_own_convolution_is_the_dot_term(transposed, padding, k, s):
    """With no bias or alpha and a huge epsilon, ``y * epsilon = dot^2``: the patches are TensorFlow's.

    ``tf.nn.convolution`` / ``tf.nn.conv_transpose`` with the same padding string
    (``conv_transpose`` at the output shape Keras gives), on the same kernel.
    """
    eps = 1e8
    x = np.random.default_rng(k * 10 + s).normal(size=(2, 7, 6, 3)).astype(np.float32)
    cls = ytf.YatConv2DTranspose if transposed else ytf.YatConv2D
    module = cls(3, 2, k, strides=s, padding=padding, use_bias=False, use_alpha=False, epsilon=eps, seed=1)
    y = module(x).numpy().astype(np.float64)
    if transposed:
        out = [keras_transposed_size(i, k, s, 1, padding, None) for i in x.shape[1:3]]
        assert list(y.shape[1:3]) == out
        dot = tf.nn.conv_transpose(x, module.kernel, (2, *out, 2), strides=s, padding=padding.upper())
    else:
        dot = tf.nn.convolution(x, module.kernel, strides=s, padding=padding.upper())
    dot = dot.numpy().astype(np.float64)
    assert y.shape == dot.shape
    assert np.max(np.abs(y * eps - dot**2)) / max(1.0, np.max(dot**2)) < 1e-4


def test_native_convolution_equals_the_unfold_on_the_modules_namespace():
    """The TensorFlow native convolution (grouped 3-D and strided dilated included) against the core's unfold."""
    xp, rng = ytf.namespace(), np.random.default_rng(3)
    cases = [
        (False, (2, 4, 5, 4, 3), (4, 2, 2, 2, 2), {"groups": 2, "padding": 1}),
        (False, (1, 2, 9, 8), (3, 2, 3, 3), {"stride": 2, "dilation": 2, "padding": 1}),
        (False, (1, 2, 5, 6), (4, 1, 2, 4), {"padding": "same", "groups": 2}),
        (False, (2, 4, 9), (6, 2, 3), {"stride": 3, "dilation": 2, "groups": 2}),
        (True, (1, 2, 5, 5), (2, 3, 3, 3), {"padding": 3, "dilation": (1, 2)}),
        (True, (1, 4, 3, 4, 2), (4, 2, 3, 2, 2), {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}),
    ]
    for transposed, x_shape, w_shape, geometry in cases:
        x = tf.constant(rng.normal(size=x_shape).astype(np.float32))
        w = tf.constant(rng.normal(size=w_shape).astype(np.float32))
        fn = yat_conv_transpose if transposed else yat_conv
        fast, slow = (
            fn(x, w, bias=0.1, alpha=1.5, native=native, xp=xp, **geometry).numpy() for native in (True, False)
        )
        assert_close(fast, slow.astype(np.float64), f"{x_shape} {w_shape} {geometry}", rtol=2e-5)


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize(
    "name", ["2d-spherical-learnable-epsilon-no-alpha", "2d-stride-groups-int-padding", "2d-transpose-same-k4-s2"]
)
def test_gradients_reach_every_variable_and_equal_the_cores(name):
    """GradientTape against the core's analytic VJP in float64 (learnable epsilon on)."""
    c = CASES[name]
    module = random_module(c, learnable_epsilon=True, epsilon=0.1)
    x = case_inputs(c)
    with tf.GradientTape() as tape:
        y = module(x)
        g = tf.reshape(tf.linspace(-1.0, 1.0, tf.size(y)), y.shape)
        loss = tf.reduce_sum(y * g)
    grads = dict(
        zip(
            (v.name.split("/")[-1][:-2] for v in module.trainable_variables),
            tape.gradient(loss, module.trainable_variables),
        )
    )
    assert sorted(grads) == sorted(module.spec.param_shapes)
    p = {k: v.astype(np.float64) for k, v in module.export_params().items()}
    a = c.args
    options = {
        "bias": p.get("bias", a.get("use_bias")),
        "alpha": p.get("alpha") if a.get("use_alpha", True) is True else None,
        "epsilon": softplus(p["epsilon_raw"]),
        "spherical": a.get("spherical", False),
    }
    vjp = yat_conv_transpose_vjp if c.transposed else yat_conv_vjp
    g64 = np.moveaxis(g.numpy().astype(np.float64), -1, 1)
    ref = vjp(np.moveaxis(x.astype(np.float64), -1, 1), p["kernel"], g64, **c.core, **options)
    d_eps = ref.epsilon / (1.0 + np.exp(-p["epsilon_raw"]))  # d softplus = sigmoid
    want = {"kernel": kernel_from_core(ref.w), "bias": ref.bias, "alpha": ref.alpha, "epsilon_raw": d_eps}
    for key, value in grads.items():
        value = value.numpy()
        assert np.all(np.isfinite(value)) and np.any(value != 0), key
        scale = max(1.0, float(np.max(np.abs(want[key]))))
        np.testing.assert_allclose(value, want[key], rtol=1e-4, atol=1e-4 * scale, err_msg=f"{name} d/d{key}")


# ------------------------------------------------------------------ TensorFlow's conventions


def test_arguments_and_layouts_are_keras():
    names = ["filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups", "use_bias"]
    for cls in ytf._CONV_CLASSES.values():
        params = list(inspect.signature(cls.__init__).parameters)
        assert params[1:4] == ["in_channels", "filters", "kernel_size"] and all(n in params for n in names)
        assert inspect.signature(cls.__init__).parameters["data_format"].default == "channels_last"
    conv = ytf.YatConv2D(4, 8, (3, 2), groups=2, seed=0)
    assert tuple(conv.kernel.shape) == (3, 2, 2, 8) and conv.export_params()["kernel"].shape == (8, 2, 3, 2)
    t = ytf.YatConv3DTranspose(4, 6, (3, 2, 1), groups=2, seed=0)
    assert tuple(t.kernel.shape) == (3, 2, 1, 3, 4) and t.export_params()["kernel"].shape == (4, 3, 3, 2, 1)
    assert (conv.strides, conv.dilation_rate, conv.padding, conv.data_format) == (
        (1, 1),
        (1, 1),
        "valid",
        "channels_last",
    )
    assert conv.name == "yat_conv2d" and t.name == "yat_conv3d_transpose"


def test_trainable_variables_and_checkpoint_see_every_variable(tmp_path):
    module = random_module(CASES["3d-transpose-same-learnable-epsilon"])
    names = sorted(v.name for v in module.trainable_variables)
    assert names == [f"yat_conv3d_transpose/{n}:0" for n in ("alpha", "bias", "epsilon_raw", "kernel")]
    assert ytf.count_params(module) == sum(int(np.prod(s)) for s in module.spec.param_shapes.values())
    saved = module.export_params()
    path = tf.train.Checkpoint(layer=module).write(str(tmp_path / "ckpt"))
    other = make(CASES["3d-transpose-same-learnable-epsilon"], seed=5)
    assert not np.array_equal(other.export_params()["kernel"], saved["kernel"])
    tf.train.Checkpoint(layer=other).read(path).assert_consumed()
    for key, value in other.export_params().items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


@pytest.mark.parametrize("name", ["2d-same-stride2", "2d-transpose-same-k3-s2", "1d-same-dilated-constant-bias"])
def test_plain_saved_model_round_trip_gives_identical_outputs(name, tmp_path):
    c = CASES[name]
    module = random_module(c)
    x = case_inputs(c)
    y = module(x).numpy()  # traces __call__ for this shape, which the SavedModel keeps
    tf.saved_model.save(module, str(tmp_path / "saved"))
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_array_equal(loaded(tf.constant(x)).numpy(), y)
    for key in module.export_params():
        np.testing.assert_array_equal(getattr(loaded, key).numpy(), getattr(module, key).numpy())


def test_module_runs_inside_a_callers_tf_function():
    c = CASES["2d-transpose-valid-output-padding"]
    module = random_module(c)
    x = case_inputs(c)
    nested = tf.function(lambda t: module(t))
    inline = tf.function(lambda t: module.call(t), jit_compile=True)  # XLA traces the plain forward
    for traced in (nested, inline):
        np.testing.assert_allclose(traced(tf.constant(x)).numpy(), module(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["2d-transpose-same-k3-s2", "2d-same-stride2", "3d-groups-no-bias"])
def test_an_unknown_batch_in_a_callers_graph_gives_the_same_outputs_and_gradients(name):
    """With the batch unknown (``None``) the module maps the core over the examples (``tf.vectorized_map``)."""
    c = CASES[name]
    module = random_module(c)
    x = tf.constant(case_inputs(c))
    signature = [tf.TensorSpec([None, *c.spatial, c.in_channels], tf.float32)]

    def value_and_grads(t: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            y = module.call(t)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, module.trainable_variables)

    (y, grads), (y_ref, grads_ref) = tf.function(value_and_grads, input_signature=signature)(x), value_and_grads(x)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-6, atol=1e-6)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-5, atol=1e-5 * float(np.max(np.abs(g_ref))))


def test_seeded_weights_are_the_cores_initial_values():
    spec = conv_layer_spec(4, 6, 3, n_spatial=2, groups=2, learnable_epsilon=True, epsilon=0.1)
    module = ytf.YatConv2D(4, 6, 3, groups=2, learnable_epsilon=True, epsilon=0.1, seed=7)
    want = init_layer_numpy(spec, np.random.default_rng(7))
    got = module.export_params()
    assert list(got) == list(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value.astype(np.float32), err_msg=key)
    tf.random.set_seed(3)
    a = ytf.YatConv1D(2, 3, 2).export_params()["kernel"]
    tf.random.set_seed(3)
    b = ytf.YatConv1D(2, 3, 2).export_params()["kernel"]
    np.testing.assert_array_equal(a, b)


def test_export_import_round_trip_and_errors():
    c = CASES["2d-transpose-int-padding-groups-dilated"]
    module = random_module(c)
    exported = ytf.export_params(module)
    other = ytf.import_params(make(c, seed=3), exported)
    for key, value in other.export_params().items():
        np.testing.assert_array_equal(value, exported[key], err_msg=key)
    before = other.export_params()
    with pytest.raises(ValueError, match=r"parameters do not fit the layer: kernel has shape \(3, 3, 3, 3\)"):
        other.import_params({**before, "kernel": np.zeros((3, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"missing alpha \(shape \(\)\)"):
        other.import_params({k: v for k, v in before.items() if k != "alpha"})
    with pytest.raises(TypeError, match="real floating"):
        other.import_params({**before, "bias": np.zeros(6, np.int64)})
    assert all(np.array_equal(v, before[k]) for k, v in other.export_params().items())


def test_spec_and_from_spec():
    for name in (
        "1d-valid",
        "2d-stride-and-dilation",
        "2d-transpose-same-k4-s2",
        "3d-transpose-same-learnable-epsilon",
    ):
        c = CASES[name]
        module = random_module(c)
        spec = module.spec
        clone = ytf.conv_from_spec(spec, seed=1).import_params(module.export_params())
        assert clone.spec == spec, name
        x = case_inputs(c)
        np.testing.assert_allclose(clone(x).numpy(), module(x).numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
    assert make(CASES["2d-transpose-same-k4-s2"]).spec.padding == (1, 1)
    for name, match in (
        ("2d-same-stride2", "depends on the input size"),
        ("2d-transpose-same-k3-s2", "more on the left"),
    ):
        with pytest.raises(ValueError, match=match):
            _ = make(CASES[name]).spec
    with pytest.raises(ValueError, match="is built from a 'yat_conv_transpose' spec with 2"):
        ytf.YatConv2DTranspose.from_spec(conv_layer_spec(4, 6, 3, n_spatial=2))
    with pytest.raises(ValueError, match="built from a 'yat_conv' or 'yat_conv_transpose' spec"):
        ytf.conv_from_spec(ytf.YatNMN(3, 2).spec)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((3, 2, 1, "same", None), (0, 0, 1)),  # Keras pads (2, 1): torch's rule cannot, one output cropped
        ((4, 2, 1, "same", None), (1, 0, 0)),
        ((3, 1, 1, "same", None), (1, 0, 0)),
        ((2, 1, 1, "same", None), (0, 0, 1)),
        ((3, 2, 1, "valid", None), (0, 0, 0)),
        ((1, 3, 1, "valid", None), (0, 2, 0)),  # output (i-1)*3 + max(1, 3)
        ((3, 2, 1, "same", 1), (0, 0, 1)),  # t = 3 + 1 - 2 + 1: left 2, right 1 again
        ((3, 1, 2, "same", None), (2, 0, 0)),
    ],
)
def test_keras_transposed_padding_maps_to_the_cores(args, expected):
    """The mapping (the same function in both modules), without Keras: the sizes are Keras's rule."""
    p, op, crop = keras_transpose_padding(*args)
    assert (p, op, crop) == expected
    k, s, d, padding, output_padding = args
    for i in (1, 4, 7):
        assert (i - 1) * s - 2 * p + d * (k - 1) + op + 1 - crop == keras_transposed_size(
            i, k, s, d, padding, output_padding
        )


@pytest.mark.parametrize(
    ("make_module", "error", "match"),
    [
        (lambda: ytf.YatConv2D(3.0, 4, 3), TypeError, "in_channels must be a positive integer"),
        (lambda: ytf.YatConv2D(3, 4, 3, groups=2), ValueError, "groups=2 must divide 3 and 4 channels"),
        (lambda: ytf.YatConv2D(4, 6, 3, groups=4), ValueError, "groups=4 must divide 4 and 6 channels"),
        (lambda: ytf.YatConv2D(3, 4, (3, 3, 3)), ValueError, "kernel_size must be an int or a tuple of 2 ints"),
        (lambda: ytf.YatConv1D(3, 4, 3, strides=-1), ValueError, "strides must be >= 1"),
        (lambda: ytf.YatConv1D(3, 4, 3, padding=-1), ValueError, "padding must be >= 0"),
        (lambda: ytf.YatConv1D(3, 4, 3, padding="full"), ValueError, "padding must be 'valid', 'same' or ints"),
        (lambda: ytf.YatConv1D(3, 4, 3, data_format="NWC"), ValueError, "data_format must be"),
        (lambda: ytf.YatConv1D(3, 4, 3, output_padding=1), TypeError, "takes no output_padding"),
        (lambda: ytf.YatConv1DTranspose(3, 4, 3, strides=2, output_padding=2), ValueError, "smaller than strides"),
        (lambda: ytf.YatConv1D(3, 4, 3, epsilon=-1.0), ValueError, "epsilon must be a finite number > 0"),
        (lambda: ytf.YatConv1D(3, 4, 3, dtype=tf.int32), TypeError, "floating dtype"),
    ],
)
def test_bad_arguments_get_clear_errors(make_module, error, match):
    with pytest.raises(error, match=match):
        make_module()


@pytest.mark.parametrize(
    ("shape", "data_format", "match"),
    [
        ((2, 8, 3), "channels_last", r"expected inputs of rank 4 \(channels_last: \(batch, \*spatial, channels\)\)"),
        ((2, 8, 8, 2), "channels_last", "expected 3 input channels"),
        ((2, 8, 8, 3), "channels_first", "expected 3 input channels"),
        ((2, 2, 8, 3), "channels_last", "larger than the padded input"),
    ],
)
def test_bad_inputs_get_clear_errors(shape, data_format, match):
    module = ytf.YatConv2D(3, 4, 3, data_format=data_format, seed=0)
    with pytest.raises(ValueError, match=match):
        module(np.ones(shape, np.float32))


def test_the_module_does_not_import_keras():
    """``yat_core.nn.tf`` is TensorFlow only: no import of Keras in its source (TensorFlow may load parts itself)."""
    import ast

    tree = ast.parse(Path(ytf.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[0] in ("keras", "tf_keras")], imported
