"""MLX backend: ``mx.value_and_grad`` and ``mx.compile``; MLX's array-API adapter is
:mod:`yat_core.namespaces.mlx`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from yat_core._mlx_blas import loaded_blas
from yat_core.backends._base import Backend
from yat_core.errors import BackendUnavailableError
from yat_core.namespaces.mlx import asarray, namespace


def check_dtype(dtype: Any, name: str = "dtype") -> None:
    """Refuse float64, naming ``name`` (``"--dtype"`` at the command line): the MLX backend's and runner's one check.

    MLX 0.32 on CPU stores float64 and multiplies it to float64 accuracy, but its
    float64 ``exp`` is float32-accurate (relative error about 2e-6, measured on
    Linux): the softmax loss and a learnable epsilon's ``softplus`` go through it,
    so a run labelled float64 would not be one.

    Examples
    --------
    >>> check_dtype(np.float32)
    >>> check_dtype("float64", "--dtype")
    Traceback (most recent call last):
    ...
    yat_core.errors.BackendUnavailableError: --dtype float64 is not available on MLX: its float64 exp is only float32-accurate, so the loss would not be computed in float64; use --dtype float32, or the numpy or torch backend for float64
    """
    if np.dtype(dtype) == np.float64:
        raise BackendUnavailableError(
            f"{name} float64 is not available on MLX: its float64 exp is only float32-accurate, so the loss would "
            f"not be computed in float64; use {name} float32, or the numpy or torch backend for float64"
        )


def _resolve_device(device: str | None) -> Any:
    if device is None:
        return mx.default_device()
    kind, _, index = device.partition(":")
    if index not in ("", "0"):
        raise BackendUnavailableError(f"MLX has one device of each kind; {device!r} does not exist")
    if kind == "cpu":
        return mx.Device(mx.cpu)
    if kind in ("gpu", "metal", "cuda"):
        if not mx.is_available(mx.gpu):
            raise BackendUnavailableError(f"MLX has no GPU on this machine (asked for {device!r})")
        return mx.Device(mx.gpu)
    raise BackendUnavailableError(f"MLX does not know device {device!r}; use 'cpu' or 'gpu'")


class MLXBackend(Backend):
    """Apple's MLX (CPU on Linux; Metal or CUDA GPU where present)."""

    name = "mlx"
    framework = "mlx"

    def __init__(self, device: str | None = None, gradients: str | None = None, spec: Any = None) -> None:
        self.mlx_device = _resolve_device(device)
        mx.set_default_device(self.mlx_device)
        self.xp = namespace()
        super().__init__(str(self.mlx_device.type).rsplit(".", 1)[-1], gradients, spec)

    def device_name(self) -> str:
        kind = str(self.mlx_device.type).rsplit(".", 1)[-1]
        return f"mlx:{kind}" + (f" (BLAS: {loaded_blas()})" if kind == "cpu" else "")

    def asarray(self, a: np.ndarray) -> mx.array:
        check_dtype(a.dtype)
        return asarray(np.require(a, requirements=["C"]))

    def synchronize(self, tree: Any = None) -> None:
        if tree is not None:
            mx.eval(tree)

    def settle(self, tree: Any) -> None:
        mx.eval(tree)

    def value_and_grad(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return mx.value_and_grad(fn)

    def compile(
        self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = (), *, hot: bool = True
    ) -> Callable[..., Any]:
        return mx.compile(fn)


BACKEND_CLASS = MLXBackend
