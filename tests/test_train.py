"""Tests for yat_core.train (the shared loop, batch order, receipts it returns) and yat_core.receipts.

Every run uses the synthetic ``tiny_mnist`` (300 training, 100 test images): with
batch 64 an epoch is 4 full batches and one partial batch of 44, which the loop
must keep; JAX runs the 4 full steps as one compiled chunk.
"""

from __future__ import annotations

import json
import math
import subprocess
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import BACKEND_NAMES, framework_installed, make_tiny_mnist, require_backend

from yat_core import train as train_mod
from yat_core.errors import BackendUnavailableError
from yat_core.losses import count_correct, softmax_cross_entropy
from yat_core.mlp import LayerSpec, MLPSpec, mlp_forward, seed_spec
from yat_core.optim import AdamWConfig
from yat_core.receipts import HISTORY_KEYS, REQUIRED_KEYS, git_commit, machine_info, versions, write_json_atomic
from yat_core.runners import Runner, make_runner
from yat_core.train import DEFAULT_BACKEND_ORDER, TrainConfig, batch_order, default_backend, train

TIMING_KEYS = ("total_s", "load_s", "first_step_s")
HISTORY_TIMING_KEYS = ("epoch_s", "samples_per_s", "eval_s")
BATCH = 64


def run(config: TrainConfig, data: Any, spec: MLPSpec | None = None) -> tuple[dict[str, Any], Any]:
    """Train and return ``(receipt, runner)`` (the runner captured through ``runner_factory``)."""
    runners: list[Any] = []

    def factory(spec: MLPSpec, cfg: TrainConfig) -> Runner:
        runner = make_runner(spec, cfg)
        runners.append(runner)
        return runner

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. "torch.compile failed; running eagerly"
        receipt = train(config, data=data, spec=spec, runner_factory=factory, progress=False, log=None)
    return receipt, runners[-1]


@pytest.fixture(scope="module")
def cached_runs(tiny_mnist):
    """One 2-epoch run per (backend, gradients), shared by the tests of this module."""
    cache: dict[tuple[str, str | None], tuple[dict[str, Any], Any]] = {}

    def get(backend: str, gradients: str | None = None):
        require_backend(backend)
        key = (backend, gradients)
        if key not in cache:
            cache[key] = run(TrainConfig(backend=backend, epochs=2, batch_size=BATCH, gradients=gradients), tiny_mnist)
        return cache[key]

    return get


def strip_timing(receipt: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in receipt.items() if k not in TIMING_KEYS and k != "git_commit"}
    out["history"] = [{k: v for k, v in h.items() if k not in HISTORY_TIMING_KEYS} for h in receipt["history"]]
    return out


# ---------------------------------------------------------------- the receipt of a short run


def test_receipt_has_every_key_and_the_right_counts(backend_name, cached_runs, tiny_mnist):
    receipt, _ = cached_runs(backend_name)
    label = f"backend {backend_name}, tiny_mnist 300/100, batch {BATCH}, 2 epochs"
    missing = [k for k in REQUIRED_KEYS if k not in receipt]
    assert not missing, f"{label}: receipt lacks {missing}"
    assert receipt["backend"] == backend_name and receipt["params"] == 235148, label
    assert receipt["n_train"] == 300 and receipt["n_test"] == len(tiny_mnist.test_labels) == 100, label
    assert receipt["epochs"] == 2 and receipt["batch_size"] == BATCH and receipt["seed"] == 0
    assert receipt["lr"] == 3e-4 and receipt["weight_decay"] == 0.01 and receipt["dtype"] == "float32"
    assert receipt["optimizer"]["name"] == "adamw" and receipt["optimizer"]["bias_correction"] is True
    assert receipt["steps_per_epoch"] == math.ceil(300 / BATCH) == 5
    assert receipt["steps_per_call"] == (4 if backend_name == "jax" else 1), f"{label}: {receipt['steps_per_call']}"
    assert receipt["data"]["source"] == "synthetic" and receipt["config"]["backend"] == backend_name
    assert [layer["kind"] for layer in receipt["model"]] == ["yat", "yat", "linear"]
    assert backend_name in receipt["versions"] and "python" in receipt["versions"]
    assert set(receipt["machine"]) == {"cpu", "cores", "os", "arch"}
    assert [h["epoch"] for h in receipt["history"]] == [1, 2]
    for h in receipt["history"]:
        missing = [k for k in HISTORY_KEYS if k not in h]
        assert not missing, f"{label}: epoch {h['epoch']} lacks {missing}"
        assert len(h["step_loss"]) == 5, f"{label}: {len(h['step_loss'])} step losses (partial batch dropped?)"
        assert all(math.isfinite(v) for v in h["step_loss"])
        assert h["train_loss"] == pytest.approx(np.mean(h["step_loss"]), rel=1e-12)
        assert 0.0 <= h["test_acc"] <= 1.0 and math.isfinite(h["test_loss"]) and h["epoch_s"] > 0
    assert receipt["final_test_acc"] == receipt["history"][-1]["test_acc"]
    assert receipt["final_test_loss"] == receipt["history"][-1]["test_loss"]
    assert receipt["total_s"] >= receipt["first_step_s"] > 0
    json.dumps(receipt)  # JSON-ready: no arrays, no NumPy scalars


