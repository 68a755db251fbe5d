"""Trains the Keras model of :mod:`yat_core.nn.keras` with Keras's own idiom (``yat-core train --framework keras``).

``model.compile`` with :class:`~yat_core.runners._keras_adamw.CoreAdamW` (a
``keras.optimizers.AdamW`` that steps as the core's AdamW) and
``SparseCategoricalCrossentropy(from_logits=True)``, then ``model.train_on_batch``
on each batch of the shared batch order, on whichever Keras backend runs
(:func:`yat_core.runners.select_keras_backend` picks it before Keras is imported).
Any :class:`~yat_core.spec.ModelSpec` trains (the MLP, the CNN): the runner flattens
the uint8 images to floats and the model (:class:`~yat_core.nn.keras.YatSequential`)
reshapes them to its layout.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import ops

from yat_core.errors import BackendUnavailableError
from yat_core.losses import count_correct, softmax_cross_entropy
from yat_core.mlp import ModelSpec, flatten_images
from yat_core.namespaces.keras import dtype_name, namespace
from yat_core.nn.keras import build_model, count_params, export_params
from yat_core.runners._base import BaseRunner
from yat_core.runners._keras_adamw import CoreAdamW

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = ["KerasRunner", "RUNNER_CLASS"]

#: Distributions a receipt records beside ``keras``, per Keras backend.
BACKEND_DISTRIBUTIONS = {"jax": ("jax", "jaxlib"), "torch": ("torch",), "tensorflow": ("tensorflow", "tensorflow-cpu")}


def _default_device() -> str:
    """Where the backend puts new tensors, e.g. ``"cpu:0"`` or ``"cuda:0"``."""
    try:
        return str(keras.distribution.list_devices()[0])
    except (AttributeError, NotImplementedError, IndexError):
        # The torch backend has no distribution support: ask a tensor instead.
        return str(ops.convert_to_tensor(np.zeros(1)).device)


def _device_key(name: str) -> tuple[str, int]:
    # "cuda:0", "gpu", "GPU:0" -> ("gpu", 0); "cpu" -> ("cpu", 0).
    kind, _, index = str(name).lower().rpartition("device:")[-1].partition(":")
    return ("gpu" if kind in ("cuda", "gpu") else kind), int(index or 0)


def _resolve_device(name: str | None) -> str | None:
    """The device scope the runner uses (None: the backend's default), after checking ``name`` exists."""
    if name is None:
        return None
    backend = keras.backend.backend()
    try:
        with keras.device(name):
            placed = ops.convert_to_tensor(np.zeros(1))
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise BackendUnavailableError(f"Keras ({backend}) cannot use device {name!r}: {exc}") from None
    where = str(getattr(placed, "device", ""))
    if _device_key(name)[0] != "cpu" and "cpu" in where.lower():
        # Some backends fall back to the CPU silently; say so instead.
        raise BackendUnavailableError(f"Keras ({backend}) has no device {name!r} here; tensors land on {where}")
    if backend != "torch":
        return name
    # Keras's torch backend creates variables without gradients under keras.device: use its default device.
    if _device_key(name) == _device_key(_default_device()):
        return None
    raise BackendUnavailableError(
        f"Keras's torch backend trains on its default device ({_default_device()}) only; "
        f"asked for {name!r} (select GPUs with CUDA_VISIBLE_DEVICES)"
    )


class KerasRunner(BaseRunner):
    """Trains the Keras model with the recipe's AdamW (a ``keras.optimizers.AdamW``) and ``model.train_on_batch``.

    The shared loop supplies the batch order, so every batch equals the core's
    (final partial batch included).

    Notes
    -----
    The optimizer is :class:`~yat_core.runners._keras_adamw.CoreAdamW`: Keras's
    AdamW (its arguments, variables, config and ``compile``) with the update step
    of the core's :func:`~yat_core.optim.adamw_update`, on every Keras backend.
    It takes the recipe's lr, betas, epsilon and weight decay, adds epsilon to the
    square root of the *bias-corrected* second moment and decays every variable by
    ``1 - lr * wd`` in the same step. Keras's stock AdamW adds epsilon to the
    uncorrected moment instead (a core step with epsilon ``epsilon / sqrt(1 -
    beta_2**t)``), which moves parameters whose gradients are near or below
    epsilon (many of the Yat CNN's) differently: 7e-4 away from the core after three
    steps of the MLP or the CNN, against ~1e-7 with the recipe's AdamW.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.config import TrainConfig
    >>> runner = KerasRunner(seed_spec(), TrainConfig(framework="keras"))
    >>> runner.name, runner.n_params(), runner.receipt_facts()["keras_backend"] == keras.backend.backend()
    ('keras', 235148, True)
    """

    name = "keras"
    framework = "keras"

    def __init__(self, spec: ModelSpec, config: TrainConfig) -> None:
        self.backend = keras.backend.backend()
        self.distributions = ("keras", *BACKEND_DISTRIBUTIONS.get(self.backend, ()))
        self.dtype = config.dtype
        self._check_dtype()
        self.xp = namespace()
        self._device = _resolve_device(config.device) if config.devices == 1 else None
        self._set_distribution(config)
        opt = config.optimizer
        with self._placement():
            self.model = build_model(spec, config.seed, dtype=config.dtype)
            self.model.compile(
                optimizer=CoreAdamW(
                    learning_rate=opt.lr, weight_decay=opt.weight_decay, beta_1=opt.b1, beta_2=opt.b2, epsilon=opt.eps
                ),
                # Keras losses compute in floatx (float32) unless told otherwise.
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=config.dtype),
            )

    def _check_dtype(self) -> None:
        probe = ops.convert_to_tensor(np.zeros(1, np.dtype(self.dtype)))
        if dtype_name(probe.dtype) != self.dtype:
            raise BackendUnavailableError(
                f"--dtype {self.dtype}: the Keras {self.backend} backend computes it as {dtype_name(probe.dtype)} "
                "here (for jax, set JAX_ENABLE_X64=1 in the environment to train in float64)"
            )

    def _set_distribution(self, config: TrainConfig) -> None:
        # --devices N on jax: Keras's own data parallelism, in scope while the model's variables are
        # created (replicated) and while it trains (train_on_batch splits each batch over the devices).
        self._distribution: Any = None
        if self.backend != "jax":
            return
        from yat_core.parallel.jax import current

        plan = current()
        if plan is None:
            return
        if plan.record()["processes"] > 1:
            raise BackendUnavailableError(
                "--framework keras trains on the devices of one process; for several processes use "
                "--backend jax or --framework nnx|linen"
            )
        devices = [f"{d.platform}:{d.id}" for d in plan.mesh.devices.flat]
        self._distribution = keras.distribution.DataParallel(devices=devices)
        self.parallel = plan

    def _placement(self) -> contextlib.AbstractContextManager[Any]:
        if self._distribution is not None:
            return self._distribution.scope()
        return keras.device(self._device) if self._device else contextlib.nullcontext()

    def device_name(self) -> str:
        return f"keras-backend={self.backend} {self._device or _default_device()}"

    def n_params(self) -> int:
        return count_params(self.model)

    def put(self, a: np.ndarray) -> Any:
        with self._placement():
            return ops.convert_to_tensor(a)

    def step(self, images: Any, labels: Any, idx: Any) -> Any:
        # train_on_batch returns the loss as a host number: settle and synchronize have nothing to do.
        with self._placement():
            x = flatten_images(ops.take(images, idx, axis=0), self.dtype, xp=self.xp)
            y = ops.take(labels, idx, axis=0)
            return self.model.train_on_batch(x, y)

    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]:
        # The metric is the core's (on the host), so every framework reports the same quantity.
        with self._placement():
            logits = self.model.predict_on_batch(flatten_images(images, self.dtype, xp=self.xp))
        y = ops.convert_to_numpy(labels)
        return softmax_cross_entropy(logits, y) * len(y), count_correct(logits, y)

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(value))

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)

    def receipt_facts(self) -> dict[str, Any]:
        return {**super().receipt_facts(), "keras_backend": self.backend}


RUNNER_CLASS = KerasRunner
