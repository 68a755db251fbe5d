"""What every backend provides, and the train / eval steps built from it.

A backend supplies the namespace, host <-> device transfer, gradients and
compilation. The steps themselves (forward, loss, AdamW) are the core's, written
once; :meth:`Backend.train_step` only wires them together and hands the result to
the framework's compiler.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from yat_core.errors import BackendUnavailableError
from yat_core.losses import count_correct, softmax_cross_entropy
from yat_core.mlp import MLPSpec, mlp_forward, mlp_loss, mlp_value_and_grad, model_input
from yat_core.optim import AdamWConfig, AdamWState, adamw_update

__all__ = ["Backend", "TrainStep", "EvalStep", "SplitStep", "GRADIENT_MODES"]

#: "autodiff": the framework differentiates the core's forward pass;
#: "analytic": the framework runs the core's hand-derived backward pass
#: (:func:`yat_core.mlp.mlp_value_and_grad`). Both give the same numbers to
#: rounding (the parity suite checks it); they differ in speed.
GRADIENT_MODES = ("autodiff", "analytic")

Params = dict[str, Any]
#: (params, opt_state, images, labels, batch_indices) -> (params, opt_state, loss)
TrainStep = Callable[[Params, AdamWState, Any, Any, Any], tuple[Params, AdamWState, Any]]
#: (params, images, labels) -> (summed loss, number correct)
EvalStep = Callable[[Params, Any, Any], tuple[Any, Any]]
#: (gradient, update) -> TrainStep: a data-parallel step built around the two compiled halves
#: ``gradient(params, images, labels, idx) -> (loss, grads)`` and ``update(grads, state, params) -> (params, state)``.
SplitStep = Callable[[Callable[..., Any], Callable[..., Any]], TrainStep]


class Backend:
    """Base class of the framework shims.

    Subclasses set :attr:`name`, :attr:`framework` and :attr:`xp`, and implement
    :meth:`value_and_grad` and, where the framework compiles, :meth:`compile`.
    :attr:`default_gradients` is the faster of the two gradient modes on that
    framework (measured by the benchmarks); :meth:`gradients_for` picks autodiff
    instead on a CPU for models with a layer of :attr:`cpu_autodiff_kinds`.
    """

    name: str = ""
    framework: str = ""
    xp: Any = None
    default_gradients: str = "autodiff"
    #: Layer kinds whose models train faster by autodiff than by :attr:`default_gradients` on a CPU.
    cpu_autodiff_kinds: tuple[str, ...] = ()

    def __init__(self, device: str | None = None, gradients: str | None = None, spec: MLPSpec | None = None) -> None:
        self.device = device
        self.gradients = self.gradients_for(spec) if gradients is None else gradients
        if self.gradients not in GRADIENT_MODES:
            raise BackendUnavailableError(
                f"gradients must be one of {', '.join(GRADIENT_MODES)}, got {self.gradients!r}"
            )

    def gradients_for(self, spec: MLPSpec | None) -> str:
        """The faster gradient mode for model ``spec`` on this backend's device.

        ``"autodiff"`` on a CPU for a model with a layer of :attr:`cpu_autodiff_kinds`,
        :attr:`default_gradients` otherwise; each backend's class docstring gives the
        timings behind its choice.
        """
        layers = () if spec is None else spec.layers
        slower_analytic = self.on_cpu() and any(layer.kind in self.cpu_autodiff_kinds for layer in layers)
        return "autodiff" if slower_analytic else self.default_gradients

    def on_cpu(self) -> bool:
        """Whether this backend computes on a CPU (its device, once chosen)."""
        return True

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

    def compile(
        self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = (), *, hot: bool = True
    ) -> Callable[..., Any]:
        """Compile ``fn`` with the framework's compiler (identity where there is none).

        ``hot=False`` marks a function called a few times per epoch (evaluation),
        where a framework with slow compilation may prefer to run it eagerly.
        """
        return fn

    def loss_and_grad(self, spec: MLPSpec) -> Callable[[Params, Any, Any], tuple[Any, Params]]:
        """Mean loss and gradients of the model for uint8 images and integer labels.

        Uses the framework's autodiff or the core's analytic backward pass, as
        :attr:`gradients` says.
        """
        if self.gradients == "analytic":
            return functools.partial(_model_value_and_grad, spec=spec, xp=self.xp)
        return self.value_and_grad(functools.partial(_model_loss, spec=spec, xp=self.xp))

    # -- the steps ------------------------------------------------------------------
    def data_parallel(self) -> Any:
        """The data-parallel group this process trains in (:mod:`yat_core.parallel`), or None.

        None here: one process. A backend whose framework runs one process per device
        (torch under ``torchrun``) returns its group, whose ``train_step`` then joins
        the compiled halves of :meth:`train_step`.
        """
        return None

    def train_step(self, spec: MLPSpec, config: AdamWConfig, *, split: SplitStep | None = None) -> TrainStep:
        """One compiled training step: gather the batch, loss and grads, AdamW update.

        ``split`` (data-parallel training, e.g.
        :meth:`yat_core.parallel.torch.TorchDataParallel.train_step`) receives the step in
        two compiled halves, the gradient and the update, and returns the step that
        communicates between them, outside any compiled graph.
        """
        if split is not None:
            return split(
                self.compile(self._gradient_fn(spec)), self.compile(self._update_fn(config), donate_argnums=(1, 2))
            )
        return self.compile(self._step_fn(spec, config), donate_argnums=(0, 1))

    def _gradient_fn(self, spec: MLPSpec) -> Callable[[Params, Any, Any, Any], tuple[Any, Params]]:
        # (params, images, labels, idx) -> (mean loss, grads) of the batch idx.
        xp = self.xp
        loss_and_grad = self.loss_and_grad(spec)

        def gradient(params: Params, images: Any, labels: Any, idx: Any) -> tuple[Any, Params]:
            return loss_and_grad(params, xp.take(images, idx, axis=0), xp.take(labels, idx, axis=0))

        return gradient

    def _update_fn(self, config: AdamWConfig) -> Callable[[Params, AdamWState, Params], tuple[Params, AdamWState]]:
        # (grads, state, params) -> (params, state): the core's AdamW.
        xp = self.xp

        def update(grads: Params, state: AdamWState, params: Params) -> tuple[Params, AdamWState]:
            return adamw_update(grads, state, params, config, xp=xp)

        return update

    def _step_fn(self, spec: MLPSpec, config: AdamWConfig) -> TrainStep:
        # The uncompiled step, for the framework to compile alone or inside a loop.
        gradient, update = self._gradient_fn(spec), self._update_fn(config)

        def step(params: Params, state: AdamWState, images: Any, labels: Any, idx: Any):
            loss, grads = gradient(params, images, labels, idx)
            params, state = update(grads, state, params)
            return params, state, loss

        return step

    def train_steps(self, spec: MLPSpec, config: AdamWConfig, batch_size: int, n_steps: int) -> Callable | None:
        """``n_steps`` training steps in one compiled call, or None where that does not pay.

        The returned function takes ``(params, state, images, labels, order, first)``
        and runs steps ``first .. first + n_steps - 1`` of the epoch whose sample
        order is ``order``, returning ``(params, state, losses)``. It computes
        exactly what as many :meth:`train_step` calls would; frameworks with a high
        per-call cost (JAX on CPU) implement it to pay that cost once per chunk.
        """
        return None

    def eval_step(self, spec: MLPSpec) -> EvalStep:
        """Compiled evaluation of one chunk: summed loss and number of correct predictions."""
        xp = self.xp

        def evaluate(params: Params, images: Any, labels: Any):
            logits = mlp_forward(params, model_input(params, images, spec, xp=xp), spec, xp=xp)
            loss_sum = softmax_cross_entropy(logits, labels, xp=xp) * images.shape[0]
            return loss_sum, count_correct(logits, labels, xp=xp)

        return self.compile(evaluate, hot=False)


def _model_loss(params: Params, images: Any, labels: Any, *, spec: MLPSpec, xp: Any) -> Any:
    return mlp_loss(params, images, labels, spec, xp=xp)


def _model_value_and_grad(params: Params, images: Any, labels: Any, *, spec: MLPSpec, xp: Any) -> Any:
    return mlp_value_and_grad(params, images, labels, spec, xp=xp)
