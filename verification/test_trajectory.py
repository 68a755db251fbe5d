"""Trajectory parity: same init, same batch order; every backend's per-step training
loss tracks the float64 reference, and the runs end with the same test accuracy.

CI profile: the first 120 steps of epoch 1 (on the first 15,360 training images),
accuracy on the first 2,000 test images. Thorough profile: the full three-epoch
recipe, accuracy on all 10,000 test images.

What is asserted, per float32 backend:

- step 1 (identical weights, identical batch): the loss difference is within the
  error model's bound on the float32 loss (inputs rounded to float32 included);
- every step: the loss stays within the larger of ``DRIFT_FACTOR`` times the drift
  of the NumPy float32 run (the reference code, rounded to float32: the noise
  floor of this run) and the step-1 bound, and never beyond ``MAX_LOSS_DIFF``;
- the final test accuracy is within 0.1 percentage point of the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from verification import profiles
from verification.error_model import ORACLE64, loss_bound, precision_for
from verification.results import STORE
from verification.trajectory import BATCH, REFERENCE, TRAINING_BACKENDS, Run, compare_runs, mnist, run
from yat_core.mlp import init_mlp_numpy, seed_spec
from yat_core.train import batch_order

#: A float32 run may drift from the float64 one by this multiple of the NumPy float32 drift.
DRIFT_FACTOR = 4.0
#: Absolute ceiling on the per-step loss difference (the loss starts at 2.30).
MAX_LOSS_DIFF = {"ci": 1e-4, "thorough": 1e-2}
#: Test accuracies must agree to this many percentage points.
MAX_ACC_DIFF_PP = 0.1

pytestmark = pytest.mark.trajectory


@functools.cache
def _run(backend: str, dtype: str, gradients: str | None) -> Run:
    """One training run of the active profile (cached: the NumPy float32 run is both the
    noise floor and a backend under test)."""
    profile = profiles.active()
    return run(
        backend,
        dtype,
        gradients=gradients,
        steps=profile.trajectory_steps,
        epochs=profile.trajectory_epochs,
        test_limit=profile.trajectory_test_limit,
    )


@pytest.fixture(scope="session")
def reference() -> Run:
    ref = _run(*REFERENCE, None)
    STORE.trajectory.update({"reference": ref._asdict(), "runs": {}, "comparisons": {}})
    return ref


@pytest.fixture(scope="session")
def noise_floor(reference: Run, require_backend: Callable[[str], Any]) -> float:
    """Largest per-step loss difference of the NumPy float32 run from the float64 one."""
    require_backend("numpy")
    floor_run = _run("numpy", "float32", None)
    _store(floor_run, compare_runs(reference, floor_run))
    return compare_runs(reference, floor_run)["max_loss_diff"]


def _store(r: Run, comparison: dict[str, Any]) -> None:
    STORE.trajectory["runs"][r.label] = r._asdict()
    STORE.trajectory["comparisons"][r.label] = comparison


def _first_step_bound(backend: str) -> float:
    """Error-model bound on the step-1 loss: float32 arithmetic on float32 weights, and
    pixels rounded to float32 (the reference reads them in float64)."""
    spec = seed_spec()
    data = mnist()
    n = (
        len(data.train_labels)
        if profiles.active().trajectory_steps is None
        else profiles.active().trajectory_steps * BATCH
    )
    idx = batch_order(0, 1, n)[:BATCH]
    x = data.train_images[:n][idx].reshape(BATCH, -1) / 255.0
    labels = data.train_labels[:n][idx].astype(np.int64)
    params = init_mlp_numpy(spec, 0, np.float32)
    x_err = np.abs(x) * 2.0**-24
    return loss_bound(params, x, labels, spec, precision_for(backend, np.float32), x_err) + loss_bound(
        params, x, labels, spec, ORACLE64
    )


@pytest.mark.parametrize("backend,gradients", TRAINING_BACKENDS, ids=[b for b, _ in TRAINING_BACKENDS])
def test_training_tracks_float64_reference(
    backend: str, gradients: str | None, reference: Run, noise_floor: float, require_backend: Callable[[str], Any]
) -> None:
    require_backend(backend)
    profile = profiles.active()
    r = _run(backend, "float32", gradients)
    cmp = compare_runs(reference, r)
    first_bound = _first_step_bound(backend)
    limit = min(max(DRIFT_FACTOR * noise_floor, first_bound), MAX_LOSS_DIFF[profile.name])
    cmp.update({"first_step_bound": first_bound, "loss_diff_limit": limit, "noise_floor": noise_floor})
    _store(r, cmp)
    where = (
        f"backend {backend!r} ({r.gradients} gradients), {cmp['steps']} steps, seed 0\n"
        f"  reproduce: python -m verification.repro trajectory {backend} {profile.name}"
    )
    assert cmp["first_step_diff"] <= first_bound, (
        f"step-1 loss differs by {cmp['first_step_diff']:.3e} > error-model bound {first_bound:.3e}: {where}"
    )
    assert cmp["max_loss_diff"] <= limit, (
        f"per-step loss differs from float64 by up to {cmp['max_loss_diff']:.3e} (step "
        f"{cmp['max_loss_diff_step']}) > {limit:.3e} ({DRIFT_FACTOR:g} x the NumPy float32 drift "
        f"{noise_floor:.3e}, at most {MAX_LOSS_DIFF[profile.name]:g}): {where}"
    )
    assert cmp["acc_diff_pp"] <= MAX_ACC_DIFF_PP, (
        f"test accuracy {100 * r.test_acc[-1]:.2f}% vs float64 {100 * reference.test_acc[-1]:.2f}%: {where}"
    )


def test_float32_runs_agree_with_each_other(reference: Run) -> None:
    """Summary over the float32 runs done so far: pairwise loss and accuracy gaps (recorded)."""
    runs = STORE.trajectory.get("runs", {})
    labels = sorted(runs)
    pairs = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            la, lb = np.asarray(runs[a]["step_loss"]), np.asarray(runs[b]["step_loss"])
            pairs[f"{a} vs {b}"] = {
                "max_loss_diff": float(np.max(np.abs(la - lb))),
                "acc_diff_pp": 100.0 * abs(runs[a]["test_acc"][-1] - runs[b]["test_acc"][-1]),
            }
    STORE.trajectory["pairs"] = pairs
    assert all(p["acc_diff_pp"] <= MAX_ACC_DIFF_PP for p in pairs.values()), pairs
