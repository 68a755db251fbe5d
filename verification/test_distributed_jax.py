"""Data-parallel JAX parity: the seed recipe on 2 host devices, and in 2 ``jax.distributed`` processes,
follows the one-device run.

Every run is the seed recipe (MNIST, global batch 128, AdamW 3e-4, seed 0); the
``ci`` profile trains the first ``trajectory_steps`` steps of epoch 1 and evaluates
``trajectory_test_limit`` test images, the ``thorough`` profile the full three epochs
on all 10,000. Each JAX runner (the core on the jax backend, Flax NNX, Flax Linen,
Keras on jax under ``keras.distribution.DataParallel``) trains on 2 devices and on
one, in a fresh process (JAX fixes its device count when it starts, Keras its backend
when imported); the core also trains in two processes joined by ``jax.distributed``
on localhost (one device each).

What is asserted: per step, the 2-device loss is within ``MAX_LOSS_DIFF`` of the
one-device loss (the ceiling the trajectory check holds float32 backends to: the two
runs compute the same float32 program, the batch sums split in two halves, so they
differ by summation order alone); the final test accuracy within 0.05 percentage
points. The runs and their differences go to the report (``seed-data-parallel-jax``).

This module is also the script of those processes:
``python -m verification.test_distributed_jax KIND OUT STEPS EPOCHS TEST_LIMIT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from verification import profiles
from verification.results import STORE
from verification.test_trajectory import MAX_LOSS_DIFF
from verification.trajectory import BATCH, Run, compare_runs, mnist
from yat_core.parallel import free_port

#: Test accuracies of the data-parallel and one-device runs agree to this many percentage points.
MAX_ACC_DIFF_PP = 0.05
KINDS = ("jax", "nnx", "linen", "keras")
REPO = Path(__file__).resolve().parents[1]
RESULTS_KEY = "data_parallel_jax"


def _config(kind: str, devices: int, steps: int | None, epochs: int, test_limit: int | None) -> Any:
    from yat_core.config import TrainConfig

    which: dict[str, Any] = {"backend": "jax"} if kind == "jax" else {"framework": kind}
    if kind == "keras":
        which["keras_backend"] = "jax"
    train_limit = None if steps is None else steps * BATCH
    return TrainConfig(epochs=epochs, train_limit=train_limit, test_limit=test_limit, devices=devices, **which)


def _main(kind: str, out: Path, steps: int | None, epochs: int, test_limit: int | None) -> None:
    """The subprocess: ``kind`` on 2 devices, then on one (the first set-up starts JAX with 2)."""
    from yat_core.train import train

    runs = {}
    for devices in (2, 1):
        receipt = train(_config(kind, devices, steps, epochs, test_limit), data=mnist(), progress=False, log=None)
        runs[devices] = {
            "step_loss": [v for record in receipt["history"] for v in record["step_loss"]],
            "test_acc": [record["test_acc"] for record in receipt["history"]],
            "seconds": receipt["total_s"],
            "distributed": receipt.get("distributed"),
        }
    (out / f"{kind}.json").write_text(json.dumps(runs))


def _environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    for name in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS"):
        env.pop(name, None)  # the runs make their own devices
    return env


def _check(proc: subprocess.CompletedProcess[str] | subprocess.Popen[str], log: str, command: str) -> None:
    assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{log[-4000:]}"


def _store() -> dict[str, Any]:
    # In parity.json's meta, not its trajectories: those are read against the float64 reference.
    return STORE.meta.setdefault(RESULTS_KEY, {"runs": {}, "comparisons": {}})


def _run_record(label: str, run: dict[str, Any]) -> Run:
    return Run(label, "jax", "float32", "autodiff", run["step_loss"], run["test_acc"], run["seconds"])


def _assert_follows(one: Run, many: Run, limit: float) -> None:
    cmp = compare_runs(one, many)
    cmp["loss_diff_limit"] = limit
    store = _store()
    store["runs"][many.label] = many._asdict()
    store["comparisons"][many.label] = cmp
    assert len(many.step_loss) == len(one.step_loss), f"{many.label}: {len(many.step_loss)} steps"
    assert cmp["max_loss_diff"] <= limit, (
        f"{many.label}: per-step loss {cmp['max_loss_diff']:.3e} from one device at step "
        f"{cmp['max_loss_diff_step']} > {limit:g}"
    )
    assert cmp["acc_diff_pp"] <= MAX_ACC_DIFF_PP, (
        f"{many.label}: test accuracy {100 * many.test_acc[-1]:.2f} % vs {100 * one.test_acc[-1]:.2f} % on one device"
    )


def _budget() -> tuple[int | None, int, int | None]:
    return profiles.active().trajectory("seed")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mnist()  # fetched once here, not by every process at once
    return tmp_path_factory.mktemp("data-parallel-jax")


def _device_runs(kind: str, runs_dir: Path) -> dict[str, Any]:
    """``{"2": run, "1": run}`` of ``kind``, trained once per session in a fresh process."""
    path = runs_dir / f"{kind}.json"
    if not path.exists():
        steps, epochs, test_limit = _budget()
        command = [sys.executable, "-m", "verification.test_distributed_jax", kind, str(runs_dir)]
        command += [str(steps), str(epochs), str(test_limit)]
        proc = subprocess.run(
            command, env=_environment(KERAS_BACKEND="jax"), cwd=REPO, capture_output=True, text=True, timeout=3600
        )
        _check(proc, proc.stdout + proc.stderr, " ".join(command))
    return dict(json.loads(path.read_text()))


@pytest.mark.parametrize("kind", KINDS)
def test_two_devices_follow_one(kind: str, runs_dir: Path, require_backend: Any) -> None:
    require_backend("jax")
    if kind != "jax":
        require_backend(f"nn-{kind}")
    runs = _device_runs(kind, runs_dir)
    one = _run_record(f"{kind}-1-device", runs["1"])
    _store()["runs"][one.label] = one._asdict()
    assert runs["2"]["distributed"]["devices"] == 2 and runs["1"]["distributed"] is None
    _assert_follows(one, _run_record(f"{kind}-2-devices", runs["2"]), MAX_LOSS_DIFF[profiles.active().name])


def test_two_processes_follow_one(runs_dir: Path, require_backend: Any) -> None:
    """The core on jax in 2 ``jax.distributed`` processes on localhost, one device each."""
    require_backend("jax")
    steps, epochs, test_limit = _budget()
    port = free_port()
    flags = ["--backend", "jax", "--epochs", str(epochs), "--quiet", "--coordinator", f"127.0.0.1:{port}"]
    flags += ["--num-processes", "2"] + ([] if steps is None else ["--train-limit", str(steps * BATCH)])
    flags += [] if test_limit is None else ["--test-limit", str(test_limit)]
    commands = [
        [sys.executable, "-m", "yat_core", "train", *flags, "--process-id", str(i)]
        + ["--report", str(runs_dir / f"two-processes-{i}.json")]
        for i in range(2)
    ]
    procs = [
        subprocess.Popen(
            command,
            env=_environment(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command in commands
    ]
    for proc, command in zip(procs, commands):
        _check(proc, proc.communicate(timeout=3600)[0], " ".join(command))
    receipt = json.loads((runs_dir / "two-processes-0.json").read_text())
    assert receipt["distributed"]["processes"] == 2
    one = _run_record("jax-1-device", _device_runs("jax", runs_dir)["1"])
    many = Run(
        "jax-2-processes",
        "jax",
        "float32",
        "autodiff",
        [v for record in receipt["history"] for v in record["step_loss"]],
        [record["test_acc"] for record in receipt["history"]],
        receipt["total_s"],
    )
    _assert_follows(one, many, MAX_LOSS_DIFF[profiles.active().name])


if __name__ == "__main__":
    _kind, _out, _steps, _epochs, _limit = sys.argv[1:6]
    _main(
        _kind,
        Path(_out),
        None if _steps == "None" else int(_steps),
        int(_epochs),
        None if _limit == "None" else int(_limit),
    )
