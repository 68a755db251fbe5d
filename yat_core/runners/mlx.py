"""MLX's native model of any spec trained by ``mlx.optimizers.AdamW`` (``yat-core train --framework mlx``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from yat_core.backends.mlx import MLXBackend, check_dtype
from yat_core.mlp import ModelSpec, flatten_images
from yat_core.namespaces.mlx import namespace
from yat_core.nn.mlx import YatModel, build_model, count_params, export_params
from yat_core.runners._base import BackendRunner

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = ["MLXRunner", "RUNNER_CLASS"]


class MLXRunner(BackendRunner):
    """Trains the :class:`~yat_core.nn.mlx.YatModel` of any spec with ``mlx.optimizers.AdamW``, the step under
    ``mx.compile``.

    AdamW runs with ``bias_correction=True`` (MLX's default is False) so that it is
    the core's AdamW; the model and optimizer state are declared as the compiled
    step's inputs and outputs. Device and dtype are the MLX backend's: it makes the
    device MLX's default, and its :func:`~yat_core.backends.mlx.check_dtype` refuses
    float64, which MLX does not compute to float64 accuracy. The uint8 images become flat floats in [0, 1]
    (:func:`~yat_core.mlp.flatten_images`), which the model reads in the core's order
    and reshapes to its channels-last input (``(n, 28, 28, 1)`` for the CNN).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.config import TrainConfig
    >>> runner = MLXRunner(seed_spec(), TrainConfig(framework="mlx", device="cpu"))
    >>> runner.name, runner.distributions, runner.n_params()
    ('mlx', ('mlx',), 235148)
    >>> from yat_core.spec import cnn_spec
    >>> MLXRunner(cnn_spec(), TrainConfig(model="cnn", framework="mlx", device="cpu")).n_params()
    225037
    >>> MLXRunner(seed_spec(), TrainConfig(framework="mlx", dtype="float64"))
    Traceback (most recent call last):
    ...
    yat_core.errors.BackendUnavailableError: --dtype float64 is not available on MLX: its float64 exp is only float32-accurate, so the loss would not be computed in float64; use --dtype float32, or the numpy or torch backend for float64
    """

    name = "mlx"
    framework = "mlx"
    distributions = ("mlx",)

    def __init__(self, spec: ModelSpec, config: TrainConfig) -> None:
        # The backend's own dtype check, first: --backend mlx and --framework mlx refuse float64 alike.
        check_dtype(config.dtype, "--dtype")
        self.spec = spec
        self.backend = MLXBackend(config.device)  # also makes its device MLX's default
        self.dtype = getattr(mx, config.dtype)
        self.model = build_model(spec, config.seed, dtype=self.dtype)
        opt = config.optimizer
        # MLX's AdamW decays every parameter it updates: all of them, as the core does.
        self.optimizer = optim.AdamW(
            learning_rate=opt.lr,
            betas=[opt.b1, opt.b2],
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            bias_correction=True,
        )
        # Create the moments now so the compiled step sees the full state from its first call.
        self.optimizer.init(self.model.trainable_parameters())
        self.state = [self.model.state, self.optimizer.state]
        mx.eval(self.state)
        self._step = mx.compile(self._train_step, inputs=self.state, outputs=self.state)
        self._eval = mx.compile(self._eval_step, inputs=self.state)

    def _loss(self, model: YatModel, x: mx.array, y: mx.array) -> mx.array:
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    def _train_step(self, images: mx.array, labels: mx.array, idx: mx.array) -> mx.array:
        x = flatten_images(mx.take(images, idx, axis=0), self.dtype, xp=namespace())
        y = mx.take(labels, idx, axis=0)
        loss, grads = nn.value_and_grad(self.model, self._loss)(self.model, x, y)
        self.optimizer.update(self.model, grads)
        return loss

    def _eval_step(self, images: mx.array, labels: mx.array) -> tuple[mx.array, mx.array]:
        logits = self.model(flatten_images(images, self.dtype, xp=namespace()))
        loss_sum = nn.losses.cross_entropy(logits, labels, reduction="sum")
        return loss_sum, mx.sum(mx.argmax(logits, axis=-1) == labels)

    def n_params(self) -> int:
        return count_params(self.model)

    def step(self, images: mx.array, labels: mx.array, idx: mx.array) -> mx.array:
        return self._step(images, labels, idx)

    def evaluate(self, images: mx.array, labels: mx.array) -> tuple[mx.array, mx.array]:
        return self._eval(images, labels)

    def settle(self, loss: Any) -> None:
        # MLX is lazy: run the step now, or one graph would grow across the epoch.
        mx.eval(loss, self.state)

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


RUNNER_CLASS = MLXRunner
