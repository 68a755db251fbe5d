"""yat_core.nn.interchange, and weight interchange between the native frameworks.

Also home of the framework-free helpers the per-framework tests share
(``test_nn_torch``, ``test_nn_flax``, ``test_nn_mlx`` import them from here): the
small models that exercise every layer option, the float64 core reference, and
the side-by-side training run against the core.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from yat_core.mlp import LayerSpec, MLPSpec, init_mlp_numpy, mlp_forward, mlp_value_and_grad, seed_spec
from yat_core.nn import interchange
from yat_core.nn.interchange import check_params, load_npz, save_npz
from yat_core.nn.options import layer_option, linear_layer_spec, native_option, yat_layer_spec
from yat_core.optim import AdamWConfig
from yat_core.product import softplus
from yat_core.runners import make_runner
from yat_core.spec import MODELS, ModelSpec, count_params
from yat_core.train import TrainConfig, train

# ================================================================ shared helpers

#: Options of the Yat layers of a small model (12 -> 8 -> 6 -> 4), one model per case.
OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-bias": {"bias": None},
    "constant-bias": {"bias": 0.25},
    "no-alpha": {"alpha": None},
    "constant-alpha": {"alpha": math.sqrt(2)},
    "learnable-epsilon": {"learnable_epsilon": True, "epsilon": 0.5},
    "spherical": {"spherical": True},
    "spherical-learnable-epsilon": {"spherical": True, "learnable_epsilon": True},
}
#: OPTIONS plus a model of linear layers with ReLU and a constant bias.
MODEL_CASES = [*OPTIONS, "relu-linear"]

#: One native Yat layer per case: constructor options (core spelling) and its learnable parameters.
LAYER_CASES = {
    "no-bias": ({"bias": None}, ["alpha", "kernel"]),
    "constant-bias": ({"bias": 0.5}, ["alpha", "kernel"]),
    "no-alpha": ({"alpha": None}, ["bias", "kernel"]),
    "constant-alpha": ({"alpha": math.sqrt(2)}, ["bias", "kernel"]),
    "learnable-epsilon": ({"learnable_epsilon": True, "epsilon": 0.1}, ["alpha", "bias", "epsilon_raw", "kernel"]),
    "spherical": ({"spherical": True}, ["alpha", "bias", "kernel"]),
}


def small_spec(**options: Any) -> MLPSpec:
    return MLPSpec((LayerSpec("yat", 12, 8, **options), LayerSpec("yat", 8, 6, **options), LayerSpec("linear", 6, 4)))


def case_spec(case: str) -> MLPSpec:
    """The small model of a :data:`MODEL_CASES` entry."""
    if case == "relu-linear":
        # What a native Linear lacks: a ReLU, a constant bias; and a Yat output layer without bias.
        return MLPSpec(
            (
                LayerSpec("linear", 12, 8, activation="relu"),
                LayerSpec("linear", 8, 6, bias=0.5, activation="relu"),
                LayerSpec("yat", 6, 4, bias=None),
            )
        )
    return small_spec(**OPTIONS[case])


def batch(spec: MLPSpec, n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 pixels in [0, 1] (as the runners scale them) and int32 labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, spec.in_features)).astype(np.float32) / np.float32(255)
    return x, rng.integers(0, spec.layers[-1].out_features, n).astype(np.int32)


def random_params(spec: MLPSpec, seed: int) -> dict[str, np.ndarray]:
    """Values unlike any initialisation (so an import that did nothing shows), alpha and epsilon in range."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec.param_shapes.items():
        if name.endswith(".alpha"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith(".epsilon_raw"):
            value = rng.uniform(-2.0, 0.0, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        out[name] = np.asarray(value, np.float32)
    return out


def core_logits(params: dict[str, np.ndarray], x: np.ndarray, spec: MLPSpec) -> np.ndarray:
    """The core's logits in float64 at the same (float32) values."""
    return mlp_forward({k: v.astype(np.float64) for k, v in params.items()}, x.astype(np.float64), spec)


def core_reference(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, spec: MLPSpec
) -> tuple[float, dict[str, np.ndarray]]:
    """The core's loss and analytic gradients in float64 at the same (float32) values."""
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    loss, grads = mlp_value_and_grad(p64, x.astype(np.float64), y, spec)
    return float(loss), grads


def assert_grads_close(grads: dict[str, np.ndarray], ref: dict[str, np.ndarray], what: str) -> None:
    """Each gradient within 1e-5 of its own scale, plus 1e-6 of the largest gradient.

    The absolute term covers gradients that are zero in exact arithmetic (alpha of
    a layer followed by a spherical one), where float32 leaves rounding noise.
    """
    assert sorted(grads) == sorted(ref), what
    scale = max(float(np.max(np.abs(g))) for g in ref.values())
    for name, r in ref.items():
        g = np.asarray(grads[name])
        assert g.shape == r.shape, f"{what}: {name} has shape {g.shape}, the core's is {r.shape}"
        err = float(np.max(np.abs(g - r)))
        assert err <= 1e-5 * float(np.max(np.abs(r))) + 1e-6 * scale, f"{what}: {name} off by {err:.3g}"


def assert_matches_core(
    loss_and_grads: Callable, model: Any, params: dict[str, np.ndarray], spec: MLPSpec, what: str, n: int = 16
) -> None:
    """Logits, loss and gradients of a native model (float32) against the core (float64).

    ``loss_and_grads(model, x, y)`` returns the framework's own mean cross-entropy
    and its autodiff gradients under the core's names and layouts, and optionally
    the logits as a third item (then checked too).
    """
    x, y = batch(spec, n)
    loss, grads, *logits = loss_and_grads(model, x, y)
    if logits:
        np.testing.assert_allclose(
            np.asarray(logits[0]), core_logits(params, x, spec), rtol=1e-5, atol=1e-6, err_msg=what
        )
    ref_loss, ref_grads = core_reference(params, x, y, spec)
    assert loss == pytest.approx(ref_loss, rel=1e-5), what
    assert_grads_close(grads, ref_grads, what)


def core_layer_kwargs(spec: LayerSpec, values: dict[str, np.ndarray]) -> dict[str, Any]:
    """The core's keyword arguments for one layer whose learnable values are ``values``."""
    return {
        "bias": values.get("bias", spec.bias),
        "alpha": values.get("alpha", spec.alpha),
        "epsilon": softplus(values["epsilon_raw"]) if spec.learnable_epsilon else spec.epsilon,
        "spherical": spec.spherical,
    }


def tiny_data(n_train: int = 80, n_test: int = 40, seed: int = 0) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n_train).astype(np.uint8),
        test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, n_test).astype(np.uint8),
        source="random",
    )


