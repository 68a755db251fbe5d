"""yat_core.nn.keras and yat_core.runners.keras on every Keras backend (jax, torch, tensorflow), against the core.

Keras fixes its backend when it is first imported, so each backend runs in a
fresh process: this file is also a script, ``python tests/test_nn_keras.py
BACKEND OUT_DIR SHARED_DIR``, that runs every check of :data:`CHECKS` under
``KERAS_BACKEND=BACKEND`` and writes one JSON record per check. The pytest side
starts that process once per backend and reports each check as its own test
(``test_keras[jax-forward-default]``), with the check's traceback on failure.
The pytest process itself never imports Keras in this file.

Besides the core's numbers, the layers are held to ``keras.layers.Dense``'s
conventions: Keras's own ``run_layer_test``, Dense's argument names and kernel
layout ``(in, units)``, its mask pass-through, ``.keras`` files.

Also home of the framework-free helpers that ``test_nn_tf`` and ``test_nn_cnn_keras``
share: the array-API namespace cases, the core's AdamW trained in float64, and the
side-by-side training of a native runner and the core. The reference for every
number is the core in NumPy float64.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import array_api_compat.numpy as np_xp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers, also when run as a script

from keras_processes import BackendProcesses, Checks, CheckSkipped, assert_check, missing, run_checks  # noqa: E402
from test_interchange import (  # noqa: E402
    LAYER_CASES,
    MODEL_CASES,
    assert_matches_core,
    batch,
    case_spec,
    core_layer_kwargs,
    core_logits,
    random_params,
    small_spec,
    tiny_data,
)

from yat_core.config import TrainConfig  # noqa: E402
from yat_core.losses import count_correct, cross_entropy_grad, one_hot, softmax_cross_entropy  # noqa: E402
from yat_core.mlp import LayerSpec, MLPSpec, flatten_images, init_mlp_numpy, mlp_value_and_grad, seed_spec  # noqa: E402
from yat_core.optim import AdamWConfig, adamw_init, adamw_update  # noqa: E402
from yat_core.product import softplus, softplus_inverse, yat_product, yat_product_vjp  # noqa: E402
from yat_core.runners import make_runner  # noqa: E402
from yat_core.train import batch_order, train  # noqa: E402

BACKENDS = ("jax", "torch", "tensorflow")
#: Seconds one backend's process may take (it runs every check once).
SUBPROCESS_TIMEOUT = 900

# ================================================================ shared with test_nn_tf


def namespace_inputs() -> dict[str, np.ndarray]:
    """Small NumPy inputs for the namespace cases."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    return {
        "x": x,
        "pos": np.abs(x) + np.float32(0.1),
        "cube": rng.normal(size=(2, 3, 4)).astype(np.float32),
        "x64": x.astype(np.float64),
        "labels": np.array([2, 0, 1], np.int32),
        "pixels": rng.integers(0, 256, (3, 2, 2), dtype=np.uint8),
    }


#: Every namespace call the core makes: ``(function of (xp, inputs), names of its inputs)``.
#: Each is run on the framework's tensors and on NumPy (array-api-compat) and compared.
NAMESPACE_CASES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "matmul-transpose": (lambda xp, a, b: a @ xp.matrix_transpose(b), ("x", "x")),
    "matrix_transpose-3d": (lambda xp, a: xp.matrix_transpose(a), ("cube",)),
    "sum-all": (lambda xp, a: xp.sum(a), ("x",)),
    "sum-last-keepdims": (lambda xp, a: xp.sum(a, axis=-1, keepdims=True), ("x",)),
    "sum-axes-tuple": (lambda xp, a: xp.sum(a, axis=(0, 1)), ("cube",)),
    "max-keepdims": (lambda xp, a: xp.max(a, axis=-1, keepdims=True), ("x",)),
    "mean-all": (lambda xp, a: xp.mean(a), ("x",)),
    "argmax-last": (lambda xp, a: xp.argmax(a, axis=-1), ("x",)),
    "argmax-flat": (lambda xp, a: xp.argmax(a), ("x",)),
    "argmax-keepdims": (lambda xp, a: xp.argmax(a, axis=0, keepdims=True), ("x",)),
    "arange": (lambda xp: xp.arange(5), ()),
    "arange-step-dtype": (lambda xp: xp.arange(1, 8, 3, dtype=xp.int32), ()),
    "expand_dims": (lambda xp, a: xp.expand_dims(a, axis=-1), ("labels",)),
    "reshape": (lambda xp, a: xp.reshape(a, (-1, 4)), ("cube",)),
    "take-rows": (lambda xp, a, i: xp.take(a, i, axis=0), ("x", "labels")),
    "where-scalar-else": (lambda xp, a: xp.where(a > 0, a, 0.0), ("x",)),
    "where-scalar-then": (lambda xp, a: xp.where(a > 0, 1.0, a), ("x",)),
    "where-float64": (lambda xp, a: xp.where(a > 0, a, 0.0), ("x64",)),
    "maximum-scalar": (lambda xp, a: xp.maximum(a, 0.5), ("x",)),
    "sqrt": (lambda xp, a: xp.sqrt(a), ("pos",)),
    "exp": (lambda xp, a: xp.exp(a), ("x",)),
    "log": (lambda xp, a: xp.log(a), ("pos",)),
    "log1p": (lambda xp, a: xp.log1p(a), ("pos",)),
    "abs": (lambda xp, a: xp.abs(a), ("x",)),
    "astype-bool-to-float": (lambda xp, a: xp.astype(a > 0, xp.float32), ("x",)),
    "astype-uint8-to-float": (lambda xp, a: xp.astype(a, xp.float32), ("pixels",)),
    "one-hot-by-equality": (
        lambda xp, i: xp.astype(xp.expand_dims(i, axis=-1) == xp.arange(3, dtype=i.dtype), xp.float32),
        ("labels",),
    ),
    "asarray-dtype": (lambda xp, a: xp.asarray(a, dtype=xp.float32), ("pixels",)),
}

