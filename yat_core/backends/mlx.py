"""MLX backend: ``mx.value_and_grad`` and ``mx.compile``, plus the array-API adapter for MLX.

``mlx.core`` follows the array API closely but not exactly, and array-api-compat
does not cover it; :func:`mlx_namespace` fills the few gaps the core uses. Every
MLX quirk the package knows of is handled in this module.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable

import mlx.core as mx
import numpy as np

from yat_core.backends._base import Backend
from yat_core.errors import BackendUnavailableError


def _isdtype(dtype: Any, kind: Any) -> bool:
    if isinstance(kind, tuple):
        return any(_isdtype(dtype, k) for k in kind)
    if not isinstance(kind, str):
        return dtype == kind
    category = {
        "real floating": mx.floating,
        "integral": mx.integer,
        "signed integer": mx.signedinteger,
        "unsigned integer": mx.unsignedinteger,
        "complex floating": mx.complexfloating,
        "numeric": mx.number,
    }.get(kind)
    if kind == "bool":
        return dtype == mx.bool_
    if category is None:
        raise ValueError(f"unknown dtype kind {kind!r}")
    return mx.issubdtype(dtype, category) and not (kind == "real floating" and dtype == mx.complex64)


_FROM_NUMPY = {np.dtype(np.float64): mx.float64, np.dtype(np.float32): mx.float32}


def _asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> mx.array:
    if dtype is None and isinstance(obj, np.ndarray):
        dtype = _FROM_NUMPY.get(obj.dtype)  # mx.array would turn float64 into float32
    return mx.array(obj, dtype=dtype) if dtype is not None else mx.array(obj)


def _zeros(shape: Any, *, dtype: Any = None, device: Any = None) -> mx.array:
    return mx.zeros(shape, dtype=dtype or mx.float32)


def _matrix_transpose(x: mx.array, /) -> mx.array:
    return mx.swapaxes(x, -1, -2)


@functools.cache
def mlx_namespace() -> types.SimpleNamespace:
    """An array-API namespace over ``mlx.core`` for the calls yat_core makes.

    Examples
    --------
    >>> xp = mlx_namespace()
    >>> xp.matrix_transpose(xp.asarray([[1.0, 2.0]])).shape
    (2, 1)
    """
    names = {n: getattr(mx, n) for n in dir(mx) if not n.startswith("_")}
    names.update(
        isdtype=_isdtype,
        asarray=_asarray,
        zeros=_zeros,
        matrix_transpose=_matrix_transpose,
        __name__="yat_core.backends.mlx.namespace",
    )
    return types.SimpleNamespace(**names)


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

    def __init__(self, device: str | None = None, gradients: str | None = None) -> None:
        self.mlx_device = _resolve_device(device)
        mx.set_default_device(self.mlx_device)
        self.xp = mlx_namespace()
        super().__init__(str(self.mlx_device.type).rsplit(".", 1)[-1], gradients)

    def device_name(self) -> str:
        from yat_core.backends._mlx_blas import loaded_blas

        kind = str(self.mlx_device.type).rsplit(".", 1)[-1]
        return f"mlx:{kind}" + (f" (BLAS: {loaded_blas()})" if kind == "cpu" else "")

    def asarray(self, a: np.ndarray) -> mx.array:
        if a.dtype == np.float64:
            # MLX 0.32's float64 exp is accurate to about 5e-7 (float32 level): a float64
            # run would be labelled float64 without being it.
            raise BackendUnavailableError("MLX does not compute float64 to float64 accuracy; use float32 "
                                          "(or the numpy or torch backend for float64)")
        return _asarray(np.require(a, requirements=["C"]))

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
