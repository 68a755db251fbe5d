"""Array -> array-API namespace: the bottom of yat_core, below the math.

Every namespace lookup, device query and host copy in the package goes through
here. The registry is keyed by the top-level module of the array's type
(``type(x).__module__``), so looking an array up never imports a framework the
caller has not imported already: an array of that framework exists, so the
framework is loaded.

- ``numpy``, ``array_api_strict``, ``torch``, ``jax`` (and ``jaxlib``): through
  array-api-compat;
- ``mlx``, ``tensorflow``, ``keras`` (Keras variables and symbolic tensors): through
  the adapters in this package (:mod:`.mlx`, :mod:`.tf`, :mod:`.keras`), which
  array-api-compat does not cover. Each framework's quirks live in its adapter.

A Keras layer's backend tensors are the backend's own (``jax.Array``,
``torch.Tensor``, ``tf.Tensor``) and resolve as those.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "array_namespace",
    "device_of",
    "to_numpy",
    "library_name",
    "is_mlx_array",
    "ADAPTERS",
]

#: Libraries array-api-compat does not cover: top-level module -> adapter module. An
#: adapter module provides ``namespace()``, ``device(x)`` and ``to_numpy(x)``.
ADAPTERS: dict[str, str] = {
    "mlx": "yat_core.namespaces.mlx",
    "tensorflow": "yat_core.namespaces.tf",
    "keras": "yat_core.namespaces.keras",
}
# Arrays of one library whose types live in several top-level modules.
_SAME_LIBRARY = {"jaxlib": "jax"}


def library_name(x: Any) -> str:
    """Short name of the library that owns ``x`` (``"numpy"``, ``"torch"``, ``"jax"``, ...).

    Examples
    --------
    >>> library_name(np.ones(2))
    'numpy'
    """
    top = type(x).__module__.split(".")[0]
    return _SAME_LIBRARY.get(top, top)


def is_mlx_array(x: Any) -> bool:
    """Whether ``x`` is an MLX array (checked by type, without importing MLX)."""
    return library_name(x) == "mlx" and type(x).__name__ == "array"


def _adapter(x: Any) -> ModuleType | None:
    path = ADAPTERS.get(library_name(x))
    return None if path is None else importlib.import_module(path)


def array_namespace(*arrays: Any) -> Any:
    """Return the array-API namespace shared by ``arrays``.

    Python scalars and ``None`` are ignored. Arrays from different libraries raise
    a :class:`TypeError` that names the libraries involved.

    Examples
    --------
    >>> array_namespace(np.ones(2), None, 1.0).__name__
    'array_api_compat.numpy'
    >>> array_namespace(np.ones(2), [1.0])
    Traceback (most recent call last):
    ...
    TypeError: inputs come from different array libraries (builtins, numpy); convert them to one library first
    """
    present = [a for a in arrays if a is not None and not isinstance(a, (bool, int, float))]
    if not present:
        raise TypeError("array_namespace needs at least one array")
    libraries = sorted({library_name(a) for a in present})
    if len(libraries) > 1:
        raise TypeError(
            f"inputs come from different array libraries ({', '.join(libraries)}); convert them to one library first"
        )
    adapter = _adapter(present[0])
    if adapter is not None:
        return adapter.namespace()
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        raise TypeError(
            f"unsupported array type {type(present[0]).__qualname__} from {libraries[0]!r}: expected an "
            "array of numpy, array-api-strict, torch, jax, mlx, tensorflow or keras"
        ) from exc


def device_of(x: Any) -> Any:
    """The device ``x`` lives on, in its library's own terms.

    Examples
    --------
    >>> device_of(np.ones(2))
    'cpu'
    """
    adapter = _adapter(x)
    return adapter.device(x) if adapter is not None else array_api_compat.device(x)


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of any supported library to a NumPy array on the host.

    Examples
    --------
    >>> to_numpy(np.arange(3)).tolist()
    [0, 1, 2]
    """
    if isinstance(x, np.ndarray):
        return x
    adapter = _adapter(x)
    if adapter is not None:
        return np.asarray(adapter.to_numpy(x))
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)
