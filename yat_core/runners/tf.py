"""The TensorFlow runner (``yat-core train --framework tf``): :class:`~yat_core.nn.tf.YatModel` trained the TF way.

A ``tf.function``-compiled step with ``tf.GradientTape`` and a
``tf.keras.optimizers.AdamW`` that steps as the core's AdamW
(:class:`~yat_core.runners._keras_adamw.CoreAdamW`) applied to the model's plain
``tf.Variable`` objects, for any :class:`~yat_core.spec.ModelSpec` (the MLP, the
CNN): the step flattens the uint8 images to floats and the model reshapes them to
its layout. TensorFlow 2.16+ ships Keras 3 as ``tf.keras``, whose optimizers follow
``KERAS_BACKEND``: the runner needs the tensorflow backend (the default when the
variable is unset).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from yat_core.errors import BackendUnavailableError
from yat_core.losses import count_correct, softmax_cross_entropy
from yat_core.mlp import ModelSpec, flatten_images
from yat_core.namespaces.tf import namespace
from yat_core.nn.tf import build_model, count_params, export_params
from yat_core.runners._base import BaseRunner

if TYPE_CHECKING:
    from yat_core.config import TrainConfig
    from yat_core.optim import AdamWConfig

__all__ = ["TFRunner", "RUNNER_CLASS"]


def _adamw(config: AdamWConfig) -> Any:
    import keras  # tf.keras is Keras 3; its optimizers follow the Keras backend

    if keras.backend.backend() != "tensorflow":
        raise BackendUnavailableError(
            "the tf framework trains with tf.keras.optimizers.AdamW, which needs the tensorflow Keras "
            f"backend; Keras runs on {keras.backend.backend()!r} here (unset KERAS_BACKEND or set it "
            "to 'tensorflow' in a fresh process)"
        )
    from yat_core.runners._keras_adamw import CoreAdamW  # imports Keras: only once its backend is checked

    return CoreAdamW(
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        beta_1=config.b1,
        beta_2=config.b2,
        epsilon=config.eps,
    )


def _device(name: str | None) -> str | None:
    """TensorFlow's name for device ``name`` (torch-style ``"cuda:0"`` or TF's ``"GPU:0"``), checked to exist."""
    if name is None:
        return None
    kind, _, index = name.partition(":")
    kind = {"cuda": "GPU", "gpu": "GPU", "cpu": "CPU"}.get(kind.lower(), kind.upper())
    resolved = f"{kind}:{index or 0}"
    known = [d.name.split("device:")[-1] for d in tf.config.list_logical_devices()]
    if resolved not in known:
        # tf.device would silently fall back to another device; say so instead.
        raise BackendUnavailableError(f"TensorFlow has no device {name!r} here; it sees {', '.join(known)}")
    return resolved


class TFRunner(BaseRunner):
    """Trains :class:`~yat_core.nn.tf.YatModel` with a ``tf.function`` step, ``tf.GradientTape`` and tf.keras AdamW.

    The step and the evaluation are compiled with XLA (``jit_compile=True``); the
    optimizer updates the model's plain ``tf.Variable`` objects.

    Notes
    -----
    The optimizer is :class:`~yat_core.runners._keras_adamw.CoreAdamW`, a
    ``tf.keras.optimizers.AdamW`` whose update step is the core's
    :func:`~yat_core.optim.adamw_update`, traced into the XLA step: the recipe's
    lr, betas, epsilon and weight decay, epsilon added to the square root of the
    *bias-corrected* second moment, every variable decayed by ``1 - lr * wd`` in
    the same step. (tf.keras's stock AdamW adds epsilon to the uncorrected moment,
    a core step with epsilon ``epsilon / sqrt(1 - beta_2**t)``.)

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.config import TrainConfig
    >>> runner = TFRunner(seed_spec(), TrainConfig(framework="tf"))
    >>> runner.name, runner.framework, runner.n_params()
    ('tf', 'tf', 235148)
    """

    name = "tf"
    framework = "tf"
    #: tf.keras (the optimizer) is the keras distribution; TensorFlow is one of the first two.
    distributions = ("tensorflow", "tensorflow-cpu", "keras")

    def __init__(self, spec: ModelSpec, config: TrainConfig) -> None:
        self.dtype = tf.as_dtype(config.dtype)
        self._device = _device(config.device)
        with self._placement():
            self.model = build_model(spec, config.seed, dtype=self.dtype)
            self.optimizer = _adamw(config.optimizer)
            self.optimizer.build(self.model.trainable_variables)
        self._step = tf.function(self._train_step, jit_compile=True)
        self._eval = tf.function(self._eval_step, jit_compile=True)

    def _placement(self) -> contextlib.AbstractContextManager[Any]:
        return tf.device(self._device) if self._device else contextlib.nullcontext()

    def _train_step(self, images: tf.Tensor, labels: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
        x = flatten_images(tf.gather(images, idx), self.dtype, xp=namespace())
        y = tf.gather(labels, idx)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model.call(x)  # traced into this step: one XLA computation
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def _eval_step(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # The metric is the core's, so every framework reports the same quantity.
        xp = namespace()
        logits = self.model.call(flatten_images(images, self.dtype, xp=xp))
        n = tf.cast(tf.shape(labels)[0], logits.dtype)
        return softmax_cross_entropy(logits, labels, xp=xp) * n, count_correct(logits, labels, xp=xp)

    def device_name(self) -> str:
        if self._device:
            return self._device
        return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"

    def n_params(self) -> int:
        return count_params(self.model)

    def put(self, a: np.ndarray) -> tf.Tensor:
        with self._placement():
            return tf.convert_to_tensor(a)

    def step(self, images: tf.Tensor, labels: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
        with self._placement():
            return self._step(images, labels, idx)

    def evaluate(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with self._placement():
            return self._eval(images, labels)

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


RUNNER_CLASS = TFRunner
