"""The published ``nmn`` package's layers, driven by yat-core's training loop.

The ``x nmn`` column compares a backend with the ``nmn`` layers of the same
framework in the *same* loop: the model's shape (the seed MLP or the Yat CNN) built
from ``nmn``'s ``YatNMN`` and ``YatConv{1,2,3}D`` layers and the framework's own
``Linear``/``Dense``, pooling and flatten, nmn's own initialisers, the framework's
own AdamW with the recipe's hyperparameters (the model's learning rate: 3e-4 for
the MLP, 1e-3 for the CNN; weight decay 0.01, bias correction on), the same uint8
data on the device, the same batch order and the same evaluation. PyTorch takes
channels-first images ``(n, 1, 28, 28)``, Flax Linen and MLX channels-last
``(n, 28, 28, 1)``, as each framework's convolutions do. Each framework's step is compiled the way the
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
from yat_core.spec import LayerSpec

__all__ = ["NmnUnavailable", "NMN_MODULES", "SUPPORTED_KINDS", "make_nmn_runner", "nmn_layers", "nmn_version"]

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


#: Layer kinds nmn has a twin for: its Yat layers, and the framework's own for the rest.
SUPPORTED_KINDS = ("yat", "yat_conv", "linear", "max_pool", "avg_pool", "flatten")


def nmn_layers(spec: MLPSpec) -> tuple[LayerSpec, ...]:
    """The layers of ``spec``, checked to have an nmn twin; raises :class:`NmnUnavailable` otherwise.

    Yat layers become nmn's (``YatNMN``, ``YatConv{1,2,3}D``) with nmn's own defaults and
    initialisers; linear layers, pooling and flatten are the framework's own. Only the
    options every framework of nmn shares are mapped: the default learnable bias and
    alpha, a constant epsilon, and a convolution's stride, padding, dilation and groups.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> [layer.kind for layer in nmn_layers(cnn_spec())]
    ['yat_conv', 'max_pool', 'yat_conv', 'max_pool', 'flatten', 'yat', 'linear']
    >>> len(nmn_layers(seed_spec()))
    3
    """
    for i, layer in enumerate(spec.layers):
        if layer.kind not in SUPPORTED_KINDS:
            raise NmnUnavailable(
                f"nmn comparison: layer {i} is a {layer.kind!r} layer, which nmn's models do not build"
            )
        if layer.kind in ("yat", "yat_conv"):
            custom = [
                name
                for name, value, default in (
                    ("bias", layer.bias, "learnable"),
                    ("alpha", layer.alpha, "learnable"),
                    ("learnable_epsilon", layer.learnable_epsilon, False),
                    ("spherical", layer.spherical, False),
                )
                if value != default
            ]
            if custom:
                raise NmnUnavailable(f"nmn comparison: layer {i} sets {', '.join(custom)}; only nmn's defaults map")
        if layer.kind != "flatten" and layer.kernel_size and not 1 <= len(layer.kernel_size) <= 3:
            raise NmnUnavailable(f"nmn comparison: layer {i} has {len(layer.kernel_size)} spatial dimensions")
    return spec.layers


def channels_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A channels-first sample shape in the channels-last layout of Flax and MLX.

    Examples
    --------
    >>> channels_last((1, 28, 28)), channels_last((784,))
    ((28, 28, 1), (784,))
    """
    return shape if len(shape) == 1 else (*shape[1:], shape[0])


def _conv_geometry(layer: LayerSpec) -> tuple[tuple[int, ...], Any, tuple[int, ...], int]:
    """``(stride, padding, dilation, groups)`` of a Yat convolution; padding as ints or "valid"/"same"."""
    o = layer.conv_options
    return tuple(o["stride"]), o["padding"], tuple(o["dilation"]), int(o["groups"])


