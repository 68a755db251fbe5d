"""What the TensorFlow and Keras adapters share: array-API calls built from a library's ops.

Both libraries name dtypes (``tf.float32.name``, ``keras`` dtype strings) the way
the array API does, and both take ``axis`` / ``keepdims`` keywords in their
reductions; only the functions differ. :func:`build_namespace` turns a table of a
library's functions into the array-API signatures the core calls (positional-only
arrays, keyword-only options), so each adapter lists functions and quirks, nothing
more.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

__all__ = ["isdtype_by_name", "build_namespace", "DTYPE_NAMES"]

#: The dtype attributes every namespace exposes.
DTYPE_NAMES = ("bool", "uint8", "int32", "int64", "float32", "float64")


def isdtype_by_name(name: str, kind: Any, kind_name: Callable[[Any], str]) -> bool:
    """``xp.isdtype`` for a dtype called ``name`` (``"float32"``, ``"int64"``, ...).

    Examples
    --------
    >>> isdtype_by_name("float32", "real floating", str), isdtype_by_name("uint8", "signed integer", str)
    (True, False)
    >>> isdtype_by_name("int32", ("bool", "integral"), str)
    True
    """
    if isinstance(kind, tuple):
        return any(isdtype_by_name(name, k, kind_name) for k in kind)
    if not isinstance(kind, str):
        return name == kind_name(kind)
    kinds = {
        "bool": name == "bool",
        "real floating": name.startswith("float") or name == "bfloat16",
        "complex floating": name.startswith("complex"),
        "signed integer": name.startswith("int"),
        "unsigned integer": name.startswith("uint"),
        "integral": name.startswith(("int", "uint")),
        "numeric": name != "bool",
    }
    if kind not in kinds:
        raise ValueError(f"unknown dtype kind {kind!r}")
    return kinds[kind]


def build_namespace(
    name: str,
    *,
    dtype_name: Callable[[Any], str],
    dtype: Callable[[str], Any],
    cast: Callable[[Any, Any], Any],
    reduce: dict[str, Callable[..., Any]],
    argmax: Callable[..., Any],
    arange: Callable[..., Any],
    expand_dims: Callable[[Any, int], Any],
    reshape: Callable[[Any, Any], Any],
    take: Callable[..., Any],
    join: dict[str, Callable[..., Any]] | None = None,
    **elementwise: Callable[..., Any],
) -> types.SimpleNamespace:
    """An array-API namespace over one library's functions.

    ``dtype_name`` names any dtype object, ``dtype`` makes the library's dtype from a
    name, ``cast(x, dtype)`` converts; ``reduce`` maps ``"sum"``, ``"max"``,
    ``"mean"`` to functions taking ``axis=`` and ``keepdims=``; ``argmax(x, axis,
    keepdims)``; ``join`` maps ``"concat"``, ``"stack"`` to functions taking a list and
    ``axis=``; ``elementwise`` functions (``asarray``, ``where``, ``sqrt``, ...) are
    taken as they are.

    Examples
    --------
    >>> import numpy as np
    >>> xp = build_namespace("demo", dtype_name=lambda d: np.dtype(d).name, dtype=np.dtype,
    ...     cast=lambda x, d: x.astype(d), reduce={"sum": np.sum, "max": np.max, "mean": np.mean},
    ...     argmax=lambda x, axis, keepdims: np.argmax(x, axis=axis, keepdims=keepdims), arange=np.arange,
    ...     expand_dims=np.expand_dims, reshape=np.reshape, take=np.take, sqrt=np.sqrt)
    >>> xp.sum(np.ones((2, 3)), axis=1, dtype=xp.int32).tolist(), xp.isdtype(xp.float32, "real floating")
    ([3, 3], True)
    """

    def isdtype(dt: Any, kind: Any) -> bool:
        return isdtype_by_name(dtype_name(dt), kind, dtype_name)

    def astype(x: Any, dt: Any, /, *, copy: bool = True, device: Any = None) -> Any:
        return cast(x, dt)

    def reduction(fn: Callable[..., Any]) -> Callable[..., Any]:
        def reduced(x: Any, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:
            return fn(x if dtype is None else cast(x, dtype), axis=axis, keepdims=keepdims)

        reduced.__name__ = fn.__name__
        return reduced

    def argmax_(x: Any, /, *, axis: int | None = None, keepdims: bool = False) -> Any:
        return argmax(x, axis, keepdims)

    def arange_(start: Any, /, stop: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None) -> Any:
        return arange(start, stop, step, dtype=None if dtype is None else dtype_name(dtype))

    def expand_dims_(x: Any, /, *, axis: int = 0) -> Any:
        return expand_dims(x, axis)

    def reshape_(x: Any, /, shape: tuple[int, ...], *, copy: Any = None) -> Any:
        return reshape(x, shape)

    def take_(x: Any, indices: Any, /, *, axis: int | None = None) -> Any:
        return take(x, indices, axis=axis)

    def joined(fn: Callable[..., Any]) -> Callable[..., Any]:
        def join_(arrays: Any, /, *, axis: int = 0) -> Any:
            return fn(list(arrays), axis=axis)

        return join_

    def matrix_transpose(x: Any, /) -> Any:
        axes = list(range(len(x.shape)))
        axes[-2:] = axes[-1], axes[-2]
        return elementwise["permute_dims"](x, axes)

    return types.SimpleNamespace(
        __name__=name,
        inf=math.inf,
        isdtype=isdtype,
        astype=astype,
        **{key: reduction(fn) for key, fn in reduce.items()},
        argmax=argmax_,
        arange=arange_,
        expand_dims=expand_dims_,
        reshape=reshape_,
        take=take_,
        matrix_transpose=matrix_transpose,
        **{key: joined(fn) for key, fn in (join or {}).items()},
        **elementwise,
        **{d: dtype(d) for d in DTYPE_NAMES},
    )
