"""Native convolutions, pooling and gradient stops: fast paths of the core, one per library that has one.

The array-API unfold in :mod:`yat_core.conv` is the reference; a library's own
convolution may compute the ``dot`` and patch-norm terms instead (``native=True``),
held to the same numbers by the tests. Each function imports its framework when
called, so this module imports none.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

__all__ = [
    "native_conv",
    "native_conv_last",
    "native_conv_vjp",
    "native_max_pool",
    "register_native_conv",
    "register_native_conv_last",
    "register_native_conv_vjp",
    "stop_gradient",
]

#: Convolutions registered with :func:`register_native_conv`, by library name.
_NATIVE_CONVS: dict[str, Callable[..., Any]] = {}
#: Channels-last convolutions registered with :func:`register_native_conv_last`, by library name.
_NATIVE_CONVS_LAST: dict[str, Callable[..., Any]] = {}
#: Convolution gradients registered with :func:`register_native_conv_vjp`, by library name.
_NATIVE_CONV_VJPS: dict[str, Callable[..., Any]] = {}


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


def _torch_conv_vjp(x: Any, w: Any, g: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    """Gradients ``(d/dx, d/dw)`` of ``sum(g * _torch_conv(x, w, ...))``: ATen's own convolution backward."""
    import torch
    import torch.nn.functional as F

    d = w.ndim - 2
    crop = None
    if any(lo != hi for lo, hi in padding):
        spatial = tuple(x.shape[2:])
        x = F.pad(x, [v for lo_hi in reversed(padding) for v in lo_hi])
        crop = (slice(None), slice(None), *(slice(lo, lo + n) for (lo, _), n in zip(padding, spatial)))
        padding = ((0, 0),) * d
    g_x, g_w, _ = torch.ops.aten.convolution_backward(
        g,
        x,
        w,
        None,
        list(stride),
        [lo for lo, _ in padding],
        list(dilation),
        False,
        [0] * d,
        groups,
        [True, True, False],
    )
    return (g_x if crop is None else g_x[crop]), g_w