def test_losses_of_every_backend_agree_with_numpy(backend_name, cached_runs):
    ref, _ = cached_runs("numpy")
    got, _ = cached_runs(backend_name)
    a, b = np.array(got["history"][0]["step_loss"]), np.array(ref["history"][0]["step_loss"])
    np.testing.assert_allclose(
        a,
        b,
        rtol=0,
        atol=1e-4,
        err_msg=f"{backend_name} ({got['gradients']}) vs numpy float32: first-epoch step losses",
    )
    assert got["history"][1]["test_loss"] == pytest.approx(ref["history"][1]["test_loss"], abs=1e-4), backend_name
    # random labels: accuracy is near chance, but both runs must classify the same images the same way
    assert abs(got["history"][1]["test_acc"] - ref["history"][1]["test_acc"]) <= 0.02, backend_name


def test_losses_decrease_on_a_learnable_problem():
    # labels are a function of the pixels: the loss must fall within two epochs
    data = make_tiny_mnist(256, 64, seed=5)
    for name in ("train_images", "test_images"):
        images = getattr(data, name)
        split = "train" if name.startswith("train") else "test"
        labels = images.reshape(len(images), -1)[:, :392].mean(axis=1) > images.reshape(len(images), -1)[:, 392:].mean(
            axis=1
        )
        setattr(data, f"{split}_labels", labels.astype(np.uint8))
    receipt, _ = run(
        TrainConfig(backend="numpy", epochs=2, batch_size=32, optimizer=AdamWConfig(lr=1e-2)), data, _small_spec()
    )
    first, last = receipt["history"][0]["step_loss"][0], receipt["history"][-1]["train_loss"]
    assert last < 0.9 * first, f"numpy: loss {first:.4f} -> {last:.4f} did not fall"


def test_exported_parameters_fit_the_spec(backend_name, cached_runs):
    _, runner = cached_runs(backend_name)
    exported = runner.export_params()
    shapes = {k: v.shape for k, v in exported.items()}
    assert shapes == seed_spec().param_shapes, f"{backend_name}: exported shapes {shapes}"
    assert all(v.dtype == np.float32 for v in exported.values())


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_same_config_twice_gives_identical_receipts(name, cached_runs, tiny_mnist):
    require_backend(name)
    first, _ = cached_runs(name)
    second, _ = run(TrainConfig(backend=name, epochs=2, batch_size=BATCH), tiny_mnist)
    a, b = strip_timing(first), strip_timing(second)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    assert not diff, f"{name}: receipts of the same config differ in {diff}"


def test_evaluation_uses_every_test_image_in_uneven_chunks(tiny_mnist):
    receipt, runner = run(TrainConfig(backend="numpy", epochs=1, batch_size=BATCH, eval_batch=30), tiny_mnist)
    params = {k: v.astype(np.float64) for k, v in runner.export_params().items()}
    x = tiny_mnist.test_images.reshape(100, 784).astype(np.float64) / 255.0
    labels = tiny_mnist.test_labels.astype(np.int64)
    logits = mlp_forward(params, x, seed_spec())
    assert receipt["n_test"] == 100
    assert receipt["final_test_loss"] == pytest.approx(float(softmax_cross_entropy(logits, labels)), rel=1e-5)
    assert receipt["final_test_acc"] == int(count_correct(logits, labels)) / 100


