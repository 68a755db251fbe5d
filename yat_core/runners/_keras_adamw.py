"""The recipe's AdamW as a Keras optimizer, shared by the Keras and TensorFlow runners.

:class:`CoreAdamW` is a ``keras.optimizers.AdamW`` (same arguments, variables,
``get_config``, ``model.compile`` and ``apply_gradients``) whose update step is
:func:`yat_core.optim.adamw_update`'s: epsilon is added to the square root of the
*bias-corrected* second moment, and the decoupled weight decay multiplies the
parameter by ``1 - lr * weight_decay`` in the same step. Keras's own AdamW adds
epsilon to the square root of the uncorrected moment (a core step with epsilon
``epsilon / sqrt(1 - beta_2**t)``), which moves parameters whose gradients are near
or below epsilon (many of the Yat CNN's, 1e-9 to 1e-6) by a sizeable fraction of the
learning rate per step. Written with ``keras.ops`` only, so it runs on every Keras
backend (jax, torch, tensorflow) and inside a ``tf.function`` compiled with XLA.

Importing this module imports Keras: the runners import it only when they build
their optimizer.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

__all__ = ["CoreAdamW"]


def _power(beta: float, t: Any) -> Any:
    # beta ** t as the core computes it (yat_core.optim._power): exp(t * log(beta)).
    return 0.0 if beta == 0.0 else ops.exp(ops.multiply(t, math.log(beta)))


@keras.saving.register_keras_serializable(package="yat_core")
class CoreAdamW(keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` stepping exactly as the core's :func:`~yat_core.optim.adamw_update`.

    For each parameter ``p`` with gradient ``g`` at step ``t`` (1, 2, ...)::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        p = p * (1 - lr * weight_decay)
            - lr / (1 - beta_1**t) * m / (sqrt(v) / sqrt(1 - beta_2**t) + epsilon)

    that is ``lr * m_hat / (sqrt(v_hat) + epsilon)`` with both moments corrected
    for bias, the decay decoupled and taken from the parameter before the step.
    Keras's weight-decay pass before the update step is folded into that step,
    so a variable is decayed once, by the core's formula; variables excluded with
    :meth:`exclude_from_weight_decay` are not decayed. ``amsgrad`` is not part of
    the recipe and is refused.

    Examples
    --------
    One step on a Keras variable equals one step of the core:

    >>> import numpy as np
    >>> from yat_core.optim import AdamWConfig, adamw_init, adamw_update
    >>> opt = CoreAdamW(learning_rate=0.1, weight_decay=0.5, epsilon=1e-3)
    >>> w = keras.Variable(np.array([1.0, -2.0], np.float32))
    >>> opt.apply([ops.convert_to_tensor(np.array([1e-5, 0.5], np.float32))], [w])
    >>> config = AdamWConfig(lr=0.1, weight_decay=0.5, eps=1e-3)
    >>> p = {"w": np.array([1.0, -2.0], np.float32)}
    >>> core, _ = adamw_update({"w": np.array([1e-5, 0.5], np.float32)}, adamw_init(p), p, config)
    >>> np.allclose(ops.convert_to_numpy(w.value), core["w"], rtol=1e-6)
    True
    >>> CoreAdamW.from_config(opt.get_config()).epsilon
    0.001
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("CoreAdamW is the recipe's AdamW, which has no AMSGrad variant; pass amsgrad=False")

    def _apply_weight_decay(self, variables: Any) -> None:
        # Keras decays every variable (``p - p * wd * lr``) before calling update_step;
        # update_step applies the decay itself, in the core's form, so this pass does nothing.
        return None

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Update ``variable`` and its moments by one step of the core's AdamW."""
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        b1, b2 = self.beta_1, self.beta_2
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        # The moments, written as the core writes them (not Keras's m += (g - m) * (1 - b1)).
        m_new = ops.add(ops.multiply(b1, m), ops.multiply(1.0 - b1, g))
        v_new = ops.add(ops.multiply(b2, v), ops.multiply(1.0 - b2, ops.multiply(g, g)))
        self.assign(m, m_new)
        self.assign(v, v_new)
        # Bias corrections folded into the step size and the root of v, as the core folds them.
        step_size = ops.divide(lr, ops.subtract(1.0, _power(b1, t)))
        root_bc2 = ops.sqrt(ops.subtract(1.0, _power(b2, t)))
        denominator = ops.add(ops.divide(ops.sqrt(v_new), root_bc2), self.epsilon)
        decayed = variable
        if self.weight_decay and self._use_weight_decay(variable):
            decayed = ops.multiply(variable, ops.subtract(1.0, ops.multiply(lr, self.weight_decay)))
        self.assign(variable, ops.subtract(decayed, ops.divide(ops.multiply(step_size, m_new), denominator)))