class NmnTorchRunner(BaseRunner):
    """``nmn.torch.YatNMN`` / ``YatConv{n}D`` layers with ``torch.optim.AdamW``, eager."""

    name = "nmn.torch"
    framework = "nmn"
    distributions: tuple[str, ...] = ("nmn",)

    def __init__(self, spec: MLPSpec, config: TrainConfig) -> None:
        import torch

        layers = nmn_layers(spec)
        self.torch, self.F = torch, torch.nn.functional
        self.input_shape = spec.input_shape
        self.device = torch.device(config.device or "cpu")
        torch.manual_seed(config.seed)
        nmn = _import("nmn.torch")
        self.model = torch.nn.Sequential(*(m for layer in layers for m in _torch_modules(torch.nn, nmn, layer)))
        self.model.to(self.device)
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

    def _input(self, images: Any) -> Any:
        return (images.float() / 255.0).reshape(images.shape[0], *self.input_shape)

    def step(self, images: Any, labels: Any, idx: Any) -> Any:
        idx = idx.long()
        loss = self.F.cross_entropy(self.model(self._input(images[idx])), labels[idx].long())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]:
        with self.torch.no_grad():
            logits = self.model(self._input(images))
            loss = self.F.cross_entropy(logits, labels.long(), reduction="sum")
            return loss, (logits.argmax(dim=1) == labels.long()).sum()

    def synchronize(self, tree: Any) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def to_numpy(self, value: Any) -> np.ndarray:
        return value.detach().cpu().numpy()  # np.asarray cannot read a CUDA tensor


def _torch_modules(nn: Any, nmn: Any, layer: LayerSpec) -> list[Any]:
    """The PyTorch modules of one layer: nmn's for Yat layers, ``torch.nn``'s for the rest."""
    n = len(layer.kernel_size)
    if layer.kind == "yat":
        return [nmn.YatNMN(layer.in_features, layer.out_features, epsilon=layer.epsilon)]
    if layer.kind == "yat_conv":
        stride, padding, dilation, groups = _conv_geometry(layer)
        conv = getattr(nmn, f"YatConv{n}D")
        return [
            conv(
                layer.in_features,
                layer.out_features,
                layer.kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                epsilon=layer.epsilon,
            )
        ]
    if layer.kind in ("max_pool", "avg_pool"):
        pool = getattr(nn, f"{'Max' if layer.kind == 'max_pool' else 'Avg'}Pool{n}d")
        return [pool(layer.kernel_size)]
    if layer.kind == "flatten":
        return [nn.Flatten()]
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias == "learnable")
    return [linear, nn.ReLU()] if layer.activation == "relu" else [linear]


