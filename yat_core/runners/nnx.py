"""Trains the Flax NNX model of :mod:`yat_core.nn.nnx` (``yat-core train --framework nnx``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yat_core.mlp import ModelSpec, flatten_images
from yat_core.nn.nnx import YatModel, build_model, count_params, export_params
from yat_core.parallel.jax import DataParallel
from yat_core.runners._jax import FlaxRunner, batch, eval_sums, mean_loss

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = ["NNXRunner", "RUNNER_CLASS"]


@nnx.jit(donate_argnums=(0, 1), static_argnums=(5, 6))
def _train_step(
    model: YatModel,
    optimizer: nnx.Optimizer,
    images: jax.Array,
    labels: jax.Array,
    idx: jax.Array,
    dtype: Any,
    plan: DataParallel | None,
) -> jax.Array:
    x, y = batch(images, labels, idx, dtype, plan)
    loss, grads = nnx.value_and_grad(lambda m: mean_loss(m(x), y))(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit(static_argnums=(3,))
def _eval_step(model: YatModel, images: jax.Array, labels: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    return eval_sums(model(flatten_images(images, dtype, xp=jnp)), labels)


class NNXRunner(FlaxRunner):
    """Trains the :class:`~yat_core.nn.nnx.YatModel` of any spec with ``nnx.Optimizer(optax.adamw)``, the step under ``nnx.jit``.

    Batches go in flat (:func:`~yat_core.mlp.flatten_images`); the model reshapes
    them to its input layout (channels last for a CNN).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.config import TrainConfig
    >>> runner = NNXRunner(seed_spec(), TrainConfig(framework="nnx"))
    >>> runner.name, runner.n_params()
    ('nnx', 235148)
    >>> from yat_core.spec import cnn_spec
    >>> NNXRunner(cnn_spec(), TrainConfig(model="cnn", framework="nnx")).n_params()
    225037
    """

    name = framework = "nnx"

    def __init__(self, spec: ModelSpec, config: TrainConfig) -> None:
        super().__init__(spec, config)
        with jax.default_device(self.backend.jax_device):
            self.model = build_model(spec, config.seed, param_dtype=self.dtype)
            self.optimizer = nnx.Optimizer(self.model, self.tx, wrt=nnx.Param)
        for module in (self.model, self.optimizer):
            nnx.update(module, self.backend.put_tree(nnx.state(module)))

    def n_params(self) -> int:
        return count_params(self.model)

    def step(self, images: jax.Array, labels: jax.Array, idx: jax.Array) -> jax.Array:
        return _train_step(self.model, self.optimizer, images, labels, idx, self.dtype, self.plan)

    def evaluate(self, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _eval_step(self.model, images, labels, self.dtype)

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


RUNNER_CLASS = NNXRunner
