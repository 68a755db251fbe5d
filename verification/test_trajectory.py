"""Trajectory parity: same init, same batch order; every backend's (and, for the CNN,
every framework's) per-step training loss tracks the float64 reference, and the runs
end with the same test accuracy.

Seed model, CI profile: the first 120 steps of epoch 1 (on the first 15,360 training
images), accuracy on the first 2,000 test images; thorough profile: the full
three-epoch recipe, accuracy on all 10,000 test images. The Yat CNN: the first 3 steps
(CI) or 100 steps (thorough) of epoch 1 on every core backend and in every framework
(its native model and optimizer, ``TrainConfig(model="cnn", framework=...)``), from the
same float32 initial weights; accuracy on the first 256 (CI) or 2,000 test images.
The Yat vision transformer, the same way: 3 steps (CI) or 40 (thorough). Its training
at lr 2e-3 is chaotic: float32 runs stay within a few 1e-6 of the float64 loss for
40-60 steps, then rounding differences grow tenfold every few steps until the runs part
(after about 70), so a longer run would test the chaos, not the backends; 40 steps keep
every run in the regime where the step-1 bound and the float32 drift below describe it.

What is asserted, per float32 run:

- step 1 (identical weights, identical batch): the loss difference is within the
  error model's bound on the float32 loss (inputs rounded to float32 included; for
  the CNN the bound runs through the convolutions and pools, see
  :func:`verification.trajectory.conv_front_bounds`; for the ViT it is the first-order
  propagation of every layer's bound, :func:`verification.trajectory.token_loss_bound`),
  plus the float64 reference's own;
- every step: the loss stays within the larger of ``DRIFT_FACTOR`` times the drift
  of the NumPy float32 run (the reference code, rounded to float32: the noise
  floor of this run) and the step-1 bound, and never beyond ``MAX_LOSS_DIFF``;
- the final test accuracy is within 0.1 percentage point of the reference, and of
  every other run.

Every framework trains with the core's AdamW rule (Keras and tf.keras through
``yat_core.runners._keras_adamw.CoreAdamW``); Keras's stock AdamW, which adds epsilon to
the square root of the uncorrected second moment, moves the CNN's loss by 3e-5 per step
in the first three steps, 200 times the float32 drift, and fails this check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from verification import profiles
from verification.error_model import precision_for
from verification.oracle import MLPBackward, mlp_backward64
from verification.results import STORE
from verification.trajectory import (
    BATCH,
    FRAMEWORKS,
    REFERENCE,
    TRAINING_BACKENDS,
    Run,
    compare_runs,
    first_batch,
    mnist,
    model_loss_bound,
    model_spec,
    run,
)
from yat_core.mlp import init_mlp_numpy

#: A float32 run may drift from the float64 one by this multiple of the NumPy float32 drift.
DRIFT_FACTOR = 4.0
#: Absolute ceiling on the per-step loss difference (the loss starts at 2.30).
MAX_LOSS_DIFF = {"ci": 1e-4, "thorough": 1e-2}
#: Test accuracies must agree to this many percentage points.
MAX_ACC_DIFF_PP = 0.1

#: (model, backend, gradients, framework): the core backends for every model, the frameworks for
#: the CNN and the ViT.
RUNS = [("seed", b, g, None) for b, g in TRAINING_BACKENDS]
RUNS += [(m, b, g, None) for m in ("cnn", "vit") for b, g in TRAINING_BACKENDS]
RUNS += [(m, None, None, fw) for m in ("cnn", "vit") for fw in FRAMEWORKS]
MODELS = ("seed", "cnn", "vit")

pytestmark = pytest.mark.trajectory


def _name(backend: str | None, framework: str | None) -> str:
    return backend if framework is None else f"nn-{framework}"


@functools.cache
def _run(model: str, backend: str | None, dtype: str, gradients: str | None, framework: str | None = None) -> Run:
    """One training run of the active profile (cached: the NumPy float32 run is both the
    noise floor and a backend under test)."""
    steps, epochs, test_limit = profiles.active().trajectory(model)
    return run(
        backend,
        dtype,
        gradients=gradients,
        steps=steps,
        epochs=epochs,
        test_limit=test_limit,
        model=model,
        framework=framework,
    )


def _store(model: str) -> dict[str, Any]:
    return STORE.trajectory.setdefault(model, {"runs": {}, "comparisons": {}})


def _reference(model: str) -> Run:
    ref = _run(model, *REFERENCE, None)
    _store(model)["reference"] = ref._asdict()
    return ref


def _record(model: str, r: Run, comparison: dict[str, Any]) -> None:
    _store(model)["runs"][r.label] = r._asdict()
    _store(model)["comparisons"][r.label] = comparison


def _noise_floor(model: str, require_backend: Callable[[str], Any]) -> float:
    """Largest per-step loss difference of the NumPy float32 run from the float64 one."""
    require_backend("numpy")
    floor_run = _run(model, "numpy", "float32", None)
    cmp = compare_runs(_reference(model), floor_run)
    if floor_run.label not in _store(model)["comparisons"]:
        _record(model, floor_run, cmp)
    return cmp["max_loss_diff"]


@functools.cache
def _first_batch_problem(model: str) -> tuple[Any, ...]:
    """The step-1 inputs of ``model``'s runs and the oracle's forward and backward pass on them."""
    spec = model_spec(model)
    steps = profiles.active().trajectory(model)[0]
    x, labels = first_batch(len(mnist().train_labels) if steps is None else steps * BATCH)
    x = x.reshape(len(x), *spec.input_shape)
    params = init_mlp_numpy(spec, 0, np.float32)
    back: MLPBackward = mlp_backward64(params, x, labels, spec)
    return spec, params, x, labels, back


@functools.cache
def _loss_bound(model: str, precision: str) -> float:
    """The error model's bound on the step-1 loss computed in ``precision``: float32
    arithmetic on the float32 weights, and pixels rounded to float32 (the reference
    reads them in float64); ``"float64"``: the reference's own."""
    spec, params, x, labels, back = _first_batch_problem(model)
    oracle = {"forward": (back.acts, back.saved), "backward": back}
    if precision == "float64":
        return model_loss_bound(params, x, labels, spec, precision_for("numpy", np.float64), **oracle)
    prec = precision_for(precision, np.float32)
    return model_loss_bound(params, x, labels, spec, prec, np.abs(x) * 2.0**-24, **oracle)


