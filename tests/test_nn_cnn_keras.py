"""Keras models of any ModelSpec (the CNN) built by yat_core.nn.keras, and their training, against the core.

Keras fixes its backend when it is first imported, so, as in ``test_nn_keras``, the
checks run in fresh processes: this file is also a script, ``python
tests/test_nn_cnn_keras.py BACKEND OUT_DIR``, that runs the checks of :data:`CHECKS`
under ``KERAS_BACKEND=BACKEND`` and writes one JSON record per check. The default
backend (jax) runs every check but the single step; torch and tensorflow run the
:data:`QUICK` ones (the CNN's numbers, one training step, three steps against the
core), so the file stays short. The pytest
process never imports Keras here.

The reference for every number is the core in NumPy float64 (:func:`yat_core.mlp.mlp_forward`,
its training loop), and for the plain convolution also a NumPy loop written here
(:func:`numpy_conv`), which uses nothing of :mod:`yat_core.conv`. ``test_nn_cnn_tf``
imports the framework-free helpers of the first section.
"""

from __future__ import annotations

import itertools
import math
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers, also when run as a script

from keras_processes import BackendProcesses, Checks, assert_check, run_checks  # noqa: E402
from test_interchange import core_logits, random_params, tiny_data  # noqa: E402

from yat_core.mlp import init_mlp_numpy  # noqa: E402
from yat_core.spec import LayerSpec, ModelSpec, cnn_relu_spec, cnn_spec, count_params  # noqa: E402

BACKENDS = ("jax", "torch", "tensorflow")
#: Seconds one backend's process may take.
SUBPROCESS_TIMEOUT = 600

# ================================================================ framework-free, shared with test_nn_cnn_tf


def every_kind_spec() -> ModelSpec:
    """A small model with every layer kind and the geometry options of each (input ``(2, 9, 9)``)."""
    return ModelSpec(
        (
            LayerSpec("yat_conv", 2, 4, kernel_size=(3, 3), padding="same", groups=2),
            LayerSpec(
                "yat_conv",
                4,
                6,
                kernel_size=(3, 3),
                stride=(2, 2),
                padding=(2, 2),
                dilation=(2, 2),
                learnable_epsilon=True,
                epsilon=0.5,
            ),
            LayerSpec(
                "yat_conv_transpose",
                6,
                4,
                kernel_size=(2, 3),
                stride=(2, 2),
                output_padding=(1, 1),
                groups=2,
                alpha=2.0,
            ),
            LayerSpec("avg_pool", 4, 4, kernel_size=(2, 2)),
            LayerSpec("conv", 4, 6, kernel_size=(3, 3), padding=(1, 1), groups=2, activation="relu"),
            LayerSpec("conv", 6, 5, kernel_size=(2, 2), padding="same", activation="relu"),
            LayerSpec("max_pool", 5, 5, kernel_size=(2, 2)),
            LayerSpec("flatten", 5, 30),  # (5, 2, 3)
            LayerSpec("yat", 30, 8, spherical=True),
            LayerSpec("linear", 8, 6, activation="relu"),
            LayerSpec("linear", 6, 3),
        ),
        input_shape=(2, 9, 9),
    )


#: Plain-convolution models checked against :func:`numpy_conv`: ``conv -> flatten -> linear``.
CONV_CASES = {
    "stride2-pad1": {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1)},
    "dilation2-same-groups2": {"kernel_size": (3, 3), "dilation": (2, 2), "padding": "same", "groups": 2},
    "1d-pad2": {"kernel_size": (3,), "padding": (2,)},
    "3d-valid": {"kernel_size": (2, 2, 2)},
}


def conv_case_spec(case: str) -> ModelSpec:
    """``conv(2 -> 4, ReLU) -> flatten -> linear(3)`` with :data:`CONV_CASES`'s geometry."""
    geometry = CONV_CASES[case]
    spatial = (7, 6, 5)[: len(geometry["kernel_size"])]
    conv = LayerSpec("conv", 2, 4, activation="relu", **geometry)
    shape = conv.output_shape((2, *spatial))
    return ModelSpec(
        (conv, LayerSpec("flatten", 4, math.prod(shape)), LayerSpec("linear", math.prod(shape), 3)),
        input_shape=(2, *spatial),
    )


