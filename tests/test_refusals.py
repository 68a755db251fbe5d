"""Refusals: every argument a layer or the core cannot use is refused up front, naming it (issue 12, item 7).

- Layer constructors in every framework (torch, nnx, linen, mlx, keras, tf; dense,
  convolution, transposed convolution, attention, embedding): sizes must be real
  integers (Python or NumPy ints; ``bool`` and every float refused, integral ones
  too), >= 1 (padding >= 0); ``epsilon`` a finite number > 0; a constant ``alpha``
  finite; the switches bools; groups and heads must divide. Each
  refusal is one ``TypeError`` / ``ValueError`` line that starts with the framework
  and layer (``"torch YatNMN: in_features must be ..."``), then the argument.
- The core (dense, convolutions, attention): an array ``epsilon`` is a scalar
  (shape ``()`` or ``(1,)``), refused in the forward pass otherwise, naming its shape
  (it used to broadcast in the forward pass and fail in the gradient).
- float64 on MLX: ``--backend mlx`` and ``--framework mlx`` refuse it with one message
  naming ``--dtype``, from one check (:func:`yat_core.backends.mlx.check_dtype`).

Keras fixes its backend when it is first imported, so its layers are checked in a
child process (``python tests/test_refusals.py jax OUT_DIR``, Keras's default backend
here) by the harness of the Keras test files; the pytest process never imports Keras
through this file.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import pytest
from keras_processes import BackendProcesses, Checks, assert_check, run_checks

from yat_core.attention import yat_attention, yat_attention_vjp
from yat_core.conv import yat_conv, yat_conv_transpose, yat_conv_transpose_vjp, yat_conv_vjp
from yat_core.nn.options import check_size, names_layer
from yat_core.product import yat_product, yat_product_vjp


class Layer(NamedTuple):
    """One layer class of one framework and how to attack it."""

    cls: str
    base: dict[str, Any]  # the smallest valid arguments
    sizes: dict[str, tuple[Any, int]]  # integer argument -> (a valid value, its minimum)
    alpha: str | None = "alpha"  # the framework's name of alpha; None: the layer has no Yat score
    divides: tuple[str, Any, str] | None = None  # (argument, value, message) of a divisibility refusal
    none_is_one: tuple[str, ...] = ()  # arguments whose None means 1 (Flax's strides and dilation)


def _conv(channels: tuple[str, str], kernel: str, stride: str, dilation: str, groups: str, **more: Any) -> dict:
    return {
        "base": {channels[0]: 2, channels[1]: 4, kernel: 3} if channels[0] else {channels[1]: 4, kernel: 3},
        "sizes": {
            **({channels[0]: (2, 1)} if channels[0] else {}),
            channels[1]: (4, 1),
            kernel: (3, 1),
            stride: (1, 1),
            dilation: (1, 1),
            groups: (2, 1),
            **more,
        },
        "divides": (groups, 3, f"{groups}=3 must divide"),
        "none_is_one": (stride, dilation) if groups == "feature_group_count" else (),
    }


_TORCH_CONV = _conv(("in_channels", "out_channels"), "kernel_size", "stride", "dilation", "groups", padding=(0, 0))
_FLAX_CONV = _conv(("in_features", "out_features"), "kernel_size", "strides", "kernel_dilation", "feature_group_count")
_LINEN_CONV = _conv(("", "features"), "kernel_size", "strides", "kernel_dilation", "feature_group_count")
_KERAS_CONV = _conv(("", "filters"), "kernel_size", "strides", "dilation_rate", "groups")
_TF_CONV = _conv(("in_channels", "filters"), "kernel_size", "strides", "dilation_rate", "groups")
_TORCH_TRANSPOSE = {**_TORCH_CONV, "sizes": {**_TORCH_CONV["sizes"], "output_padding": (0, 0)}}

#: Framework -> its layers. ``nnx`` layers also take ``rngs``, added when they are built.
LAYERS: dict[str, tuple[Layer, ...]] = {
    "torch": (
        Layer("YatNMN", {"in_features": 4, "out_features": 3}, {"in_features": (4, 1), "out_features": (3, 1)}),
        Layer("YatConv2d", **_TORCH_CONV),
        Layer("YatConvTranspose2d", **_TORCH_TRANSPOSE),
        Layer(
            "YatMultiHeadAttention",
            {"embed_dim": 8, "num_heads": 2},
            {"embed_dim": (8, 1), "num_heads": (2, 1)},
            divides=("num_heads", 3, "num_heads=3 must divide embed_dim=8"),
        ),
        Layer(
            "YatEmbed", {"num_embeddings": 5, "embedding_dim": 4}, {"num_embeddings": (5, 1), "embedding_dim": (4, 1)}
        ),
    ),
    "mlx": (
        Layer("YatNMN", {"input_dims": 4, "output_dims": 3}, {"input_dims": (4, 1), "output_dims": (3, 1)}),
        Layer("YatConv2d", **_TORCH_CONV),
        Layer("YatConvTranspose2d", **_TORCH_TRANSPOSE),
        Layer(
            "YatMultiHeadAttention",
            {"dims": 8, "num_heads": 2},
            {
                "dims": (8, 1),
                "num_heads": (2, 1),
                "query_input_dims": (8, 1),
                "key_input_dims": (8, 1),
                "value_input_dims": (8, 1),
                "value_dims": (8, 1),
                "value_output_dims": (8, 1),
            },
            divides=("num_heads", 3, "num_heads=3 must divide dims=8"),
        ),
        Layer("YatEmbed", {"num_embeddings": 5, "dims": 4}, {"num_embeddings": (5, 1), "dims": (4, 1)}),
    ),
    "nnx": (
        Layer(
            "YatNMN",
            {"in_features": 4, "out_features": 3},
            {"in_features": (4, 1), "out_features": (3, 1)},
            alpha="use_alpha",
        ),
        Layer("YatConv", **_FLAX_CONV, alpha="use_alpha"),
        Layer("YatConvTranspose", **_FLAX_CONV, alpha="use_alpha"),
        Layer(
            "YatMultiHeadAttention",
            {"num_heads": 2, "in_features": 8},
            {"num_heads": (2, 1), "in_features": (8, 1), "qkv_features": (8, 1), "out_features": (8, 1)},
            alpha="use_alpha",
            divides=("num_heads", 3, "num_heads=3 must divide qkv_features=8"),
        ),
        Layer(
            "YatEmbed",
            {"num_embeddings": 5, "features": 4},
            {"num_embeddings": (5, 1), "features": (4, 1)},
            alpha="use_alpha",
        ),
    ),
    "linen": (
        Layer("YatNMN", {"features": 3}, {"features": (3, 1)}, alpha="use_alpha"),
        Layer("YatConv", **_LINEN_CONV, alpha="use_alpha"),
        Layer("YatConvTranspose", **_LINEN_CONV, alpha="use_alpha"),
        Layer(
            "YatMultiHeadDotProductAttention",
            {"num_heads": 2, "qkv_features": 8},
            {"num_heads": (2, 1), "qkv_features": (8, 1), "out_features": (8, 1)},
            alpha="use_alpha",
            divides=("num_heads", 3, "num_heads=3 must divide qkv_features=8"),
        ),
        Layer(
            "YatEmbed",
            {"num_embeddings": 5, "features": 4},
            {"num_embeddings": (5, 1), "features": (4, 1)},
            alpha="use_alpha",
        ),
    ),
    "keras": (
        Layer("YatNMN", {"units": 3}, {"units": (3, 1)}, alpha="use_alpha"),
        Layer("Linear", {"units": 3}, {"units": (3, 1)}, alpha=None),
        Layer("YatConv2D", **_KERAS_CONV, alpha="use_alpha"),
        Layer("YatConv2DTranspose", **_KERAS_CONV, alpha="use_alpha"),
        Layer(
            "YatMultiHeadAttention",
            {"num_heads": 2, "key_dim": 4},
            {"num_heads": (2, 1), "key_dim": (4, 1), "value_dim": (4, 1)},
            alpha="use_alpha",
        ),
        Layer("YatEmbed", {"input_dim": 5, "output_dim": 4}, {"input_dim": (5, 1), "output_dim": (4, 1)}, "use_alpha"),
        Layer("Patches", {"patch_size": 2}, {"patch_size": (2, 1)}, alpha=None),
        Layer("AddPositionEmbedding", {"sequence_length": 4}, {"sequence_length": (4, 1)}, alpha=None),
    ),
    "tf": (
        Layer("YatNMN", {"in_features": 4, "units": 3}, {"in_features": (4, 1), "units": (3, 1)}, alpha="use_alpha"),
        Layer("Linear", {"in_features": 4, "units": 3}, {"in_features": (4, 1), "units": (3, 1)}, alpha=None),
        Layer("YatConv2D", **_TF_CONV, alpha="use_alpha"),
        Layer("YatConv2DTranspose", **_TF_CONV, alpha="use_alpha"),
        Layer(
            "YatMultiHeadAttention",
            {"query_dim": 8, "num_heads": 2, "key_dim": 4},
            {"query_dim": (8, 1), "num_heads": (2, 1), "key_dim": (4, 1), "value_dim": (4, 1)},
            alpha="use_alpha",
        ),
        Layer("YatEmbed", {"input_dim": 5, "output_dim": 4}, {"input_dim": (5, 1), "output_dim": (4, 1)}, "use_alpha"),
    ),
}
#: Framework -> the module it needs (the test skips without it).
REQUIRES = {"torch": "torch", "mlx": "mlx", "nnx": "flax", "linen": "flax", "keras": "keras", "tf": "tensorflow"}

#: Not an integer size, whatever its value: refused with a TypeError (a ValueError for the per-dimension tuples).
NOT_INTEGERS = (4.9, 4.0, True, np.True_, "4", np.float64(2.0), None)
BAD_EPSILONS = (True, "x", None, np.ones(3), 0.0, -1.0, math.nan, math.inf, np.float32(-0.5))
#: What each check covers: its name -> the function that runs it (:func:`_check`).
WHATS = ("sizes", "epsilon", "alpha", "switches", "divides", "int-like")


def _build(module: Any, framework: str, layer: Layer, **changes: Any) -> Any:
    kwargs = {**layer.base, **changes}
    if framework == "nnx":
        from flax import nnx

        kwargs["rngs"] = nnx.Rngs(0)
    return getattr(module, layer.cls)(**kwargs)


def _refused(module: Any, framework: str, layer: Layer, arg: str, value: Any, pattern: str) -> None:
    """Building the layer with ``arg=value`` raises one TypeError/ValueError line: framework, layer, ``pattern``."""
    try:
        _build(module, framework, layer, **{arg: value})
    except (TypeError, ValueError) as exc:
        message = str(exc)
        expected = rf"^{framework} {layer.cls}: {pattern}"
        assert re.search(expected, message), f"{layer.cls}({arg}={value!r}): {message!r} does not match {expected!r}"
        assert "\n" not in message, f"{layer.cls}({arg}={value!r}): not one line: {message!r}"
    else:
        raise AssertionError(f"{framework} {layer.cls}({arg}={value!r}) was accepted")


def _check(module: Any, framework: str, layer: Layer, what: str) -> None:
    """Every refusal of one class (``what``) on one layer; raises AssertionError naming the first that fails."""
    if what == "sizes":
        for arg, (_, minimum) in layer.sizes.items():
            default = inspect.signature(getattr(module, layer.cls).__init__).parameters[arg].default
            optional = default is None or arg in layer.none_is_one
            for value in NOT_INTEGERS:
                if value is None and optional:
                    continue  # None is an optional size's default (the layer infers it)
                _refused(module, framework, layer, arg, value, rf"{arg} must be")
            _refused(module, framework, layer, arg, minimum - 1, rf"{arg} must be >= {minimum}")
            _refused(module, framework, layer, arg, -7, rf"{arg} must be >= {minimum}")
    elif what == "int-like":
        # NumPy integers are integers: the layer is built, with Python ints.
        _build(module, framework, layer, **{arg: np.int64(valid) for arg, (valid, _) in layer.sizes.items()})
        if layer.alpha is not None:
            _build(module, framework, layer, epsilon=np.float32(0.5), spherical=np.True_, **{layer.alpha: np.int32(2)})
    elif layer.alpha is None:
        return  # no Yat score, no divisibility: nothing more to refuse
    elif what == "epsilon":
        for value in BAD_EPSILONS:
            _refused(module, framework, layer, "epsilon", value, "epsilon must be a finite number > 0, got")
    elif what == "alpha":
        for value in (math.nan, math.inf, np.float32(-math.inf)):
            _refused(module, framework, layer, layer.alpha, value, rf"{layer.alpha} must be finite")
        _refused(module, framework, layer, layer.alpha, "yes", rf"{layer.alpha} must be True")
    elif what == "switches":
        for arg in ("learnable_epsilon", "spherical"):
            for value in (1, "yes", None, 0.0):
                _refused(module, framework, layer, arg, value, rf"{arg} must be a bool \(True or False\)")
    elif what == "divides" and layer.divides is not None:
        arg, value, message = layer.divides
        _refused(module, framework, layer, arg, value, re.escape(message))


def _ids(framework: str) -> list[tuple[Layer, str]]:
    return [(layer, what) for layer in LAYERS[framework] for what in WHATS]


IN_PROCESS = [(fw, layer, what) for fw in LAYERS if fw != "keras" for layer, what in _ids(fw)]


@pytest.mark.parametrize(
    ("framework", "layer", "what"), IN_PROCESS, ids=[f"{fw}-{layer.cls}-{what}" for fw, layer, what in IN_PROCESS]
)
def test_layer_refuses_bad_arguments_naming_layer_and_argument(framework: str, layer: Layer, what: str) -> None:
    pytest.importorskip(REQUIRES[framework])
    _check(importlib.import_module(f"yat_core.nn.{framework}"), framework, layer, what)


# ---------------------------------------------------------------- keras, in its own process

KERAS_BACKENDS = ("jax",)
KERAS_CHECKS = Checks()
for _layer, _what in _ids("keras"):
    KERAS_CHECKS.register(f"{_layer.cls}-{_what}")(
        lambda ctx, layer=_layer, what=_what: _check(ctx.knn, "keras", layer, what)
    )


def main(backend: str, out: Path) -> None:
    """The subprocess: every Keras check under Keras backend ``backend``; writes ``out/results.json``."""
    import keras

    from yat_core.nn import keras as knn

    run_checks(KERAS_CHECKS, KERAS_CHECKS, SimpleNamespace(backend=backend, keras=keras, knn=knn), out)


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory: pytest.TempPathFactory) -> BackendProcesses:
    return BackendProcesses(__file__, KERAS_BACKENDS, tmp_path_factory.mktemp, 300)


@pytest.mark.parametrize("check", list(KERAS_CHECKS))
@pytest.mark.parametrize("backend", KERAS_BACKENDS)
def test_keras_layer_refuses_bad_arguments(backend: str, check: str, keras_run: BackendProcesses) -> None:
    assert_check(keras_run, backend, check)


# ---------------------------------------------------------------- the shared validator


def test_an_inner_layer_reports_as_the_layer_the_caller_built() -> None:
    class Inner:
        @names_layer
        def __init__(self, size: Any) -> None:
            self.size = check_size(size, "size")

    class Outer:
        @names_layer
        def __init__(self, size: Any) -> None:
            self.inner = Inner(size)

    with pytest.raises(TypeError, match=r"^test_refusals Outer: size must be a positive integer, got 4\.9$"):
        Outer(4.9)
    with pytest.raises(ValueError, match=r"^test_refusals Inner: size must be >= 1, got 0$"):
        Inner(0)
    assert Outer(np.int64(3)).inner.size == 3


def test_the_validator_keeps_the_project_errors_and_the_signature() -> None:
    from yat_core.errors import DataError

    class Failing:
        @names_layer
        def __init__(self, path: str, *, size: int = 1) -> None:
            raise DataError(f"{path} is truncated")

    with pytest.raises(DataError, match=r"^f\.idx is truncated$"):
        Failing("f.idx")
    # Keras reads constructors with getfullargspec, which does not follow __wrapped__.
    assert str(inspect.signature(Failing.__init__)) == "(self, path: 'str', *, size: 'int' = 1) -> 'None'"
    assert inspect.getfullargspec(Failing.__init__).varargs is None


# ---------------------------------------------------------------- the core: epsilon's shape

_RNG = np.random.default_rng(0)
_X, _W = _RNG.standard_normal((2, 4)), _RNG.standard_normal((3, 4))
_XC, _WC, _WT = _RNG.standard_normal((1, 2, 6)), _RNG.standard_normal((3, 2, 2)), _RNG.standard_normal((2, 3, 2))
_Q, _K, _V = (_RNG.standard_normal((1, 3, 2, 4)) for _ in range(3))

#: Layer kind -> (forward(epsilon), vjp(epsilon) -> the epsilon gradient).
CORE: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "dense": (
        lambda eps: yat_product(_X, _W, epsilon=eps),
        lambda eps: yat_product_vjp(_X, _W, np.ones((2, 3)), epsilon=eps).epsilon,
    ),
    "conv": (
        lambda eps: yat_conv(_XC, _WC, epsilon=eps),
        lambda eps: yat_conv_vjp(_XC, _WC, np.ones((1, 3, 5)), epsilon=eps).epsilon,
    ),
    "conv_transpose": (
        lambda eps: yat_conv_transpose(_XC, _WT, epsilon=eps),
        lambda eps: yat_conv_transpose_vjp(_XC, _WT, np.ones((1, 3, 7)), epsilon=eps).epsilon,
    ),
    "attention": (
        lambda eps: yat_attention(_Q, _K, _V, epsilon=eps),
        lambda eps: yat_attention_vjp(_Q, _K, _V, np.ones((1, 3, 2, 4)), epsilon=eps).epsilon,
    ),
}


@pytest.mark.parametrize("shape", [(3,), (1, 3), (2, 1), (1, 1)], ids=str)
@pytest.mark.parametrize("kind", list(CORE))
def test_core_refuses_an_epsilon_array_that_is_not_a_scalar_in_the_forward_pass(kind: str, shape: tuple) -> None:
    forward, _ = CORE[kind]
    expected = re.escape(f"epsilon must be a number or a scalar array (shape () or (1,)), got shape {shape}")
    with pytest.raises(ValueError, match=f"^{expected}$"):
        forward(np.full(shape, 0.1))


@pytest.mark.parametrize("shape", [(), (1,)], ids=str)
@pytest.mark.parametrize("kind", list(CORE))
def test_core_takes_a_scalar_epsilon_array_through_forward_and_gradient(kind: str, shape: tuple) -> None:
    forward, vjp = CORE[kind]
    eps = np.full(shape, 0.1)
    np.testing.assert_allclose(forward(eps), forward(0.1), rtol=1e-12)
    grad = vjp(eps)
    assert grad.shape == shape and np.all(np.isfinite(grad))


def test_core_refuses_an_alpha_that_is_not_a_scalar() -> None:
    with pytest.raises(ValueError, match=r"alpha must be a scalar, got shape \(3,\)"):
        yat_attention(_Q, _K, _V, alpha=np.ones(3))
    with pytest.raises(ValueError, match=r"alpha must be a scalar, got shape \(3,\)"):
        yat_product(_X, _W, alpha=np.ones(3))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\) .*got \(4,\)"):
        yat_conv(_XC, _WC, bias=np.ones(4))


# ---------------------------------------------------------------- float64 on MLX

_MLX_FLOAT64 = (
    "--dtype float64 is not available on MLX: its float64 exp is only float32-accurate, so the loss would not be "
    "computed in float64; use --dtype float32, or the numpy or torch backend for float64"
)


def test_mlx_float64_exp_is_only_float32_accurate_here() -> None:
    """Why MLX refuses float64: its float64 matmul is exact to float64, its exp is not (revisit when this fails)."""
    mx = pytest.importorskip("mlx.core")
    x = np.linspace(-20.0, 20.0, 10001)
    exp = np.asarray(mx.exp(mx.array(x, dtype=mx.float64)))
    a, b = _RNG.standard_normal((64, 32)), _RNG.standard_normal((32, 16))
    product = np.asarray(mx.array(a, dtype=mx.float64) @ mx.array(b, dtype=mx.float64))
    assert exp.dtype == np.float64 and product.dtype == np.float64
    assert np.max(np.abs(product - a @ b)) < 1e-12
    assert np.max(np.abs(exp - np.exp(x)) / np.exp(x)) > 1e-9  # float64 would be ~2e-16


def test_mlx_backend_refuses_float64_arrays() -> None:
    pytest.importorskip("mlx.core")
    from yat_core.backends.mlx import MLXBackend
    from yat_core.errors import BackendUnavailableError

    backend = MLXBackend("cpu")
    assert backend.asarray(np.zeros(2, np.float32)).shape == (2,)
    with pytest.raises(BackendUnavailableError, match=re.escape(_MLX_FLOAT64.replace("--dtype", "dtype"))):
        backend.asarray(np.zeros(2))


@pytest.mark.parametrize("how", ["--backend", "--framework"])
def test_mlx_float64_is_refused_the_same_way_by_backend_and_framework(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlx.core")
    from yat_core.cli import main

    report = tmp_path / "receipt.json"
    argv = ["train", how, "mlx", "--dtype", "float64", "--epochs", "1", "--data-dir", str(tmp_path / "data")]
    assert main([*argv, "--report", str(report)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"yat-core: error: {_MLX_FLOAT64}"]
    assert not report.exists() and not (tmp_path / "data").exists()


def test_mlx_runner_and_make_runner_share_the_check() -> None:
    pytest.importorskip("mlx.core")
    from yat_core.config import TrainConfig
    from yat_core.errors import BackendUnavailableError
    from yat_core.mlp import seed_spec
    from yat_core.runners import make_runner

    for config in (TrainConfig(backend="mlx", dtype="float64"), TrainConfig(framework="mlx", dtype="float64")):
        with pytest.raises(BackendUnavailableError, match=f"^{re.escape(_MLX_FLOAT64)}$"):
            make_runner(seed_spec(), config)


_JAX_FLOAT64 = (
    "--dtype float64 on JAX needs its 64-bit mode: set JAX_ENABLE_X64=1 in the environment, or use --dtype float32"
)


@pytest.mark.parametrize(("how", "name"), [("--backend", "jax"), ("--framework", "nnx"), ("--framework", "linen")])
def test_jax_float64_without_x64_is_refused_the_same_way_by_backend_and_frameworks(
    how: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without 64-bit mode JAX would compute float64 in float32: the backend and the Flax runners say so alike."""
    jax = pytest.importorskip("jax")
    if how == "--framework":
        pytest.importorskip("flax")
    if jax.config.read("jax_enable_x64"):
        pytest.skip("JAX runs in 64-bit mode here")
    from yat_core.cli import main

    report = tmp_path / "receipt.json"
    argv = ["train", how, name, "--dtype", "float64", "--epochs", "1", "--data-dir", str(tmp_path / "data")]
    assert main([*argv, "--report", str(report)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"yat-core: error: {_JAX_FLOAT64}"]
    assert not report.exists() and not (tmp_path / "data").exists()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