#: The core's own functions, run with ``xp=`` the framework's namespace.
CORE_CASES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "yat_product": (lambda xp, x, w: yat_product(x, w, bias=0.5, alpha=2.0, xp=xp), ("x", "pos")),
    "yat_product-spherical": (lambda xp, x, w: yat_product(x, w, spherical=True, xp=xp), ("x", "pos")),
    "softplus": (lambda xp, a: softplus(a, xp=xp), ("x",)),
    "softmax_cross_entropy": (lambda xp, a, i: softmax_cross_entropy(a[:, :3], i, xp=xp), ("x", "labels")),
    "cross_entropy_grad": (lambda xp, a, i: cross_entropy_grad(a[:, :3], i, xp=xp), ("x", "labels")),
    "count_correct": (lambda xp, a, i: count_correct(a[:, :3], i, xp=xp), ("x", "labels")),
    "one_hot": (lambda xp, i: one_hot(i, 4, xp.float32, xp=xp), ("labels",)),
    "flatten_images": (lambda xp, p: flatten_images(p, xp.float32, xp=xp), ("pixels",)),
}


def _vjp_case(xp: Any, x: Any, w: Any, spherical: bool) -> list[Any]:
    """Every gradient of the analytic VJP, with array bias, alpha and epsilon."""
    bias = xp.asarray(np.linspace(-0.5, 0.5, 3).astype(np.float32))
    alpha, epsilon = xp.asarray(np.float32(1.5)), xp.asarray(np.float32(0.1))
    g = xp.asarray(np.ones((3, 3), np.float32))
    grads = yat_product_vjp(x, w, g, bias=bias, alpha=alpha, epsilon=epsilon, spherical=spherical, xp=xp)
    return list(grads)


CORE_CASES["yat_product_vjp"] = (lambda xp, x, w: _vjp_case(xp, x, w, False), ("x", "pos"))
CORE_CASES["yat_product_vjp-spherical"] = (lambda xp, x, w: _vjp_case(xp, x, w, True), ("x", "pos"))

#: (dtype, kind) pairs for ``isdtype``.
ISDTYPE_DTYPES = ("float32", "float64", "int32", "int64", "uint8", "bool")
ISDTYPE_KINDS = (
    "real floating",
    "integral",
    "signed integer",
    "unsigned integer",
    "bool",
    "numeric",
    ("real floating", "bool"),
)


def assert_namespace_case(
    xp: Any,
    to_numpy: Callable[[Any], np.ndarray],
    case: str,
    table: dict[str, tuple[Callable[..., Any], tuple[str, ...]]],
    float64: bool = True,
    rtol: float = 2e-6,
) -> None:
    """Run ``table[case]`` on the framework's namespace and on NumPy; same values, shapes and dtypes.

    ``float64=False`` for a framework that computes float64 inputs in float32
    (Keras on JAX without x64): then float64 results are compared as float32.
    Floats agree within ``rtol`` of each value plus ``rtol`` of the largest: one
    rounding for an elementary call; composite core functions (``rtol=1e-5``)
    round in a different order than NumPy.
    """
    fn, names = table[case]
    inputs = namespace_inputs()
    expected = fn(np_xp, *(inputs[n] for n in names))
    got = fn(xp, *(xp.asarray(inputs[n]) for n in names))
    pairs = zip(expected, got) if isinstance(expected, list) else [(expected, got)]
    for i, (want, have) in enumerate(pairs):
        if want is None:
            assert have is None, f"{case}[{i}]: expected None"
            continue
        want, have = np.asarray(want), to_numpy(have)
        what = f"{case}[{i}]: got {have.dtype}{have.shape}, NumPy gives {want.dtype}{want.shape}"
        assert have.shape == want.shape, what
        if want.dtype.kind == "f":
            width = want.dtype if float64 else np.dtype(np.float32)
            assert have.dtype == width, what
            np.testing.assert_allclose(have, want, rtol=rtol, atol=rtol * float(np.abs(want).max()), err_msg=what)
        else:
            assert have.dtype.kind == want.dtype.kind, what  # index width (int32 / int64) may differ
            np.testing.assert_array_equal(have, want, err_msg=what)


def assert_isdtype_matches_numpy(xp: Any, name_of: Callable[[Any], str]) -> None:
    """``xp.isdtype`` of each framework dtype agrees with NumPy's for the same dtype (``name_of`` names it)."""
    for name in ISDTYPE_DTYPES:
        dtype = xp.asarray(np.zeros(2, name)).dtype
        same = np.dtype(name_of(dtype))
        for kind in ISDTYPE_KINDS:
            assert xp.isdtype(dtype, kind) == np_xp.isdtype(same, kind), f"isdtype({dtype}, {kind!r})"
        assert xp.isdtype(dtype, dtype), f"isdtype({dtype}, itself)"


