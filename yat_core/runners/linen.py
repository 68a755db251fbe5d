"""Trains the Flax Linen model of :mod:`yat_core.nn.linen` (``yat-core train --framework linen``)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.training.train_state import TrainState

from yat_core.mlp import ModelSpec, flatten_images, init_mlp_numpy
from yat_core.nn.linen import YatModel, count_params, params_to_tree, tree_to_params
from yat_core.nn.options import check_native_kinds
from yat_core.parallel.jax import DataParallel
from yat_core.runners._jax import FlaxRunner, batch, eval_sums, mean_loss

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = ["LinenRunner", "RUNNER_CLASS"]


@partial(jax.jit, donate_argnums=(0,), static_argnums=(4, 5))
def _train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, idx: jax.Array, dtype: Any, plan: DataParallel | None
) -> tuple[TrainState, jax.Array]:
    x, y = batch(images, labels, idx, dtype, plan)
    loss, grads = jax.value_and_grad(lambda params: mean_loss(state.apply_fn({"params": params}, x), y))(state.params)
    return state.apply_gradients(grads=grads), loss


@partial(jax.jit, static_argnums=(3,))
def _eval_step(state: TrainState, images: jax.Array, labels: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    return eval_sums(state.apply_fn({"params": state.params}, flatten_images(images, dtype, xp=jnp)), labels)


class LinenRunner(FlaxRunner):
    """Trains the :class:`~yat_core.nn.linen.YatModel` of any spec functionally: ``TrainState`` over ``optax.adamw``.

    The step runs under ``jax.jit``. Batches go in flat
    (:func:`~yat_core.mlp.flatten_images`); the model reshapes them to its input
    layout (channels last for a CNN).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.config import TrainConfig
    >>> runner = LinenRunner(seed_spec(), TrainConfig(framework="linen"))
    >>> runner.name, runner.n_params()
    ('linen', 235148)
    >>> from yat_core.spec import cnn_spec
    >>> LinenRunner(cnn_spec(), TrainConfig(model="cnn", framework="linen")).n_params()
    225037
    """

    name = framework = "linen"

    def __init__(self, spec: ModelSpec, config: TrainConfig) -> None:
        super().__init__(spec, config)
        check_native_kinds(spec, "linen")
        self.module = YatModel(spec, param_dtype=self.dtype)
        init = init_mlp_numpy(spec, config.seed, np.dtype(self.dtype))
        state = TrainState.create(apply_fn=self.module.apply, params=params_to_tree(spec, init, self.dtype), tx=self.tx)
        # The whole state (the step counter and the optimizer's too) committed to the device, as
        # the step's outputs will be: otherwise the second step compiles the step again.
        self.state = self.backend.put_tree(state)

    def n_params(self) -> int:
        return count_params(self.state.params)

    def step(self, images: jax.Array, labels: jax.Array, idx: jax.Array) -> jax.Array:
        self.state, loss = _train_step(self.state, images, labels, idx, self.dtype, self.plan)
        return loss

    def evaluate(self, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _eval_step(self.state, images, labels, self.dtype)

    def synchronize(self, tree: Any) -> None:
        # Wait for the parameter update too, so a timed epoch includes it.
        super().synchronize((self.state, tree))

    def export_params(self) -> dict[str, np.ndarray]:
        return tree_to_params(self.spec, self.state.params)

    @property
    def model(self) -> YatModel:
        """The model bound to the current parameters (as the other runners' ``model``)."""
        return self.module.bind({"params": self.state.params})


RUNNER_CLASS = LinenRunner
