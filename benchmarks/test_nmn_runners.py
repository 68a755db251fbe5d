"""nmn's models of the comparison: built from the spec, the same shape as ours, one training step.

Not timed: each test builds a model in nmn's layers for one framework, checks its
parameter count against the spec's (the same network, nmn's layers), runs two
training steps on a few random images and one evaluation. Skipped where the
framework or ``nmn`` is not installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.nmn_runners import NMN_MODULES, make_nmn_runner
from yat_core.config import TrainConfig
from yat_core.spec import MODELS, count_params

_FRAMEWORK = {"torch": "torch", "jax": "flax", "mlx": "mlx"}


@pytest.mark.parametrize("network", ["mlp", "cnn"])
@pytest.mark.parametrize("backend", sorted(NMN_MODULES))
def test_nmn_model_has_the_spec_shape_and_trains(backend: str, network: str) -> None:
    pytest.importorskip(_FRAMEWORK[backend])
    pytest.importorskip(NMN_MODULES[backend])
    from yat_core.backends import get_backend

    get_backend(backend, "cpu")  # the framework loads as the backend loads it
    spec = MODELS[network].yat()
    runner = make_nmn_runner(backend)(spec, TrainConfig(model=network, backend=backend))
    assert runner.n_params() == count_params(spec)  # nmn's layers, the same network
    rng = np.random.default_rng(0)
    images = runner.put(rng.integers(0, 256, (16, 784), dtype=np.uint8))
    labels = runner.put(rng.integers(0, 10, 16).astype(np.int32))
    for first in (0, 8):
        loss = runner.step(images, labels, runner.put(np.arange(first, first + 8, dtype=np.int32)))
        runner.settle(loss)
    assert math.isfinite(runner.to_float(loss))
    loss_sum, correct = runner.evaluate(images, labels)
    assert math.isfinite(runner.to_float(loss_sum)) and 0 <= runner.to_float(correct) <= 16