class NmnLinenRunner(BaseRunner):
    """``nmn.linen.YatNMN`` / ``YatConv{n}D`` layers with ``optax.adamw``, the whole step under ``jax.jit``."""

    name = "nmn.linen"
    framework = "nmn"
    distributions: tuple[str, ...] = ("nmn",)

    def __init__(self, spec: MLPSpec, config: TrainConfig) -> None:
        import jax
        import jax.numpy as jnp

        layers = nmn_layers(spec)
        nmn = _import("nmn.linen")
        nn, optax = _import("flax.linen"), _import("optax")
        shape = channels_last(spec.input_shape)

        class NmnModel(nn.Module):
            @nn.compact
            def __call__(self, x: Any) -> Any:
                for layer in layers:
                    x = _linen_apply(nn, nmn, layer, x)
                return x

        def inputs(images: Any) -> Any:
            return (images.astype(jnp.float32) / 255.0).reshape(images.shape[0], *shape)

        self.jax = jax
        platform = "gpu" if (config.device or "cpu").startswith(("cuda", "gpu")) else "cpu"
        self.device = jax.devices(platform)[0]
        model = NmnModel()
        tx = optax.adamw(
            config.optimizer.lr,
            b1=config.optimizer.b1,
            b2=config.optimizer.b2,
            eps=config.optimizer.eps,
            weight_decay=config.optimizer.weight_decay,
        )
        self.params = jax.device_put(model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, *shape))), self.device)
        self.opt_state = jax.device_put(tx.init(self.params), self.device)

        def loss_fn(params: Any, x: Any, y: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

        def step(params: Any, opt_state: Any, images: Any, labels: Any, idx: Any) -> Any:
            x = inputs(jnp.take(images, idx, axis=0))
            loss, grads = jax.value_and_grad(loss_fn)(params, x, jnp.take(labels, idx, axis=0))
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        def evaluate(params: Any, images: Any, labels: Any) -> Any:
            logits = model.apply(params, inputs(images))
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


def _linen_apply(nn: Any, nmn: Any, layer: LayerSpec, x: Any) -> Any:
    """One layer of the Linen model (inside ``nn.compact``): nmn's for Yat layers, Flax's for the rest."""
    n = len(layer.kernel_size)
    if layer.kind == "yat":
        return nmn.YatNMN(features=layer.out_features, epsilon=layer.epsilon)(x)
    if layer.kind == "yat_conv":
        stride, padding, dilation, groups = _conv_geometry(layer)
        pad = padding.upper() if isinstance(padding, str) else [(p, p) for p in padding]
        conv = getattr(nmn, f"YatConv{n}D")
        return conv(
            features=layer.out_features,
            kernel_size=layer.kernel_size,
            strides=stride,
            padding=pad,
            kernel_dilation=dilation,
            feature_group_count=groups,
            epsilon=layer.epsilon,
        )(x)
    if layer.kind in ("max_pool", "avg_pool"):
        pool = nn.max_pool if layer.kind == "max_pool" else nn.avg_pool
        return pool(x, layer.kernel_size, strides=layer.kernel_size)
    if layer.kind == "flatten":
        return x.reshape(x.shape[0], -1)
    x = nn.Dense(layer.out_features, use_bias=layer.bias == "learnable")(x)
    return nn.relu(x) if layer.activation == "relu" else x


class NmnMlxRunner(BaseRunner):
    """``nmn.mlx.YatNMN`` / ``YatConv{n}D`` layers with ``mlx.optimizers.AdamW``, the step under ``mx.compile``."""

    name = "nmn.mlx"
    framework = "nmn"
    distributions: tuple[str, ...] = ("nmn",)

    def __init__(self, spec: MLPSpec, config: TrainConfig) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim

        layers = nmn_layers(spec)
        nmn = _import("nmn.mlx")
        self.mx = mx
        self.shape = channels_last(spec.input_shape)
        self.device = mx.gpu if (config.device or "cpu") in ("gpu", "cuda", "metal") else mx.cpu
        mx.set_default_device(self.device)
        mx.random.seed(config.seed)
        self.model = nn.Sequential(*(m for layer in layers for m in _mlx_modules(nn, nmn, layer)))
        # nmn's MLX layers allocate their weights on the first call: build before compiling.
        self.model(mx.zeros((1, *self.shape)))
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

        inputs = self._input

        def loss_fn(x: Any, y: Any) -> Any:
            return mx.mean(nn.losses.cross_entropy(model(x), y))

        loss_and_grad = nn.value_and_grad(model, loss_fn)

        # Model and optimizer state are captured as implicit inputs and outputs, as
        # MLX documents for compiling a training step.
        @functools.partial(mx.compile, inputs=self.state, outputs=self.state)
        def step(images: Any, labels: Any, idx: Any) -> Any:
            x = inputs(mx.take(images, idx, axis=0))
            loss, grads = loss_and_grad(x, mx.take(labels, idx, axis=0))
            optimizer.update(model, grads)
            return loss

        return step

    def _evaluate(self, images: Any, labels: Any) -> Any:
        import mlx.nn as nn

        mx = self.mx
        logits = self.model(self._input(images))
        loss = mx.sum(nn.losses.cross_entropy(logits, labels))
        return loss, mx.sum(mx.argmax(logits, axis=1) == labels)

    def _input(self, images: Any) -> Any:
        mx = self.mx
        return mx.reshape(images.astype(mx.float32) / 255.0, (images.shape[0], *self.shape))

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


def _mlx_modules(nn: Any, nmn: Any, layer: LayerSpec) -> list[Any]:
    """The MLX modules of one layer: nmn's for Yat layers, ``mlx.nn``'s for the rest."""
    n = len(layer.kernel_size)
    if layer.kind == "yat":
        return [nmn.YatNMN(features=layer.out_features, epsilon=layer.epsilon)]
    if layer.kind == "yat_conv":
        stride, padding, dilation, groups = _conv_geometry(layer)
        conv = getattr(nmn, f"YatConv{n}D")
        return [
            conv(
                filters=layer.out_features,
                kernel_size=layer.kernel_size,
                strides=stride,
                padding=padding,
                dilation_rate=dilation,
                groups=groups,
                epsilon=layer.epsilon,
            )
        ]
    if layer.kind in ("max_pool", "avg_pool"):
        pool = getattr(nn, f"{'Max' if layer.kind == 'max_pool' else 'Avg'}Pool{n}d")
        return [pool(layer.kernel_size, stride=layer.kernel_size)]
    if layer.kind == "flatten":
        return [_mlx_flatten(nn)]
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias == "learnable")
    return [linear, nn.ReLU()] if layer.activation == "relu" else [linear]


def _mlx_flatten(nn: Any) -> Any:
    """``(n, *rest) -> (n, prod(rest))`` as a parameterless module (``mlx.nn`` has no ``Flatten``)."""

    class Flatten(nn.Module):
        def __call__(self, x: Any) -> Any:
            return x.reshape(x.shape[0], -1)

    return Flatten()


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
