"""One training loop for every backend and framework, and the receipt it writes.

The loop owns everything that must be identical across frameworks: the initial
weights (NumPy, from the seed), the batch order (one NumPy generator seeded by
``seed``), the last partial batch (kept), and the evaluation (all test images). A
:class:`~yat_core.runners.Runner` owns the model, its optimizer and its device.
:func:`train` reads top to bottom: build the runner, load and place the data, run
the epochs (:func:`run_epoch`), evaluate (:func:`evaluate`), assemble the receipt
(:func:`assemble_receipt`).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from yat_core.config import DEFAULT_BACKEND_ORDER, TrainConfig, default_backend
from yat_core.errors import YatError
from yat_core.receipts import command_line, git_commit, machine_info, versions
from yat_core.runners import Runner, make_runner
from yat_core.spec import MODELS, spec_record
from yat_core.spec import ModelSpec as MLPSpec
from yat_core.threads import thread_defaults, thread_library

__all__ = [
    "TrainConfig",
    "TrainingStopped",
    "train",
    "run_epoch",
    "evaluate",
    "assemble_receipt",
    "batch_order",
    "default_backend",
    "DEFAULT_BACKEND_ORDER",
]


class TrainingStopped(YatError):
    """A run stopped early (its loss became non-finite); ``receipt`` records it up to there.

    The receipt's ``"stopped"`` says where, e.g. ``"non-finite loss (nan) at epoch 2 step 17"``.
    """

    def __init__(self, message: str, receipt: dict[str, Any]) -> None:
        super().__init__(message)
        self.receipt = receipt


def batch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled sample order of ``epoch`` (1-based): the same on every backend.

    One NumPy generator seeded by ``seed`` draws a permutation per epoch, in turn;
    epoch ``e`` gets the ``e``-th draw (recomputed here, a millisecond per epoch, so
    the function needs no state and any epoch can be reproduced alone).

    Examples
    --------
    >>> batch_order(0, 2, 5).tolist() == batch_order(0, 2, 5).tolist()
    True
    >>> sorted(batch_order(0, 1, 5).tolist())
    [0, 1, 2, 3, 4]
    """
    if epoch < 1:
        raise ValueError(f"epochs count from 1, got {epoch}")
    rng = np.random.default_rng(seed)
    for _ in range(epoch - 1):
        rng.permutation(n)
    return rng.permutation(n).astype(np.int32)


def evaluate(runner: Runner, images: Any, labels: Any, n: int, chunk: int) -> tuple[float, float]:
    """Mean loss and accuracy over all ``n`` examples, evaluated in chunks (none dropped)."""
    loss_sum, correct = 0.0, 0
    for start in range(0, n, chunk):
        batch_loss, batch_correct = runner.evaluate(images[start : start + chunk], labels[start : start + chunk])
        loss_sum += runner.to_float(batch_loss)
        correct += int(runner.to_float(batch_correct))
    return loss_sum / n, correct / n


class _Progress:
    """A tqdm bar on an interactive terminal; silent otherwise (CI logs stay short)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
        self.start = time.perf_counter()

    def update(self, done: int, samples: int, loss: Callable[[], float]) -> None:
        if self.bar is None:
            return
        rate = samples / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"loss {loss():.4f}, {rate:,.0f} samples/s", refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Placed:
    """The data on the runner's device, and the step plan derived from its size."""

    images: Any
    labels: Any
    test_images: Any
    test_labels: Any
    n_train: int
    n_test: int
    batch_size: int
    chunk: int  # full steps per chunked call (1: no chunking)
    chunked: Callable[[Any, Any, Any, int], Any] | None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    @property
    def full_steps(self) -> int:
        return self.n_train // self.batch_size


def _place(runner: Runner, data: Any, config: TrainConfig, n_classes: int) -> _Placed:
    train_x, train_y = _subset(data.train_images, data.train_labels, config.train_limit, "training", n_classes)
    test_x, test_y = _subset(data.test_images, data.test_labels, config.test_limit, "test", n_classes)
    full_steps = len(train_y) // config.batch_size
    chunk = _chunk_length(full_steps)
    chunked = runner.chunk_runner(config.batch_size, chunk) if chunk > 1 else None
    return _Placed(
        runner.put(train_x),
        runner.put(train_y),
        runner.put(test_x),
        runner.put(test_y),
        len(train_y),
        len(test_y),
        config.batch_size,
        chunk if chunked is not None else 1,
        chunked,
    )


