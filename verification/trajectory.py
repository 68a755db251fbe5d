"""Trajectory parity: the same training run on every backend, step by step.

Every run starts from the same float32 weights (:func:`yat_core.mlp.init_mlp_numpy`)
and sees the same batches in the same order (:func:`yat_core.train.batch_order`);
the reference is the NumPy backend in float64. Each backend runs its default
training step, compiled as users run it.
"""

from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import numpy as np

from yat_core.backends import get_backend
from yat_core.mlp import MLPSpec, init_mlp_numpy
from yat_core.optim import adamw_init
from yat_core.runners.core import CoreRunner
from yat_core.train import TrainConfig, train

__all__ = ["Run", "REFERENCE", "TRAINING_BACKENDS", "mnist", "run", "compare_runs", "seed_batch"]

#: The float64 reference run.
REFERENCE = ("numpy", "float64")
#: The float32 runs compared with it (backend, gradients; None: the backend's default).
TRAINING_BACKENDS = (("numpy", None), ("torch", None), ("jax", None), ("mlx", None))
BATCH = 128


class Run(NamedTuple):
    """Per-step training losses and per-epoch test accuracies of one run."""

    label: str
    backend: str
    dtype: str
    gradients: str
    step_loss: list[float]
    test_acc: list[float]
    seconds: float


@functools.cache
def mnist() -> Any:
    """MNIST, loaded (and fetched on a fresh machine) once per session."""
    from yat_core.data import load_mnist

    return load_mnist(progress=False)


def seed_batch(n: int = BATCH, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first training batch of the seed recipe: pixels in [0, 1] (float32, as the
    core flattens them) and labels."""
    from yat_core.train import batch_order

    data = mnist()
    idx = batch_order(seed, 1, len(data.train_labels))[:n]
    images = data.train_images[idx].reshape(n, -1)
    return images.astype(np.float32) / 255.0, data.train_labels[idx].astype(np.int64)


def _float32_init_runner(spec: MLPSpec, config: TrainConfig) -> CoreRunner:
    """The core's runner, started from the float32 initial weights whatever its dtype:
    the float64 reference then differs from the float32 runs by arithmetic only."""
    backend = get_backend(config.backend, config.device, config.gradients)
    runner = CoreRunner(backend, spec, config)
    init = init_mlp_numpy(spec, config.seed, np.float32)
    runner.params = {k: backend.asarray(v.astype(config.dtype)) for k, v in init.items()}
    runner.opt_state = adamw_init(runner.params, xp=backend.xp)
    return runner


def run(
    backend: str, dtype: str, *, gradients: str | None, steps: int | None, epochs: int, test_limit: int | None
) -> Run:
    """Train the seed model on the first ``steps * 128`` training images (all when None),
    from the float32 initial weights."""
    config = TrainConfig(
        backend=backend,
        dtype=dtype,
        gradients=gradients,
        epochs=epochs,
        seed=0,
        train_limit=None if steps is None else steps * BATCH,
        test_limit=test_limit,
    )
    t0 = time.perf_counter()
    receipt = train(config, data=mnist(), runner_factory=_float32_init_runner, progress=False, log=None)
    losses = [v for record in receipt["history"] for v in record["step_loss"]]
    label = f"{backend}-{dtype}" + ("" if dtype == "float64" else f"-{receipt['gradients']}")
    return Run(
        label,
        backend,
        dtype,
        receipt["gradients"],
        losses,
        [record["test_acc"] for record in receipt["history"]],
        time.perf_counter() - t0,
    )


def compare_runs(reference: Run, other: Run) -> dict[str, Any]:
    """Per-step loss differences of ``other`` from ``reference`` and the accuracy gap."""
    ref, got = np.asarray(reference.step_loss), np.asarray(other.step_loss)
    diff = np.abs(got - ref)
    return {
        "label": other.label,
        "steps": int(diff.size),
        "max_loss_diff": float(diff.max()),
        "max_loss_diff_step": int(diff.argmax()) + 1,
        "mean_loss_diff": float(diff.mean()),
        "first_step_diff": float(diff[0]),
        "final_test_acc": other.test_acc[-1],
        "acc_diff_pp": 100.0 * abs(other.test_acc[-1] - reference.test_acc[-1]),
        "seconds": other.seconds,
    }
