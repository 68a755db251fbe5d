"""The one seam between yat_core and array-api-compat.

Every namespace lookup and device query in the package goes through here, so a
library that array-api-compat does not cover (MLX) is handled in one place: its
namespace comes from ``yat_core.backends.mlx``, imported only when an MLX array
is actually seen.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = ["array_namespace", "device_of", "is_mlx_array", "to_numpy", "library_name"]


def is_mlx_array(x: Any) -> bool:
    """Whether ``x`` is an MLX array (checked by type, without importing MLX)."""
    cls = type(x)
    return cls.__module__.startswith("mlx") and cls.__name__ == "array"


def library_name(x: Any) -> str:
    """Short name of the library that owns ``x`` (for error messages)."""
    return type(x).__module__.split(".")[0]


def array_namespace(*arrays: Any) -> ModuleType:
    """Return the array-API namespace shared by ``arrays``.

    Python scalars and ``None`` are ignored. Arrays from different libraries
    raise a :class:`TypeError` that names the libraries involved.

    Examples
    --------
    >>> import numpy as np
    >>> array_namespace(np.ones(2), None, 1.0).__name__
    'array_api_compat.numpy'
    """
    present = [a for a in arrays if a is not None and not isinstance(a, (bool, int, float))]
    if not present:
        raise TypeError("array_namespace needs at least one array")
    libraries = sorted({library_name(a) for a in present})
    if len(libraries) > 1:
        raise TypeError(
            "inputs come from different array libraries "
            f"({', '.join(libraries)}); convert them to one library first"
        )
    if is_mlx_array(present[0]):
        from yat_core.backends.mlx import mlx_namespace

        return mlx_namespace()
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        raise TypeError(
            f"unsupported array type {type(present[0]).__qualname__} from "
            f"{libraries[0]!r}: expected an array-API array (numpy, torch, jax, mlx, ...)"
        ) from exc


def device_of(x: Any) -> Any:
    """The device ``x`` lives on, in its library's own terms."""
    if is_mlx_array(x):
        import mlx.core as mx

        return mx.default_device()
    return array_api_compat.device(x)


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of any supported library to a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)
