"""The published ``nmn`` package's layers, driven by yat-core's training loop.

The ``x nmn`` column compares a backend with the ``nmn`` layer of the same
framework in the *same* loop: the seed model's shape built from ``nmn``'s
``YatNMN`` layers and the framework's ``Linear``/``Dense``, nmn's own initialisers,
the framework's own AdamW with the recipe's hyperparameters (lr 3e-4, weight
decay 0.01, bias correction on), the same uint8 data on the device, the same batch
order and the same evaluation. Each framework's step is compiled the way the
matching yat-core backend compiles its own (``jax.jit`` for Flax Linen,
``mx.compile`` for MLX, eager PyTorch), so the comparison is layer against layer.

``nmn`` is an optional extra: :func:`make_nmn_runner` raises :class:`NmnUnavailable`
when it is not installed, and the benchmarks then report "n/a".
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from yat_core.config import TrainConfig
from yat_core.mlp import MLPSpec
from yat_core.runners import BaseRunner

__all__ = ["NmnUnavailable", "NMN_MODULES", "make_nmn_runner", "nmn_version"]

#: The nmn module that matches each yat-core backend (NumPy has none).
NMN_MODULES = {"torch": "nmn.torch", "jax": "nmn.linen", "mlx": "nmn.mlx"}


class NmnUnavailable(RuntimeError):
    """``nmn`` (or its layer for this framework) cannot be used here."""


def nmn_version() -> str | None:
    """The installed ``nmn`` version, or None."""
    import importlib.metadata as md

    try:
        return md.version("nmn")
    except md.PackageNotFoundError:
        return None


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NmnUnavailable(f"{module} cannot be imported: {exc}") from None


def _hidden_sizes(spec: MLPSpec) -> tuple[int, int, int, int]:
    # nmn's example model is Yat -> Yat -> Linear; only that shape has an nmn twin.
    kinds = [layer.kind for layer in spec.layers]
    if kinds != ["yat", "yat", "linear"]:
        raise NmnUnavailable(f"nmn comparison needs the seed model's layer kinds, got {kinds}")
    a, b, c = spec.layers
    return a.in_features, a.out_features, b.out_features, c.out_features


class NmnTorchRunner(BaseRunner):
    """``nmn.torch.YatNMN`` layers with ``torch.optim.AdamW``, eager."""

    name = "nmn.torch"
    framework = "nmn"
    distributions: tuple[str, ...] = ("nmn",)

    def __init__(self, spec: MLPSpec, config: TrainConfig) -> None:
        import torch

        YatNMN = _import("nmn.torch").YatNMN
        n_in, h1, h2, n_out = _hidden_sizes(spec)
        self.torch, self.F = torch, torch.nn.functional
        self.device = torch.device(config.device or "cpu")
        torch.manual_seed(config.seed)
        self.model = torch.nn.Sequential(YatNMN(n_in, h1), YatNMN(h1, h2), torch.nn.Linear(h2, n_out)).to(self.device)
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.optimizer.lr,
            betas=(config.optimizer.b1, config.optimizer.b2),
            eps=config.optimizer.eps,
            weight_decay=config.optimizer.weight_decay,
        )

    def device_name(self) -> str:
        return str(self.device)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def put(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    def step(self, images: Any, labels: Any, idx: Any) -> Any:
        idx = idx.long()
        x = images[idx].float() / 255.0
        loss = self.F.cross_entropy(self.model(x), labels[idx].long())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]:
        with self.torch.no_grad():
            logits = self.model(images.float() / 255.0)
            loss = self.F.cross_entropy(logits, labels.long(), reduction="sum")
            return loss, (logits.argmax(dim=1) == labels.long()).sum()

    def synchronize(self, tree: Any) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


class NmnLinenRunner(BaseRunner):
    """``nmn.linen.YatNMN`` layers with ``optax.adamw``, the whole step under ``jax.jit``."""

    name = "nmn.linen"
    framework = "nmn"
    distributions: tuple[str, ...] = ("nmn",)

    def __init__(self, spec: MLPSpec, config: TrainConfig) -> None:
        import jax
        import jax.numpy as jnp

        YatNMN = _import("nmn.linen").YatNMN
        nn, optax = _import("flax.linen"), _import("optax")
        n_in, h1, h2, n_out = _hidden_sizes(spec)

        class SeedModel(nn.Module):
            @nn.compact
            def __call__(self, x: Any) -> Any:
                x = YatNMN(features=h1)(x)
                x = YatNMN(features=h2)(x)
                return nn.Dense(n_out)(x)

        self.jax = jax
        platform = "gpu" if (config.device or "cpu").startswith(("cuda", "gpu")) else "cpu"
        self.device = jax.devices(platform)[0]
        model = SeedModel()
        tx = optax.adamw(
            config.optimizer.lr,
            b1=config.optimizer.b1,
            b2=config.optimizer.b2,
            eps=config.optimizer.eps,
            weight_decay=config.optimizer.weight_decay,
        )
        self.params = jax.device_put(model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, n_in))), self.device)
        self.opt_state = jax.device_put(tx.init(self.params), self.device)

        def loss_fn(params: Any, x: Any, y: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

        def step(params: Any, opt_state: Any, images: Any, labels: Any, idx: Any) -> Any:
            x = jnp.take(images, idx, axis=0).astype(jnp.float32) / 255.0
            loss, grads = jax.value_and_grad(loss_fn)(params, x, jnp.take(labels, idx, axis=0))
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        def evaluate(params: Any, images: Any, labels: Any) -> Any:
            logits = model.apply(params, images.astype(jnp.float32) / 255.0)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
            return loss, (jnp.argmax(logits, axis=1) == labels).sum()

        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._eval = jax.jit(evaluate)

    def device_name(self) -> str:
        return f"{self.device.platform}:{self.device.id}"

    def n_params(self) -> int:
        return int(sum(p.size for p in self.jax.tree_util.tree_leaves(self.params)))

    def put(self, a: np.ndarray) -> Any:
        return self.jax.device_put(a, self.device)

    def step(self, images: Any, labels: Any, idx: Any) -> Any:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, images, labels, idx)
        return loss

    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]:
        return self._eval(self.params, images, labels)

    def synchronize(self, tree: Any) -> None:
        self.jax.block_until_ready((self.params, tree))


class NmnMlxRunner(BaseRunner):
    """``nmn.mlx.YatNMN`` layers with ``mlx.optimizers.AdamW``, the step under ``mx.compile``."""

    name = "nmn.mlx"
    framework = "nmn"
    distributions: tuple[str, ...] = ("nmn",)

    def __init__(self, spec: MLPSpec, config: TrainConfig) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim

        YatNMN = _import("nmn.mlx").YatNMN
        n_in, h1, h2, n_out = _hidden_sizes(spec)
        self.mx = mx
        self.device = mx.gpu if (config.device or "cpu") in ("gpu", "cuda", "metal") else mx.cpu
        mx.set_default_device(self.device)
        mx.random.seed(config.seed)
        layers = [YatNMN(features=h1), YatNMN(features=h2), nn.Linear(h2, n_out)]
        self.model = nn.Sequential(*layers)
        # nmn's MLX layer allocates its weights on the first call: build before compiling.
        self.model(mx.zeros((1, n_in)))
        self.optimizer = optim.AdamW(
            learning_rate=config.optimizer.lr,
            betas=[config.optimizer.b1, config.optimizer.b2],
            eps=config.optimizer.eps,
            weight_decay=config.optimizer.weight_decay,
            bias_correction=True,
        )
        self.optimizer.init(self.model.trainable_parameters())
        self.state = [self.model.state, self.optimizer.state]
        self._step = self._compiled_step(nn)
        self._eval = mx.compile(self._evaluate, inputs=self.model.state)

    def _compiled_step(self, nn: Any) -> Callable[..., Any]:
        mx, model, optimizer = self.mx, self.model, self.optimizer

        def loss_fn(x: Any, y: Any) -> Any:
            return mx.mean(nn.losses.cross_entropy(model(x), y))

        loss_and_grad = nn.value_and_grad(model, loss_fn)

        # Model and optimizer state are captured as implicit inputs and outputs, as
        # MLX documents for compiling a training step.
        @functools.partial(mx.compile, inputs=self.state, outputs=self.state)
        def step(images: Any, labels: Any, idx: Any) -> Any:
            x = mx.take(images, idx, axis=0).astype(mx.float32) / 255.0
            loss, grads = loss_and_grad(x, mx.take(labels, idx, axis=0))
            optimizer.update(model, grads)
            return loss

        return step

    def _evaluate(self, images: Any, labels: Any) -> Any:
        import mlx.nn as nn

        mx = self.mx
        logits = self.model(images.astype(mx.float32) / 255.0)
        loss = mx.sum(nn.losses.cross_entropy(logits, labels))
        return loss, mx.sum(mx.argmax(logits, axis=1) == labels)

    def device_name(self) -> str:
        return f"mlx:{str(self.device).rsplit('.', 1)[-1]}"

    def n_params(self) -> int:
        from mlx.utils import tree_flatten

        return int(sum(v.size for _, v in tree_flatten(self.model.trainable_parameters())))

    def put(self, a: np.ndarray) -> Any:
        return self.mx.array(np.ascontiguousarray(a))

    def step(self, images: Any, labels: Any, idx: Any) -> Any:
        return self._step(images, labels, idx)

    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]:
        return self._eval(images, labels)

    def settle(self, loss: Any) -> None:
        # MLX is lazy: evaluate every step, or one graph grows across the epoch.
        self.mx.eval(self.state, loss)

    def synchronize(self, tree: Any) -> None:
        self.mx.eval(self.state, tree)


_RUNNERS = {"torch": NmnTorchRunner, "jax": NmnLinenRunner, "mlx": NmnMlxRunner}


def make_nmn_runner(backend: str) -> Callable[[MLPSpec, TrainConfig], Any]:
    """A ``runner_factory`` for :func:`yat_core.train.train` with nmn's layer of ``backend``'s framework.

    Raises
    ------
    NmnUnavailable
        When ``nmn`` is not installed or has no layer for this framework.
    """
    if backend not in _RUNNERS:
        raise NmnUnavailable(f"nmn has no layer for the {backend} backend")
    if nmn_version() is None:
        raise NmnUnavailable("nmn is not installed (pip install nmn)")
    _import(NMN_MODULES[backend])
    return _RUNNERS[backend]
