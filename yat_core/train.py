"""One training loop for every backend, and the receipt it writes.

The loop owns everything that must be identical across frameworks: the initial
weights (NumPy, from the seed), the batch order (a NumPy generator seeded by
``(seed, epoch)``), the last partial batch (kept), and the evaluation (all test
images). The backend owns only the compiled step.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import numpy as np

from yat_core.backends import Backend, get_backend
from yat_core.mlp import MLPSpec, count_params, init_mlp_numpy, seed_spec
from yat_core.optim import AdamWConfig, adamw_init
from yat_core.receipts import command_line, git_commit, machine_info, versions

__all__ = ["TrainConfig", "train", "Runner", "CoreRunner", "batch_order", "evaluate", "default_backend", "DEFAULT_BACKEND_ORDER"]

#: Tried in this order when no backend is named: the fastest installed one wins.
DEFAULT_BACKEND_ORDER = ("jax", "torch", "mlx", "numpy")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; recorded in the receipt.

    Examples
    --------
    >>> TrainConfig(backend="numpy").batch_size
    128
    """

    backend: str = "jax"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    seed: int = 0
    device: str | None = None
    gradients: str | None = None  # "autodiff" or "analytic"; None: the backend's faster one
    dtype: str = "float32"
    data_dir: str | None = None
    train_limit: int | None = None  # use the first N training images (tests, quick runs)
    test_limit: int | None = None
    eval_batch: int = 2000

    def validate(self) -> None:
        """Raise :class:`ValueError` for settings no run can use."""
        for name in ("epochs", "batch_size", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {value}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        self.optimizer().validate()

    def optimizer(self) -> AdamWConfig:
        return AdamWConfig(self.lr, self.b1, self.b2, self.adam_eps, self.weight_decay)


def default_backend() -> str:
    """The first installed backend of :data:`DEFAULT_BACKEND_ORDER`."""
    from yat_core.backends import available_backends

    installed = available_backends()
    return next(name for name in DEFAULT_BACKEND_ORDER if name in installed)


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


class Runner(Protocol):
    """What the training loop drives: the core on a backend, or a framework's own model.

    ``step`` and ``evaluate`` may return device scalars; the loop converts them to
    host numbers only at the end of an epoch (or for the progress bar), so no step
    waits on the host.
    """

    name: str  # the backend or framework name recorded in the receipt
    framework: str  # distribution whose version the receipt records

    def device_name(self) -> str: ...
    def n_params(self) -> int: ...
    def put(self, a: np.ndarray) -> Any: ...
    def step(self, images: Any, labels: Any, idx: Any) -> Any: ...
    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]: ...
    def settle(self, loss: Any) -> None: ...
    def synchronize(self, tree: Any) -> None: ...
    def to_float(self, value: Any) -> float: ...


class CoreRunner:
    """The core's functional model and AdamW, compiled by one :class:`Backend`."""

    def __init__(self, backend: Backend, spec: MLPSpec, config: "TrainConfig") -> None:
        self.backend, self.spec = backend, spec
        self.name, self.framework, self.gradients = backend.name, backend.framework, backend.gradients
        init = init_mlp_numpy(spec, config.seed, np.dtype(config.dtype))
        self.params = {k: backend.asarray(v) for k, v in init.items()}
        self.opt_state = adamw_init(self.params, xp=backend.xp)
        self._config = config.optimizer()
        self._step = backend.train_step(spec, self._config)
        self._eval = backend.eval_step(spec)

    def device_name(self) -> str:
        return self.backend.device_name()

    def n_params(self) -> int:
        return count_params(self.spec)

    def put(self, a: np.ndarray) -> Any:
        return self.backend.asarray(a)

    def step(self, images: Any, labels: Any, idx: Any) -> Any:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, images, labels, idx)
        return loss

    def chunk_runner(self, batch_size: int, n_steps: int) -> Callable[[Any, Any, Any, int], Any] | None:
        """``(images, labels, order, first_step) -> losses`` running ``n_steps`` full batches
        in one call, when the backend offers it (see :meth:`Backend.train_steps`)."""
        fn = self.backend.train_steps(self.spec, self._config, batch_size, n_steps)
        if fn is None:
            return None

        def run(images: Any, labels: Any, order: Any, first: int) -> Any:
            self.params, self.opt_state, losses = fn(self.params, self.opt_state, images, labels, order, first)
            return losses

        return run

    def to_host(self, value: Any) -> np.ndarray:
        return np.asarray(self.backend.to_numpy(value))

    def export_params(self) -> dict[str, np.ndarray]:
        """The current parameters as ``{name: numpy array}``, the interchange format of :mod:`yat_core.nn`."""
        return {name: np.array(self.backend.to_numpy(value)) for name, value in self.params.items()}

    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]:
        return self._eval(self.params, images, labels)

    def settle(self, loss: Any) -> None:
        self.backend.settle((self.params, self.opt_state, loss))

    def synchronize(self, tree: Any) -> None:
        self.backend.synchronize((self.params, tree))

    def to_float(self, value: Any) -> float:
        return float(self.backend.to_numpy(value))


def evaluate(runner: Runner, images: Any, labels: Any, n: int, chunk: int) -> tuple[float, float]:
    """Mean loss and accuracy over all ``n`` examples, evaluated in chunks (none dropped)."""
    loss_sum, correct = 0.0, 0
    for start in range(0, n, chunk):
        batch_loss, batch_correct = runner.evaluate(images[start:start + chunk], labels[start:start + chunk])
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


