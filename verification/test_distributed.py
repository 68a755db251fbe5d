"""Data-parallel PyTorch parity: the seed recipe in 2 torchrun processes (gloo, CPU) follows one process.

Every run is the seed recipe (MNIST, global batch 128, AdamW 3e-4, seed 0): the
``ci`` profile trains the first ``trajectory_steps`` steps of epoch 1 and evaluates
``trajectory_test_limit`` test images, the ``thorough`` profile the full three epochs
on all 10,000. The core on the torch backend (its step split into a compiled gradient
and a compiled update around the all-reduce) and the PyTorch framework's native model
(under ``DistributedDataParallel``) each train once in this process and once as
``torchrun --nproc-per-node 2 -m yat_core train ...``, compiled as users run them.

What is asserted, per step ``k``: the two-process loss is within ``RTOL_PER_STEP * k``
of the one-process loss, relative, and never beyond ``MAX_LOSS_DIFF`` (the ceiling the
trajectory check holds float32 backends to). The two runs compute the same float32
program with each batch's sums split in two halves, so they differ by summation order
alone: a few units in the last place per step (~1e-7 relative), which AdamW's steps
carry forward and add up (``tests/test_parallel_torch.py`` states the model). The
final test accuracy agrees within 0.05 percentage points; the receipt records the
process group. Measured on the full recipe: at most 4.8e-7 (two units in the last
place) over all 1,407 steps, and the same accuracy (95.10 %). The runs and their
differences go to ``parity.json``'s meta (``data_parallel_torch_backend`` and ``_framework``,
each with its one-process run as the reference).
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

from verification import profiles
from verification.results import STORE
from verification.test_trajectory import MAX_LOSS_DIFF
from verification.trajectory import BATCH, Run, compare_runs, mnist, run
from yat_core.parallel import free_port

#: Relative per-step loss tolerance, times the step number.
RTOL_PER_STEP = 2e-6
#: Test accuracies of the two-process and one-process runs agree to this many percentage points.
MAX_ACC_DIFF_PP = 0.05
REPO = Path(__file__).resolve().parents[1]
#: In parity.json's meta, beside JAX's: the trajectories there are read against the float64 reference.
RESULTS_KEY = "data_parallel_torch"

pytestmark = pytest.mark.trajectory


def _two_processes(kind: str, folder: Path) -> tuple[Run, dict[str, Any]]:
    """``kind`` ("backend" or "framework") trained by torchrun in 2 processes; its run and receipt."""
    steps, epochs, test_limit = profiles.active().trajectory("seed")
    report = folder / f"{kind}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    # torchrun's logs in the test's folder (its default is a temporary folder it never removes).
    command += ["--master-port", str(free_port()), "--log-dir", str(folder / f"{kind}-logs")]
    command += ["-m", "yat_core", "train", f"--{kind}", "torch", "--quiet"]
    command += ["--epochs", str(epochs), "--report", str(report)]
    if steps is not None:
        command += ["--train-limit", str(steps * BATCH)]
    if test_limit is not None:
        command += ["--test-limit", str(test_limit)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{(done.stdout + done.stderr)[-4000:]}"
    receipt = json.loads(report.read_text())
    losses = [v for record in receipt["history"] for v in record["step_loss"]]
    accs = [record["test_acc"] for record in receipt["history"]]
    label = f"torch-{kind}-2-processes"
    return Run(label, "torch", "float32", receipt["gradients"], losses, accs, receipt["total_s"]), receipt


@pytest.mark.parametrize("kind", ["backend", "framework"])
def test_two_processes_follow_one(kind: str, require_backend: Any, tmp_path: Path) -> None:
    require_backend("torch")
    profile = profiles.active()
    steps, epochs, test_limit = profile.trajectory("seed")
    mnist()  # in the cache before the processes read it
    one = run(
        "torch" if kind == "backend" else None,
        "float32",
        gradients=None,
        steps=steps,
        epochs=epochs,
        test_limit=test_limit,
        framework=None if kind == "backend" else "torch",
    )
    two, receipt = _two_processes(kind, tmp_path)
    cmp = compare_runs(one, two)
    ceiling = MAX_LOSS_DIFF[profile.name]
    cmp["loss_diff_limit"] = ceiling
    store = STORE.meta.setdefault(f"{RESULTS_KEY}_{kind}", {"runs": {}, "comparisons": {}})
    store["reference"] = one._asdict()
    store["runs"][two.label] = two._asdict()
    store["comparisons"][two.label] = cmp
    where = f"{kind} torch, 2 gloo processes, {cmp['steps']} steps, seed 0 ({profile.name} profile)"
    a, b = np.asarray(one.step_loss), np.asarray(two.step_loss)
    assert a.shape == b.shape, f"{where}: {b.size} steps, one process ran {a.size}"
    limit = np.minimum(RTOL_PER_STEP * np.arange(1, a.size + 1) * np.abs(a), ceiling)
    worst = int(np.argmax(np.abs(b - a) - limit))
    assert np.all(np.abs(b - a) <= limit), (
        f"{where}: step {worst + 1} loss {b[worst]!r} vs {a[worst]!r} in one process, beyond {limit[worst]:.2e}"
    )
    assert cmp["acc_diff_pp"] <= MAX_ACC_DIFF_PP, (
        f"{where}: test accuracy {100 * two.test_acc[-1]:.2f} % vs {100 * one.test_acc[-1]:.2f} % in one process"
    )
    entry = receipt["distributed"]
    assert (entry["world_size"], entry["backend"]) == (2, "gloo")
    assert [len(t) for t in entry["rank_timings"]] == [epochs, epochs]
