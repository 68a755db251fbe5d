"""Data-parallel training on torch.distributed (:mod:`yat_core.parallel.torch`): torchrun, gloo, 2 processes.

The two-process runs train on a synthetic MNIST folder of 1,025 images: eight full
batches of 128 and a last one of a single sample, so rank 1's part of the last batch
is empty. Each is compared with the same run in one process (in this one).

Tolerance of the per-step loss (float32): splitting a batch changes only the order of
summation. The gradient of the 128 samples becomes two sums of 64 added together, and
the loss likewise, so each step's gradient and loss differ by a few units in the last
place (about 1e-7 relative) from one process's. AdamW turns a gradient perturbation
into a parameter change of at most ``lr`` times its relative size per step, and the
changes add up over the steps, so the loss of step ``k`` may differ by about ``k``
times a few 1e-7 relative. The tests allow ``2e-6 * k`` relative: ten times the one
unit in the last place (1.04e-7 at a loss of 2.3) measured at every step of these runs,
and still far below what a wrong split or a missing average makes (a half batch's loss
differs from the whole's by ~1e-2; an unaveraged gradient doubles every update).
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

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("this torch build has no gloo process group", allow_module_level=True)

from conftest import write_tiny_mnist

from yat_core.cli import main
from yat_core.parallel import free_port, torchrun_launch
from yat_core.parallel.torch import shard_bounds
from yat_core.runners import make_runner
from yat_core.train import TrainConfig, train

N_TRAIN, N_TEST = 1025, 500
#: Relative per-step loss tolerance, times the step number (module docstring).
RTOL_PER_STEP = 2e-6
#: Parameters after the run: AdamW moves each by up to ~lr (3e-4) per step, so a wrong update shows at
#: that scale (1e-4 for a halved last update); summation order moved them by at most 2.2e-8 here (a unit
#: or two in the last place of the weights).
PARAM_ATOL = 1e-6
#: Final test accuracies must agree to this many percentage points (one image of 500 is 0.2).
MAX_ACC_DIFF_PP = 0.05


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"), N_TRAIN, N_TEST)


def _torchrun(args: list[str], cwd: Path, logs: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m yat_core train ...``, each rank's output in its own log file."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(free_port()), "--log-dir", str(logs), "--redirects", "3"]
    command += ["-m", "yat_core", "train", *args]
    env = {**os.environ, "YAT_CORE_TORCH_COMPILE": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _rank_stdout(logs: Path, rank: int) -> str:
    (path,) = logs.glob(f"*/attempt_0/{rank}/stdout.log")
    return path.read_text()


def _recipe(mnist_dir: Path) -> list[str]:
    return ["--data-dir", str(mnist_dir), "--train-limit", str(N_TRAIN), "--test-limit", str(N_TEST), "--epochs", "1"]


def _assert_follows(single: dict[str, Any], parallel: dict[str, Any]) -> None:
    one = np.array([v for record in single["history"] for v in record["step_loss"]])
    two = np.array([v for record in parallel["history"] for v in record["step_loss"]])
    assert one.shape == two.shape == (9,)
    limit = RTOL_PER_STEP * np.arange(1, len(one) + 1) * np.abs(one)
    assert np.all(np.abs(two - one) <= limit), f"per-step losses: 1 process {one}, 2 processes {two}"
    diff_pp = 100 * abs(parallel["final_test_acc"] - single["final_test_acc"])
    assert diff_pp <= MAX_ACC_DIFF_PP, (single["final_test_acc"], parallel["final_test_acc"])
    entry = parallel["distributed"]
    assert entry["world_size"] == 2 and entry["backend"] == "gloo" and entry["launcher"] == "torchrun"
    assert len(entry["rank_timings"]) == 2 and all(len(t) == 1 and t[0] > 0 for t in entry["rank_timings"])
    assert "distributed" not in single


@pytest.mark.parametrize("kind", ["backend", "framework"])
def test_two_processes_follow_one(kind: str, mnist_dir: Path, tmp_path: Path) -> None:
    """2 gloo processes train like one, to the last update (the exported parameters); rank 0 alone prints
    and writes its receipt (in the default place) and the parameters."""
    runners: list[Any] = []

    def factory(spec: Any, config: TrainConfig) -> Any:
        runners.append(make_runner(spec, config))
        return runners[-1]

    single = train(
        TrainConfig(**{kind: "torch"}, epochs=1, train_limit=N_TRAIN, test_limit=N_TEST, data_dir=str(mnist_dir)),
        progress=False,
        log=None,
        runner_factory=factory,
    )
    logs = tmp_path / "logs"
    done = _torchrun([f"--{kind}", "torch", *_recipe(mnist_dir), "--export", "w.npz"], tmp_path, logs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (receipt,) = (tmp_path / "receipts").iterdir()  # one receipt: rank 1 wrote none
    _assert_follows(single, json.loads(receipt.read_text()))
    # The last step's update (a batch of one sample, all on rank 0) shows in no loss: in the parameters only.
    expected = runners[-1].export_params()
    with np.load(tmp_path / "w.npz") as got:
        assert sorted(got.files) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=0, atol=PARAM_ATOL, err_msg=name)
    assert "epoch 1/1" in _rank_stdout(logs, 0) and "receipt:" in _rank_stdout(logs, 0)
    assert _rank_stdout(logs, 1) == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "receipts", "w.npz"]


def test_refuses_other_backends_under_torchrun(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["train", "--backend", "numpy", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "torchrun started 2 processes" in err and "--backend numpy" in err and "--backend torch" in err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, "LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"),
        ({"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "integers"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "inconsistent"),
    ],
)
def test_torchrun_variables_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        torchrun_launch(env)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_the_batch_contiguously_and_evenly(world: int) -> None:
    for n in (1, 2, 7, 127, 128, 129):
        bounds = [shard_bounds(n, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
