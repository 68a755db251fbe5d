"""The core's functional model and AdamW, compiled by one backend (``yat-core train --backend``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from yat_core.backends import Backend
from yat_core.mlp import MLPSpec, count_params, init_mlp_numpy
from yat_core.optim import adamw_init
from yat_core.runners._base import BackendRunner, ChunkRunner

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = ["CoreRunner"]


class CoreRunner(BackendRunner):
    """The core's model on a :class:`~yat_core.backends.Backend`, from :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.backends import get_backend
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.config import TrainConfig
    >>> runner = CoreRunner(get_backend("numpy"), seed_spec(), TrainConfig(backend="numpy"))
    >>> runner.name, runner.gradients, runner.n_params()
    ('numpy', 'analytic', 235148)
    """

    def __init__(self, backend: Backend, spec: MLPSpec, config: TrainConfig) -> None:
        self.backend, self.spec = backend, spec
        self.name, self.gradients = backend.name, backend.gradients
        self.distributions = (backend.framework,)
        init = init_mlp_numpy(spec, config.seed, np.dtype(config.dtype))
        self.params = {k: backend.asarray(v) for k, v in init.items()}
        self.opt_state = adamw_init(self.params, xp=backend.xp)
        self._optimizer = config.optimizer
        # Several processes (torchrun): each computes its part's gradient, all-reduced before the update.
        # A JAX mesh needs no such split: its compiled step all-reduces on the devices.
        group = self.parallel = backend.data_parallel()
        split = group.train_step if group is not None and group.host_collectives else None
        self._step = backend.train_step(spec, self._optimizer, split=split)
        self._eval = backend.eval_step(spec)

    def n_params(self) -> int:
        return count_params(self.spec)

    def step(self, images: Any, labels: Any, idx: Any) -> Any:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, images, labels, idx)
        return loss

    def chunk_runner(self, batch_size: int, n_steps: int) -> ChunkRunner | None:
        """``n_steps`` full batches in one call, when the backend offers it (:meth:`Backend.train_steps`),
        unless the batches' gradients are all-reduced on the host, one step at a time (torchrun)."""
        if self.parallel is not None and self.parallel.host_collectives:
            return None
        fn = self.backend.train_steps(self.spec, self._optimizer, batch_size, n_steps)
        if fn is None:
            return None

        def run(images: Any, labels: Any, order: Any, first: int) -> Any:
            self.params, self.opt_state, losses = fn(self.params, self.opt_state, images, labels, order, first)
            return losses

        return run

    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]:
        return self._eval(self.params, images, labels)

    def settle(self, loss: Any) -> None:
        self.backend.settle((self.params, self.opt_state, loss))

    def synchronize(self, tree: Any) -> None:
        self.backend.synchronize((self.params, tree))

    def export_params(self) -> dict[str, np.ndarray]:
        """The current parameters as ``{name: numpy array}``, the interchange format of :mod:`yat_core.nn`."""
        return {name: np.array(self.backend.to_numpy(value)) for name, value in self.params.items()}