def test_limits_take_the_first_images(tiny_mnist):
    receipt, _ = run(
        TrainConfig(backend="numpy", epochs=1, batch_size=BATCH, train_limit=100, test_limit=7), tiny_mnist
    )
    assert (receipt["n_train"], receipt["n_test"], receipt["steps_per_epoch"]) == (100, 7, 2)
    assert len(receipt["history"][0]["step_loss"]) == 2


def test_batch_smaller_than_one_batch_of_data():
    data = make_tiny_mnist(20, 10)
    receipt, _ = run(TrainConfig(backend="numpy", epochs=1, batch_size=BATCH), data)
    assert receipt["steps_per_epoch"] == 1 and len(receipt["history"][0]["step_loss"]) == 1


def test_float64_runs_in_float64_or_is_refused(backend_name):
    # A receipt that says "dtype": "float64" must describe a float64 computation; a backend
    # that cannot compute in float64 should refuse the config instead of silently using float32.
    data = make_tiny_mnist(64, 16, seed=6)
    cfg = TrainConfig(backend=backend_name, epochs=1, batch_size=32, dtype="float64", gradients="analytic")
    try:
        receipt, runner = run(cfg, data, _small_spec())
    except (BackendUnavailableError, ValueError) as exc:
        assert "float64" in str(exc), f"{backend_name}: refused float64 without saying why: {exc}"
        return
    exported = runner.export_params()
    dtypes = sorted({str(v.dtype) for v in exported.values()})
    assert receipt["dtype"] == "float64" and dtypes == ["float64"], (
        f"{backend_name}: receipt says float64, parameters are {dtypes}"
    )
    ref, _ = run(TrainConfig(backend="numpy", epochs=1, batch_size=32, dtype="float64"), data, _small_spec())
    np.testing.assert_allclose(
        receipt["history"][0]["step_loss"],
        ref["history"][0]["step_loss"],
        rtol=1e-10,
        err_msg=f"{backend_name} float64 vs numpy float64 step losses",
    )


# ---------------------------------------------------------------- JAX's chunked steps


def _small_spec() -> MLPSpec:
    return MLPSpec((LayerSpec("yat", 784, 16), LayerSpec("linear", 16, 10)))


def test_jax_chunked_steps_equal_numpy_steps():
    require_backend("jax")
    # 66 full batches of 2 -> two chunks of 33 steps (the second starts at step 33), then one sample left over
    data = make_tiny_mnist(66 * 2 + 1, 20, seed=3)
    spec = _small_spec()
    cfg = TrainConfig(backend="jax", epochs=2, batch_size=2, gradients="analytic")
    chunked, _ = run(cfg, data, spec)
    assert chunked["steps_per_call"] == 33 and chunked["steps_per_epoch"] == 67
    ref, _ = run(TrainConfig(backend="numpy", epochs=2, batch_size=2), data, spec)
    assert ref["steps_per_call"] == 1
    for epoch in range(2):
        c = np.array(chunked["history"][epoch]["step_loss"])
        assert len(c) == 67
        np.testing.assert_allclose(
            c,
            ref["history"][epoch]["step_loss"],
            rtol=0,
            atol=1e-5,
            err_msg=f"jax chunked vs numpy (both analytic), epoch {epoch + 1}",
        )


@pytest.mark.parametrize(
    ("full_steps", "chunk"), [(0, 1), (1, 1), (4, 4), (7, 7), (64, 64), (100, 50), (128, 64), (67, 1), (468, 52)]
)
def test_chunk_length_is_the_largest_divisor_up_to_64(full_steps, chunk):
    assert train_mod._chunk_length(full_steps) == chunk


# ---------------------------------------------------------------- torch.compile


TINY_CNN = MLPSpec(
    (
        LayerSpec("yat_conv", 1, 2, kernel_size=(3, 3)),
        LayerSpec("max_pool", 2, 2, kernel_size=(2, 2)),
        LayerSpec("flatten", 2, 2 * 13 * 13),
        LayerSpec("linear", 2 * 13 * 13, 10),
    ),
    input_shape=(1, 28, 28),
)