def adamw_reference(config: TrainConfig, data: Any, spec: MLPSpec) -> tuple[list[float], dict[str, np.ndarray]]:
    """Step losses and final parameters of the core trained in float64 through the shared batch order.

    The core's own loop in miniature: its initial weights, the shared batch order
    with the partial batch kept, its analytic gradients and its AdamW
    (:func:`~yat_core.optim.adamw_update`).
    """
    params = {k: v.astype(np.float64) for k, v in init_mlp_numpy(spec, config.seed).items()}
    state = adamw_init(params)
    images = data.train_images.reshape(len(data.train_images), -1)
    labels = data.train_labels.astype(np.int32)
    losses = []
    for epoch in range(1, config.epochs + 1):
        order = batch_order(config.seed, epoch, len(labels))
        for start in range(0, len(labels), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss, grads = mlp_value_and_grad(params, images[idx], labels[idx], spec)
            params, state = adamw_update(grads, state, params, config.optimizer)
            losses.append(float(loss))
    return losses, params


def train_keeping_runner(config: TrainConfig, data: Any) -> tuple[dict[str, Any], Any]:
    """:func:`train` through :func:`yat_core.runners.make_runner`; the receipt and the runner it trained."""
    runners: list[Any] = []

    def make(spec: MLPSpec, cfg: TrainConfig) -> Any:
        runners.append(make_runner(spec, cfg))
        return runners[-1]

    receipt = train(config, data=data, runner_factory=make, progress=False, log=None)
    return receipt, runners[0]


def keras_config(**fields: Any) -> TrainConfig:
    """A ``--framework keras`` configuration on the Keras backend this process already runs."""
    keras = sys.modules.get("keras")
    return TrainConfig(framework="keras", keras_backend=keras.backend.backend() if keras else None, **fields)


def trains_like_the_core(name: str, model: str = "mlp", *, atol: float | None = None) -> tuple[dict[str, Any], Any]:
    """``assert_trains_like_the_core(name, model, atol=atol)``; the native receipt and the runner it trained.

    For ``"keras"``, Keras trains on the backend this process imported it with
    (the helper's own configuration names no Keras backend, which means jax).
    """
    import test_interchange

    runners: list[Any] = []
    make_runner = test_interchange.make_runner
    keras = sys.modules.get("keras")

    def keeping(spec: Any, config: TrainConfig) -> Any:
        if config.framework == "keras" and keras is not None:
            config = dataclasses.replace(config, keras_backend=keras.backend.backend())
        runners.append(make_runner(spec, config))
        return runners[-1]

    test_interchange.make_runner = keeping  # the helper trains through this name: keep its runners
    try:
        receipt = test_interchange.assert_trains_like_the_core(name, model=model, atol=atol)
    finally:
        test_interchange.make_runner = make_runner
    return receipt, next(r for r in runners if r.framework == name)


def assert_trains_like_core_adamw(name: str, device_prefix: str = "") -> dict[str, Any]:
    """Train framework ``name``'s native model through the shared loop; match :func:`adamw_reference` step by step.

    80 samples in batches of 32 for two epochs: six steps, two of them partial
    batches of 16. Weight decay 0.5 and epsilon 1e-4 make both visible: a run
    that skipped the decay, or put epsilon where Keras's stock AdamW does, lands
    ~1e-5 away from the reference; float32 against float64 differs by ~1e-7. For
    ``"keras"``, Keras trains on the backend this process imported it with.
    """
    fields: dict[str, Any] = dict(
        epochs=2, batch_size=32, eval_batch=16, optimizer=AdamWConfig(weight_decay=0.5, eps=1e-4)
    )
    config = keras_config(**fields) if name == "keras" else TrainConfig(framework=name, **fields)
    data = tiny_data()
    receipt, runner = train_keeping_runner(config, data)
    assert receipt["backend"] == name and receipt["params"] == 235148, receipt["backend"]
    assert receipt["device"].startswith(device_prefix), receipt["device"]
    assert receipt["steps_per_epoch"] == 3 and receipt["n_test"] == 40 and receipt["n_train"] == 80
    assert [len(h["step_loss"]) for h in receipt["history"]] == [3, 3]
    ref_losses, ref_params = adamw_reference(config, data, seed_spec())
    native_losses = [v for h in receipt["history"] for v in h["step_loss"]]
    np.testing.assert_allclose(native_losses, ref_losses, rtol=1e-5, err_msg=f"{name}: step losses")
    ours = runner.export_params()
    assert list(ours) == list(ref_params), name
    for param, value in ref_params.items():
        np.testing.assert_allclose(ours[param], value, rtol=0, atol=1e-6, err_msg=f"{name}: {param}")
    return receipt


def tf_export_batch() -> np.ndarray:
    """The inputs on which exported models are compared across frameworks."""
    return tiny_data(n_train=8, n_test=64, seed=3).test_images.reshape(64, -1).astype(np.float32) / np.float32(255)


# ================================================================ the checks (run in the subprocess)

CHECKS = Checks()
check = CHECKS.register

#: ``keras.layers.Dense``'s arguments that both layers take under the same names.
DENSE_ARGUMENTS = (
    "units",
    "use_bias",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "bias_constraint",
)
#: Distributions a Keras receipt records beside ``keras``, per Keras backend.
BACKEND_DISTRIBUTIONS = {"jax": ("jax", "jaxlib"), "torch": ("torch",), "tensorflow": ("tensorflow", "tensorflow-cpu")}


def _np(ctx: SimpleNamespace, value: Any) -> np.ndarray:
    return np.asarray(ctx.keras.ops.convert_to_numpy(value))


def _core_layout(name: str, value: np.ndarray) -> np.ndarray:
    # Keras kernels are (in, units), the core's (out, in).
    return value.T if name.endswith("kernel") else value


def _named_variables(model: Any) -> dict[str, Any]:
    """The model's variables under the core's names (``"0.kernel"``, ...)."""
    return {f"{i}.{name}": var for i, layer in enumerate(model.layers) for name, var in layer.param_variables().items()}


def keras_loss_and_grads(ctx: SimpleNamespace, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """Keras's own loss and the backend's own gradients, under the core's parameter names and layouts."""
    keras, backend = ctx.keras, ctx.backend
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    names = {id(v): n for n, v in _named_variables(model).items()}
    variables = model.trainable_variables
    if backend == "jax":
        import jax

        def loss_of(values: list[Any]) -> Any:
            logits, _ = model.stateless_call(values, [v.value for v in model.non_trainable_variables], x)
            return loss_fn(y, logits)

        loss, grads = jax.value_and_grad(loss_of)([v.value for v in variables])
    elif backend == "torch":
        import torch

        loss = loss_fn(y, model(x))
        grads = torch.autograd.grad(loss, [v.value for v in variables])
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x))
        grads = tape.gradient(loss, variables)
    return float(_np(ctx, loss)), {
        names[id(v)]: _core_layout(names[id(v)], _np(ctx, g)) for v, g in zip(variables, grads)
    }


for _case in NAMESPACE_CASES:
    CHECKS[f"namespace-{_case}"] = (
        lambda case: (
            lambda ctx: assert_namespace_case(ctx.xp, lambda t: _np(ctx, t), case, NAMESPACE_CASES, float64=ctx.float64)
        )
    )(_case)
