"""Import a framework only when it is needed, with an error that says how to get it."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import NamedTuple

from yat_core.errors import BackendUnavailableError

__all__ = ["require", "unavailable", "LazyEntry", "load_entry"]


class LazyEntry(NamedTuple):
    """A registry entry: the yat_core module to load, the import it needs, the extra that installs it."""

    module: str
    requires: str
    extra: str


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`BackendUnavailableError` naming the pip extra.

    Parameters
    ----------
    module : str
        The import, e.g. ``"torch"`` or ``"flax.nnx"``.
    extra : str
        The yat-core extra that installs it, e.g. ``"torch"``.
    what : str
        What asked for it, for the message (``"backend 'torch'"``).

    Examples
    --------
    >>> require("json", "", "the docs").__name__
    'json'
    >>> require("no_such_framework", "nsf", "backend 'nsf'")
    Traceback (most recent call last):
    ...
    yat_core.errors.BackendUnavailableError: backend 'nsf' needs no_such_framework, which is not installed here; install it with: pip install 'yat-core[nsf]'
    """
    if module.split(".")[0] == "mlx":
        # An optimised BLAS must be loaded before MLX is (see yat_core._mlx_blas).
        from yat_core._mlx_blas import preload_blas

        preload_blas()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise unavailable(module, exc, extra, what) from None


def unavailable(module: str, exc: ImportError, extra: str, what: str) -> BackendUnavailableError:
    """The error for ``module`` failing to import (``exc``): what needs it, and the extra that installs it.

    A framework module of :mod:`yat_core.nn` raises it from its own imports, so that
    ``import yat_core.nn.torch`` without PyTorch says which extra to install.

    Examples
    --------
    >>> try:
    ...     import no_such_framework
    ... except ImportError as exc:
    ...     print(unavailable("no_such_framework", exc, "nsf", "yat_core.nn.nsf"))
    yat_core.nn.nsf needs no_such_framework, which is not installed here; install it with: pip install 'yat-core[nsf]'
    """
    top = module.split(".")[0]
    missing = getattr(exc, "name", None) or top
    detail = "" if missing.split(".")[0] == top else f" (it failed to import {missing}: {exc})"
    return BackendUnavailableError(
        f"{what} needs {top}, which is not installed here{detail}; install it with: pip install 'yat-core[{extra}]'"
    )


def load_entry(registry: Mapping[str, LazyEntry], name: str, kind: str) -> ModuleType:
    """Import the module registered as ``name``, after checking its framework imports.

    Examples
    --------
    >>> load_entry({"json": LazyEntry("json", "json", "")}, "json", "codec").__name__
    'json'
    >>> load_entry({"json": LazyEntry("json", "json", "")}, "xml", "codec")
    Traceback (most recent call last):
    ...
    yat_core.errors.BackendUnavailableError: unknown codec 'xml'; choose one of: json
    """
    entry = registry.get(name)
    if entry is None:
        raise BackendUnavailableError(f"unknown {kind} {name!r}; choose one of: {', '.join(registry)}")
    require(entry.requires, entry.extra, f"{kind} {name!r}")
    return importlib.import_module(entry.module)
