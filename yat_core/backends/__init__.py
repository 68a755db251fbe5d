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

from yat_core._lazy import LazyEntry, load_entry
from yat_core.backends._base import GRADIENT_MODES, Backend
from yat_core.spec import ModelSpec as MLPSpec

__all__ = ["Backend", "GRADIENT_MODES", "BACKENDS", "get_backend", "available_backends"]


#: Backend name -> its module, the import it needs and the extra that installs it.
BACKENDS: dict[str, LazyEntry] = {
    "numpy": LazyEntry("yat_core.backends.numpy", "numpy", ""),
    "torch": LazyEntry("yat_core.backends.torch", "torch", "torch"),
    "jax": LazyEntry("yat_core.backends.jax", "jax", "jax"),
    "mlx": LazyEntry("yat_core.backends.mlx", "mlx.core", "mlx"),
}


def get_backend(
    name: str, device: str | None = None, gradients: str | None = None, spec: MLPSpec | None = None
) -> Backend:
    """Instantiate backend ``name`` on ``device`` (the framework's default when None).

    ``gradients`` is ``"autodiff"`` or ``"analytic"`` (see
    :data:`~yat_core.backends._base.GRADIENT_MODES`); None picks the backend's faster one
    for the model ``spec`` (:meth:`Backend.gradients_for`).

    Raises
    ------
    BackendUnavailableError
        For an unknown name, or a framework that is not installed (the message names
        the extra to install), or a device the framework cannot use.
    """
    backend: Backend = load_entry(BACKENDS, name, "backend").BACKEND_CLASS(device, gradients, spec)
    return backend


def available_backends() -> list[str]:
    """Names of the backends whose framework imports here."""
    names = []
    for name, entry in BACKENDS.items():
        try:
            importlib.import_module(entry.requires)
        except ImportError:
            continue
        names.append(name)
    return names