def _first_step_bound(model: str, name: str) -> float:
    backend = "mlx" if name in ("mlx", "nn-mlx") else "numpy"  # MLX's elementary functions are less accurate
    return _loss_bound(model, backend) + _loss_bound(model, "float64")


def _repro(model: str, name: str, profile: str) -> str:
    return f"python -m verification.repro trajectory {name} {profile}" + (
        "" if model == "seed" else f" --model {model}"
    )


@pytest.mark.parametrize(
    ("model", "backend", "gradients", "framework"),
    RUNS,
    ids=[f"{m}-{_name(b, fw)}" for m, b, _, fw in RUNS],
)
def test_training_tracks_float64_reference(
    model: str,
    backend: str | None,
    gradients: str | None,
    framework: str | None,
    require_backend: Callable[[str], Any],
) -> None:
    name = _name(backend, framework)
    require_backend(name)
    profile = profiles.active()
    reference = _reference(model)
    noise_floor = _noise_floor(model, require_backend)
    r = _run(model, backend, "float32", gradients, framework)
    cmp = compare_runs(reference, r)
    first_bound = _first_step_bound(model, name)
    limit = min(max(DRIFT_FACTOR * noise_floor, first_bound), MAX_LOSS_DIFF[profile.name])
    cmp.update({"first_step_bound": first_bound, "loss_diff_limit": limit, "noise_floor": noise_floor})
    _record(model, r, cmp)
    kind = f"framework {framework!r} (its native model and optimizer)" if framework else f"backend {backend!r}"
    where = (
        f"{model} model, {kind} ({r.gradients} gradients), {cmp['steps']} steps, seed 0\n"
        f"  reproduce: {_repro(model, name, profile.name)}"
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


@pytest.mark.parametrize("model", MODELS)
def test_float32_runs_agree_with_each_other(model: str) -> None:
    """Summary over the float32 runs done so far: pairwise loss and accuracy gaps (recorded;
    the accuracies must agree within 0.1 pp: the frameworks' CNNs among them)."""
    runs = _store(model)["runs"]
    labels = sorted(runs)
    pairs = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            la, lb = np.asarray(runs[a]["step_loss"]), np.asarray(runs[b]["step_loss"])
            pairs[f"{a} vs {b}"] = {
                "max_loss_diff": float(np.max(np.abs(la - lb))),
                "acc_diff_pp": 100.0 * abs(runs[a]["test_acc"][-1] - runs[b]["test_acc"][-1]),
            }
    _store(model)["pairs"] = pairs
    assert all(p["acc_diff_pp"] <= MAX_ACC_DIFF_PP for p in pairs.values()), pairs