#: How far apart a framework's and the core's parameters may end after the three steps. The CNN's
#: gradients reach 1e-9, far below AdamW's epsilon scale, where the normalised step turns a rounding
#: difference of a gradient into up to ~3e-6 of a parameter (seen on 1-3 of 18,432 elements); a
#: misplaced epsilon or a skipped decay moves parameters by 4e-5 to 7e-4.
TRAINED_ATOL = {"mlp": 1e-6, "cnn": 1e-5, "vit": 1e-5}


def assert_trains_like_the_core(name: str, model: str = "mlp", *, atol: float | None = None) -> dict[str, Any]:
    """Train the native model and the core (NumPy backend) side by side; return the native receipt.

    ``model`` is a ``--model`` name (:data:`yat_core.spec.MODELS`); ``atol`` bounds the
    difference of every trained parameter (default :data:`TRAINED_ATOL` of the model).

    80 samples in batches of 32: three steps, the last a partial batch of 16; 40 test
    images evaluated in chunks of 25 and 15. The
    weight decay is raised to 0.5 so that an optimizer that skipped or misapplied
    it would drift by ~4e-5, far above the ~1e-7 the frameworks differ by.
    """
    settings = dict(model=model, epochs=1, batch_size=32, eval_batch=25, optimizer=AdamWConfig(weight_decay=0.5))
    runners: list[Any] = []

    def keep(factory: Callable) -> Callable:
        def make(spec: MLPSpec, cfg: TrainConfig) -> Any:
            runners.append(factory(spec, cfg))
            return runners[-1]

        return make

    data = tiny_data()
    native = train(
        TrainConfig(framework=name, **settings), data=data, runner_factory=keep(make_runner), progress=False, log=None
    )
    core = train(
        TrainConfig(backend="numpy", **settings), data=data, runner_factory=keep(make_runner), progress=False, log=None
    )
    assert native["backend"] == name and native["params"] == count_params(MODELS[model][0]())
    assert native["steps_per_epoch"] == 3 and native["n_test"] == 40
    np.testing.assert_allclose(native["history"][0]["step_loss"], core["history"][0]["step_loss"], rtol=1e-5)
    assert native["final_test_loss"] == pytest.approx(core["final_test_loss"], rel=1e-5)
    assert native["final_test_acc"] == core["final_test_acc"]
    ours, theirs = runners[0].export_params(), runners[1].export_params()
    assert list(ours) == list(theirs)
    for param, value in theirs.items():
        bound = TRAINED_ATOL[model] if atol is None else atol
        np.testing.assert_allclose(ours[param], value, rtol=0, atol=bound, err_msg=f"{name}: {param}")
    return native


