"""What every backend provides, and the train / eval steps built from it.

A backend supplies the namespace, host <-> device transfer, gradients and
compilation. The steps themselves (forward, loss, AdamW) are the core's, written
once; :meth:`Backend.train_step` only wires them together and hands the result to
the framework's compiler.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

from yat_core.losses import count_correct, softmax_cross_entropy
from yat_core.mlp import MLPSpec, flatten_images, mlp_forward, mlp_loss
from yat_core.optim import AdamWConfig, AdamWState, adamw_update

__all__ = ["Backend", "TrainStep", "EvalStep"]

Params = dict[str, Any]
#: (params, opt_state, images, labels, batch_indices) -> (params, opt_state, loss)
TrainStep = Callable[[Params, AdamWState, Any, Any, Any], tuple[Params, AdamWState, Any]]
#: (params, images, labels) -> (summed loss, number correct)
EvalStep = Callable[[Params, Any, Any], tuple[Any, Any]]


class Backend:
    """Base class of the framework shims.

    Subclasses set :attr:`name`, :attr:`framework` and :attr:`xp`, and implement
    :meth:`value_and_grad` and, where the framework compiles, :meth:`compile`.
    """

    name: str = ""
    framework: str = ""
    xp: Any = None

    def __init__(self, device: str | None = None) -> None:
        self.device = device

    # -- framework facts ----------------------------------------------------
    def device_name(self) -> str:
        """The device in use, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return "cpu"

    def framework_version(self) -> str:
        import importlib.metadata as md

        return md.version(self.framework)

    # -- data movement --------------------------------------------------------
    def asarray(self, a: np.ndarray) -> Any:
        """Copy a NumPy array onto this backend's device, keeping its dtype."""
        return self.xp.asarray(a)

    def to_numpy(self, a: Any) -> np.ndarray:
        """Copy an array of this backend to the host."""
        return np.asarray(a)

    def synchronize(self, tree: Any = None) -> None:
        """Block until the work that produces ``tree`` has finished."""

    def settle(self, tree: Any) -> None:
        """Called after every step: run work a lazy framework has only recorded so far.

        Eager and asynchronously dispatching frameworks need nothing here; MLX would
        otherwise grow one graph across the whole epoch.
        """

    # -- autodiff and compilation -------------------------------------------------
    def value_and_grad(self, fn: Callable[..., Any]) -> Callable[..., tuple[Any, Params]]:
        """``fn(params, *args) -> scalar`` to ``(value, grads)``, grads a dict like params."""
        raise NotImplementedError

    def compile(self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = ()) -> Callable[..., Any]:
        """Compile ``fn`` with the framework's compiler (identity where there is none)."""
        return fn

    def loss_and_grad(self, spec: MLPSpec) -> Callable[[Params, Any, Any], tuple[Any, Params]]:
        """Mean loss and gradients of the model for uint8 images and integer labels."""
        return self.value_and_grad(functools.partial(_model_loss, spec=spec, xp=self.xp))

    # -- the steps ------------------------------------------------------------------
    def train_step(self, spec: MLPSpec, config: AdamWConfig) -> TrainStep:
        """One compiled training step: gather the batch, loss and grads, AdamW update."""
        xp = self.xp
        loss_and_grad = self.loss_and_grad(spec)

        def step(params: Params, state: AdamWState, images: Any, labels: Any, idx: Any):
            batch_x = xp.take(images, idx, axis=0)
            batch_y = xp.take(labels, idx, axis=0)
            loss, grads = loss_and_grad(params, batch_x, batch_y)
            params, state = adamw_update(grads, state, params, config, xp=xp)
            return params, state, loss

        return self.compile(step, donate_argnums=(0, 1))

    def eval_step(self, spec: MLPSpec) -> EvalStep:
        """Compiled evaluation of one chunk: summed loss and number of correct predictions."""
        xp = self.xp

        def evaluate(params: Params, images: Any, labels: Any):
            dtype = next(iter(params.values())).dtype
            logits = mlp_forward(params, flatten_images(images, dtype, xp=xp), spec, xp=xp)
            loss_sum = softmax_cross_entropy(logits, labels, xp=xp) * images.shape[0]
            return loss_sum, count_correct(logits, labels, xp=xp)

        return self.compile(evaluate)


def _model_loss(params: Params, images: Any, labels: Any, *, spec: MLPSpec, xp: Any) -> Any:
    return mlp_loss(params, images, labels, spec, xp=xp)