for _case in CORE_CASES:
    CHECKS[f"core-{_case}"] = (
        lambda case: (
            lambda ctx: assert_namespace_case(
                ctx.xp, lambda t: _np(ctx, t), case, CORE_CASES, float64=ctx.float64, rtol=1e-5
            )
        )
    )(_case)


@check("namespace-isdtype")
def _(ctx: SimpleNamespace) -> None:
    assert_isdtype_matches_numpy(ctx.xp, ctx.keras.backend.standardize_dtype)


@check("seed-model-235148-params")
def _(ctx: SimpleNamespace) -> None:
    model = ctx.knn.build_model(seed_spec(), 0)
    assert ctx.knn.count_params(model) == 235148
    assert model.count_params() == 235148
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 235148
    assert [layer.name for layer in model.layers] == ["yat_nmn_0", "yat_nmn_1", "linear_2"]
    assert ctx.knn.model_spec(model) == seed_spec()


@check("init-is-init_mlp_numpy")
def _(ctx: SimpleNamespace) -> None:
    for seed in (0, 7):
        expected = init_mlp_numpy(seed_spec(), seed)
        exported = ctx.knn.export_params(ctx.knn.build_model(seed_spec(), seed))
        assert list(exported) == list(expected)
        for name, value in expected.items():
            assert exported[name].dtype == np.float32, name
            np.testing.assert_array_equal(exported[name], value, err_msg=f"seed {seed}: {name}")


@check("seed-model-forward-and-gradients")
def _(ctx: SimpleNamespace) -> None:
    model = ctx.knn.build_model(seed_spec(), 0)
    params = ctx.knn.export_params(model)
    assert_matches_core(
        lambda m, x, y: keras_loss_and_grads(ctx, m, x, y), model, params, seed_spec(), "seed model", n=8
    )


def _option_check(case: str) -> Callable[[SimpleNamespace], None]:
    def run(ctx: SimpleNamespace) -> None:
        spec = case_spec(case)
        params = random_params(spec, 1)
        model = ctx.knn.import_params(ctx.knn.build_model(spec, 12345), params)
        x, _ = batch(spec)
        np.testing.assert_allclose(
            ctx.knn.predict(model, x), core_logits(params, x, spec), rtol=1e-5, atol=1e-6, err_msg=case
        )
        assert_matches_core(lambda m, x, y: keras_loss_and_grads(ctx, m, x, y), model, params, spec, case)

    return run


for _case in MODEL_CASES:
    CHECKS[f"forward-and-gradients-{_case}"] = _option_check(_case)


def _native_options(options: dict[str, Any]) -> dict[str, Any]:
    # The core's option names as YatNMN's (Dense's use_bias, and use_alpha beside it).
    return {{"bias": "use_bias", "alpha": "use_alpha"}.get(k, k): v for k, v in options.items()}


def _layer_check(case: str) -> Callable[[SimpleNamespace], None]:
    def run(ctx: SimpleNamespace) -> None:
        options, expected_params = LAYER_CASES[case]
        # Seeded: an unseeded kernel column nearly parallel to an input row puts a spherical output
        # where float32 rounding is amplified ~100x (a 1e-5 flake), differently on every run.
        ctx.keras.utils.set_random_seed(7)
        layer = ctx.knn.YatNMN(3, **_native_options(options))
        x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
        out = _np(ctx, layer(x))
        values = {n: _np(ctx, v.value).astype(np.float64) for n, v in layer.param_variables().items()}
        assert sorted(values) == expected_params, sorted(values)
        assert sorted(v.name for v in layer.trainable_variables) == expected_params
        assert values["kernel"].shape == (5, 3), "the kernel is (in, units), as Dense's"
        if "epsilon_raw" in values:
            assert float(values["epsilon_raw"]) == pytest.approx(softplus_inverse(0.1), rel=1e-6)
        spec = LayerSpec("yat", 5, 3, **options)
        expected = yat_product(x.astype(np.float64), values["kernel"].T, **core_layer_kwargs(spec, values))
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6, err_msg=case)
        clone = ctx.knn.YatNMN.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        assert ctx.knn.YatNMN.from_spec(layer.spec, name=layer.name).get_config() == layer.get_config()

    return run


for _case in LAYER_CASES:
    CHECKS[f"layer-option-{_case}"] = _layer_check(_case)


@check("layer-defaults")
def _(ctx: SimpleNamespace) -> None:
    layer = ctx.knn.YatNMN(256)
    layer.build((None, 784))
    assert layer.count_params() == 200961
    assert layer.spec == LayerSpec("yat", 784, 256)
    assert float(_np(ctx, layer.alpha.value)) == 1.0
    kernel = _np(ctx, layer.kernel.value)
    assert kernel.shape == (784, 256)  # Dense's (in, units) layout
    assert abs(float(kernel.std()) - math.sqrt(2 / (784 + 256))) < 2e-3  # Xavier-normal, untruncated
    assert float(np.abs(kernel).max()) > 2.5 * math.sqrt(2 / (784 + 256))
    bias = _np(ctx, layer.bias.value)
    assert float(np.abs(bias).max()) <= 1 / math.sqrt(784) and float(bias.std()) > 0
    config = layer.get_config()
    assert (
        config["units"],
        config["use_bias"],
        config["use_alpha"],
        config["epsilon"],
        config["learnable_epsilon"],
        config["spherical"],
    ) == (256, True, True, 1e-5, False, False)
    with pytest.raises(AttributeError, match="build|spec"):  # torch.nn.Module rewrites the message
        ctx.knn.YatNMN(3).spec  # noqa: B018 - the error is the point