# Convolutional models for the framework tests (tests/test_nn_cnn_*.py).
#: Every layer kind, in 2-D, with the geometry that a layout or order slip would break: groups, a
#: stride, "same" with an even kernel (its odd unit on the right, which MLX pads apart), a grouped transposed convolution
#: with output_padding, both poolings, and a flatten of several channels and positions.
EVERY_KIND = ModelSpec(
    (
        LayerSpec("yat_conv", 2, 4, kernel_size=(3, 3), padding="same", groups=2),  # (4, 9, 9)
        LayerSpec("yat_conv", 4, 4, kernel_size=(2, 3), stride=(2, 2), learnable_epsilon=True),  # (4, 4, 4)
        LayerSpec(
            "yat_conv_transpose",
            4,
            6,
            kernel_size=(3, 3),
            stride=(2, 2),
            padding=(1, 1),
            output_padding=(1, 1),
            groups=2,
        ),  # (6, 8, 8)
        LayerSpec("avg_pool", 6, 6, kernel_size=(2, 2)),  # (6, 4, 4)
        LayerSpec("conv", 6, 8, kernel_size=(2, 2), padding="same", groups=2, activation="relu"),  # (8, 4, 4)
        LayerSpec("max_pool", 8, 8, kernel_size=(2, 2)),  # (8, 2, 2)
        LayerSpec("flatten", 8, 32),
        LayerSpec("yat", 32, 16),
        LayerSpec("linear", 16, 5),
    ),
    input_shape=(2, 9, 9),
)
#: The plain convolution in 1-D (nn.Conv1d takes ints) and 3-D: stride, dilation, "same", a constant bias, no ReLU.
CONV_1D = ModelSpec(
    (
        LayerSpec("conv", 3, 4, kernel_size=(3,), stride=(2,), dilation=(2,), padding=(1,), bias=0.25),  # (4, 5)
        LayerSpec("max_pool", 4, 4, kernel_size=(2,)),  # (4, 2): the odd position dropped
        LayerSpec("flatten", 4, 8),
        LayerSpec("linear", 8, 6, activation="relu"),
        LayerSpec("linear", 6, 3),
    ),
    input_shape=(3, 11),
)
CONV_3D = ModelSpec(
    (
        LayerSpec("conv", 2, 4, kernel_size=(2, 2, 2), padding="same", activation="relu"),  # (4, 4, 4, 4)
        LayerSpec("avg_pool", 4, 4, kernel_size=(2, 2, 2)),  # (4, 2, 2, 2)
        LayerSpec("flatten", 4, 32),
        LayerSpec("yat", 32, 3),
    ),
    input_shape=(2, 4, 4, 4),
)
MODEL_SPECS = {"every-kind-2d": EVERY_KIND, "conv-1d": CONV_1D, "conv-3d": CONV_3D}