def _jax_conv_vjp(x: Any, w: Any, g: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    """Gradients ``(d/dx, d/dw)`` of ``sum(g * _jax_conv(x, w, ...))``, by ``jax.vjp``."""
    import jax

    def conv(a: Any, k: Any) -> Any:
        return _jax_conv(a, k, stride=stride, padding=padding, dilation=dilation, groups=groups)

    return jax.vjp(conv, x, w)[1](g)


def _mlx_conv_vjp(x: Any, w: Any, g: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    """Gradients ``(d/dx, d/dw)`` of ``sum(g * _mlx_conv(x, w, ...))``, by ``mx.vjp``."""
    import mlx.core as mx

    def conv(a: Any, k: Any) -> Any:
        return _mlx_conv(a, k, stride=stride, padding=padding, dilation=dilation, groups=groups)

    _, grads = mx.vjp(conv, [x, w], [g])
    return grads[0], grads[1]


def _jax_conv_last(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    """:func:`_jax_conv` on channels-last ``x`` ``(N, *spatial, C)``, returning ``(N, *spatial_out, out)``.

    XLA's CPU convolutions work channels last: the Yat combination then runs on
    the convolution's own layout, with no transposes of the full-size output inside
    the fused elementwise code (several times faster there on CPU).
    """
    import jax

    d = w.ndim - 2
    spatial = "DHW"[3 - d :]
    numbers = (f"N{spatial}C", f"OI{spatial}", f"N{spatial}C")
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=tuple(stride),
        padding=tuple(padding),
        rhs_dilation=tuple(dilation),
        feature_group_count=groups,
        dimension_numbers=numbers,
        precision=jax.lax.Precision.HIGHEST,
    )


def _mlx_im2col_conv(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    """Channels-last convolution as one matrix product on the unfolded patches (MLX on the CPU).

    MLX 0.32's CPU convolution kernels (and their gradients) are several times slower
    than a matrix product on the patches (one strided slice per kernel offset): on the
    Yat CNN's 32->64 3x3 layer at batch 128, 210 ms against ~50 ms forward.
    """
    import mlx.core as mx

    d = w.ndim - 2
    if any(lo or hi for lo, hi in padding):
        x = mx.pad(x, [(0, 0), *padding, (0, 0)])
    kernel = tuple(int(k) for k in w.shape[2:])
    n, c, n_out = x.shape[0], x.shape[-1], w.shape[0]
    out = tuple((x.shape[1 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(d))
    slices = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = (slice(None),) + tuple(
            slice(o * dl, o * dl + (m - 1) * st + 1, st) for o, dl, m, st in zip(offset, dilation, out, stride)
        )
        slices.append(x[index])
    # (N, *out, C, K): per group, (C/groups, K) flattens as the kernel's (in/groups, *k) does
    patches = mx.reshape(mx.stack(slices, axis=-1), (-1, groups, c // groups * len(slices)))
    if groups == 1:
        y = patches[:, 0, :] @ mx.reshape(w, (n_out, -1)).T
    else:
        y = mx.einsum("mgf,gof->mgo", patches, mx.reshape(w, (groups, n_out // groups, -1)))
    return mx.reshape(y, (n, *out, n_out))


def _mlx_conv_last(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    """MLX's own layout: channels-last ``x`` ``(N, *spatial, C)`` -> ``(N, *spatial_out, out)``.

    On the CPU :func:`_mlx_im2col_conv` (faster there); elsewhere ``mx.conv_general``.
    """
    import mlx.core as mx

    geometry: dict[str, Any] = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    if mx.default_device().type == mx.DeviceType.cpu:
        return _mlx_im2col_conv(x, w, **geometry)
    d = w.ndim - 2
    w = mx.transpose(w, (0, *range(2, 2 + d), 1))  # (out, in/groups, *k) -> (out, *k, in/groups)
    options: dict[str, Any] = {
        "stride": list(stride),
        "padding": ([lo for lo, _ in padding], [hi for _, hi in padding]),
        "kernel_dilation": list(dilation),
    }
    if groups == 1 or d < 3:
        return mx.conv_general(x, w, groups=groups, **options)
    # MLX 0.32 groups only 1-D and 2-D convolutions: one convolution per group
    cin, cout = x.shape[-1] // groups, w.shape[0] // groups
    return mx.concatenate(
        [
            mx.conv_general(x[..., g * cin : (g + 1) * cin], w[g * cout : (g + 1) * cout], **options)
            for g in range(groups)
        ],
        axis=-1,
    )


def _mlx_conv(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    import mlx.core as mx

    d = w.ndim - 2
    x = mx.transpose(x, (0, *range(2, 2 + d), 1))  # channels first -> channels last (MLX's layout)
    y = _mlx_conv_last(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
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


def _torch_max_pool(x: Any, window: tuple[int, ...]) -> Any:
    import torch.nn.functional as F

    return getattr(F, f"max_pool{len(window)}d")(x, window)


def _torch_max_pool_vjp(x: Any, g: Any, window: tuple[int, ...]) -> Any:
    """Gradient of ``sum(g * _torch_max_pool(x, window))``: ATen's own, to each window's first maximum."""
    import torch
    import torch.nn.functional as F

    if len(window) == 1:  # ATen has no 1-D pooling backward: a 2-D pool of height 1
        g_x = _torch_max_pool_vjp(x[:, :, None, :], g[:, :, None, :], (1, *window))
        return g_x[:, :, 0, :]
    d = len(window)
    _, indices = getattr(F, f"max_pool{d}d")(x, window, return_indices=True)
    backward = getattr(torch.ops.aten, f"max_pool{d}d_with_indices_backward")
    return backward(g, x, list(window), list(window), [0] * d, [1] * d, False, indices)


_BUILTIN_NATIVE_MAX_POOLS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "torch": (_torch_max_pool, _torch_max_pool_vjp),
}


_BUILTIN_NATIVE_CONVS: dict[str, Callable[..., Any]] = {
    "torch": _torch_conv,
    "jax": _jax_conv,
    "mlx": _mlx_conv,
    "tf": _tf_conv,
    "keras": _keras_conv,
}
_BUILTIN_NATIVE_CONV_VJPS: dict[str, Callable[..., Any]] = {
    "torch": _torch_conv_vjp,
    "jax": _jax_conv_vjp,
    "mlx": _mlx_conv_vjp,
}
_BUILTIN_NATIVE_CONVS_LAST: dict[str, Callable[..., Any]] = {
    "jax": _jax_conv_last,
    "mlx": _mlx_conv_last,
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


def register_native_conv_last(library: str, conv: Callable[..., Any] | None) -> None:
    """Register (or, with ``None``, remove) ``library``'s channels-last convolution for :func:`native_conv_last`.

    As :func:`register_native_conv`, but ``x`` is ``(N, *spatial, C)`` and the result
    ``(N, *spatial_out, out)``; the kernel keeps the core's layout ``(out, C/groups, *k)``.
    Register one for a library whose convolutions (and the elementwise code around
    them) run faster channels last.

    Examples
    --------
    >>> register_native_conv_last("numpy", None)  # nothing registered for NumPy: a no-op
    """
    if conv is None:
        _NATIVE_CONVS_LAST.pop(library, None)
    else:
        _NATIVE_CONVS_LAST[library] = conv


def native_conv_last(xp: Any) -> Callable[..., Any] | None:
    """The channels-last native convolution of namespace ``xp``'s library, or ``None``.

    Built in: JAX (XLA's CPU convolutions and fusions are channels last) and MLX (its
    own layout). :func:`yat_core.conv.yat_conv` with ``native=True`` computes the whole
    Yat combination channels last where a library has one, and channels first with
    :func:`native_conv` otherwise (torch, whose convolutions are channels first).

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> native_conv_last(xp) is None
    True
    """
    library = _namespace_library(xp)
    return _NATIVE_CONVS_LAST.get(library) or _BUILTIN_NATIVE_CONVS_LAST.get(library)


def register_native_conv_vjp(library: str, conv_vjp: Callable[..., Any] | None) -> None:
    """Register (or, with ``None``, remove) ``library``'s convolution gradient for :func:`native_conv_vjp`.

    ``conv_vjp(x, w, g, *, stride, padding, dilation, groups)`` returns the gradients
    ``(d/dx, d/dw)`` of ``sum(g * conv(x, w, ...))`` for the convolution
    :func:`register_native_conv` describes (channels first, the core's kernel layout).

    Examples
    --------
    >>> register_native_conv_vjp("numpy", None)  # nothing registered for NumPy: a no-op
    """
    if conv_vjp is None:
        _NATIVE_CONV_VJPS.pop(library, None)
    else:
        _NATIVE_CONV_VJPS[library] = conv_vjp


def native_conv_vjp(xp: Any) -> Callable[..., Any] | None:
    """The gradient of :func:`native_conv`'s convolution for namespace ``xp``'s library, or ``None``.

    Built in: torch (ATen's ``convolution_backward``), JAX (``jax.vjp``) and MLX
    (``mx.vjp``). :func:`yat_core.conv.yat_conv_vjp` and
    :func:`yat_core.conv.linear_conv_vjp` with ``native=True`` feed it the gradient of
    the ``dot`` term, so one pair of backward convolutions serves the whole layer.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> native_conv_vjp(xp) is None
    True
    """
    library = _namespace_library(xp)
    return _NATIVE_CONV_VJPS.get(library) or _BUILTIN_NATIVE_CONV_VJPS.get(library)


def native_max_pool(xp: Any) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``(pool, pool_vjp)``: the native max-pooling of namespace ``xp``'s library, or ``None``.

    ``pool(x, window)`` and ``pool_vjp(x, g, window)`` pool channels-first ``x`` over
    non-overlapping windows (a tuple per spatial dimension) as
    :func:`yat_core.conv.max_pool` does: the remainder dropped, the gradient to each
    window's first maximum. Built in for torch, whose compiled autodiff and analytic
    steps both run its pooling kernels far faster than the array-API windows.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> native_max_pool(xp) is None
    True
    """
    return _BUILTIN_NATIVE_MAX_POOLS.get(_namespace_library(xp))


def _stop_gradient_builtin(library: str) -> Callable[[Any], Any] | None:
    if library == "torch":
        return lambda x: x.detach()
    if library == "jax":
        import jax

        return jax.lax.stop_gradient
    if library == "mlx":
        import mlx.core as mx

        return mx.stop_gradient
    if library == "tf":
        import tensorflow as tf

        return tf.stop_gradient
    if library == "keras":
        from keras import ops

        return ops.stop_gradient
    return None


def stop_gradient(x: Any, xp: Any) -> Any:
    """``x`` as a constant to its library's autodiff; ``x`` itself where the library has none.

    For values whose gradient is zero in exact arithmetic, such as the row maximum a
    softmax subtracts: autodiff would otherwise compute and store that zero through a
    pass over the whole array (in attention, a second pass over every score matrix).

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> stop_gradient(xp.asarray([1.0, 2.0]), xp)
    array([1., 2.])
    """
    stop = _stop_gradient_builtin(_namespace_library(xp))
    return x if stop is None else stop(x)