def run_epoch(
    runner: Runner, placed: _Placed, order: Any, bar: _Progress, on_first_step: Callable[[Any], None]
) -> tuple[list[float], float]:
    """One pass over the training set in ``order``: the per-step losses and the epoch's seconds.

    Full batches go through the runner's chunked call where it has one; the rest
    (and the last partial batch) one step at a time.
    """
    batch, steps = placed.batch_size, placed.steps_per_epoch
    losses: list[Any] = []
    t0 = time.perf_counter()
    i = 0
    while i < steps:
        if placed.chunked is not None and i + placed.chunk <= placed.full_steps:
            loss = placed.chunked(placed.images, placed.labels, order, i)
            i += placed.chunk
        else:
            loss = runner.step(placed.images, placed.labels, order[i * batch : (i + 1) * batch])
            i += 1
        runner.settle(loss)
        losses.append(loss)
        if len(losses) == 1:
            on_first_step(loss)
        if i % 20 == 0 or placed.chunked is not None or i == steps:
            bar.update(i, min(placed.n_train, i * batch), functools.partial(_last_loss, runner, loss))
    runner.synchronize(losses)
    epoch_s = time.perf_counter() - t0
    return [v for loss in losses for v in runner.host_losses(loss)], epoch_s


def _last_loss(runner: Runner, loss: Any) -> float:
    return runner.host_losses(loss)[-1]