@pytest.mark.parametrize(
    ("spec", "gradients"),
    [(MLPSpec((LayerSpec("yat", 784, 8), LayerSpec("linear", 8, 10))), "analytic"), (TINY_CNN, "autodiff")],
    ids=["mlp-analytic-whole-step", "cnn-autodiff-compiled-loss"],
)
def test_torch_compiled_training_gives_the_eager_losses(monkeypatch, spec, gradients):
    require_backend("torch")
    import torch._dynamo

    data = make_tiny_mnist(100, 20, seed=4)  # 3 compiled steps of 32 and one eager step of 4 per epoch
    cfg = TrainConfig(backend="torch", epochs=2, batch_size=32)  # the model's default gradient mode
    monkeypatch.setenv("YAT_CORE_TORCH_COMPILE", "0")
    eager, eager_runner = run(cfg, data, spec)
    assert not eager_runner.backend.use_compile and eager["gradients"] == gradients
    monkeypatch.setenv("YAT_CORE_TORCH_COMPILE", "1")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled, runner = run(cfg, data, spec)
    assert runner.backend.use_compile
    if gradients == "analytic":  # the whole step: compiled ahead of time, or loaded as a later process would
        assert runner._step.shape_key is not None and runner._step.source in ("compiled", "loaded")
    else:
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "torch.compile was not used"
    for epoch in range(2):
        np.testing.assert_allclose(
            compiled["history"][epoch]["step_loss"],
            eager["history"][epoch]["step_loss"],
            rtol=0,
            atol=1e-5,
            err_msg=f"torch compiled vs eager, epoch {epoch + 1}",
        )


# ---------------------------------------------------------------- batch order


def test_batch_order_is_a_deterministic_permutation():
    a = batch_order(0, 1, 300)
    assert a.dtype == np.int32 and sorted(a.tolist()) == list(range(300))
    np.testing.assert_array_equal(a, batch_order(0, 1, 300))
    assert not np.array_equal(a, batch_order(0, 2, 300)), "epochs 1 and 2 share an order"
    assert not np.array_equal(a, batch_order(1, 1, 300)), "seeds 0 and 1 share an order"
    assert not np.array_equal(a, np.arange(300)), "not shuffled"


def test_batch_order_epoch_e_is_the_e_th_draw_of_one_generator():
    rng = np.random.default_rng(7)
    draws = [rng.permutation(50) for _ in range(3)]
    for epoch, expected in enumerate(draws, 1):
        np.testing.assert_array_equal(batch_order(7, epoch, 50), expected)


def test_batch_order_counts_epochs_from_one():
    with pytest.raises(ValueError, match="epochs count from 1, got 0"):
        batch_order(0, 0, 10)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"epochs": 0}, r"epochs must be >= 1, got 0", id="epochs-0"),
        pytest.param({"batch_size": 0}, r"batch-size must be >= 1, got 0", id="batch-0"),
        pytest.param({"eval_batch": 0}, r"eval-batch must be >= 1", id="eval-batch-0"),
        pytest.param({"train_limit": 0}, r"train-limit must be >= 1, got 0", id="train-limit-0"),
        pytest.param({"test_limit": -3}, r"test-limit must be >= 1", id="test-limit-negative"),
        pytest.param({"dtype": "int8"}, r"dtype must be float32 or float64, got 'int8'", id="dtype-int8"),
        pytest.param({"optimizer": AdamWConfig(lr=0.0)}, r"learning rate must be > 0, got 0.0", id="lr-0"),
        pytest.param({"optimizer": AdamWConfig(lr=-1.0)}, r"learning rate must be > 0", id="lr-negative"),
        pytest.param({"optimizer": AdamWConfig(weight_decay=-1.0)}, r"weight decay must be >= 0", id="wd-negative"),
        pytest.param({"optimizer": AdamWConfig(b2=1.0)}, r"b2 must be in \[0, 1\)", id="b2-1"),
        pytest.param({"framework": "torch"}, r"--backend .* or --framework .*, not both", id="backend-and-framework"),
        pytest.param(
            {"keras_backend": "jax"}, r"--keras-backend applies to --framework keras only", id="keras-backend"
        ),
    ],
)
def test_train_config_validate_errors(kwargs, match, tiny_mnist):
    cfg = TrainConfig(backend="numpy", **kwargs)
    with pytest.raises(ValueError, match=match):
        cfg.validate()
    with pytest.raises(ValueError, match=match):
        train(cfg, data=tiny_mnist, log=None, progress=False)