@check("layer-rejects-bad-options")
def _(ctx: SimpleNamespace) -> None:
    for kwargs, match in (
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"use_bias": "yes"}, "bias must be True"),
        ({"use_alpha": [1.0]}, "alpha must be True"),
        ({"bias": 0.5}, "Unrecognized keyword arguments.*bias"),  # the names before Dense's
        ({"alpha": 2.0}, "Unrecognized keyword arguments.*alpha"),
    ):
        with pytest.raises(ValueError, match=match):
            ctx.knn.YatNMN(3, **kwargs)
    for cls in (ctx.knn.YatNMN, ctx.knn.Linear):
        for units, error in ((2.5, TypeError), (True, TypeError), (0, ValueError)):
            with pytest.raises(error, match="units must be"):
                cls(units)
    with pytest.raises(ValueError, match="activation"):
        ctx.knn.Linear(3, activation="tanh")
    layer = ctx.knn.YatNMN(3)
    with pytest.raises(ValueError, match="min_ndim=2"):  # Dense's input spec
        layer(np.ones(4, np.float32))
    layer(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 4"):
        layer(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="last input dimension must be known"):
        ctx.knn.YatNMN(3)(ctx.keras.Input((None,)))


@check("layer-keras-run_layer_test")
def _(ctx: SimpleNamespace) -> None:
    """Keras's own layer test (config and serialization round trips, build, symbolic and eager calls,
    a compiled training step, mixed precision where the backend supports it), as Dense's tests use it."""
    from keras.src.testing import TestCase

    cases: list[tuple[Any, dict[str, Any], int, int]] = [  # layer, arguments, trainable weights, losses
        (ctx.knn.YatNMN, {"units": 4}, 3, 0),
        (
            ctx.knn.YatNMN,
            {
                "units": 4,
                "use_bias": False,
                "learnable_epsilon": True,
                "epsilon": 0.1,
                "kernel_regularizer": "l2",
                "bias_regularizer": "l2",
                "activity_regularizer": "l2",
                "kernel_initializer": "random_uniform",
            },
            3,
            2,
        ),  # no bias: no bias penalty
        (
            ctx.knn.YatNMN,
            {
                "units": 5,
                "use_bias": 0.5,
                "use_alpha": math.sqrt(2),
                "spherical": True,
                "kernel_constraint": "non_neg",
                "bias_regularizer": "l1",
            },
            1,
            0,
        ),
        (
            ctx.knn.Linear,
            {"units": 4, "activation": "relu", "kernel_regularizer": "l2", "bias_initializer": "ones"},
            2,
            1,
        ),
        (ctx.knn.Linear, {"units": 4, "use_bias": 0.25}, 1, 0),
    ]
    for cls, init, n_weights, n_losses in cases:
        TestCase().run_layer_test(
            cls,
            init,
            input_shape=(2, 3, 4),
            expected_output_shape=(2, 3, init["units"]),
            expected_num_trainable_weights=n_weights,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,
            expected_num_losses=n_losses,
            supports_masking=True,
        )


@check("layer-takes-dense-arguments")
def _(ctx: SimpleNamespace) -> None:
    keras = ctx.keras
    args = {
        "use_bias": False,
        "kernel_initializer": "ones",
        "bias_initializer": "zeros",
        "kernel_regularizer": keras.regularizers.L2(0.1),
        "bias_regularizer": keras.regularizers.L1(0.2),
        "kernel_constraint": keras.constraints.NonNeg(),
        "bias_constraint": keras.constraints.MaxNorm(2.0),
    }
    dense = keras.layers.Dense(3, **args).get_config()
    for cls in (ctx.knn.YatNMN, ctx.knn.Linear):
        ours = cls(3, **args).get_config()
        assert {k: ours[k] for k in DENSE_ARGUMENTS} == {k: dense[k] for k in DENSE_ARGUMENTS}, cls.__name__
    # The regularizers are Keras losses of the layer, with Keras's values.
    layer = ctx.knn.YatNMN(
        3,
        kernel_regularizer=keras.regularizers.L2(0.1),
        bias_regularizer="l1",
        activity_regularizer=keras.regularizers.L2(0.01),
    )
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    y = _np(ctx, layer(x)).astype(np.float64)
    kernel, bias = (_np(ctx, v.value).astype(np.float64) for v in (layer.kernel, layer.bias))
    expected = 0.1 * np.sum(kernel**2) + 0.01 * np.sum(np.abs(bias)) + 0.01 * np.sum(y**2) / len(y)
    assert float(sum(_np(ctx, loss) for loss in layer.losses)) == pytest.approx(expected, rel=1e-5)
    # A constraint holds after an optimizer step, as Keras applies it to Dense's kernel.
    model = keras.Sequential([keras.Input((5,)), ctx.knn.YatNMN(3, kernel_constraint="non_neg")])
    assert float(np.min(_np(ctx, model.layers[0].kernel.value))) < 0  # Xavier-normal draws negatives
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.train_on_batch(x, np.ones((4, 3), np.float32))
    assert float(np.min(_np(ctx, model.layers[0].kernel.value))) >= 0


@check("layer-kernel-layout-is-dense")
def _(ctx: SimpleNamespace) -> None:
    keras = ctx.keras
    x = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)
    for kwargs in ({"activation": "relu"}, {"use_bias": False}):
        ours, dense = ctx.knn.Linear(3, **kwargs), keras.layers.Dense(3, **kwargs)
        ours.build((None, 6))
        dense.build((None, 6))
        assert [w.shape for w in ours.get_weights()] == [w.shape for w in dense.get_weights()], kwargs
        dense.set_weights(ours.get_weights())
        np.testing.assert_allclose(_np(ctx, ours(x)), _np(ctx, dense(x)), rtol=1e-6, atol=1e-7, err_msg=str(kwargs))
    yat = ctx.knn.YatNMN(3)
    yat.build((None, 6))
    assert [w.shape for w in yat.get_weights()] == [(6, 3), (3,), ()]


def _mask_probe(keras: Any) -> Any:
    """A layer that returns the mask it receives (the one the layer before passed on), as floats."""

    class MaskProbe(keras.layers.Layer):
        def call(self, inputs: Any, mask: Any = None) -> Any:
            assert mask is not None, "no mask reached the next layer"
            return keras.ops.cast(mask, "float32")

    return MaskProbe()


