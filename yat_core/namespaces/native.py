"""Native convolutions: the fast path of :mod:`yat_core.conv`, one per library that has one.

The array-API unfold in :mod:`yat_core.conv` is the reference; a library's own
convolution may compute the ``dot`` and patch-norm terms instead (``native=True``),
held to the same numbers by the tests. Each function imports its framework when
called, so this module imports none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["native_conv", "register_native_conv"]

#: Convolutions registered with :func:`register_native_conv`, by library name.
_NATIVE_CONVS: dict[str, Callable[..., Any]] = {}


def _torch_conv(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    import torch.nn.functional as F

    if any(lo != hi for lo, hi in padding):
        x = F.pad(x, [v for lo_hi in reversed(padding) for v in lo_hi])  # F.pad lists the last axis first
        padding = ((0, 0),) * len(padding)
    conv = getattr(F, f"conv{w.ndim - 2}d")
    return conv(x, w, stride=stride, padding=tuple(lo for lo, _ in padding), dilation=dilation, groups=groups)


def _jax_conv(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    import jax

    # Default dimension numbers are channels first: (N, C, *spatial) and (out, in/groups, *k).
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=tuple(stride),
        padding=tuple(padding),
        rhs_dilation=tuple(dilation),
        feature_group_count=groups,
        precision=jax.lax.Precision.HIGHEST,
    )


def _mlx_conv(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    import mlx.core as mx

    d = w.ndim - 2
    last = (0, *range(2, 2 + d), 1)  # channels first -> channels last (MLX's layout)
    x, w = mx.transpose(x, last), mx.transpose(w, last)
    geometry: dict[str, Any] = {
        "stride": list(stride),
        "padding": ([lo for lo, _ in padding], [hi for _, hi in padding]),
        "kernel_dilation": list(dilation),
    }
    if groups == 1 or d < 3:
        y = mx.conv_general(x, w, groups=groups, **geometry)
    else:  # MLX 0.32 groups only 1-D and 2-D convolutions: one convolution per group
        cin, cout = x.shape[-1] // groups, w.shape[0] // groups
        y = mx.concatenate(
            [
                mx.conv_general(x[..., g * cin : (g + 1) * cin], w[g * cout : (g + 1) * cout], **geometry)
                for g in range(groups)
            ],
            axis=-1,
        )
    return mx.transpose(y, (0, d + 1, *range(1, d + 1)))


def _tf_conv(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    """The convolution :func:`yat_core.conv.yat_conv` takes ``dot`` and ``|patch|^2`` from (``native=True``).

    ``tf.nn.convolution`` on channels-last data (TensorFlow's CPU kernels have no
    channels-first convolution), with the groups of a 3-D convolution split by hand
    and, where the convolution is both strided and dilated (which
    ``tf.nn.convolution`` refuses), the strides taken from the stride-1 output.
    Channels-first input and the core's kernel layout, as the core hands them over.
    """
    import tensorflow as tf

    d = len(stride)
    if any(lo or hi for lo, hi in padding):
        x = tf.pad(x, [(0, 0), (0, 0), *padding])
    x = tf.transpose(x, (0, *range(2, d + 2), 1))
    kernel = tf.transpose(w, (*range(2, d + 2), 1, 0))
    subsample = max(stride) > 1 and max(dilation) > 1

    def conv(xs: Any, ks: Any) -> Any:
        strides = (1,) * d if subsample else tuple(stride)
        # data_format named: left as None, TensorFlow 2.21 cannot differentiate an eager Conv3D.
        data_format = ("NWC", "NHWC", "NDHWC")[d - 1]
        return tf.nn.convolution(
            xs, ks, strides=strides, padding="VALID", data_format=data_format, dilations=tuple(dilation)
        )

    if groups > 1 and d == 3:
        ci, co = int(x.shape[-1]) // groups, int(w.shape[0]) // groups
        y = tf.concat(
            [conv(x[..., i * ci : (i + 1) * ci], kernel[..., i * co : (i + 1) * co]) for i in range(groups)], axis=-1
        )
    else:
        y = conv(x, kernel)
    if subsample:
        y = y[(slice(None), *(slice(None, None, s) for s in stride), Ellipsis)]
    return tf.transpose(y, (0, d + 1, *range(1, d + 1)))


def _keras_conv(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    """The convolution :func:`yat_core.conv.yat_conv` takes ``dot`` and ``|patch|^2`` from (``native=True``).

    Channels first, the core's kernel layout. On the jax and torch backends it is the
    core's own (:func:`yat_core.namespaces.native.native_conv`; JAX at the highest
    precision); on tensorflow ``keras.ops.conv`` channels last, with the groups of a 3-D
    convolution split by hand and strides taken from the stride-1 output where the
    convolution is also dilated (TensorFlow's CPU kernels have neither).
    """
    import keras
    from keras import ops

    from yat_core.namespaces import array_namespace

    core = native_conv(array_namespace(x)) if not isinstance(x, keras.KerasTensor) else None
    if core is not None and core is not _keras_conv:
        return core(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    d = len(stride)
    if any(lo or hi for lo, hi in padding):
        x = ops.pad(x, [(0, 0), (0, 0), *padding])
    x = ops.transpose(x, (0, *range(2, d + 2), 1))
    kernel = ops.transpose(w, (*range(2, d + 2), 1, 0))
    subsample = max(stride) > 1 and max(dilation) > 1

    def conv(xs: Any, ks: Any) -> Any:
        strides = (1,) * d if subsample else tuple(stride)
        return ops.conv(xs, ks, strides=strides, padding="valid", data_format="channels_last", dilation_rate=dilation)

    if groups > 1 and d == 3:
        ci, co = int(x.shape[-1]) // groups, int(w.shape[0]) // groups
        y = ops.concatenate(
            [conv(x[..., i * ci : (i + 1) * ci], kernel[..., i * co : (i + 1) * co]) for i in range(groups)], axis=-1
        )
    else:
        y = conv(x, kernel)
    if subsample:
        y = y[(slice(None), *(slice(None, None, s) for s in stride), Ellipsis)]
    return ops.transpose(y, (0, d + 1, *range(1, d + 1)))


_BUILTIN_NATIVE_CONVS: dict[str, Callable[..., Any]] = {
    "torch": _torch_conv,
    "jax": _jax_conv,
    "mlx": _mlx_conv,
    "tf": _tf_conv,
    "keras": _keras_conv,
}


def _namespace_library(xp: Any) -> str:
    name = str(getattr(xp, "__name__", ""))
    for prefix in ("array_api_compat.", "yat_core.namespaces."):
        if name.startswith(prefix):
            return name[len(prefix) :].split(".")[0]
    return name.split(".")[0]


def register_native_conv(library: str, conv: Callable[..., Any] | None) -> None:
    """Register (or, with ``None``, remove) ``library``'s native convolution for :func:`native_conv`.

    ``conv(x, w, *, stride, padding, dilation, groups)`` takes channels-first ``x``
    ``(N, C, *spatial)``, a kernel ``(out, C/groups, *k)``, tuples of strides and
    dilations, ``padding`` as one ``(before, after)`` pair of ints >= 0 per spatial
    dimension, and returns the cross-correlation ``(N, out, *spatial_out)`` as
    ``torch.nn.functional.conv2d`` computes it.

    Examples
    --------
    >>> register_native_conv("numpy", None)  # nothing registered for NumPy: a no-op
    """
    if conv is None:
        _NATIVE_CONVS.pop(library, None)
    else:
        _NATIVE_CONVS[library] = conv


def native_conv(xp: Any) -> Callable[..., Any] | None:
    """The native convolution of namespace ``xp``'s library, or ``None`` when it has none.

    Built in: torch (``torch.nn.functional.conv{1,2,3}d``), JAX
    (``jax.lax.conv_general_dilated``) and MLX (``mx.conv_general``); others come from
    :func:`register_native_conv`. :func:`yat_core.conv.yat_conv` uses it for the ``dot``
    and patch-norm terms with ``native=True``; the array-API unfold stays the default
    and the reference.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> native_conv(xp) is None
    True
    """
    library = _namespace_library(xp)
    return _NATIVE_CONVS.get(library) or _BUILTIN_NATIVE_CONVS.get(library)