# ================================================================ save / load


def test_npz_round_trip_keeps_names_shapes_dtypes_and_bits(tmp_path):
    params = random_params(small_spec(learnable_epsilon=True), 0)
    params["extra64"] = np.linspace(0, 1, 5)
    path = save_npz(tmp_path / "weights.npz", params)
    loaded = load_npz(path)
    assert list(loaded) == list(params)
    for name, value in params.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape, name
        np.testing.assert_array_equal(loaded[name], value)


def test_save_npz_writes_the_exact_path_and_leaves_no_temporary(tmp_path):
    path = save_npz(tmp_path / "sub" / "weights.bin", {"a": np.ones(2, np.float32)})
    assert path == tmp_path / "sub" / "weights.bin" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.bin"]


def test_save_npz_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_npz(tmp_path / "w.npz", {"a": np.zeros(3, np.float32)})
    before = path.read_bytes()

    def broken_savez(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(interchange.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_npz(path, {"a": np.ones(3, np.float32)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_load_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"not so: a \(object \(Python objects: pickled data is never loaded\)\)"):
        load_npz(path)


# ================================================================ check_params


def test_check_params_accepts_init_and_returns_spec_order():
    spec = seed_spec()
    params = init_mlp_numpy(spec, 0)
    shuffled = dict(reversed(list(params.items())))
    checked = check_params(shuffled, spec)
    assert list(checked) == list(spec.param_shapes)
    assert all(checked[k] is params[k] or np.array_equal(checked[k], params[k]) for k in params)


def test_check_params_names_every_problem_at_once():
    spec = seed_spec()
    params = init_mlp_numpy(spec, 0)
    del params["0.alpha"]
    params["1.kernel"] = params["1.kernel"].T
    params["3.kernel"] = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError) as info:
        check_params(params, spec)
    message = str(info.value)
    assert "missing 0.alpha (shape ())" in message
    assert "unexpected 3.kernel" in message
    assert "1.kernel has shape (256, 128), expected (128, 256)" in message


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64])
def test_check_params_rejects_non_real_floating_values(dtype):
    spec = small_spec()
    params = random_params(spec, 0)
    params["2.bias"] = np.zeros(4, dtype)
    with pytest.raises(TypeError, match=r"2\.bias"):
        check_params(params, spec)


def test_check_params_accepts_float64_and_float16():
    spec = small_spec()
    params = {
        k: v.astype(np.float64 if i % 2 else np.float16) for i, (k, v) in enumerate(random_params(spec, 0).items())
    }
    assert len(check_params(params, spec)) == len(params)


# ================================================================ layer options


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "learnable"),
        ("learnable", "learnable"),
        (False, None),
        (None, None),
        (0, 0.0),
        (2, 2.0),
        (math.sqrt(2), math.sqrt(2)),
        (np.float32(0.5), 0.5),
    ],
)
def test_layer_option_maps_native_arguments_to_the_core(value, expected):
    assert layer_option(value, "bias") == expected
    assert type(layer_option(value, "bias")) is type(expected)


@pytest.mark.parametrize("value", ["yes", [1.0], np.bool_(True), np.ones(2)])
def test_layer_option_rejects_other_values(value):
    with pytest.raises(ValueError, match="alpha must be True"):
        layer_option(value, "alpha")


@pytest.mark.parametrize("option", ["learnable", None, 0.25])
def test_native_option_inverts_layer_option(option):
    assert layer_option(native_option(option), "bias") == option


def test_yat_layer_spec_has_the_core_defaults_and_checks():
    spec = yat_layer_spec(784, 256)
    assert spec == LayerSpec("yat", 784, 256)
    assert (spec.bias, spec.alpha, spec.epsilon, spec.learnable_epsilon, spec.spherical) == (
        "learnable",
        "learnable",
        1e-5,
        False,
        False,
    )
    with pytest.raises(ValueError, match="epsilon"):
        yat_layer_spec(4, 3, epsilon=-1.0)
    with pytest.raises(ValueError, match="in_features must be >= 1, got 0"):
        yat_layer_spec(0, 3)