def train(
    config: TrainConfig,
    *,
    data: Any = None,
    spec: MLPSpec | None = None,
    runner_factory: Callable[[MLPSpec, TrainConfig], Runner] = make_runner,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train the model with ``config`` and return its receipt (a JSON-ready dict).

    Parameters
    ----------
    config : TrainConfig
    data : MNIST-like, optional
        Anything with ``train_images``, ``train_labels``, ``test_images``,
        ``test_labels`` (uint8); loaded with :func:`yat_core.data.load_mnist` when None.
    spec : ModelSpec, optional
        The model; by default ``config.model``'s (:data:`yat_core.spec.MODELS`).
    runner_factory : callable
        ``(spec, config) -> Runner``; :func:`yat_core.runners.make_runner` by default
        (the core on ``config.backend``, or ``config.framework``'s native model).
    progress : bool
        Show a progress bar (only on an interactive terminal).
    log : callable or None
        Receives one summary line per epoch.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> tiny = SimpleNamespace(train_images=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
    ...     train_labels=rng.integers(0, 10, 64).astype(np.uint8), test_images=rng.integers(
    ...     0, 256, (16, 28, 28), dtype=np.uint8), test_labels=rng.integers(0, 10, 16).astype(np.uint8),
    ...     source="random")
    >>> receipt = train(TrainConfig(backend="numpy", epochs=1, batch_size=32), data=tiny, log=None)
    >>> receipt["params"], receipt["n_train"], len(receipt["history"])
    (235148, 64, 1)
    """
    t_start = time.perf_counter()
    # The thread pools first, so that the libraries the runner imports start with them (yat_core.threads).
    with thread_defaults(thread_library(config)) as threads:
        return _train(
            config, t_start, threads, data=data, spec=spec, runner_factory=runner_factory, progress=progress, log=log
        )


def _train(
    config: TrainConfig,
    t_start: float,
    threads: dict[str, Any],
    *,
    data: Any,
    spec: MLPSpec | None,
    runner_factory: Callable[[MLPSpec, TrainConfig], Runner],
    progress: bool,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    config.validate()
    spec = MODELS[config.model][0]() if spec is None else spec
    if config.devices > 1 or "jax" in sys.modules:
        # JAX fixes its devices when it starts: set up before the runner is built (and JAX started),
        # and reset for a one-device run after a data-parallel one.
        from yat_core.parallel.jax import set_up

        set_up(config)
    # The runner first: an absent framework fails before any data is fetched.
    runner = runner_factory(spec, config)
    if not runner.is_main_process:
        log = None  # one rank of several (torchrun): rank 0 reports
    t_load = time.perf_counter()
    if data is None:
        from yat_core.data import load_mnist

        data = load_mnist(config.data_dir, progress=progress)
    load_s = time.perf_counter() - t_load
    placed = _place(runner, data, config, spec.layers[-1].out_features)

    first_step_s: list[float] = []

    def on_first_step(loss: Any) -> None:
        if not first_step_s:
            runner.synchronize(loss)
            first_step_s.append(time.perf_counter() - t_start)

    history: list[dict[str, Any]] = []

    def receipt(stopped: str | None = None) -> dict[str, Any]:
        return assemble_receipt(
            runner,
            config,
            spec,
            placed,
            history,
            data_source=getattr(data, "source", "in-memory"),
            timings=_timings(t_start, load_s, first_step_s),
            stopped=stopped,
            threads=threads,
        )

    for epoch in range(1, config.epochs + 1):
        order = runner.put(batch_order(config.seed, epoch, placed.n_train))
        bar = _Progress(placed.steps_per_epoch, f"epoch {epoch}/{config.epochs}", progress)
        step_losses, epoch_s = run_epoch(runner, placed, order, bar, on_first_step)
        bar.close()
        runner.epoch_finished(epoch_s)  # every process: a data-parallel group gathers the timings
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(np.mean(step_losses)),
            "test_loss": None,
            "test_acc": None,
            "epoch_s": epoch_s,
            "samples_per_s": placed.n_train / epoch_s,
            "eval_s": None,
            "step_loss": step_losses,
        }
        history.append(record)
        # Checked once per epoch on the host losses the loop already has: no extra device sync.
        bad = next((i for i, v in enumerate(step_losses) if not math.isfinite(v)), None)
        if bad is not None:
            stopped = f"non-finite loss ({step_losses[bad]}) at epoch {epoch} step {bad + 1}"
            raise TrainingStopped(
                f"training stopped: {stopped} (the learning rate {config.optimizer.lr:g} may be too high)",
                receipt(stopped),
            )
        t_eval = time.perf_counter()
        record["test_loss"], record["test_acc"] = evaluate(
            runner, placed.test_images, placed.test_labels, placed.n_test, config.eval_batch
        )
        record["eval_s"] = time.perf_counter() - t_eval
        if log is not None:
            log(_epoch_line(record, config.epochs))

    return receipt()


def _timings(t_start: float, load_s: float, first_step_s: list[float]) -> dict[str, Any]:
    return {
        "total_s": time.perf_counter() - t_start,
        "load_s": load_s,
        "first_step_s": first_step_s[0] if first_step_s else None,
    }


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {record['epoch']}/{epochs}  train_loss {record['train_loss']:.4f}  "
        f"test_loss {record['test_loss']:.4f}  test_acc {100 * record['test_acc']:.2f}%  "
        f"{record['epoch_s']:.2f} s  {record['samples_per_s']:,.0f} samples/s"
    )


def assemble_receipt(
    runner: Runner,
    config: TrainConfig,
    spec: MLPSpec,
    placed: _Placed,
    history: list[dict[str, Any]],
    *,
    data_source: str,
    timings: dict[str, Any],
    stopped: str | None = None,
    threads: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready record of a run: configuration, history, timings, versions, machine.

    ``stopped`` (None for a run that finished) says why a run ended early; ``threads``
    is :func:`yat_core.threads.configure_threads`'s record of the thread pools.
    """
    opt = config.optimizer
    facts = runner.receipt_facts()
    return {
        "kind": "train",
        "backend": runner.name,
        "device": runner.device_name(),
        "params": runner.n_params(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": opt.lr,
        "weight_decay": opt.weight_decay,
        "seed": config.seed,
        "optimizer": {"name": "adamw", **opt._asdict(), "bias_correction": True, "decay_applies_to": "all parameters"},
        "dtype": config.dtype,
        "gradients": runner.gradients,
        "steps_per_call": placed.chunk,
        "n_train": placed.n_train,
        "n_test": placed.n_test,
        "steps_per_epoch": placed.steps_per_epoch,
        "model": spec_record(spec)["layers"],
        "model_name": config.model,
        "input_shape": list(spec.input_shape),
        "data": {"source": data_source, "pixel_scale": "k/255"},
        **timings,
        "final_test_acc": history[-1]["test_acc"],
        "final_test_loss": history[-1]["test_loss"],
        "history": history,
        "stopped": stopped,
        "versions": versions(*runner.distributions),
        "machine": machine_info(),
        "threads": threads,
        "git_commit": git_commit(),
        "command": command_line(),
        "config": config.as_record(),
        **facts,
    }


def _chunk_length(full_steps: int, longest: int = 64) -> int:
    """Steps per compiled chunk: the largest divisor of ``full_steps`` up to ``longest``,
    so every chunk has one shape and compiles once."""
    return max((d for d in range(1, min(full_steps, longest) + 1) if full_steps % d == 0), default=1)


def _subset(
    images: np.ndarray, labels: np.ndarray, limit: int | None, split: str, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim < 2 or len(images) != len(labels):
        raise ValueError(f"{split} images {images.shape} and labels {labels.shape} do not match")
    if len(labels) == 0:
        raise ValueError(f"the {split} split is empty")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"{split} labels span {labels.min()}..{labels.max()}, but the model has {n_classes} classes "
            f"(labels must be 0..{n_classes - 1})"
        )
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    return flat, labels.astype(np.int32)