@check("layer-passes-masks-as-dense")
def _(ctx: SimpleNamespace) -> None:
    keras = ctx.keras
    x = np.random.default_rng(3).normal(size=(2, 5, 4)).astype(np.float32)
    x[0, 1] = x[1, 3] = x[1, 4] = 0.0
    expected = np.any(x != 0, axis=-1).astype(np.float32)
    for make in (lambda: keras.layers.Dense(3), lambda: ctx.knn.YatNMN(3), lambda: ctx.knn.Linear(3, use_bias=0.5)):
        layer = make()
        inputs = keras.Input((5, 4))
        model = keras.Model(inputs, _mask_probe(keras)(layer(keras.layers.Masking(0.0)(inputs))))
        np.testing.assert_array_equal(_np(ctx, model(x)), expected, err_msg=type(layer).__name__)
        mask = keras.ops.convert_to_tensor(expected > 0)
        assert layer.supports_masking and layer.compute_mask(x, mask) is mask, type(layer).__name__


@check("export-import-round-trip")
def _(ctx: SimpleNamespace) -> None:
    spec = small_spec(learnable_epsilon=True)
    params = random_params(spec, 3)
    model = ctx.knn.import_params(ctx.knn.build_model(spec, 12345), params)
    exported = ctx.knn.export_params(model)
    assert list(exported) == list(spec.param_shapes)
    for name, value in params.items():
        assert exported[name].dtype == np.float32 and exported[name].shape == value.shape, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    # The file keeps the core's (out, in) kernels; the layers hold Dense's (in, units).
    for name, variable in _named_variables(model).items():
        np.testing.assert_array_equal(_core_layout(name, _np(ctx, variable.value)), params[name], err_msg=name)
    again = ctx.knn.import_params(ctx.knn.build_model(spec, 0), exported)
    x, _ = batch(spec)
    np.testing.assert_array_equal(ctx.knn.predict(again, x), ctx.knn.predict(model, x))


@check("import-core-params-gives-core-logits")
def _(ctx: SimpleNamespace) -> None:
    spec = seed_spec()
    params = {k: v.astype(np.float64) for k, v in init_mlp_numpy(spec, 5).items()}  # cast on import
    model = ctx.knn.import_params(ctx.knn.build_model(spec, 0), params)
    x = tf_export_batch()
    logits = ctx.knn.predict(model, x.reshape(-1, 28, 28))
    reference = core_logits({k: v.astype(np.float32) for k, v in params.items()}, x, spec)
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5 * float(np.abs(reference).max()))
    assert np.array_equal(logits.argmax(1), reference.argmax(1))