@pytest.mark.parametrize("size", [4.9, True, "4", None], ids=repr)
def test_layer_sizes_must_be_integers_not_truncated(size):
    with pytest.raises(TypeError, match="out_features must be a positive integer"):
        yat_layer_spec(4, size)
    with pytest.raises(TypeError, match="in_features must be a positive integer"):
        linear_layer_spec(size, 3)


# ================================================================ across frameworks

NATIVE = ("torch", "nnx", "linen", "mlx")


def framework(name: str) -> ModuleType:
    """The ``yat_core.nn`` module of ``name``, or a skip when the framework is absent."""
    module = installed(name)
    if module is None:
        pytest.skip(f"framework {name!r} is not installed")
    return module


def installed(name: str) -> ModuleType | None:
    """The ``yat_core.nn`` module of ``name``, or None when the framework is absent."""
    from yat_core.errors import BackendUnavailableError
    from yat_core.nn import get_framework

    try:
        return get_framework(name)
    except BackendUnavailableError:
        return None


def fresh_model(module: ModuleType, spec: MLPSpec) -> Any:
    # A seed no test imports from, so an import that silently did nothing shows.
    return module.build_model(spec, 12345)


@pytest.mark.parametrize("dst", NATIVE)
@pytest.mark.parametrize("src", NATIVE)
def test_parameters_move_between_frameworks_through_npz(src, dst, tmp_path):
    """Export from ``src``, save, load, import into ``dst``: same parameters, same logits."""
    source, target = framework(src), framework(dst)
    spec = small_spec(learnable_epsilon=True)
    params = random_params(spec, 1)
    model = source.import_params(fresh_model(source, spec), params)
    path = save_npz(tmp_path / f"{src}.npz", source.export_params(model))
    moved = target.import_params(fresh_model(target, spec), load_npz(path))
    exported = target.export_params(moved)
    for name, value in params.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=f"{src} -> {dst}: {name}")
    x, _ = batch(spec, n=64)
    ours, theirs = target.predict(moved, x), source.predict(model, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(theirs))))
    np.testing.assert_allclose(ours, core_logits(params, x, spec), rtol=1e-5, atol=1e-5)
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))


def mnist_or_skip() -> Any:
    """The real MNIST from the local cache, or a skip (these tests never download)."""
    from yat_core.data import load_mnist
    from yat_core.errors import DataError

    try:
        return load_mnist(download=False, progress=False)
    except DataError:
        pytest.skip("no MNIST cache here (run `yat-core data` once)")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["random", "mnist"])
def test_a_model_trained_in_torch_predicts_the_same_everywhere(source, tmp_path):
    """Train the seed model briefly with torch's runner, export it, load it into every native framework.

    On MNIST: 1,024 training images, then all 10,000 test images predicted by each.
    """
    torch_nn = framework("torch")
    if source == "mnist":
        data, config = mnist_or_skip(), TrainConfig(framework="torch", epochs=1, train_limit=1024)
    else:
        data, config = tiny_data(n_train=256, n_test=200), TrainConfig(framework="torch", epochs=1, batch_size=32)
    runners: list[Any] = []

    def make(spec: MLPSpec, cfg: TrainConfig) -> Any:
        runners.append(make_runner(spec, cfg))
        return runners[-1]

    train(config, data=data, runner_factory=make, progress=False, log=None)
    path = save_npz(tmp_path / "trained.npz", runners[0].export_params())
    x = data.test_images.reshape(len(data.test_images), -1).astype(np.float32) / np.float32(255)
    reference = torch_nn.predict(runners[0].model, x)
    scale = float(np.max(np.abs(reference)))
    for name in NATIVE:
        module = installed(name)
        if module is None:
            continue
        logits = module.predict(module.import_params(module.build_model(seed_spec(), 0), load_npz(path)), x)
        diff = float(np.max(np.abs(logits - reference)))
        assert diff <= 5e-5 * scale, f"{name}: max logit difference {diff:.3g} (largest logit {scale:.3g})"
        assert np.array_equal(logits.argmax(1), reference.argmax(1)), name
