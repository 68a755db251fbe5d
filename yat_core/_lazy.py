"""Import a framework only when it is needed, with an error that says how to get it."""

from __future__ import annotations

import importlib
from types import ModuleType

from yat_core.errors import BackendUnavailableError

__all__ = ["require"]


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
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        missing = getattr(exc, "name", None) or top
        detail = "" if missing.split(".")[0] == top else f" (it failed to import {missing}: {exc})"
        raise BackendUnavailableError(
            f"{what} needs {top}, which is not installed here{detail}; "
            f"install it with: pip install 'yat-core[{extra}]'"
        ) from None
