"""Step timing: forward, forward+backward and the full training step of one backend.

A :class:`StepBench` builds the compiled callable for one (backend, device,
network, model, kind, batch) through yat-core's public API and returns a
zero-argument function that runs one step *and waits for it* (the device is
synchronised, and MLX's lazy graph evaluated, before the call returns), so the
caller's clock measures finished work. The first call, which traces and compiles,
is timed on its own; the steady state is timed by pytest-benchmark.

Networks are the seed MLP (``"mlp"``) and the Yat CNN (``"cnn"``); models are the
Yat network (``"yat"``), its same-shape ReLU baseline (``"relu"``: ``Linear + ReLU``
for the MLP, ``Conv + ReLU`` for the CNN) and, for the training step only, the
published ``nmn`` package's layers of the backend's framework (``"nmn"``), run by
the same runner as the epoch timings use (:mod:`benchmarks.nmn_runners`).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from benchmarks.profiles import ALL_KINDS, NETWORKS, Profile
from yat_core.backends import Backend, get_backend
from yat_core.mlp import MLPSpec, init_mlp_numpy, mlp_forward
from yat_core.optim import AdamWConfig, adamw_init
from yat_core.spec import MODELS as RECIPES

__all__ = [
    "KINDS",
    "MODELS",
    "NMN_KINDS",
    "StepBench",
    "StepCase",
    "model_spec",
    "step_cases",
    "warm_up",
    "rounds_for",
]

#: Step kinds, in table order.
KINDS = ALL_KINDS
#: The Yat network, its ReLU twin (the baseline a user would pick instead) and nmn's layers.
MODELS = ("yat", "relu", "nmn")
#: The step kinds nmn's layers are timed on: its runner offers the training step only.
NMN_KINDS = ("train_step",)
#: Size of the synthetic uint8 data set the training step gathers its batches from.
DATASET_SIZE = 60_000
#: Distinct batches cycled through, so gathers do not always hit the same rows.
N_BATCHES = 8


def model_spec(model: str, network: str = "mlp") -> MLPSpec:
    """The spec of ``model`` for ``network``.

    ``"yat"`` is the network itself (the seed model, or the Yat CNN), ``"relu"`` its
    same-shape baseline; ``"nmn"`` is built in nmn's layers *from* the Yat network's spec.

    Examples
    --------
    >>> [layer.kind for layer in model_spec("relu", "cnn").layers][:2]
    ['conv', 'max_pool']
    """
    if network not in RECIPES or network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    recipe = RECIPES[network]
    if model in ("yat", "nmn"):
        return recipe.yat()
    if model == "relu":
        return recipe.relu()
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")


class StepCase(NamedTuple):
    """One step benchmark's network, model, kind and batch size (a pytest parameter)."""

    network: str
    model: str
    kind: str
    batch: int

    @property
    def id(self) -> str:
        """``"cnn-yat-train_step-b128"``: the pytest id."""
        return f"{self.network}-{self.model}-{self.kind}-b{self.batch}"


def step_cases(profile: Profile, networks: tuple[str, ...], backend: str | None = None) -> list[StepCase]:
    """Every step benchmark of ``networks`` under ``profile``, in table order.

    nmn is timed on the training step only, and only for backends whose framework
    nmn has a layer for (all of them when ``backend`` is None).

    Examples
    --------
    >>> from benchmarks.profiles import get_profile
    >>> [c.id for c in step_cases(get_profile("quick"), ("cnn",), "numpy")]
    ['cnn-yat-train_step-b128', 'cnn-relu-train_step-b128']
    """
    from benchmarks.nmn_runners import NMN_MODULES

    cases = []
    for network in networks:
        plan = profile.plan(network)
        for model in MODELS:
            if model == "nmn" and not (profile.nmn and (backend is None or backend in NMN_MODULES)):
                continue
            for kind in plan.kinds:
                if model == "nmn" and kind not in NMN_KINDS:
                    continue
                cases += [StepCase(network, model, kind, batch) for batch in plan.batch_sizes]
    return cases


@dataclass
class StepBench:
    """One step benchmark; :meth:`build` returns the timed callable.

    Parameters
    ----------
    backend, device : str
        A yat-core backend and a device it accepts.
    model : {"yat", "relu", "nmn"}
        ``"nmn"``: the training step only.
    kind : {"forward", "forward_backward", "train_step"}
    batch : int
    seed : int
        Seeds the parameters and the synthetic data.
    network : {"mlp", "cnn"}
        The seed MLP or the Yat CNN.
    """

    backend: str
    device: str
    model: str
    kind: str
    batch: int
    seed: int = 0
    network: str = "mlp"

    def build(self) -> Callable[[], Any]:
        """Set up parameters, data and the compiled step; return ``run()`` (one synchronised step).

        Raises
        ------
        ValueError
            For an unknown kind, model or network, or nmn's layers on a kind other than the training step.
        benchmarks.nmn_runners.NmnUnavailable
            For ``model="nmn"`` when nmn (or its layer for this backend's framework) is not installed.
        """
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        spec = model_spec(self.model, self.network)
        if self.model == "nmn":
            if self.kind not in NMN_KINDS:
                raise ValueError(f"nmn's layers are timed on the {', '.join(NMN_KINDS)} only, not {self.kind!r}")
            return self._nmn_train_step(spec)
        b = get_backend(self.backend, self.device, spec=spec)
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
        # The model's own input layout: (n, 784) for the MLP, channels-first (n, 1, 28, 28) for the CNN.
        x = b.asarray((images.astype(np.float32) / 255.0).reshape(self.batch, *spec.input_shape))
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
        step = b.train_step(spec, self._optimizer())
        # The step donates (consumes) params and optimizer state: thread them through.
        state: dict[str, Any] = {"params": params, "opt": adamw_init(params, xp=b.xp), "i": 0}

        def run() -> Any:
            idx = batches[state["i"] % N_BATCHES]
            state["params"], state["opt"], loss = step(state["params"], state["opt"], images, labels, idx)
            state["i"] += 1
            _wait(b, (state["params"], state["opt"], loss))
            return loss

        return run

    def _optimizer(self) -> AdamWConfig:
        # AdamW at the network's learning rate, as `yat-core train --model` runs it.
        return AdamWConfig(lr=RECIPES[self.network].lr)

    def _nmn_train_step(self, spec: MLPSpec) -> Callable[[], Any]:
        """nmn's layers in the training runner the epoch timings use: gather, loss, gradients, AdamW."""
        from benchmarks.nmn_runners import make_nmn_runner
        from yat_core.config import TrainConfig

        # The framework loads as the backend loads it (e.g. with an opt-in BLAS for MLX).
        get_backend(self.backend, self.device)
        factory = make_nmn_runner(self.backend)
        config = TrainConfig(model=self.network, backend=self.backend, device=self.device, seed=self.seed)
        runner = factory(spec, config)
        rng = self._rng()
        images = runner.put(rng.integers(0, 256, (DATASET_SIZE, 784), dtype=np.uint8))
        labels = runner.put(rng.integers(0, 10, DATASET_SIZE).astype(np.int32))
        batches = [
            runner.put(rng.choice(DATASET_SIZE, self.batch, replace=False).astype(np.int32)) for _ in range(N_BATCHES)
        ]
        state = {"i": 0}

        def run() -> Any:
            loss = runner.step(images, labels, batches[state["i"] % N_BATCHES])
            state["i"] += 1
            runner.settle(loss)
            runner.synchronize(loss)
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