def test_unknown_backend_fails_before_loading_data(monkeypatch):
    import yat_core.data

    def no_load(*args, **kwargs):
        raise AssertionError("train() loaded data before checking the backend")

    monkeypatch.setattr(yat_core.data, "load_mnist", no_load)
    with pytest.raises(BackendUnavailableError, match="unknown backend 'nope'"):
        train(TrainConfig(backend="nope"), log=None, progress=False)


def test_mismatched_images_and_labels_are_rejected(tiny_mnist):
    bad = SimpleNamespace(**{**vars(tiny_mnist), "train_labels": tiny_mnist.train_labels[:10]})
    with pytest.raises(ValueError, match=r"images \(300, 28, 28\) and labels \(10,\) do not match"):
        train(TrainConfig(backend="numpy", epochs=1), data=bad, log=None, progress=False)


def test_labels_outside_the_model_classes_are_rejected():
    # one_hot of label 12 with 10 classes is all zeros: the loss would silently be -0.0 and the
    # example would teach nothing (e.g. a 26-class MNIST-format data set passed with --data-dir).
    data = make_tiny_mnist(8, 4)
    data.train_labels[:] = 12
    with pytest.raises(ValueError, match="label"):
        train(TrainConfig(backend="numpy", epochs=1, batch_size=4), data=data, log=None, progress=False)


def test_default_backend_is_the_first_installed():
    expected = next(n for n in DEFAULT_BACKEND_ORDER if framework_installed(n))
    assert default_backend() == expected
    assert set(DEFAULT_BACKEND_ORDER) == set(BACKEND_NAMES)


def test_log_receives_one_line_per_epoch(tiny_mnist):
    lines: list[str] = []
    train(
        TrainConfig(backend="numpy", epochs=2, batch_size=BATCH, train_limit=64, test_limit=10),
        data=tiny_mnist,
        log=lines.append,
        progress=False,
    )
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "test_acc" in lines[1]


# ---------------------------------------------------------------- receipts


def test_write_json_atomic_writes_and_overwrites(tmp_path):
    path = tmp_path / "sub" / "r.json"
    assert write_json_atomic(path, {"a": 1, "b": [1.5, None]}) == path
    assert json.loads(path.read_text()) == {"a": 1, "b": [1.5, None]}
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"], "a temporary file was left behind"


def test_write_json_atomic_leaves_the_old_file_and_no_temp_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"old": True})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"new": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"], "a temporary file was left behind"
    fresh = tmp_path / "fresh.json"
    with pytest.raises(TypeError):
        write_json_atomic(fresh, [1, {2, 3}])
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_machine_info_keys():
    info = machine_info()
    assert set(info) == {"cpu", "cores", "os", "arch"}
    assert isinstance(info["cores"], int) and info["cores"] >= 1
    assert all(isinstance(info[k], str) and info[k] for k in ("cpu", "os", "arch"))


def test_versions_lists_installed_distributions_only():
    v = versions("numpy", "no-such-distribution-xyz")
    assert {"python", "yat_core", "numpy"} <= set(v) and "no-such-distribution-xyz" not in v


def test_git_commit_is_none_outside_a_repository(tmp_path):
    assert git_commit(tmp_path) is None


def test_git_commit_of_the_package_checkout():
    commit = git_commit()
    assert commit is None or (len(commit.split("-")[0]) == 40 and commit.split("-")[0].isalnum()), commit


def test_git_commit_survives_a_slow_git_status(monkeypatch, tmp_path):
    # A hung `git status` must not crash train() at the very end (after all the training):
    # git_commit documents "or None", so a timeout should give the commit or None.
    real_run = subprocess.run

    def fake_run(cmd, *args, **kwargs):
        if cmd[:2] == ["git", "status"]:
            raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout", 5))
        if cmd[:2] == ["git", "rev-parse"]:
            return subprocess.CompletedProcess(cmd, 0, stdout="0" * 40 + "\n", stderr="")
        return real_run(cmd, *args, **kwargs)

    import yat_core.receipts as receipts_mod

    monkeypatch.setattr(receipts_mod.subprocess, "run", fake_run)
    result = git_commit(tmp_path)
    assert result is None or result.startswith("0" * 40)
