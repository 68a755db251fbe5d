"""JAX backend: the whole step under ``jax.jit`` with donated buffers.

Gradients come from the core's analytic backward pass or ``jax.value_and_grad``,
the faster for the model (:class:`JaxBackend`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yat_core.backends._base import Backend
from yat_core.errors import BackendUnavailableError
from yat_core.parallel.jax import DataParallel
from yat_core.parallel.jax import current as current_plan
from yat_core.spec import CONV_KINDS, YAT_CONV_KINDS


def check_dtype(dtype: Any, name: str = "dtype") -> None:
    """Refuse float64 unless JAX runs in 64-bit mode, naming ``name`` (``"--dtype"`` at the command line).

    Without it JAX would silently compute in float32. The one check of the jax
    backend and the Flax runners.

    Examples
    --------
    >>> check_dtype("float32")
    """
    if np.dtype(dtype) == np.float64 and not jax.config.read("jax_enable_x64"):
        raise BackendUnavailableError(
            f"{name} float64 on JAX needs its 64-bit mode: set JAX_ENABLE_X64=1 in the environment, "
            f"or use {name} float32"
        )


def _resolve_device(device: str | None) -> Any:
    if device is None:
        return jax.devices()[0]
    kind, _, index_text = device.partition(":")
    platform = {"cuda": "gpu"}.get(kind, kind)
    if index_text and not index_text.isdigit():
        raise BackendUnavailableError(f"device index must be a number, got {device!r}")
    index = int(index_text or 0)
    try:
        devices = jax.devices(platform)
    except RuntimeError as exc:
        raise BackendUnavailableError(f"jax has no {device!r} device here: {exc}") from None
    if index >= len(devices):
        raise BackendUnavailableError(f"jax sees {len(devices)} {platform} device(s); {device!r} does not exist")
    return devices[index]


#: How float32 matrix products are computed on an accelerator unless the user chose
#: (``jax_default_matmul_precision``): in full float32, as on the CPU and in PyTorch.
#: JAX's own default there is TensorFloat-32 on NVIDIA GPUs since Ampere (10-bit mantissas),
#: which would leave the backends computing different functions.
ACCELERATOR_MATMUL_PRECISION = "highest"


def matmul_precision(platform: str) -> str | None:
    """The precision the backend traces float32 products at on ``platform``; None: JAX's setting.

    The user's ``jax_default_matmul_precision`` (environment variable
    ``JAX_DEFAULT_MATMUL_PRECISION``, ``jax.config.update`` or the context manager)
    wins; otherwise :data:`ACCELERATOR_MATMUL_PRECISION` off the CPU, where JAX's
    default already is float32.

    Examples
    --------
    >>> matmul_precision("cpu"), matmul_precision("gpu")
    (None, 'highest')
    >>> with jax.default_matmul_precision("tensorfloat32"):
    ...     matmul_precision("gpu")
    """
    chosen = getattr(jax.config, "jax_default_matmul_precision", None)
    if platform == "cpu" or chosen is not None:
        return None
    return ACCELERATOR_MATMUL_PRECISION


def traced_at(precision: str | None, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` traced under ``jax.default_matmul_precision(precision)`` (``fn`` itself for None).

    The precision is read while tracing, so a ``jax.jit`` of the result runs every
    product at it, whatever the caller's setting then.
    """
    if precision is None:
        return fn

    @functools.wraps(fn)
    def at_precision(*args: Any, **kwargs: Any) -> Any:
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)

    return at_precision


