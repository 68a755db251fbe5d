"""Data-parallel JAX training (``--devices N``, ``jax.distributed``, Keras ``DataParallel``) follows one device.

JAX fixes its device count when it starts, and Keras its backend when imported, so
the training runs go in fresh processes: this file is also the script they run
(``python tests/test_parallel_jax.py flax|keras OUT DATA_DIR``). Each trains the
seed recipe (batch 128, AdamW 3e-4, seed 0) for one epoch on 1,024 synthetic
training images and evaluates 500 test images, on 2 host devices and on one.

Tolerance of the per-step loss, :data:`LOSS_ATOL` = 1e-5: the 2-device step computes
the same float32 program, except that each gradient (and the loss) is summed as two
halves of 64 samples and then added. A float32 sum of 128 terms reordered differs by
at most ~log2(128) rounding errors of the sum (7 x 6e-8 relative, 1e-6 on a loss of
2.3); over the 8 steps the parameters drift by no more than such rounding noise. The
runs differ by 2.4e-7 (one float32 ulp of the loss) at most; the bound is 40 times
that and 10 times the one-step summation bound. The test accuracy must be equal
(0.05 pp of 500 images is less than one image).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from yat_core.parallel import free_port

N_TRAIN, N_TEST = 1024, 500
LOSS_ATOL = 1e-5
MAX_ACC_DIFF_PP = 0.05
FLAX_KINDS = ("jax", "nnx", "linen")
REPO = Path(__file__).resolve().parents[1]


def _config(kind: str, devices: int, data_dir: str) -> Any:
    from yat_core.config import TrainConfig

    which: dict[str, Any] = {"backend": "jax"} if kind == "jax" else {"framework": kind}
    return TrainConfig(epochs=1, train_limit=N_TRAIN, test_limit=N_TEST, devices=devices, data_dir=data_dir, **which)


def _summary(receipt: dict[str, Any]) -> dict[str, Any]:
    return {
        "step_loss": receipt["history"][0]["step_loss"],
        "acc": receipt["final_test_acc"],
        "distributed": receipt.get("distributed"),
        "steps_per_call": receipt["steps_per_call"],
    }


def _replicated_on(tree: Any) -> list[int]:
    """The number of devices of each array leaf that is fully replicated (0: not replicated)."""
    import jax

    return [len(a.sharding.device_set) if a.sharding.is_fully_replicated else 0 for a in jax.tree.leaves(tree)]


def _capturing_factory() -> tuple[list[Any], Any]:
    """A runner factory for ``train`` that keeps every runner it makes, and that list."""
    from yat_core.runners import make_runner

    runners: list[Any] = []

    def capture(spec: Any, config: Any) -> Any:
        runners.append(make_runner(spec, config))
        return runners[-1]

    return runners, capture


def run_flax(out: Path, data_dir: str) -> None:
    """The jax backend, NNX and Linen on 2 devices, then on 1, and the refusal of a third device."""
    from yat_core.errors import BackendUnavailableError
    from yat_core.parallel.jax import set_up
    from yat_core.train import train

    results: dict[str, Any] = {}
    runners, capture = _capturing_factory()

    # 2 devices first: the first set_up starts JAX with 2 host devices.
    for kind in FLAX_KINDS:
        for devices in (2, 1):
            receipt = train(_config(kind, devices, data_dir), runner_factory=capture, progress=False, log=None)
            results[f"{kind}-{devices}"] = _summary(receipt)
        runner = runners[-2]  # the 2-device one
        state = runner.params if kind == "jax" else runner.state if kind == "linen" else runner.model
        if kind == "nnx":
            from flax import nnx

            state = nnx.state(state)
        results[f"{kind}-2"]["replicated_on"] = _replicated_on(state)
        if kind == "jax":
            # The compiled step holds the gradient's all-reduce: the batch really is split.
            backend, config = runner.backend, _config(kind, 2, data_dir)
            images, labels = runner.put(np.zeros((256, 784), np.uint8)), runner.put(np.zeros(256, np.int32))
            idx = runner.put(np.arange(128, dtype=np.int32))
            step = backend.train_step(runner.spec, config.optimizer)
            hlo = step.lower(runner.params, runner.opt_state, images, labels, idx).compile().as_text()
            results["all_reduce"] = "all-reduce" in hlo
    try:
        set_up(_config("jax", 3, data_dir))
        results["refusal"] = None
    except BackendUnavailableError as exc:
        results["refusal"] = str(exc)
    (out / "results.json").write_text(json.dumps(results))


def run_keras(out: Path, data_dir: str) -> None:
    """Keras (jax backend) under ``keras.distribution.DataParallel`` on 2 devices, then on 1."""
    from yat_core.train import train

    results: dict[str, Any] = {}
    runners, capture = _capturing_factory()

    for devices in (2, 1):
        receipt = train(_config("keras", devices, data_dir), runner_factory=capture, progress=False, log=None)
        results[f"keras-{devices}"] = _summary(receipt)
        results[f"keras-{devices}"]["replicated_on"] = _replicated_on(
            [v.value for v in runners[-1].model.trainable_variables]
        )
    (out / "results.json").write_text(json.dumps(results))


# -- the pytest side ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "advice"),
    [
        ({"backend": "torch"}, "torchrun"),
        ({"framework": "torch"}, "torchrun"),
        ({"framework": "keras", "keras_backend": "torch"}, "torchrun"),
        ({"backend": "mlx"}, "mlx trains on one device"),
        ({"framework": "tf"}, "tf trains on one device"),
    ],
)
def test_devices_refused_off_jax(which: dict[str, Any], advice: str) -> None:
    from yat_core.config import TrainConfig

    with pytest.raises(ValueError, match="--devices applies to JAX runs") as info:
        TrainConfig(devices=2, **which).validate()
    assert advice in str(info.value)
    TrainConfig(devices=1, **which).validate()  # one device: every backend


@pytest.mark.parametrize(("devices", "problem"), [(0, "must be >= 1"), (True, "must be an integer")])
def test_devices_bounds(devices: Any, problem: str) -> None:
    from yat_core.config import TrainConfig

    with pytest.raises(ValueError, match=f"--devices {problem}"):
        TrainConfig(backend="jax", devices=devices).validate()


def test_cli_needs_all_three_process_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from yat_core.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--backend", "jax", "--coordinator", "127.0.0.1:1234", "--num-processes", "2"]) == 1
    assert "all three of --coordinator, --num-processes and --process-id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--backend", "jax", "--devices", "0"])
    assert "--devices: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("coordinator", "n", "i", "problem"),
    [
        ("localhost", 2, 0, "HOST:PORT"),
        (":99", 2, 0, "HOST:PORT"),
        ("localhost:99", 2, 2, "--process-id must be in 0..1"),
    ],
)
def test_bad_process_options(coordinator: str, n: int, i: int, problem: str) -> None:
    pytest.importorskip("jax")
    from yat_core.parallel.jax import initialize_processes

    with pytest.raises(ValueError, match=problem):
        initialize_processes(coordinator, n, i)


def _run(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 600) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, (
        f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from conftest import write_tiny_mnist

    return str(write_tiny_mnist(tmp_path_factory.mktemp("mnist"), N_TRAIN, N_TEST, seed=3))


@pytest.fixture(scope="module")
def flax_results(tmp_path_factory: pytest.TempPathFactory, data_dir: str) -> dict[str, Any]:
    pytest.importorskip("flax")
    out = tmp_path_factory.mktemp("flax")
    _run([sys.executable, __file__, "flax", str(out), data_dir])
    return dict(json.loads((out / "results.json").read_text()))


def assert_follows(one: dict[str, Any], many: dict[str, Any], what: str) -> None:
    a, b = np.asarray(one["step_loss"]), np.asarray(many["step_loss"])
    assert a.shape == b.shape == (N_TRAIN // 128,), what
    diff = np.abs(a - b)
    assert diff.max() <= LOSS_ATOL, f"{what}: per-step loss {diff.max():.2e} from one device (step {diff.argmax() + 1})"
    assert 100 * abs(one["acc"] - many["acc"]) <= MAX_ACC_DIFF_PP, f"{what}: accuracy {many['acc']} vs {one['acc']}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", FLAX_KINDS)
def test_two_devices_follow_one(flax_results: dict[str, Any], kind: str) -> None:
    one, two = flax_results[f"{kind}-1"], flax_results[f"{kind}-2"]
    assert_follows(one, two, f"{kind} on 2 devices")
    assert one["distributed"] is None
    assert two["distributed"] == {
        "devices": 2,
        "local_devices": 2,
        "processes": 1,
        "mesh": {"data": 2},
        "platform": "cpu",
    }
    # Parameters and optimizer state are replicated on both devices.
    assert two["replicated_on"] and set(two["replicated_on"]) == {2}, two["replicated_on"]


@pytest.mark.slow
def test_core_step_all_reduces(flax_results: dict[str, Any]) -> None:
    assert flax_results["all_reduce"], "the 2-device step has no all-reduce: the batch was not split"


@pytest.mark.slow
def test_more_devices_than_started_is_refused(flax_results: dict[str, Any]) -> None:
    message = flax_results["refusal"]
    assert message is not None and "--devices 3" in message and "2 cpu device(s)" in message, message


@pytest.mark.slow
def test_keras_data_parallel_follows_one_device(tmp_path: Path, data_dir: str) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("jax")
    _run([sys.executable, __file__, "keras", str(tmp_path), data_dir], {"KERAS_BACKEND": "jax"})
    results = json.loads((tmp_path / "results.json").read_text())
    assert_follows(results["keras-1"], results["keras-2"], "keras DataParallel on 2 devices")
    assert results["keras-2"]["distributed"]["devices"] == 2
    assert set(results["keras-2"]["replicated_on"]) == {2}
    assert set(results["keras-1"]["replicated_on"]) == {1}


@pytest.mark.slow
def test_two_processes_follow_one(tmp_path: Path, data_dir: str, flax_results: dict[str, Any]) -> None:
    """Two ``jax.distributed`` processes on localhost, one CPU device each, through the CLI."""
    port = free_port()
    common = ["--backend", "jax", "--epochs", "1", "--train-limit", str(N_TRAIN), "--test-limit", str(N_TEST)]
    common += ["--data-dir", data_dir, "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "YAT_CORE_CACHE": str(tmp_path / "no-cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "yat_core", "train", *common, "--process-id", str(i)]
            + ["--report", str(tmp_path / f"receipt-{i}.json")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    assert not (tmp_path / "receipt-1.json").exists(), "process 1 wrote a receipt"
    assert "final test accuracy" in logs[0] and "final test accuracy" not in logs[1], logs
    receipt = json.loads((tmp_path / "receipt-0.json").read_text())
    assert receipt["distributed"] == {
        "devices": 2,
        "local_devices": 1,
        "processes": 2,
        "mesh": {"data": 2},
        "platform": "cpu",
    }
    assert receipt["config"]["devices"] == 1
    assert_follows(flax_results["jax-1"], _summary(receipt), "2 jax.distributed processes")


if __name__ == "__main__":
    {"flax": run_flax, "keras": run_keras}[sys.argv[1]](Path(sys.argv[2]), sys.argv[3])