@check("import-rejects-bad-parameters")
def _(ctx: SimpleNamespace) -> None:
    spec = small_spec()
    cases = [
        (lambda p: p.pop("1.alpha"), ValueError, r"missing 1\.alpha"),
        (lambda p: p.update({"9.kernel": np.zeros(2, np.float32)}), ValueError, r"unexpected 9\.kernel"),
        (
            lambda p: p.update({"0.kernel": np.zeros((12, 8), np.float32)}),
            ValueError,
            r"0\.kernel has shape \(12, 8\), expected \(8, 12\)",
        ),
        (lambda p: p.update({"2.bias": np.zeros(4, np.int32)}), TypeError, r"2\.bias \(int32\)"),
    ]
    for mutate, error, match in cases:
        params = random_params(spec, 5)
        mutate(params)
        model = ctx.knn.build_model(spec, 0)
        before = ctx.knn.export_params(model)
        with pytest.raises(error, match=match):
            ctx.knn.import_params(model, params)
        after = ctx.knn.export_params(model)
        assert all(np.array_equal(before[k], after[k]) for k in before), f"{match}: a rejected import changed the model"
    foreign = ctx.keras.Sequential([ctx.keras.Input((4,)), ctx.keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="Dense"):
        ctx.knn.export_params(foreign)


@check("keras-file-round-trip")
def _(ctx: SimpleNamespace) -> None:
    keras = ctx.keras
    folder = Path(tempfile.mkdtemp())
    spec = small_spec(learnable_epsilon=True, alpha=math.sqrt(2), bias=0.25)
    model = ctx.knn.build_model(spec, 3)
    model.save(folder / "model.keras")
    loaded = keras.models.load_model(folder / "model.keras")
    assert ctx.knn.model_spec(loaded) == spec
    for name, value in ctx.knn.export_params(model).items():
        np.testing.assert_array_equal(ctx.knn.export_params(loaded)[name], value, err_msg=name)
    x, _ = batch(spec)
    np.testing.assert_array_equal(ctx.knn.predict(loaded, x), ctx.knn.predict(model, x))
    # Every Dense argument survives the file too.
    custom = keras.Sequential(
        [
            keras.Input((6,)),
            ctx.knn.YatNMN(
                4,
                use_bias=False,
                spherical=True,
                kernel_initializer="random_uniform",
                kernel_regularizer=keras.regularizers.L2(0.01),
                kernel_constraint="non_neg",
                activity_regularizer="l1",
            ),
            ctx.knn.Linear(
                2,
                activation="relu",
                bias_initializer="ones",
                bias_regularizer="l2",
                bias_constraint=keras.constraints.MaxNorm(3.0),
            ),
        ]
    )
    custom.save(folder / "custom.keras")
    again = keras.models.load_model(folder / "custom.keras")
    assert [layer.get_config() for layer in again.layers] == [layer.get_config() for layer in custom.layers]
    x = np.random.default_rng(4).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(_np(ctx, again(x)), _np(ctx, custom(x)))


@check("runner-recipe")
def _(ctx: SimpleNamespace) -> None:
    from yat_core.runners import BaseRunner, Runner

    runner: Any = make_runner(seed_spec(), keras_config())
    opt = runner.model.optimizer
    assert isinstance(runner, BaseRunner) and isinstance(runner, Runner)
    assert type(runner).__module__ == "yat_core.runners.keras"
    assert (runner.name, runner.framework, runner.gradients, runner.n_params()) == (
        "keras",
        "keras",
        "autodiff",
        235148,
    )
    assert runner.distributions == ("keras", *BACKEND_DISTRIBUTIONS[ctx.backend])
    assert runner.receipt_facts() == {"framework": "keras", "keras_backend": ctx.backend}
    assert runner.device_name().startswith(f"keras-backend={ctx.backend} ")
    assert isinstance(opt, ctx.keras.optimizers.AdamW) and type(opt).__name__ == "CoreAdamW"
    got = (float(_np(ctx, opt.learning_rate)), opt.beta_1, opt.beta_2, opt.epsilon, opt.weight_decay)
    assert got == pytest.approx((3e-4, 0.9, 0.999, 1e-8, 0.01)), got
    assert not opt.amsgrad and opt.global_clipnorm is None and opt.clipnorm is None
    custom_runner: Any = make_runner(
        seed_spec(), keras_config(optimizer=AdamWConfig(lr=1e-3, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.5))
    )
    custom = custom_runner.model.optimizer
    got = (float(_np(ctx, custom.learning_rate)), custom.beta_1, custom.beta_2, custom.epsilon, custom.weight_decay)
    assert got == pytest.approx((1e-3, 0.8, 0.99, 1e-6, 0.5)), got


@check("runner-device")
def _(ctx: SimpleNamespace) -> None:
    from yat_core.errors import BackendUnavailableError

    runner = make_runner(small_spec(), keras_config(device="cpu"))
    assert runner.device_name().startswith(f"keras-backend={ctx.backend} cpu")
    loss = runner.step(
        runner.put(np.zeros((4, 12), np.uint8)),
        runner.put(np.arange(4, dtype=np.int32)),
        runner.put(np.arange(4, dtype=np.int32)),
    )
    assert math.isfinite(runner.to_float(loss))
    assert len(runner.host_losses(loss)) == 1
    with pytest.raises(BackendUnavailableError, match="gpu:99"):
        make_runner(small_spec(), keras_config(device="gpu:99"))


@check("core-adamw-steps-as-the-core")
def _(ctx: SimpleNamespace) -> None:
    """The runner's optimizer: a Keras AdamW that steps as the core's AdamW, serialises, and honours Keras options."""
    from yat_core.runners._keras_adamw import CoreAdamW

    keras, ops = ctx.keras, ctx.keras.ops
    rng = np.random.default_rng(0)
    start = {"w": rng.normal(size=(4, 5)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    # Gradients from 1e-9 to 1e-1, the Yat CNN's range included: where Keras's own epsilon placement differs most.
    grads = [
        {
            k: (rng.normal(size=v.shape) * 10.0 ** rng.integers(-9, 0, v.shape)).astype(np.float32)
            for k, v in start.items()
        }
        for _ in range(3)
    ]
    config = AdamWConfig(lr=1e-3, weight_decay=0.5)

    def keras_steps(opt: Any) -> dict[str, np.ndarray]:
        variables = {k: keras.Variable(v.copy(), name=k) for k, v in start.items()}
        for g in grads:
            opt.apply([ops.convert_to_tensor(g[k]) for k in variables], list(variables.values()))
        return {k: _np(ctx, v.value) for k, v in variables.items()}

    def core_steps(config: AdamWConfig) -> dict[str, np.ndarray]:
        params = dict(start)
        state = adamw_init(params)
        for g in grads:
            params, state = adamw_update(g, state, params, config)
        return params

    def optimizer(cls: Any = CoreAdamW) -> Any:
        return cls(learning_rate=config.lr, weight_decay=config.weight_decay, epsilon=config.eps)

    want = core_steps(config)
    ours = keras_steps(optimizer())
    for name, value in want.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-6, atol=1e-9, err_msg=name)
    stock = keras_steps(optimizer(keras.optimizers.AdamW))
    assert max(float(np.abs(stock[k] - want[k]).max()) for k in want) > 1e-4  # this check tells the two apart
    # Keras's exclusion from weight decay still works: "b" steps as with no decay.
    excluded = optimizer()
    excluded.exclude_from_weight_decay(var_names=["b"])
    np.testing.assert_allclose(
        keras_steps(excluded)["b"], core_steps(config._replace(weight_decay=0.0))["b"], rtol=1e-6
    )
    # A Keras citizen: config, serialisation by name, refusal of what the recipe lacks.
    opt = optimizer()
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(again) is CoreAdamW and again.get_config() == opt.get_config()
    assert keras.saving.get_registered_name(CoreAdamW) == "yat_core>CoreAdamW"
    with pytest.raises(ValueError, match="AMSGrad"):
        CoreAdamW(amsgrad=True)


@check("runner-saves-its-optimizer")
def _(ctx: SimpleNamespace) -> None:
    """A trained runner's compiled model saves to a ``.keras`` file and loads with its optimizer and step count."""
    from yat_core.runners._keras_adamw import CoreAdamW

    _, runner = train_keeping_runner(keras_config(epochs=1, batch_size=32), tiny_data())
    path = Path(tempfile.mkdtemp()) / "trained.keras"
    runner.model.save(path)
    loaded = ctx.keras.saving.load_model(path)
    assert type(loaded.optimizer) is CoreAdamW
    assert loaded.optimizer.get_config() == runner.model.optimizer.get_config()
    assert int(_np(ctx, loaded.optimizer.iterations)) == 3
    for a, b in zip(loaded.optimizer.variables, runner.model.optimizer.variables):
        np.testing.assert_array_equal(_np(ctx, a.value), _np(ctx, b.value), err_msg=a.path)


@check("runner-trains-like-the-core")
def _(ctx: SimpleNamespace) -> None:
    """The shared helper at its default tolerance: the core's AdamW, not Keras's epsilon placement."""
    receipt, _ = trains_like_the_core("keras")
    assert receipt["keras_backend"] == ctx.backend


@check("runner-trains-with-the-cores-adamw")
def _(ctx: SimpleNamespace) -> None:
    receipt = assert_trains_like_core_adamw("keras", f"keras-backend={ctx.backend} ")
    assert (receipt["framework"], receipt["keras_backend"]) == ("keras", ctx.backend)
    assert "keras" in receipt["versions"]
    assert any(d in receipt["versions"] for d in BACKEND_DISTRIBUTIONS[ctx.backend]), receipt["versions"]


@check("runner-float64")
def _(ctx: SimpleNamespace) -> None:
    config = keras_config(dtype="float64", epochs=1, batch_size=32, optimizer=AdamWConfig(eps=1e-4))
    if ctx.backend == "jax" and not ctx.float64:
        from yat_core.errors import BackendUnavailableError

        with pytest.raises(BackendUnavailableError, match="^--dtype float64: .*JAX_ENABLE_X64"):
            make_runner(seed_spec(), config)
        return
    receipt, runner = train_keeping_runner(config, tiny_data())
    losses, params = adamw_reference(config, tiny_data(), seed_spec())
    ours = runner.export_params()
    for name, value in params.items():
        assert ours[name].dtype == np.float64, name
        # Keras keeps the learning rate in a float32 variable: the float64 run agrees
        # to ~1e-6 of the step, not to 1e-15.
        np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-9, err_msg=name)
    x = tf_export_batch().astype(np.float64)
    np.testing.assert_allclose(ctx.knn.predict(runner.model, x), core_logits(ours, x, seed_spec()), rtol=1e-11)
    # Keras reports the loss through its float32 loss tracker, whatever the model's dtype.
    np.testing.assert_allclose(receipt["history"][0]["step_loss"], losses, rtol=1e-7)


@check("imports-a-tf-export")
def _(ctx: SimpleNamespace) -> None:
    path = ctx.shared / "tf.npz"
    if not path.exists():
        raise CheckSkipped("tensorflow is not installed in the test process: no TF export to import")
    from yat_core.nn.interchange import load_npz

    model = ctx.knn.import_params(ctx.knn.build_model(seed_spec(), 0), load_npz(path))
    reference = np.load(ctx.shared / "tf_logits.npy")
    logits = ctx.knn.predict(model, tf_export_batch())
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5 * float(np.abs(reference).max()))
    assert np.array_equal(logits.argmax(1), reference.argmax(1))