class JaxBackend(Backend):
    """JAX's own array-API namespace (``jax.numpy``).

    Gradients: analytic, except autodiff on CPU for models with Yat convolutions.
    Measured on CPU at batch 128 (2 cores), each model's compiled step, medians:

    ========================  ==========  ==========
    model                     analytic    autodiff
    ========================  ==========  ==========
    seed MLP (64-step scan)   1.11 ms     1.25 ms
    Linear+ReLU MLP           1.07 ms     1.10 ms
    Yat CNN                   124 ms      101 ms
    Conv+ReLU CNN             61 ms       85 ms
    Yat ViT                   10.4 ms     14.9 ms
    ========================  ==========  ==========

    The analytic dense step folds the dot product's and the distance's gradients
    into one matrix product per operand, where XLA keeps autodiff's two; XLA:CPU
    fuses the Yat convolution's autodiff backward better than the analytic one's
    kernels. No GPU timings back the choice there: it follows the CPU's.

    On a GPU, float32 products run in full float32 (:func:`matmul_precision`), not
    JAX's TensorFloat-32 default, unless ``jax_default_matmul_precision`` says otherwise.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, cnn_relu_spec, seed_spec, vit_spec
    >>> backend = JaxBackend("cpu")
    >>> [backend.gradients_for(s) for s in (seed_spec(), cnn_spec(), cnn_relu_spec(), vit_spec())]
    ['analytic', 'autodiff', 'analytic', 'analytic']
    """

    name = "jax"
    framework = "jax"
    xp = jnp
    default_gradients = "analytic"
    cpu_autodiff_kinds = YAT_CONV_KINDS

    def __init__(self, device: str | None = None, gradients: str | None = None, spec: Any = None) -> None:
        # Data parallel (--devices, several processes): the plan yat_core.parallel.jax.set_up made.
        self.plan = current_plan()
        self.jax_device = _resolve_device(device) if self.plan is None else self.plan.first_device
        super().__init__(f"{self.jax_device.platform}:{self.jax_device.id}", gradients, spec)
        #: Precision of float32 products in this backend's compiled functions (None: JAX's setting).
        self.precision = matmul_precision(self.jax_device.platform)

    def on_cpu(self) -> bool:
        return bool(self.jax_device.platform == "cpu")

    def device_name(self) -> str:
        kind = getattr(self.jax_device, "device_kind", "")
        name = f"{self.jax_device.platform}:{self.jax_device.id}" + (f" ({kind})" if kind and kind != "cpu" else "")
        if self.plan is not None:
            n = self.plan.mesh.devices.size
            name += f" and {n - 1} more" if n > 1 else ""
        return name

    def asarray(self, a: np.ndarray) -> Any:
        check_dtype(a.dtype)
        if self.plan is not None:
            return self.plan.put(a)
        return jax.device_put(a, self.jax_device)

    def data_parallel(self) -> DataParallel | None:
        """The mesh this backend's steps split each batch over (:func:`yat_core.parallel.jax.set_up`), or None."""
        return self.plan

    def put_tree(self, tree: Any) -> Any:
        """Commit every array of ``tree`` (a model's, an optimizer's state) where the step's outputs will live.

        Otherwise the second step sees other shardings than the first and compiles again.
        """
        return jax.device_put(tree, self.jax_device) if self.plan is None else self.plan.put_tree(tree)

    def loss_and_grad(self, spec: Any) -> Callable[..., Any]:
        fn = super().loss_and_grad(spec)
        plan = self.plan
        if plan is None:
            return fn
        # The gathered batch split over the mesh; XLA all-reduces the gradient of the replicated parameters.
        return lambda params, images, labels: fn(params, plan.shard_batch(images), plan.shard_batch(labels))

    def synchronize(self, tree: Any = None) -> None:
        if tree is not None:
            jax.block_until_ready(tree)

    def value_and_grad(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return jax.value_and_grad(fn)

    def train_steps(self, spec: Any, config: Any, batch_size: int, n_steps: int) -> Callable[..., Any] | None:
        # XLA:CPU runs convolutions inside a scan's loop body several times slower than the same
        # step jitted alone (measured 7x for the CNN): convolutional models step one batch per call there.
        if self.on_cpu() and any(layer.kind in CONV_KINDS for layer in spec.layers):
            return None
        step = self._step_fn(spec, config)

        def run(params: Any, state: Any, images: Any, labels: Any, order: Any, first: Any) -> Any:
            def body(carry: Any, i: Any) -> Any:
                idx = jax.lax.dynamic_slice(order, ((first + i) * batch_size,), (batch_size,))
                params, state, loss = step(carry[0], carry[1], images, labels, idx)
                return (params, state), loss

            (params, state), losses = jax.lax.scan(body, (params, state), jnp.arange(n_steps))
            return params, state, losses

        return jax.jit(traced_at(self.precision, run), donate_argnums=(0, 1))

    def compile(
        self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = (), *, hot: bool = True
    ) -> Callable[..., Any]:
        return jax.jit(traced_at(self.precision, fn), donate_argnums=donate_argnums)


BACKEND_CLASS = JaxBackend
