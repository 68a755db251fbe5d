"""Step timing: forward, forward+backward and the full training step of one backend.

A :class:`StepBench` builds the compiled callable for one (backend, device,
model, kind, batch) through yat-core's public API and returns a zero-argument
function that runs one step *and waits for it* (the device is synchronised, and
MLX's lazy graph evaluated, before the call returns), so the caller's clock
measures finished work. The first call, which traces and compiles, is timed on
its own; the steady state is timed by pytest-benchmark.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from yat_core.backends import Backend, get_backend
from yat_core.mlp import MLPSpec, init_mlp_numpy, mlp_forward, relu_spec, seed_spec
from yat_core.optim import AdamWConfig, adamw_init

__all__ = ["KINDS", "MODELS", "StepBench", "model_spec", "warm_up", "rounds_for"]

#: Step kinds, in table order.
KINDS = ("forward", "forward_backward", "train_step")
#: The seed model and its Linear + ReLU twin (the baseline a user would pick instead).
MODELS = ("yat", "relu")
#: Size of the synthetic uint8 data set the training step gathers its batches from.
DATASET_SIZE = 60_000
#: Distinct batches cycled through, so gathers do not always hit the same rows.
N_BATCHES = 8


def model_spec(model: str) -> MLPSpec:
    """The :class:`MLPSpec` of ``"yat"`` (the seed model) or ``"relu"`` (its baseline)."""
    specs = {"yat": seed_spec, "relu": relu_spec}
    if model not in specs:
        raise ValueError(f"model must be one of {', '.join(specs)}, got {model!r}")
    return specs[model]()


@dataclass
class StepBench:
    """One step benchmark; :meth:`build` returns the timed callable.

    Parameters
    ----------
    backend, device : str
        A yat-core backend and a device it accepts.
    model : {"yat", "relu"}
    kind : {"forward", "forward_backward", "train_step"}
    batch : int
    seed : int
        Seeds the parameters and the synthetic data.
    """

    backend: str
    device: str
    model: str
    kind: str
    batch: int
    seed: int = 0

    def build(self) -> Callable[[], Any]:
        """Set up parameters, data and the compiled step; return ``run()`` (one synchronised step)."""
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        b = get_backend(self.backend, self.device)
        spec = model_spec(self.model)
        params = {k: b.asarray(v) for k, v in init_mlp_numpy(spec, self.seed).items()}
        builder = {
            "forward": self._forward,
            "forward_backward": self._forward_backward,
            "train_step": self._train_step,
        }[self.kind]
        return builder(b, spec, params)

    # -- synthetic data ----------------------------------------------------------------
    def _rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def _batch_u8(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, (self.batch, 784), dtype=np.uint8)
        return images, rng.integers(0, 10, self.batch).astype(np.int32)

    # -- the three kinds -------------------------------------------------------------
    def _forward(self, b: Backend, spec: MLPSpec, params: dict[str, Any]) -> Callable[[], Any]:
        images, _ = self._batch_u8(self._rng())
        x = b.asarray(images.astype(np.float32) / 255.0)
        forward = b.compile(functools.partial(_forward, spec=spec, xp=b.xp))

        def run() -> Any:
            out = forward(params, x)
            _wait(b, out)
            return out

        return run

    def _forward_backward(self, b: Backend, spec: MLPSpec, params: dict[str, Any]) -> Callable[[], Any]:
        images, labels = self._batch_u8(self._rng())
        x, y = b.asarray(images), b.asarray(labels)
        loss_and_grad = b.compile(b.loss_and_grad(spec))

        def run() -> Any:
            out = loss_and_grad(params, x, y)
            _wait(b, out)
            return out

        return run

    def _train_step(self, b: Backend, spec: MLPSpec, params: dict[str, Any]) -> Callable[[], Any]:
        rng = self._rng()
        images = b.asarray(rng.integers(0, 256, (DATASET_SIZE, 784), dtype=np.uint8))
        labels = b.asarray(rng.integers(0, 10, DATASET_SIZE).astype(np.int32))
        batches = [
            b.asarray(rng.choice(DATASET_SIZE, self.batch, replace=False).astype(np.int32)) for _ in range(N_BATCHES)
        ]
        step = b.train_step(spec, AdamWConfig())
        # The step donates (consumes) params and optimizer state: thread them through.
        state = {"params": params, "opt": adamw_init(params, xp=b.xp), "i": 0}

        def run() -> Any:
            idx = batches[state["i"] % N_BATCHES]
            state["params"], state["opt"], loss = step(state["params"], state["opt"], images, labels, idx)
            state["i"] += 1
            _wait(b, (state["params"], state["opt"], loss))
            return loss

        return run


def _forward(params: dict[str, Any], x: Any, *, spec: MLPSpec, xp: Any) -> Any:
    return mlp_forward(params, x, spec, xp=xp)


def _wait(b: Backend, tree: Any) -> None:
    # MLX records work lazily (settle evaluates it); JAX and CUDA run asynchronously
    # (synchronize blocks). Both before the clock is read.
    b.settle(tree)
    b.synchronize(tree)


def warm_up(run: Callable[[], Any], calls: int) -> tuple[float, float]:
    """Time the first call (trace + compile + run), then ``calls`` more untimed-for-the-record ones.

    Returns
    -------
    first_s : float
        Seconds of the first call: compilation and warm-up, timed separately from the steady state.
    typical_s : float
        Median of the following calls, used to size the timed rounds.
    """
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(1, calls)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def rounds_for(typical_s: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    """Rounds that fill ``budget_s`` at ``typical_s`` per call, within the bounds.

    Examples
    --------
    >>> rounds_for(0.01, 1.0, 5, 50), rounds_for(1.0, 1.0, 5, 50)
    (50, 5)
    """
    wanted = int(budget_s / max(typical_s, 1e-9))
    return max(min_rounds, min(max_rounds, wanted))