@check("writes-a-trained-export")
def _(ctx: SimpleNamespace) -> None:
    from yat_core.nn.interchange import save_npz

    _, runner = train_keeping_runner(keras_config(epochs=1, batch_size=32), tiny_data(n_train=256))
    save_npz(ctx.out / "trained.npz", runner.export_params())
    np.save(ctx.out / "trained_logits.npy", ctx.knn.predict(runner.model, tf_export_batch()))


def main(backend: str, out: Path, shared: Path) -> None:
    """The subprocess: run every check under Keras backend ``backend``; write ``out/results.json``."""
    import keras

    from yat_core.namespaces.keras import namespace
    from yat_core.nn import keras as knn

    probe = namespace().asarray(np.zeros(1))
    ctx = SimpleNamespace(
        backend=backend,
        keras=keras,
        knn=knn,
        xp=namespace(),
        out=out,
        shared=shared,
        float64=keras.backend.standardize_dtype(probe.dtype) == "float64",
    )
    run_checks(CHECKS, CHECKS, ctx, out)


# ================================================================ the pytest side


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TF model's export and logits for the subprocesses to import, when TensorFlow is installed."""
    folder = tmp_path_factory.mktemp("keras-shared")
    if importlib.util.find_spec("tensorflow") is None:
        return folder
    from yat_core.nn import tf as ytf
    from yat_core.nn.interchange import save_npz

    rng = np.random.default_rng(11)
    params = {k: v + rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in init_mlp_numpy(seed_spec(), 4).items()}
    model = ytf.import_params(ytf.build_model(seed_spec(), 0), params)
    save_npz(folder / "tf.npz", ytf.export_params(model))
    np.save(folder / "tf_logits.npy", ytf.predict(model, tf_export_batch()))
    return folder


@pytest.fixture(scope="module")
def keras_run(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> BackendProcesses:
    """Every backend's check process, started together on first use."""
    return BackendProcesses(__file__, BACKENDS, tmp_path_factory.mktemp, SUBPROCESS_TIMEOUT, args=[str(shared)])


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras(backend: str, check: str, keras_run: BackendProcesses) -> None:
    """One check of :data:`CHECKS`, run in the backend's own process."""
    assert_check(keras_run, backend, check)


def test_the_layer_module_imports_no_training_code() -> None:
    """``yat_core.nn.keras`` holds layers only: importing it loads no runner, backend, training or data module."""
    absent = missing("jax")
    if absent:
        pytest.skip(f"{absent} is not installed")
    training = ("yat_core.runners", "yat_core.backends", "yat_core.train", "yat_core.receipts", "yat_core.data")
    code = f"import sys, yat_core.nn.keras; print(sorted(m for m in sys.modules if m.startswith({training!r})))"
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_trained_export_predicts_the_same_in_tf_and_the_core(backend: str, keras_run: BackendProcesses) -> None:
    """Parameters trained by Keras on ``backend`` load into TensorFlow and the core: same logits."""
    absent = missing(backend)
    if absent:
        pytest.skip(f"{absent} is not installed")
    ytf = pytest.importorskip("yat_core.nn.tf")
    from yat_core.nn.interchange import load_npz

    results, log = keras_run.result(backend)
    out = keras_run.folder(backend)
    assert results is not None and results["writes-a-trained-export"]["outcome"] == "passed", log
    params = load_npz(out / "trained.npz")
    reference = np.load(out / "trained_logits.npy")
    x = tf_export_batch()
    assert not np.array_equal(params["0.kernel"], init_mlp_numpy(seed_spec(), 0)["0.kernel"]), "not trained"
    for name, logits in (
        ("tf", ytf.predict(ytf.import_params(ytf.build_model(seed_spec(), 0), params), x)),
        ("core", core_logits(params, x, seed_spec())),
    ):
        scale = float(np.abs(reference).max())
        np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5 * scale, err_msg=f"keras -> {name}")
        assert np.array_equal(logits.argmax(1), reference.argmax(1)), name


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