def train(
    config: TrainConfig,
    *,
    data: Any = None,
    spec: MLPSpec | None = None,
    runner_factory: Callable[[MLPSpec, TrainConfig], Runner] | None = None,
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
    spec : MLPSpec, optional
        The model; the seed model by default.
    runner_factory : callable, optional
        ``(spec, config) -> Runner``; by default the core model on backend
        ``config.backend`` (:class:`CoreRunner`). The framework-native layers of
        :mod:`yat_core.nn` pass their own, so they share this loop, its batch order,
        evaluation and receipt.
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
    config.validate()
    spec = seed_spec() if spec is None else spec
    # The runner first: an absent framework fails before any data is fetched.
    if runner_factory is None:
        runner: Runner = CoreRunner(get_backend(config.backend, config.device, config.gradients), spec, config)
    else:
        runner = runner_factory(spec, config)
    t_load = time.perf_counter()
    if data is None:
        from yat_core.data import load_mnist

        data = load_mnist(config.data_dir, progress=progress)
    load_s = time.perf_counter() - t_load

    n_classes = spec.layers[-1].out_features
    train_x, train_y = _subset(data.train_images, data.train_labels, config.train_limit, "training", n_classes)
    test_x, test_y = _subset(data.test_images, data.test_labels, config.test_limit, "test", n_classes)
    n_train, n_test = len(train_y), len(test_y)
    images, labels = runner.put(train_x), runner.put(train_y)
    test_images, test_labels = runner.put(test_x), runner.put(test_y)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    full_steps = n_train // config.batch_size
    chunk = _chunk_length(full_steps)
    make_chunked = getattr(runner, "chunk_runner", None)
    chunked = make_chunked(config.batch_size, chunk) if make_chunked and chunk > 1 else None

    history: list[dict[str, Any]] = []
    first_step_s = None
    for epoch in range(1, config.epochs + 1):
        order = runner.put(batch_order(config.seed, epoch, n_train))
        bar = _Progress(steps_per_epoch, f"epoch {epoch}/{config.epochs}", progress)
        losses: list[Any] = []
        t0 = time.perf_counter()
        i = 0
        while i < steps_per_epoch:
            if chunked is not None and i + chunk <= full_steps:
                loss = chunked(images, labels, order, i)
                i += chunk
            else:
                loss = runner.step(images, labels, order[i * config.batch_size:(i + 1) * config.batch_size])
                i += 1
            runner.settle(loss)
            losses.append(loss)
            if first_step_s is None:
                runner.synchronize(loss)
                first_step_s = time.perf_counter() - t_start
            if i % 20 == 0 or chunked is not None or i == steps_per_epoch:
                bar.update(i, min(n_train, i * config.batch_size), lambda: _last_loss(runner, loss))
        runner.synchronize(losses)
        epoch_s = time.perf_counter() - t0
        bar.close()
        step_losses = _host_losses(runner, losses)
        t_eval = time.perf_counter()
        test_loss, test_acc = evaluate(runner, test_images, test_labels, n_test, config.eval_batch)
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(step_losses)),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_s": epoch_s,
            "samples_per_s": n_train / epoch_s,
            "eval_s": time.perf_counter() - t_eval,
            "step_loss": step_losses,
        }
        history.append(record)
        if log is not None:
            log(
                f"epoch {epoch}/{config.epochs}  train_loss {record['train_loss']:.4f}  "
                f"test_loss {test_loss:.4f}  test_acc {100 * test_acc:.2f}%  "
                f"{epoch_s:.2f} s  {record['samples_per_s']:,.0f} samples/s"
            )

    return {
        "kind": "train",
        "backend": runner.name,
        "device": runner.device_name(),
        "params": runner.n_params(),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "optimizer": {"name": "adamw", **config.optimizer()._asdict(), "bias_correction": True,
                      "decay_applies_to": "all parameters"},
        "dtype": config.dtype,
        "gradients": getattr(runner, "gradients", "autodiff"),
        "steps_per_call": chunk if chunked is not None else 1,
        "n_train": n_train,
        "n_test": n_test,
        "steps_per_epoch": steps_per_epoch,
        "model": [asdict(layer) for layer in spec.layers],
        "data": {"source": getattr(data, "source", "in-memory"), "pixel_scale": "k/255"},
        "total_s": time.perf_counter() - t_start,
        "load_s": load_s,
        "first_step_s": first_step_s,
        "final_test_acc": history[-1]["test_acc"],
        "final_test_loss": history[-1]["test_loss"],
        "history": history,
        "versions": versions(runner.framework),
        "machine": machine_info(),
        "git_commit": git_commit(),
        "command": command_line(),
        "config": asdict(config),
    }


def _chunk_length(full_steps: int, longest: int = 64) -> int:
    """Steps per compiled chunk: the largest divisor of ``full_steps`` up to ``longest``,
    so every chunk has one shape and compiles once."""
    return max((d for d in range(1, min(full_steps, longest) + 1) if full_steps % d == 0), default=1)


def _last_loss(runner: Runner, loss: Any) -> float:
    to_host = getattr(runner, "to_host", None)
    return float(np.ravel(to_host(loss))[-1]) if to_host else runner.to_float(loss)


def _host_losses(runner: Runner, losses: list[Any]) -> list[float]:
    # A chunked runner returns one array of losses per chunk; flatten to per step.
    to_host = getattr(runner, "to_host", None)
    if to_host is None:
        return [runner.to_float(v) for v in losses]
    return [float(v) for loss in losses for v in np.ravel(to_host(loss))]


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
