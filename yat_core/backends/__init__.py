"""Autodiff shims, one per framework, imported only when asked for.

Each backend gives the shared core three things its framework owns: gradients,
compilation and a device. The registry maps a name to a module path and the
install extra; nothing is imported until :func:`get_backend` is called.

Examples
--------
>>> from yat_core.backends import get_backend
>>> get_backend("numpy").name
'numpy'
>>> get_backend("tensorflow")
Traceback (most recent call last):
...
yat_core.errors.BackendUnavailableError: unknown backend 'tensorflow'; choose one of: numpy, torch, jax, mlx
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

from yat_core._lazy import require
from yat_core.backends._base import Backend
from yat_core.errors import BackendUnavailableError

__all__ = ["Backend", "BACKENDS", "get_backend", "available_backends"]


class _Entry(NamedTuple):
    module: str
    framework: str  # the import the backend needs
    extra: str  # pip extra that installs it


BACKENDS: dict[str, _Entry] = {
    "numpy": _Entry("yat_core.backends.numpy", "numpy", ""),
    "torch": _Entry("yat_core.backends.torch", "torch", "torch"),
    "jax": _Entry("yat_core.backends.jax", "jax", "jax"),
    "mlx": _Entry("yat_core.backends.mlx", "mlx.core", "mlx"),
}


def get_backend(name: str, device: str | None = None, gradients: str | None = None) -> Backend:
    """Instantiate backend ``name`` on ``device`` (the framework's default when None).

    ``gradients`` is ``"autodiff"`` or ``"analytic"`` (see
    :data:`~yat_core.backends._base.GRADIENT_MODES`); None picks the backend's faster one.

    Raises
    ------
    BackendUnavailableError
        For an unknown name, or a framework that is not installed (the message names
        the extra to install), or a device the framework cannot use.
    """
    entry = BACKENDS.get(name)
    if entry is None:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "mlx":  # must precede MLX's import (see _mlx_blas)
        from yat_core.backends._mlx_blas import preload_blas

        preload_blas()
    require(entry.framework, entry.extra, f"backend {name!r}")
    module = importlib.import_module(entry.module)
    return module.BACKEND_CLASS(device, gradients)


def available_backends() -> list[str]:
    """Names of the backends whose framework imports here."""
    names = []
    for name, entry in BACKENDS.items():
        try:
            importlib.import_module(entry.framework)
        except ImportError:
            continue
        names.append(name)
    return names