def numpy_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, spec: LayerSpec) -> np.ndarray:
    """Cross-correlation ``(n, C, *spatial)`` by kernel ``(out, C/groups, *k)`` in float64: a loop over kernel offsets."""
    o = spec.conv_options
    k = w.shape[2:]
    if o["padding"] == "same":  # stride 1; the odd unit on the right
        pads = [(d * (m - 1) // 2, d * (m - 1) - d * (m - 1) // 2) for m, d in zip(k, o["dilation"])]
    elif o["padding"] == "valid":
        pads = [(0, 0)] * len(k)
    else:
        pads = [(p, p) for p in o["padding"]]
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    out = [(n - d * (m - 1) - 1) // s + 1 for n, m, s, d in zip(x.shape[2:], k, o["stride"], o["dilation"])]
    g, cin, cout = o["groups"], w.shape[1], w.shape[0] // o["groups"]
    y = np.zeros((x.shape[0], w.shape[0], *out))
    for offset in itertools.product(*(range(m) for m in k)):
        window = tuple(
            slice(i * d, i * d + s * (n - 1) + 1, s) for i, d, s, n in zip(offset, o["dilation"], o["stride"], out)
        )
        patch = x[(slice(None), slice(None), *window)]
        for j in range(g):
            taps = w[(slice(j * cout, (j + 1) * cout), slice(None), *offset)]
            y[:, j * cout : (j + 1) * cout] += np.einsum("nc...,oc->no...", patch[:, j * cin : (j + 1) * cin], taps)
    return y + b.reshape(1, -1, *(1,) * len(k))


def conv_case_logits(params: dict[str, np.ndarray], x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """:func:`conv_case_spec`'s logits from :func:`numpy_conv` (channels-first flatten, as the core's)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    h = np.maximum(numpy_conv(x.astype(np.float64), p["0.kernel"], p["0.bias"], spec.layers[0]), 0.0)
    return h.reshape(len(h), -1) @ p["2.kernel"].T + p["2.bias"]


def inputs(spec: ModelSpec, n: int = 4, seed: int = 0) -> np.ndarray:
    """Float32 inputs in [0, 1], in the core's layout ``(n, *spec.input_shape)``."""
    return np.random.default_rng(seed).random((n, *spec.input_shape)).astype(np.float32)


def assert_logits(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Float32 against the float64 reference: within 1e-5 relative to the largest logit."""
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=what)


#: The CNN's parameters, names and shapes in the core's layout.
CNN_SHAPES = {
    "0.kernel": (32, 1, 3, 3),
    "0.bias": (32,),
    "0.alpha": (),
    "2.kernel": (64, 32, 3, 3),
    "2.bias": (64,),
    "2.alpha": (),
    "5.kernel": (128, 1600),
    "5.bias": (128,),
    "5.alpha": (),
    "6.kernel": (10, 128),
    "6.bias": (10,),
}


def trains_like_the_core(framework: str) -> Any:
    """``assert_trains_like_the_core(framework, model="cnn")`` at its default bound; the native runner it trained.

    The CNN's gradients are ~1e-9 to 1e-5, below AdamW's epsilon, where the place of
    epsilon matters: Keras's stock AdamW (epsilon on the uncorrected second moment)
    lands up to 7e-4 from the core after these three steps; the runners' optimizer
    (:class:`~yat_core.runners._keras_adamw.CoreAdamW`) is the core's AdamW.
    """
    from test_nn_keras import trains_like_the_core as train_side_by_side

    receipt, runner = train_side_by_side(framework, model="cnn")
    assert receipt["params"] == 225037, receipt["params"]
    return runner


# ================================================================ the checks (run in the subprocess)

CHECKS = Checks()
check = CHECKS.register
#: The checks of the torch and tensorflow backends. The default backend (jax) runs every other check
#: and these but the single step, which its training check covers.
QUICK = ("cnn-equals-the-core", "runner-steps-the-cnn", "runner-trains-the-cnn-like-the-core")


def _checks_of(backend: str) -> list[str]:
    if backend != BACKENDS[0]:
        return [name for name in CHECKS if name in QUICK]
    return [name for name in CHECKS if name != "runner-steps-the-cnn"]


def _with_params(ctx: SimpleNamespace, spec: ModelSpec, seed: int = 3) -> tuple[Any, dict[str, np.ndarray]]:
    params = random_params(spec, seed)
    return ctx.knn.import_params(ctx.knn.build_model(spec, 0), params), params


@check("cnn-equals-the-core")
def _(ctx: SimpleNamespace) -> None:
    """The CNN: Keras's layers, counts, names, layouts; its logits are the core's in every input layout."""
    spec = cnn_spec()
    model, params = _with_params(ctx, spec)
    assert isinstance(model, ctx.knn.YatSequential) and model.layout == (28, 28, 1)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["YatConv2D", "MaxPooling2D", "YatConv2D", "MaxPooling2D", "ChannelsFirstFlatten"] + [
        "YatNMN",
        "Linear",
    ], kinds
    assert ctx.knn.count_params(model) == count_params(spec) == 225037
    assert {k: v.shape for k, v in ctx.knn.export_params(model).items()} == CNN_SHAPES == spec.param_shapes
    assert tuple(model.layers[2].kernel.shape) == (3, 3, 32, 64)  # Conv2D's layout, not the core's
    x = inputs(spec)
    want = core_logits(params, x, spec)
    assert_logits(ctx.knn.predict(model, x), want, "predict, core layout")
    last = np.moveaxis(x, 1, -1)  # the model's own layout
    for name, value in (("(n, 28, 28, 1)", last), ("(n, 784)", x.reshape(4, -1)), ("(n, 28, 28)", x[:, 0])):
        # The model's call (compiled once per shape: eager JAX would compile every operation).
        assert_logits(np.asarray(model.predict_on_batch(value)), want, f"model{name}")
    with pytest.raises(ValueError, match=r"takes inputs \(n, 28, 28, 1\)"):
        model(np.zeros((4, 2, 28, 28), np.float32))  # channels first with a wrong count: refused, not reshaped


@check("cnn-relu-is-keras-convolutions")
def _(ctx: SimpleNamespace) -> None:
    """The baseline's layers and count (its numbers: ``every-kind-equals-the-core`` runs Conv2D + ReLU)."""
    spec = cnn_relu_spec()
    model = ctx.knn.build_model(spec, 0)
    assert [type(layer).__name__ for layer in model.layers][:3] == ["Conv2D", "MaxPooling2D", "Conv2D"]
    assert model.layers[0].get_config()["activation"] == "relu"
    assert ctx.knn.count_params(model) == count_params(spec) == 225034


@check("every-kind-equals-the-core")
def _(ctx: SimpleNamespace) -> None:
    spec = every_kind_spec()
    model, params = _with_params(ctx, spec)
    assert ctx.knn.count_params(model) == count_params(spec)
    assert ctx.knn.model_spec(model) == spec
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[:5] == ["YatConv2D", "YatConv2D", "YatConv2DTranspose", "AveragePooling2D", "ZeroPadding2D"], kinds
    assert {k: v.shape for k, v in ctx.knn.export_params(model).items()} == spec.param_shapes
    x = inputs(spec)
    want = core_logits(params, x, spec)
    assert_logits(ctx.knn.predict(model, x), want, "every kind")


@check("plain-conv-equals-numpy")
def _(ctx: SimpleNamespace) -> None:
    """Keras's own Conv1D/2D/3D (+ ZeroPadding for torch's padding), against a loop that uses no yat_core.conv."""
    for case in CONV_CASES:
        spec = conv_case_spec(case)
        model, params = _with_params(ctx, spec)
        x = inputs(spec)
        assert_logits(ctx.knn.predict(model, x), conv_case_logits(params, x, spec), case)


@check("export-import-round-trip")
def _(ctx: SimpleNamespace) -> None:
    spec = every_kind_spec()
    fresh = ctx.knn.export_params(ctx.knn.build_model(spec, 5))
    for name, value in init_mlp_numpy(spec, 5).items():
        np.testing.assert_array_equal(fresh[name], value, err_msg=f"initial {name}")
    model, params = _with_params(ctx, spec)
    exported = ctx.knn.export_params(model)
    for name, value in params.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    again = ctx.knn.import_params(ctx.knn.build_model(spec, 1), exported)
    x = inputs(spec)
    np.testing.assert_array_equal(ctx.knn.predict(again, x), ctx.knn.predict(model, x))


@check("import-rejects-bad-parameters")
def _(ctx: SimpleNamespace) -> None:
    spec = cnn_spec()
    model, params = _with_params(ctx, spec)
    before = ctx.knn.export_params(model)
    native = np.transpose(params["2.kernel"], (2, 3, 1, 0))  # Keras's layout is not the interchange's
    for bad, error, match in (
        ({**params, "2.kernel": native}, ValueError, r"2.kernel has shape \(3, 3, 32, 64\), expected \(64, 32, 3, 3\)"),
        ({k: v for k, v in params.items() if k != "0.alpha"}, ValueError, r"missing 0.alpha"),
        ({**params, "1.kernel": params["0.kernel"]}, ValueError, "unexpected 1.kernel"),
        ({**params, "0.bias": params["0.bias"].astype(np.int32)}, TypeError, "real floating"),
    ):
        with pytest.raises(error, match=match):
            ctx.knn.import_params(model, bad)
        after = ctx.knn.export_params(model)
        assert all(np.array_equal(before[k], after[k]) for k in before), f"{match}: a refused import changed the model"


@check("keras-file-round-trip")
def _(ctx: SimpleNamespace) -> None:
    spec = every_kind_spec()
    model, _ = _with_params(ctx, spec)
    path = Path(tempfile.mkdtemp()) / "model.keras"
    model.save(path)
    loaded = ctx.keras.saving.load_model(path)
    assert isinstance(loaded, ctx.knn.YatSequential) and ctx.knn.model_spec(loaded) == spec
    x = inputs(spec)
    np.testing.assert_array_equal(ctx.knn.predict(loaded, x), ctx.knn.predict(model, x))


@check("runner-steps-the-cnn")
def _(ctx: SimpleNamespace) -> None:
    """One step of the runner on the CNN: the core's loss at the start, every parameter moved."""
    from yat_core.config import TrainConfig
    from yat_core.losses import softmax_cross_entropy
    from yat_core.runners import make_runner

    config = TrainConfig(framework="keras", keras_backend=ctx.backend, model="cnn")
    runner = make_runner(cnn_spec(), config)
    data = tiny_data(n_train=8)
    start = runner.export_params()
    images, labels = runner.put(data.train_images), runner.put(data.train_labels.astype(np.int32))
    loss = runner.to_float(runner.step(images, labels, runner.put(np.arange(8))))
    x = (data.train_images.astype(np.float32) / np.float32(255))[:, None]
    assert loss == pytest.approx(softmax_cross_entropy(core_logits(start, x, cnn_spec()), data.train_labels), rel=1e-5)
    moved = runner.export_params()
    assert all(not np.array_equal(moved[k], v) for k, v in start.items()), "a parameter did not train"


@check("runner-trains-the-cnn-like-the-core")
def _(ctx: SimpleNamespace) -> None:
    runner = trains_like_the_core("keras")
    assert runner.backend == ctx.backend


def main(backend: str, out: Path) -> None:
    """The subprocess: run the checks of ``backend`` under that Keras backend; write ``out/results.json``."""
    import keras

    from yat_core.nn import keras as knn

    ctx = SimpleNamespace(backend=backend, keras=keras, knn=knn)
    run_checks(CHECKS, _checks_of(backend), ctx, out)


# ================================================================ the pytest side


@pytest.fixture(scope="module")
def keras_cnn_run(tmp_path_factory: pytest.TempPathFactory) -> BackendProcesses:
    """Every backend's check process, started together on first use."""
    return BackendProcesses(__file__, BACKENDS, tmp_path_factory.mktemp, SUBPROCESS_TIMEOUT)


@pytest.mark.parametrize(("backend", "check"), [(b, name) for b in BACKENDS for name in _checks_of(b)])
def test_keras_cnn(backend: str, check: str, keras_cnn_run: BackendProcesses) -> None:
    """One check of :data:`CHECKS`, run in the backend's own process."""
    assert_check(keras_cnn_run, backend, check)


def test_numpy_conv_is_a_convolution() -> None:
    """The plain-convolution reference against a hand count: a 1-D ramp, stride 2, padding 1, two groups."""
    x = np.arange(10.0).reshape(1, 2, 5)
    w = np.array([[[1.0, 0.0, -1.0]], [[0.0, 2.0, 0.0]]])  # (out 2, in/groups 1, k 3)
    spec = LayerSpec("conv", 2, 2, kernel_size=(3,), stride=(2,), padding=(1,), groups=2)
    got = numpy_conv(x, w, np.array([0.5, 0.0]), spec)
    # channel 0 padded: [0, 0,1,2,3,4, 0] -> x[i] - x[i+2] at i = 0, 2, 4; channel 1: 2 * [5, 7, 9]
    np.testing.assert_array_equal(got, [[[-0.5, -1.5, 3.5], [10.0, 14.0, 18.0]]])


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
