"""What the Flax runners share: device and dtype, ``optax.adamw``, and the step's and evaluation's arithmetic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from yat_core.backends.jax import JaxBackend, check_dtype
from yat_core.mlp import ModelSpec, flatten_images
from yat_core.parallel.jax import DataParallel
from yat_core.runners._base import BackendRunner

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = ["FlaxRunner", "jax_dtype", "batch", "mean_loss", "eval_sums"]


def jax_dtype(name: str) -> Any:
    """The JAX dtype of ``TrainConfig.dtype``; float64 needs JAX's 64-bit mode.

    Examples
    --------
    >>> jax_dtype("float32")
    dtype('float32')
    """
    check_dtype(name, "--dtype")
    return jnp.dtype(name)


def batch(
    images: jax.Array, labels: jax.Array, idx: jax.Array, dtype: Any, plan: DataParallel | None = None
) -> tuple[jax.Array, jax.Array]:
    """The training batch ``idx``: flattened float inputs (the model reshapes them) and their labels.

    With a data-parallel ``plan`` the batch is split over its devices (the step must be jitted).
    """
    x = flatten_images(jnp.take(images, idx, axis=0), dtype, xp=jnp)
    y = jnp.take(labels, idx, axis=0)
    return (x, y) if plan is None else (plan.shard_batch(x), plan.shard_batch(y))


def mean_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The training loss: mean softmax cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def eval_sums(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed cross-entropy and the number of correct predictions of one evaluation chunk."""
    loss_sum = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    return loss_sum, jnp.sum(jnp.argmax(logits, axis=-1) == labels)


class FlaxRunner(BackendRunner):
    """A Flax model's runner: the device of :class:`~yat_core.backends.jax.JaxBackend`, ``optax.adamw``.

    Subclasses build the model and its optimizer state from :attr:`tx` and implement
    ``n_params``, ``step``, ``evaluate`` and ``export_params``.
    """

    distributions = ("flax", "jax", "jaxlib", "optax")
    backend: JaxBackend

    def __init__(self, spec: ModelSpec, config: TrainConfig) -> None:
        self.spec = spec
        self.backend = JaxBackend(config.device)
        self.plan = self.parallel = self.backend.plan  # data parallel: yat_core.parallel.jax
        self.dtype = jax_dtype(config.dtype)
        opt = config.optimizer
        # optax.adamw decays every parameter when no mask is given, as the core does.
        self.tx = optax.adamw(opt.lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
