"""Yat convolution and transposed convolution, and non-overlapping pooling, in array-API terms.

The convolution is the ⵟ-product of every input patch with every filter. For ``x`` of
shape ``(N, C, *spatial)`` (channels first) and kernel ``w`` of shape
``(out, C/groups, *kernel)``, with stride, padding, dilation and groups as in
``torch.nn.functional.conv2d``::

    dot   = conv(x, w)                          (N, out, *spatial_out)
    psq   = conv(x*x, ones)                     |patch|^2
    wsq_o = sum(w_o^2)                          per output filter
    dist  = max(psq + wsq - 2 dot, 0)
    y     = alpha * (dot + bias)^2 / (dist + epsilon)

The array API has no convolution: :func:`yat_conv` unfolds (im2col) the padded input
into ``(N, *spatial_out, C/groups * prod(kernel))`` patches per group, with array-API
operations only (zero padding by concatenation, one strided slice per kernel offset,
stack, reshape, permute), and hands each group's patches and flattened filters to
:func:`yat_core.product.yat_product`, the one implementation of the formula. Zero
padding puts zeros in the patch vector: they add nothing to ``dot`` or ``psq``.

:func:`yat_conv_transpose` (torch's ``conv_transpose`` layout, kernel
``(in, out/groups, *kernel)``) is the direct Yat convolution of the zero-inserted
input with the flipped, regrouped kernel and asymmetric padding, so its ``dot`` is
``conv_transpose(x, w)``, its patch norm ``conv_transpose(x*x, ones)`` and its kernel
norm is taken per output channel over that group's inputs.

With ``native=True`` the ``dot`` and ``|patch|^2`` terms come from the library's own
convolution instead (:func:`yat_core.namespaces.native.native_conv`), the fast path; the
unfold stays the default and the reference the tests hold every backend to.

Error model: the convolution's error is that of a dense Yat product whose dot
products have length ``in/groups * prod(kernel)`` (plus the patch norm, a sum of
squares of the same length), so the parity suite's dense error model applies per
output element.

:func:`yat_conv_vjp` and :func:`yat_conv_transpose_vjp` are the analytic gradients
(the NumPy reference backend's): :func:`yat_core.product.yat_product_vjp` on the
patches, then the adjoint of the unfold (a fold, written with zero insertion, zero
padding and a sum). :func:`yat_conv_forward` and :func:`yat_conv_backward` split
:func:`yat_conv_vjp` in two, so that a training step's backward pass reuses the forward
pass's convolution (as :func:`yat_core.product.yat_forward` does for the dense
product). Everything here runs on any array-API namespace and traces under
``jax.jit``, ``torch.compile`` and ``mx.compile``: shapes drive every Python branch,
never array values; no host conversion, no in-place mutation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from yat_core.namespaces import array_namespace, device_of
from yat_core.namespaces.native import native_conv, native_conv_last, native_conv_vjp, native_max_pool
from yat_core.product import (
    DEFAULT_EPSILON,
    SPHERICAL_NORM_EPS,
    RatioParts,
    validate_epsilon,
    yat_product,
    yat_product_vjp,
    yat_ratio,
    yat_ratio_vjp,
)

__all__ = [
    "yat_conv",
    "yat_conv_transpose",
    "yat_conv_vjp",
    "yat_conv_transpose_vjp",
    "yat_conv_forward",
    "yat_conv_backward",
    "ConvResiduals",
    "linear_conv",
    "linear_conv_vjp",
    "ConvGrads",
    "conv_output_shape",
    "conv_pads",
    "conv_transpose_output_shape",
    "max_pool",
    "avg_pool",
    "max_pool_vjp",
    "avg_pool_vjp",
]

Array = Any
IntOrTuple = int | Sequence[int]
Pads = tuple[tuple[int, int], ...]


class ConvGrads(NamedTuple):
    """Gradients of a scalar loss through :func:`yat_conv` or :func:`yat_conv_transpose`.

    A field is ``None`` where the matching input was a constant (a Python number or
    ``None``), so it has no gradient.
    """

    x: Array
    w: Array
    bias: Array | None
    alpha: Array | None
    epsilon: Array | None


# ---------------------------------------------------------------- options


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _per_dim(value: Any, n: int, name: str, minimum: int) -> tuple[int, ...]:
    """``value`` (an int or one int per spatial dimension) as an ``n``-tuple of ints >= ``minimum``."""
    if _is_int(value):
        values: tuple[int, ...] = (int(value),) * n
    elif isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(
                f"{name} must be an int or a tuple of {n} ints (one per spatial dimension), got {tuple(value)!r}"
            )
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name} must hold ints, got {tuple(value)!r}")
        values = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    return values


def _spatial_dims(x: Array, w: Array, layout: str) -> int:
    for name, a in (("x", x), ("w", w)):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if w.ndim not in (3, 4, 5):
        raise ValueError(
            f"kernel w must have 3, 4 or 5 dimensions {layout} for 1, 2 or 3 spatial dimensions, "
            f"got shape {tuple(w.shape)}"
        )
    if x.ndim != w.ndim:
        raise ValueError(
            f"x must have {w.ndim} dimensions (N, C, *spatial) to match kernel w of shape {tuple(w.shape)} "
            f"({w.ndim - 2} spatial), got shape {tuple(x.shape)}"
        )
    return int(w.ndim) - 2


def _check_dtypes(x: Array, w: Array, xp: Any) -> None:
    for name, a in (("x", x), ("w", w)):
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(f"{name} must be a real floating array, got dtype {a.dtype}")
    if x.dtype != w.dtype:
        raise TypeError(f"x and w must share a dtype, got {x.dtype} and {w.dtype}")


def _check_options(bias: Any, alpha: Any, epsilon: Any, spherical: Any, n_out: int) -> None:
    validate_epsilon(epsilon)
    if not isinstance(spherical, bool):
        raise TypeError(f"spherical must be a bool, got {spherical!r}")
    for name, value in (("bias", bias), ("alpha", alpha), ("epsilon", epsilon)):
        if value is not None and type(value) not in (int, float) and not hasattr(value, "shape"):
            raise TypeError(f"{name} must be an array, a number or None, got {type(value).__name__}")
    if bias is not None and hasattr(bias, "shape") and tuple(bias.shape) != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},) (one per output channel), got {tuple(bias.shape)}")
    if alpha is not None and hasattr(alpha, "shape") and tuple(alpha.shape) not in ((), (1,)):
        raise ValueError(f"alpha must be a scalar, got shape {tuple(alpha.shape)}")


def _check_groups(groups: Any, channels_in: int, channels_out: int | None) -> int:
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    if channels_in % groups:
        raise ValueError(f"groups={groups} must divide the {channels_in} input channels")
    if channels_out is not None and channels_out % groups:
        raise ValueError(f"groups={groups} must divide the {channels_out} output channels")
    return int(groups)


def conv_pads(padding: Any, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> Pads:
    """The (low, high) zero padding per spatial dimension that ``padding`` means for a convolution.

    ``padding`` is an int, a tuple of ints, ``"valid"`` or ``"same"`` (stride 1 only; an
    odd total puts its extra unit on the high side, as PyTorch does). The ONNX exporter
    writes these pads, so an exported model pads exactly as :func:`yat_conv` does.

    Examples
    --------
    >>> conv_pads("same", (4, 3), (1, 1), (1, 2))
    ((1, 2), (2, 2))
    >>> conv_pads(1, (3,), (2,), (1,))
    ((1, 1),)
    """
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(
                    f"padding='same' needs stride 1 in every dimension (as torch.nn.functional.conv2d requires), "
                    f"got stride={stride}"
                )
            # torch's rule: the odd unit of an even total goes on the right.
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    return tuple((p, p) for p in _per_dim(padding, n, "padding", 0))


def _out_size(size: int, pads: tuple[int, int], k: int, s: int, d: int) -> int:
    return (size + pads[0] + pads[1] - d * (k - 1) - 1) // s + 1


def _check_fits(
    spatial: tuple[int, ...], pads: Pads, kernel: tuple[int, ...], dilation: tuple[int, ...], what: str
) -> None:
    for i, (n, (lo, hi), k, d) in enumerate(zip(spatial, pads, kernel, dilation)):
        span = d * (k - 1) + 1
        if n + lo + hi < span:
            raise ValueError(
                f"kernel (dilated) of size {span} in spatial dimension {i} is larger than the {what} of size "
                f"{n + lo + hi} (input {n}, padding {lo}+{hi}, kernel {k}, dilation {d})"
            )


class _Conv(NamedTuple):
    """A validated direct convolution: what the unfold and the product need."""

    pads: Pads
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    kernel: tuple[int, ...]
    out: tuple[int, ...]


def _plan_conv(x: Array, w: Array, stride: Any, padding: Any, dilation: Any, groups: Any) -> _Conv:
    n = _spatial_dims(x, w, "(out, in/groups, *kernel)")
    kernel = tuple(int(k) for k in w.shape[2:])
    strides = _per_dim(stride, n, "stride", 1)
    dilations = _per_dim(dilation, n, "dilation", 1)
    g = _check_groups(groups, int(x.shape[1]), int(w.shape[0]))
    if x.shape[1] != w.shape[1] * g:
        raise ValueError(
            f"x has {x.shape[1]} channels but kernel w of shape {tuple(w.shape)} with groups={g} expects "
            f"w.shape[1] * groups = {w.shape[1] * g} (kernel layout is (out, in/groups, *kernel))"
        )
    pads = conv_pads(padding, kernel, strides, dilations)
    spatial = tuple(int(s) for s in x.shape[2:])
    _check_fits(spatial, pads, kernel, dilations, "padded input")
    out = tuple(_out_size(*a) for a in zip(spatial, pads, kernel, strides, dilations))
    return _Conv(pads, strides, dilations, g, kernel, out)


def _plan_transpose(
    x: Array, w: Array, stride: Any, padding: Any, output_padding: Any, dilation: Any, groups: Any
) -> _Conv:
    """The direct convolution that equals the transposed one (on the zero-inserted input)."""
    n = _spatial_dims(x, w, "(in, out/groups, *kernel)")
    kernel = tuple(int(k) for k in w.shape[2:])
    strides = _per_dim(stride, n, "stride", 1)
    dilations = _per_dim(dilation, n, "dilation", 1)
    if isinstance(padding, str):
        raise ValueError(
            f"padding of a transposed convolution must be an int or a tuple (torch's conv_transpose has no "
            f"'same' or 'valid'), got {padding!r}"
        )
    pad = _per_dim(padding, n, "padding", 0)
    out_pad = _per_dim(output_padding, n, "output_padding", 0)
    for i, (op, s, d) in enumerate(zip(out_pad, strides, dilations)):
        if op >= s and op >= d:
            raise ValueError(
                f"output_padding must be smaller than either stride or dilation (as in torch), got "
                f"output_padding={op}, stride={s}, dilation={d} in spatial dimension {i}"
            )
    if x.shape[1] != w.shape[0]:
        raise ValueError(
            f"x has {x.shape[1]} channels but kernel w of shape {tuple(w.shape)} expects w.shape[0] = {w.shape[0]} "
            f"(transposed kernel layout is (in, out/groups, *kernel))"
        )
    g = _check_groups(groups, int(w.shape[0]), None)  # out = w.shape[1] * groups: always divisible
    spatial = tuple(int(s) for s in x.shape[2:])
    if any(i < 1 for i in spatial):
        raise ValueError(f"x must have every spatial size >= 1, got shape {tuple(x.shape)}")
    out = tuple(
        (i - 1) * s - 2 * p + d * (k - 1) + op + 1
        for i, s, p, d, k, op in zip(spatial, strides, pad, dilations, kernel, out_pad)
    )
    if any(o < 1 for o in out):
        raise ValueError(
            f"transposed convolution output size {out} must be >= 1 in every dimension; "
            f"(i-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1 with input {spatial}, stride {strides}, "
            f"padding {pad}, dilation {dilations}, kernel {kernel}, output_padding {out_pad}"
        )
    # The direct form: zero-inserted input of size (i-1)s+1, padded d(k-1)-p left and d(k-1)-p+op right.
    pads = tuple((d * (k - 1) - p, d * (k - 1) - p + op) for d, k, p, op in zip(dilations, kernel, pad, out_pad))
    return _Conv(pads, (1,) * n, dilations, g, kernel, out)


def conv_output_shape(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> tuple[int, ...]:
    """Output shape ``(N, out, *spatial_out)`` of :func:`yat_conv` (host-side, no arrays).

    Examples
    --------
    >>> conv_output_shape((2, 3, 28, 28), (8, 3, 3, 3), stride=2, padding=1)
    (2, 8, 14, 14)
    """
    xs, ws = _ShapeOnly(tuple(x_shape)), _ShapeOnly(tuple(w_shape))
    plan = _plan_conv(xs, ws, stride, padding, dilation, groups)
    return (int(x_shape[0]), int(w_shape[0]), *plan.out)


def conv_transpose_output_shape(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
) -> tuple[int, ...]:
    """Output shape ``(N, out, *spatial_out)`` of :func:`yat_conv_transpose` (host-side).

    Each spatial size is ``(i-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1``.

    Examples
    --------
    >>> conv_transpose_output_shape((2, 4, 7, 7), (4, 3, 3, 3), stride=2, padding=1, output_padding=1)
    (2, 3, 14, 14)
    """
    xs, ws = _ShapeOnly(tuple(x_shape)), _ShapeOnly(tuple(w_shape))
    plan = _plan_transpose(xs, ws, stride, padding, output_padding, dilation, groups)
    return (int(x_shape[0]), int(w_shape[1]) * plan.groups, *plan.out)


class _ShapeOnly:
    """Stands in for an array where only the shape is validated."""

    dtype = None

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)


# ---------------------------------------------------------------- array-API building blocks


def _take(a: Array, axis: int, start: int, stop: int, step: int = 1) -> Array:
    index = (slice(None),) * axis + (slice(start, stop, step), Ellipsis)
    return a[index]


def _zeros_along(a: Array, axis: int, n: int, xp: Any) -> Array:
    shape = list(a.shape)
    shape[axis] = n
    return xp.zeros(tuple(shape), dtype=a.dtype, device=device_of(a))


def _pad(a: Array, pads: Pads, xp: Any) -> Array:
    """Zero-pad (or crop, where negative) the trailing ``len(pads)`` axes of ``a``."""
    first = a.ndim - len(pads)
    for i, (lo, hi) in enumerate(pads):
        axis = first + i
        size = int(a.shape[axis])
        if lo < 0 or hi < 0:
            a = _take(a, axis, max(-lo, 0), size - max(-hi, 0))
        parts = [a]
        if lo > 0:
            parts.insert(0, _zeros_along(a, axis, lo, xp))
        if hi > 0:
            parts.append(_zeros_along(a, axis, hi, xp))
        if len(parts) > 1:
            a = xp.concat(parts, axis=axis)
    return a


def _insert_zeros(a: Array, strides: tuple[int, ...], xp: Any) -> Array:
    """Put ``s - 1`` zeros between neighbours along each of the trailing axes: size ``n -> (n-1)s + 1``."""
    first = a.ndim - len(strides)
    for i, s in enumerate(strides):
        if s == 1:
            continue
        axis = first + i
        n = int(a.shape[axis])
        zero = xp.zeros_like(a)
        a = xp.stack([a] + [zero] * (s - 1), axis=axis + 1)
        shape = tuple(a.shape)  # not int(): a symbolic batch size (torch.export) must stay symbolic
        a = xp.reshape(a, shape[:axis] + (n * s,) + shape[axis + 2 :])
        a = _take(a, axis, 0, (n - 1) * s + 1)
    return a


def _offsets(kernel: tuple[int, ...]) -> list[tuple[int, ...]]:
    # C order: the flattened index of an offset matches w.reshape(out, in/groups * prod(kernel)).
    return list(itertools.product(*(range(k) for k in kernel)))


def _unfold(xpad: Array, plan: _Conv, xp: Any) -> Array:
    """``(N, C, *padded)`` -> patches ``(groups, N, *out, C/groups * prod(kernel))``."""
    n, c = int(xpad.shape[0]), int(xpad.shape[1])
    d = len(plan.kernel)
    slices = []
    for offset in _offsets(plan.kernel):
        index = (slice(None), slice(None)) + tuple(
            slice(o * dl, o * dl + (m - 1) * s + 1, s)
            for o, dl, m, s in zip(offset, plan.dilation, plan.out, plan.stride)
        )
        slices.append(xpad[index])
    cols = xp.stack(slices, axis=2)  # (N, C, K, *out)
    k = len(slices)
    cols = xp.reshape(cols, (n, plan.groups, c // plan.groups * k, *plan.out))
    return xp.permute_dims(cols, (1, 0, *range(3, 3 + d), 2))


def _fold(cols: Array, padded: tuple[int, ...], plan: _Conv, xp: Any) -> Array:
    """Adjoint of :func:`_unfold`: patches ``(groups, N, *out, F)`` -> ``(N, C, *padded)``, overlaps summed."""
    d = len(plan.kernel)
    g, n = int(cols.shape[0]), int(cols.shape[1])
    offsets = _offsets(plan.kernel)
    k = len(offsets)
    cols = xp.permute_dims(cols, (1, 0, 2 + d, *range(2, 2 + d)))  # (N, G, F, *out)
    c = g * int(cols.shape[2]) // k
    cols = xp.reshape(cols, (n, c, k, *plan.out))
    total = None
    for j, offset in enumerate(offsets):
        piece = _insert_zeros(cols[:, :, j, ...], plan.stride, xp)
        pads = tuple(
            (o * dl, size - o * dl - int(m)) for o, dl, size, m in zip(offset, plan.dilation, padded, piece.shape[2:])
        )
        piece = _pad(piece, pads, xp)
        total = piece if total is None else total + piece
    return total


def _group_rows(w: Array, groups: int, xp: Any) -> list[Array]:
    """Kernel ``(out, C/groups, *k)`` -> one ``(out/groups, C/groups * prod(k))`` matrix per group."""
    o = int(w.shape[0])
    flat = xp.reshape(w, (o, -1))
    step = o // groups
    return [flat[i * step : (i + 1) * step, ...] for i in range(groups)]


def _group_bias(bias: Any, groups: int, n_out: int) -> list[Any]:
    if bias is None or not hasattr(bias, "shape"):
        return [bias] * groups
    step = n_out // groups
    return [bias[i * step : (i + 1) * step] for i in range(groups)]


def _transpose_kernel(w: Array, groups: int, xp: Any) -> Array:
    """``(A, B, *k)`` -> ``(groups*B, A/groups, *k)`` with the spatial axes flipped.

    Turns a transposed-convolution kernel ``(in, out/groups, *k)`` into the direct
    convolution's ``(out, in/groups, *k)``; applied to the latter's gradient it gives the
    gradient of the former (the map is its own inverse up to the layout).
    """
    a, b = int(w.shape[0]), int(w.shape[1])
    k = tuple(int(v) for v in w.shape[2:])
    d = len(k)
    w = xp.reshape(w, (groups, a // groups, b, *k))
    w = xp.permute_dims(w, (0, 2, 1, *range(3, 3 + d)))
    w = xp.reshape(w, (groups * b, a // groups, *k))
    return xp.flip(w, axis=tuple(range(2, 2 + d)))


def _unfold_apply(x: Array, w: Array, plan: _Conv, bias: Any, product: Any, xp: Any) -> Array:
    """``product(patches, rows, bias)`` per group on the unfolded input, back in ``(N, out, *out)``."""
    cols = _unfold(_pad(x, plan.pads, xp), plan, xp)
    rows = _group_rows(w, plan.groups, xp)
    biases = _group_bias(bias, plan.groups, int(w.shape[0]))
    ys = [product(cols[i, ...], rows[i], biases[i]) for i in range(plan.groups)]
    y = ys[0] if plan.groups == 1 else xp.concat(ys, axis=-1)  # (N, *out, out_channels)
    d = len(plan.kernel)
    return xp.permute_dims(y, (0, d + 1, *range(1, d + 1)))


def _conv_forward(
    x: Array, w: Array, plan: _Conv, bias: Any, alpha: Any, epsilon: Any, spherical: bool, xp: Any
) -> Array:
    def product(cols: Array, rows: Array, b: Any) -> Array:
        return yat_product(cols, rows, bias=b, alpha=alpha, epsilon=epsilon, spherical=spherical, xp=xp)

    return _unfold_apply(x, w, plan, bias, product, xp)


def _linear_product(cols: Array, rows: Array, bias: Any) -> Array:
    y = cols @ rows.T
    return y if bias is None else y + bias


def _box_sum(s: Array, plan: _Conv, xp: Any) -> Array:
    """Sum of ``s`` ``(N, G, *padded)`` over every (strided, dilated) kernel window: ``(N, G, *out)``.

    The patch norm's window sum, one axis at a time (``k`` strided slices per axis):
    the convolution with a ones kernel, on the few channels of the channel sum.
    """
    d = len(plan.kernel)
    for i, (k, dl, m, st) in enumerate(zip(plan.kernel, plan.dilation, plan.out, plan.stride)):
        axis = s.ndim - d + i
        total = None
        for j in range(k):
            piece = _take(s, axis, j * dl, j * dl + (m - 1) * st + 1, st)
            total = piece if total is None else total + piece
        s = total
    return s


def _patch_sq(x: Array, plan: _Conv, xp: Any) -> Array:
    """``|patch|^2`` per group, channels first: ``(N, groups, *out)``.

    The channel sum of ``x*x`` within each group, zero-padded, then :func:`_box_sum`:
    cheaper than a convolution of ``x*x`` with a ones kernel (one channel per group
    instead of ``C/groups``), and the same sums.
    """
    shape = tuple(x.shape)  # not int(): a symbolic batch size (torch.export) must stay symbolic
    sq = xp.reshape(x * x, (shape[0], plan.groups, int(shape[1]) // plan.groups, *shape[2:]))
    return _box_sum(_pad(xp.sum(sq, axis=2), plan.pads, xp), plan, xp)


def _combine(
    dot: Array, psq: Array, wsq: Array, bias: Any, alpha: Any, epsilon: Any, spherical: bool, xp: Any
) -> RatioParts:
    """The Yat formula on ``dot``, ``|patch|^2`` and ``|w|^2`` already shaped to broadcast together.

    The squared distance from the three terms (with :func:`yat_core.product.yat_product`'s
    floors in spherical mode), then :func:`yat_core.product.yat_ratio`, the one
    implementation of the rest; ``bias`` is a number, ``None`` or an array shaped to
    broadcast against ``dot``.
    """
    if spherical:
        floor = SPHERICAL_NORM_EPS**2
        # as the product's _row_norm: the square floored before the root
        norms = xp.sqrt(xp.where(psq > floor, psq, floor)) * xp.sqrt(xp.where(wsq > floor, wsq, floor))
        dot = dot / norms
        raw_dist = 2.0 - 2.0 * dot
    else:
        raw_dist = psq + wsq - 2.0 * dot
    return yat_ratio(dot, raw_dist, bias, alpha, epsilon, xp=xp)


class _Native(NamedTuple):
    """A direct convolution as the library's own convolution takes it."""

    x: Array  # the input, any negative padding (a transposed convolution's crop) applied
    crop: Pads  # that crop, for the gradient's adjoint
    plan: _Conv  # with the non-negative padding only
    geometry: dict[str, Any]  # the convolution's keywords


def _native_setup(x: Array, plan: _Conv, xp: Any) -> _Native:
    crop = tuple((min(lo, 0), min(hi, 0)) for lo, hi in plan.pads)
    if any(lo or hi for lo, hi in crop):
        x = _pad(x, crop, xp)
    pads = tuple((max(lo, 0), max(hi, 0)) for lo, hi in plan.pads)
    geometry = {"stride": plan.stride, "padding": pads, "dilation": plan.dilation, "groups": plan.groups}
    return _Native(x, crop, plan._replace(pads=pads), geometry)


def _native_parts(
    nat: _Native, w: Array, conv: Any, bias: Any, alpha: Any, epsilon: Any, spherical: bool, xp: Any
) -> RatioParts:
    """Channels first: the formula's intermediates, shaped ``(N, groups, out/groups, *out)``.

    ``dot`` from the library's convolution, ``|patch|^2`` from :func:`_patch_sq`;
    splitting the groups off the channel axis lets each group's patch norm broadcast
    without a copy.
    """
    plan = nat.plan
    d, n_out, g = len(plan.kernel), int(w.shape[0]), plan.groups
    dot = conv(nat.x, w, **nat.geometry)  # (N, out, *out)
    shape = tuple(dot.shape)  # not int(): a symbolic batch size (torch.export) must stay symbolic
    per_channel = (g, n_out // g) + (1,) * d
    b = xp.reshape(bias, per_channel) if hasattr(bias, "shape") else bias
    dot = xp.reshape(dot, (shape[0], g, n_out // g, *shape[2:]))
    psq = xp.reshape(_patch_sq(nat.x, plan, xp), (shape[0], g, 1, *shape[2:]))
    wsq = xp.reshape(xp.sum(w * w, axis=tuple(range(1, d + 2))), per_channel)
    return _combine(dot, psq, wsq, b, alpha, epsilon, spherical, xp)


def _merge_groups(y: Array, xp: Any) -> Array:
    """``(N, groups, out/groups, *out)`` -> ``(N, out, *out)``."""
    shape = tuple(y.shape)
    return xp.reshape(y, (shape[0], int(shape[1]) * int(shape[2]), *shape[3:]))


def _native_forward(
    x: Array,
    w: Array,
    plan: _Conv,
    conv: Any,
    bias: Any,
    alpha: Any,
    epsilon: Any,
    spherical: bool,
    xp: Any,
    conv_last: Any = None,
) -> Array:
    """The fast path: ``dot`` from the library's own convolution, ``|patch|^2`` from :func:`_patch_sq`.

    With ``conv_last`` (:func:`yat_core.namespaces.native.native_conv_last`) the
    convolution and the elementwise formula run channels last, the library's own
    layout, and only the input and the result are transposed; otherwise channels
    first with ``conv`` (:func:`_native_parts`). The tests hold both to the unfold path.
    """
    nat = _native_setup(x, plan, xp)
    if conv_last is None:
        return _merge_groups(_native_parts(nat, w, conv, bias, alpha, epsilon, spherical, xp).y, xp)
    plan = nat.plan
    d, n_out, g = len(plan.kernel), int(w.shape[0]), plan.groups
    wsq = xp.sum(w * w, axis=tuple(range(1, d + 2)))  # (out,)
    psq = _patch_sq(nat.x, plan, xp)  # (N, groups, *out): small, one channel per group
    b = xp.reshape(bias, (g, n_out // g)) if hasattr(bias, "shape") else bias
    last = (0, *range(2, 2 + d), 1)
    dot = conv_last(xp.permute_dims(nat.x, last), w, **nat.geometry)  # (N, *out, out)
    shape = tuple(dot.shape)
    dot = xp.reshape(dot, (*shape[:-1], g, n_out // g))
    psq = xp.reshape(xp.permute_dims(psq, last), (*shape[:-1], g, 1))
    y = _combine(dot, psq, xp.reshape(wsq, (g, n_out // g)), b, alpha, epsilon, spherical, xp).y
    return xp.permute_dims(xp.reshape(y, shape), (0, d + 1, *range(1, d + 1)))


def _box_sum_adjoint(gs: Array, plan: _Conv, padded: tuple[int, ...], xp: Any) -> Array:
    """Adjoint of :func:`_box_sum`: ``(N, G, *out)`` -> ``(N, G, *padded)``, each window's gradient spread."""
    d = len(plan.kernel)
    for i in reversed(range(d)):
        k, dl, st = plan.kernel[i], plan.dilation[i], plan.stride[i]
        axis = gs.ndim - d + i
        spread = _insert_zeros(gs, tuple(st if j == i else 1 for j in range(d)), xp)
        m = int(spread.shape[axis])
        total = None
        for j in range(k):
            pads = tuple((j * dl, padded[i] - j * dl - m) if a == i else (0, 0) for a in range(d))
            piece = _pad(spread, pads, xp)
            total = piece if total is None else total + piece
        gs = total
    return gs


def _native_grads(
    nat: _Native, w: Array, parts: RatioParts, g: Array, conv_vjp: Any, bias: Any, alpha: Any, epsilon: Any, xp: Any
) -> ConvGrads:
    """Analytic gradients of :func:`_native_parts` (not spherical) with the library's convolution gradient.

    :func:`yat_core.product.yat_ratio_vjp` gives the gradients of the numerator, the
    distance and ``dot`` (with the distance's dot term folded in), which feeds ONE
    backward convolution pair (``conv_vjp``) for ``x`` and ``w``. The patch norm adds
    ``2 x`` times the window spread of ``sum_out g_dist``, the kernel norm ``2 w``
    times ``sum g_dist``.
    """
    x, plan = nat.x, nat.plan
    d, n_out, grp = len(plan.kernel), int(w.shape[0]), plan.groups
    shape = tuple(x.shape)
    expected = (int(shape[0]), n_out, *plan.out)
    if tuple(int(v) for v in g.shape) != expected:
        raise ValueError(f"upstream gradient g must have the output's shape {expected}, got {tuple(g.shape)}")
    g = xp.reshape(g, (int(shape[0]), grp, n_out // grp, *plan.out))
    grads = yat_ratio_vjp(parts, g, alpha, xp=xp)
    g_x, g_w = conv_vjp(x, w, xp.reshape(grads.dot, expected), **nat.geometry)
    # |patch|^2: 2 x times the windows' spread of sum over the group's outputs of g_dist
    pads = plan.pads
    padded = tuple(int(n) + lo + hi for n, (lo, hi) in zip(shape[2:], pads))
    g_psq = _box_sum_adjoint(xp.sum(grads.dist, axis=2), plan, padded, xp)
    g_psq = _pad(g_psq, tuple((-lo, -hi) for lo, hi in pads), xp)  # (N, G, *spatial)
    x_split = xp.reshape(x, (int(shape[0]), grp, int(shape[1]) // grp, *shape[2:]))
    g_x = g_x + xp.reshape(2.0 * x_split * xp.expand_dims(g_psq, axis=2), shape)
    if any(lo or hi for lo, hi in nat.crop):
        g_x = _pad(g_x, tuple((-lo, -hi) for lo, hi in nat.crop), xp)
    spatial_axes = (0, *range(3, 3 + d))
    g_wsq = xp.reshape(xp.sum(grads.dist, axis=spatial_axes), (n_out,) + (1,) * (d + 1))
    g_w = g_w + 2.0 * w * g_wsq
    g_bias = xp.reshape(xp.sum(grads.numer, axis=spatial_axes), (n_out,)) if hasattr(bias, "shape") else None
    g_alpha = xp.reshape(xp.sum(g * parts.ratio), tuple(alpha.shape)) if hasattr(alpha, "shape") else None
    g_eps = xp.reshape(xp.sum(grads.denom), tuple(epsilon.shape)) if hasattr(epsilon, "shape") else None
    return ConvGrads(g_x, g_w, g_bias, g_alpha, g_eps)


def _backward(
    x: Array,
    w: Array,
    g: Array,
    plan: _Conv,
    bias: Any,
    alpha: Any,
    epsilon: Any,
    spherical: bool,
    native: bool,
    xp: Any,
) -> ConvGrads:
    if not isinstance(native, bool):
        raise TypeError(f"native must be a bool, got {native!r}")
    conv = native_conv(xp) if native and not spherical else None
    conv_vjp = native_conv_vjp(xp) if conv is not None else None
    if conv_vjp is None:
        return _conv_backward(x, w, g, plan, bias, alpha, epsilon, spherical, xp)
    nat = _native_setup(x, plan, xp)
    parts = _native_parts(nat, w, conv, bias, alpha, epsilon, False, xp)
    return _native_grads(nat, w, parts, g, conv_vjp, bias, alpha, epsilon, xp)


def _forward(
    x: Array, w: Array, plan: _Conv, bias: Any, alpha: Any, epsilon: Any, spherical: bool, native: bool, xp: Any
) -> Array:
    if not isinstance(native, bool):
        raise TypeError(f"native must be a bool, got {native!r}")
    conv = native_conv(xp) if native else None
    if conv is None:
        return _conv_forward(x, w, plan, bias, alpha, epsilon, spherical, xp)
    return _native_forward(x, w, plan, conv, bias, alpha, epsilon, spherical, xp, native_conv_last(xp))


def _unfold_backward(x: Array, w: Array, g: Array, plan: _Conv, bias: Any, vjp: Any, xp: Any) -> ConvGrads:
    """Gradients through :func:`_unfold_apply`: ``vjp(patches, rows, g, bias)`` per group, then the fold."""
    d = len(plan.kernel)
    n_out = int(w.shape[0])
    expected = (int(x.shape[0]), n_out, *plan.out)
    if tuple(int(v) for v in g.shape) != expected:
        raise ValueError(f"upstream gradient g must have the output's shape {expected}, got {tuple(g.shape)}")
    xpad = _pad(x, plan.pads, xp)
    cols = _unfold(xpad, plan, xp)
    rows = _group_rows(w, plan.groups, xp)
    biases = _group_bias(bias, plan.groups, n_out)
    g_last = xp.permute_dims(g, (0, *range(2, 2 + d), 1))  # (N, *out, out_channels)
    step = n_out // plan.groups
    parts = [vjp(cols[i, ...], rows[i], g_last[..., i * step : (i + 1) * step], biases[i]) for i in range(plan.groups)]
    g_cols = xp.stack([p.x for p in parts], axis=0)
    g_xpad = _fold(g_cols, tuple(int(v) for v in xpad.shape[2:]), plan, xp)
    g_x = _pad(g_xpad, tuple((-lo, -hi) for lo, hi in plan.pads), xp)
    g_w_flat = parts[0].w if plan.groups == 1 else xp.concat([p.w for p in parts], axis=0)
    g_w = xp.reshape(g_w_flat, tuple(int(v) for v in w.shape))

    def _total(values: list[Any]) -> Any:
        if values[0] is None:
            return None
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total

    g_bias = None
    if parts[0].bias is not None:
        g_bias = parts[0].bias if plan.groups == 1 else xp.concat([p.bias for p in parts], axis=0)
    return ConvGrads(g_x, g_w, g_bias, _total([p.alpha for p in parts]), _total([p.epsilon for p in parts]))


def _conv_backward(
    x: Array, w: Array, g: Array, plan: _Conv, bias: Any, alpha: Any, epsilon: Any, spherical: bool, xp: Any
) -> ConvGrads:
    def vjp(cols: Array, rows: Array, g_i: Array, b: Any) -> Any:
        return yat_product_vjp(cols, rows, g_i, bias=b, alpha=alpha, epsilon=epsilon, spherical=spherical, xp=xp)

    return _unfold_backward(x, w, g, plan, bias, vjp, xp)


def _linear_vjp(xp: Any) -> Any:
    def vjp(cols: Array, rows: Array, g_i: Array, bias: Any) -> ConvGrads:
        features = int(cols.shape[-1])
        g_flat = xp.reshape(g_i, (-1, int(g_i.shape[-1])))
        g_w = xp.matrix_transpose(g_flat) @ xp.reshape(cols, (-1, features))
        g_bias = xp.sum(g_flat, axis=0) if hasattr(bias, "shape") else None
        return ConvGrads(g_i @ rows, g_w, g_bias, None, None)

    return vjp


# ---------------------------------------------------------------- public API


def yat_conv(
    x: Array,
    w: Array,
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    bias: Array | float | None = None,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    native: bool = False,
    xp: Any = None,
) -> Array:
    """Yat convolution: the ⵟ-product of every input patch with every filter.

    Parameters
    ----------
    x : array, shape ``(N, C, *spatial)``
        Channels-first input with 1, 2 or 3 spatial dimensions; real floating.
    w : array, shape ``(out, C/groups, *kernel)``
        Filters, as ``torch.nn.Conv{1,2,3}d.weight``; same dtype and library as ``x``.
        The number of spatial dimensions is ``w.ndim - 2``.
    stride, dilation : int or tuple of ints, >= 1
        One value for every spatial dimension, or one per dimension.
    padding : int, tuple of ints, "valid" or "same"
        Zero padding on both sides of each spatial dimension. ``"same"`` keeps the
        spatial size and needs stride 1 (torch's rule; an odd total puts the extra
        zero on the right); ``"valid"`` is no padding.
    groups : int
        Split input and output channels into this many independent groups.
    bias, alpha, epsilon, spherical
        As in :func:`yat_core.product.yat_product`: ``bias`` (shape ``(out,)`` or a
        number) enters the numerator only; ``alpha`` scales the output; ``epsilon``
        (a number > 0 or an array such as ``softplus(raw)``) is added to the squared
        distance; ``spherical`` normalises each patch and each filter first.
    native : bool
        Take ``dot`` and ``|patch|^2`` from the library's own convolution
        (:func:`yat_core.namespaces.native.native_conv`: torch, JAX, MLX, or one registered)
        instead of the array-API unfold; the same numbers within rounding. Falls back
        to the unfold for a library without one. The unfold is the default and the
        reference.
    xp : namespace, optional
        The array namespace; inferred from ``x`` and ``w`` when omitted.

    Returns
    -------
    array, shape ``(N, out, *spatial_out)``
        ``spatial_out = (size + 2*padding - dilation*(kernel-1) - 1) // stride + 1``.

    Raises
    ------
    ValueError
        For wrong ranks, channels or groups that do not fit the kernel, a (dilated)
        kernel larger than the padded input, stride or dilation < 1, negative
        padding, a tuple of the wrong length, ``padding="same"`` with stride > 1,
        or ``epsilon <= 0``.
    TypeError
        For non-floating or mismatched dtypes, or arrays of different libraries.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> w = np.array([[[1.0, 2.0]]])  # one filter of width 2; the second patch, [1, 2], equals it
    >>> np.round(yat_conv(x, w, epsilon=1.0), 2)  # dot^2 / (|patch - w|^2 + 1)
    array([[[ 1.33, 25.  , 21.33, 13.44]]])
    >>> yat_conv(np.ones((2, 4, 8, 8)), np.ones((6, 2, 3, 3)), padding="same", groups=2).shape
    (2, 6, 8, 8)
    """
    xp = array_namespace(x, w) if xp is None else xp
    plan = _plan_conv(x, w, stride, padding, dilation, groups)
    _check_dtypes(x, w, xp)
    _check_options(bias, alpha, epsilon, spherical, int(w.shape[0]))
    return _forward(x, w, plan, bias, alpha, epsilon, spherical, native, xp)


def yat_conv_transpose(
    x: Array,
    w: Array,
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    bias: Array | float | None = None,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    native: bool = False,
    xp: Any = None,
) -> Array:
    """Yat transposed convolution, in torch's ``conv_transpose`` layout.

    Computed as the direct Yat convolution of the zero-inserted input (``stride - 1``
    zeros between neighbours) with the flipped, regrouped kernel, stride 1 and padding
    ``dilation*(k-1) - padding`` on the left and ``dilation*(k-1) - padding +
    output_padding`` on the right (negative padding crops). So ``dot`` equals
    ``conv_transpose(x, w)``, the patch norm ``conv_transpose(x*x, ones)``, and the
    kernel norm is per output channel over that group's input channels.

    Parameters
    ----------
    x : array, shape ``(N, in, *spatial)``
        Channels-first input with 1, 2 or 3 spatial dimensions.
    w : array, shape ``(in, out/groups, *kernel)``
        As ``torch.nn.ConvTranspose{1,2,3}d.weight``.
    stride, dilation : int or tuple of ints, >= 1
        One value for every spatial dimension, or one per dimension.
    padding : int or tuple of ints, >= 0
        As torch: each side of the output shrinks by ``padding``.
    output_padding : int or tuple of ints, >= 0
        Extra size on the right; smaller than the stride or the dilation (torch's rule).
    groups, bias, alpha, epsilon, spherical, native, xp
        As in :func:`yat_conv`; ``bias`` has shape ``(out,)``.

    Returns
    -------
    array, shape ``(N, out, *spatial_out)``
        ``spatial_out = (size-1)*stride - 2*padding + dilation*(kernel-1) + output_padding + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[1.0, 2.0]]])
    >>> w = np.array([[[1.0, 1.0]]])  # (in=1, out=1, k=2)
    >>> # zero-inserted, padded input [0, 1, 0, 2, 0]: patches [0,1], [1,0], [0,2], [2,0] against [1, 1]
    >>> np.round(yat_conv_transpose(x, w, stride=2, epsilon=1.0), 2)
    array([[[0.5 , 0.5 , 1.33, 1.33]]])
    """
    xp = array_namespace(x, w) if xp is None else xp
    plan = _plan_transpose(x, w, stride, padding, output_padding, dilation, groups)
    _check_dtypes(x, w, xp)
    _check_options(bias, alpha, epsilon, spherical, int(w.shape[1]) * plan.groups)
    xz = _insert_zeros(x, _per_dim(stride, len(plan.kernel), "stride", 1), xp)
    wc = _transpose_kernel(w, plan.groups, xp)
    return _forward(xz, wc, plan, bias, alpha, epsilon, spherical, native, xp)


def yat_conv_vjp(
    x: Array,
    w: Array,
    g: Array,
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    bias: Array | float | None = None,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    native: bool = False,
    xp: Any = None,
) -> ConvGrads:
    """Analytic vector-Jacobian product of :func:`yat_conv`.

    Gradients of ``sum(g * yat_conv(x, w, ...))`` with respect to ``x``, ``w`` and every
    array option (``None`` for constants): :func:`yat_core.product.yat_product_vjp` on
    the patches, then the fold (the unfold's adjoint: overlapping patches summed).
    With ``native=True`` (and not ``spherical``) the library's own convolution and its
    gradient (:func:`yat_core.namespaces.native.native_conv_vjp`) instead: the
    elementwise gradient of the formula feeds one backward convolution pair; the
    unfold where the library has none.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(5.0).reshape(1, 1, 5); w = np.array([[[1.0, 2.0]]])
    >>> grads = yat_conv_vjp(x, w, np.ones((1, 1, 4)), bias=np.zeros(1))
    >>> grads.x.shape, grads.w.shape, grads.bias.shape, grads.alpha is None
    ((1, 1, 5), (1, 1, 2), (1,), True)
    """
    xp = array_namespace(x, w, g) if xp is None else xp
    plan = _plan_conv(x, w, stride, padding, dilation, groups)
    _check_dtypes(x, w, xp)
    _check_options(bias, alpha, epsilon, spherical, int(w.shape[0]))
    return _backward(x, w, g, plan, bias, alpha, epsilon, spherical, native, xp)


class ConvResiduals(NamedTuple):
    """What :func:`yat_conv_backward` needs from :func:`yat_conv_forward`.

    The inputs and options and, where the forward ran channels first on the library's
    own convolution (and not spherical), the formula's intermediates, so that the
    backward pass never recomputes the convolution; ``parts`` is ``None`` otherwise
    and the backward recomputes as :func:`yat_conv_vjp` does.
    """

    x: Array
    w: Array
    plan: Any  # the checked geometry
    bias: Any  # the options, as given (arrays or constants)
    alpha: Any
    epsilon: Any
    spherical: bool
    native: bool
    parts: RatioParts | None


def yat_conv_forward(
    x: Array,
    w: Array,
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    bias: Array | float | None = None,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    native: bool = False,
    xp: Any = None,
) -> tuple[Array, ConvResiduals]:
    """:func:`yat_conv` that also returns what :func:`yat_conv_backward` needs.

    The same arguments and output as :func:`yat_conv`. With ``native=True`` on a
    library whose own convolution runs channels first and has a gradient (PyTorch),
    the residuals keep the formula's intermediates and the backward pass skips the
    forward convolution; elsewhere they keep the inputs and the backward recomputes.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(5.0).reshape(1, 1, 5); w = np.array([[[1.0, 2.0]]])
    >>> y, res = yat_conv_forward(x, w, epsilon=1.0)
    >>> bool(np.array_equal(y, yat_conv(x, w, epsilon=1.0))), res.parts is None  # NumPy: no native convolution
    (True, True)
    >>> yat_conv_backward(res, np.ones_like(y)).w.shape
    (1, 1, 2)
    """
    xp = array_namespace(x, w) if xp is None else xp
    plan = _plan_conv(x, w, stride, padding, dilation, groups)
    _check_dtypes(x, w, xp)
    _check_options(bias, alpha, epsilon, spherical, int(w.shape[0]))
    if not isinstance(native, bool):
        raise TypeError(f"native must be a bool, got {native!r}")
    conv = native_conv(xp) if native and not spherical and native_conv_last(xp) is None else None
    parts = None
    if conv is not None and native_conv_vjp(xp) is not None:
        parts = _native_parts(_native_setup(x, plan, xp), w, conv, bias, alpha, epsilon, False, xp)
        y = _merge_groups(parts.y, xp)
    else:
        y = _forward(x, w, plan, bias, alpha, epsilon, spherical, native, xp)
    return y, ConvResiduals(x, w, plan, bias, alpha, epsilon, spherical, native, parts)


def yat_conv_backward(res: ConvResiduals, g: Array, /, *, xp: Any = None) -> ConvGrads:
    """Gradients of ``sum(g * y)`` from the residuals of :func:`yat_conv_forward`.

    The same gradients as :func:`yat_conv_vjp` with the same options.
    """
    xp = array_namespace(res.x, res.w, g) if xp is None else xp
    if res.parts is None:
        return _backward(res.x, res.w, g, res.plan, res.bias, res.alpha, res.epsilon, res.spherical, res.native, xp)
    nat = _native_setup(res.x, res.plan, xp)
    return _native_grads(nat, res.w, res.parts, g, native_conv_vjp(xp), res.bias, res.alpha, res.epsilon, xp)


def yat_conv_transpose_vjp(
    x: Array,
    w: Array,
    g: Array,
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    bias: Array | float | None = None,
    alpha: Array | float | None = None,
    epsilon: Array | float = DEFAULT_EPSILON,
    spherical: bool = False,
    native: bool = False,
    xp: Any = None,
) -> ConvGrads:
    """Analytic vector-Jacobian product of :func:`yat_conv_transpose`.

    Through its equivalence to a direct convolution: the direct VJP (``native`` as in
    :func:`yat_conv_vjp`), then the adjoints of the zero insertion (a strided slice)
    and of the kernel's flip and regrouping.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[[1.0, 2.0]]]); w = np.array([[[1.0, 1.0]]])
    >>> grads = yat_conv_transpose_vjp(x, w, np.ones((1, 1, 4)), stride=2, epsilon=1.0)
    >>> grads.x.shape, grads.w.shape
    ((1, 1, 2), (1, 1, 2))
    """
    xp = array_namespace(x, w, g) if xp is None else xp
    plan = _plan_transpose(x, w, stride, padding, output_padding, dilation, groups)
    _check_dtypes(x, w, xp)
    _check_options(bias, alpha, epsilon, spherical, int(w.shape[1]) * plan.groups)
    strides = _per_dim(stride, len(plan.kernel), "stride", 1)
    xz = _insert_zeros(x, strides, xp)
    wc = _transpose_kernel(w, plan.groups, xp)
    grads = _backward(xz, wc, g, plan, bias, alpha, epsilon, spherical, native, xp)
    g_x = grads.x[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
    g_w = _transpose_kernel(grads.w, plan.groups, xp)
    return ConvGrads(g_x, g_w, grads.bias, grads.alpha, grads.epsilon)


def _check_linear_bias(bias: Any, n_out: int) -> None:
    if bias is not None and type(bias) not in (int, float) and not hasattr(bias, "shape"):
        raise TypeError(f"bias must be an array, a number or None, got {type(bias).__name__}")
    if hasattr(bias, "shape") and tuple(bias.shape) != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},) (one per output channel), got {tuple(bias.shape)}")


def linear_conv(
    x: Array,
    w: Array,
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    bias: Array | float | None = None,
    native: bool = False,
    xp: Any = None,
) -> Array:
    """The ordinary (linear) convolution, ``conv(x, w) + bias``: the Conv+ReLU baseline's layer.

    The same layouts, geometry, checks and ``native`` fast path as :func:`yat_conv`, and
    the same unfold as its reference; only the per-patch product differs (a dot product).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> linear_conv(x, np.array([[[1.0, 2.0]]]), bias=np.array([0.5]))
    array([[[ 2.5,  5.5,  8.5, 11.5]]])
    """
    xp = array_namespace(x, w) if xp is None else xp
    plan = _plan_conv(x, w, stride, padding, dilation, groups)
    _check_dtypes(x, w, xp)
    _check_linear_bias(bias, int(w.shape[0]))
    if not isinstance(native, bool):
        raise TypeError(f"native must be a bool, got {native!r}")
    conv = native_conv(xp) if native else None
    if conv is None:
        return _unfold_apply(x, w, plan, bias, _linear_product, xp)
    y = conv(x, w, stride=plan.stride, padding=plan.pads, dilation=plan.dilation, groups=plan.groups)
    if hasattr(bias, "shape"):
        return y + xp.reshape(bias, (1, int(w.shape[0])) + (1,) * len(plan.kernel))
    return y if bias is None else y + bias


def linear_conv_vjp(
    x: Array,
    w: Array,
    g: Array,
    /,
    *,
    stride: IntOrTuple = 1,
    padding: IntOrTuple | str = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    bias: Array | float | None = None,
    native: bool = False,
    xp: Any = None,
) -> ConvGrads:
    """Analytic vector-Jacobian product of :func:`linear_conv` (``alpha`` and ``epsilon`` are None).

    ``native=True``: the library's own convolution gradient
    (:func:`yat_core.namespaces.native.native_conv_vjp`) where it has one.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> grads = linear_conv_vjp(x, np.array([[[1.0, 2.0]]]), np.ones((1, 1, 4)), bias=np.zeros(1))
    >>> grads.x, grads.w, grads.bias
    (array([[[1., 3., 3., 3., 2.]]]), array([[[ 6., 10.]]]), array([4.]))
    """
    xp = array_namespace(x, w, g) if xp is None else xp
    plan = _plan_conv(x, w, stride, padding, dilation, groups)
    _check_dtypes(x, w, xp)
    _check_linear_bias(bias, int(w.shape[0]))
    if not isinstance(native, bool):
        raise TypeError(f"native must be a bool, got {native!r}")
    conv_vjp = native_conv_vjp(xp) if native and native_conv(xp) is not None else None
    if conv_vjp is None:
        return _unfold_backward(x, w, g, plan, bias, _linear_vjp(xp), xp)
    expected = (int(x.shape[0]), int(w.shape[0]), *plan.out)
    if tuple(int(v) for v in g.shape) != expected:
        raise ValueError(f"upstream gradient g must have the output's shape {expected}, got {tuple(g.shape)}")
    geometry = {"stride": plan.stride, "padding": plan.pads, "dilation": plan.dilation, "groups": plan.groups}
    g_x, g_w = conv_vjp(x, w, g, **geometry)
    g_bias = xp.sum(g, axis=(0, *range(2, g.ndim))) if hasattr(bias, "shape") else None
    return ConvGrads(g_x, g_w, g_bias, None, None)


# ---------------------------------------------------------------- pooling


def _pool_plan(x: Array, window: Any, what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if not hasattr(x, "shape"):
        raise TypeError(f"{what}: x must be an array, got {type(x).__name__}")
    if x.ndim not in (3, 4, 5):
        raise ValueError(
            f"{what}: x must have 3, 4 or 5 dimensions (N, C, *spatial) for 1, 2 or 3 spatial dimensions, "
            f"got shape {tuple(x.shape)}"
        )
    win = _per_dim(window, x.ndim - 2, "window", 1)
    spatial = tuple(int(s) for s in x.shape[2:])
    out = tuple(s // k for s, k in zip(spatial, win))
    if any(o < 1 for o in out):
        raise ValueError(f"{what}: window {win} is larger than the spatial size {spatial} of x")
    return win, out


def _windows(x: Array, win: tuple[int, ...], out: tuple[int, ...], xp: Any) -> Array:
    """``(N, C, *spatial)`` -> ``(N, C, *out, prod(win))``, the remainder dropped."""
    d = len(win)
    x = x[(slice(None), slice(None)) + tuple(slice(0, o * k) for o, k in zip(out, win))]
    split = tuple(v for o, k in zip(out, win) for v in (o, k))
    x = xp.reshape(x, (int(x.shape[0]), int(x.shape[1]), *split))
    x = xp.permute_dims(x, (0, 1, *range(2, 2 + 2 * d, 2), *range(3, 3 + 2 * d, 2)))
    return xp.reshape(x, (int(x.shape[0]), int(x.shape[1]), *out, math.prod(win)))


def _unwindow(a: Array, spatial: tuple[int, ...], win: tuple[int, ...], out: tuple[int, ...], xp: Any) -> Array:
    """Adjoint of :func:`_windows`: ``(N, C, *out, prod(win))`` -> ``(N, C, *spatial)``, remainder zero."""
    d = len(win)
    n, c = int(a.shape[0]), int(a.shape[1])
    a = xp.reshape(a, (n, c, *out, *win))
    order = [0, 1]
    for i in range(d):
        order += [2 + i, 2 + d + i]
    a = xp.permute_dims(a, tuple(order))
    a = xp.reshape(a, (n, c, *(o * k for o, k in zip(out, win))))
    return _pad(a, tuple((0, s - o * k) for s, o, k in zip(spatial, out, win)), xp)


def _native_pool(native: bool, xp: Any) -> Any:
    if not isinstance(native, bool):
        raise TypeError(f"native must be a bool, got {native!r}")
    return native_max_pool(xp) if native else None


def max_pool(x: Array, window: IntOrTuple, /, *, native: bool = False, xp: Any = None) -> Array:
    """Maximum over non-overlapping windows (stride = window), channels first.

    Spatial sizes that the window does not divide lose their remainder (the last
    ``size % window`` rows/columns), as torch's default ``ceil_mode=False`` does.

    Parameters
    ----------
    x : array, shape ``(N, C, *spatial)``
        1, 2 or 3 spatial dimensions.
    window : int or tuple of ints
        Window size, one for all spatial dimensions or one per dimension.
    native : bool
        Use the library's own pooling (:func:`yat_core.namespaces.native.native_max_pool`:
        torch) where it has one; the same numbers.

    Returns
    -------
    array, shape ``(N, C, *(spatial // window))``

    Examples
    --------
    >>> import numpy as np
    >>> max_pool(np.arange(10.0).reshape(1, 1, 2, 5), 2)  # the fifth column is dropped
    array([[[[6., 8.]]]])
    """
    xp = array_namespace(x) if xp is None else xp
    win, out = _pool_plan(x, window, "max_pool")
    pool = _native_pool(native, xp)
    if pool is not None:
        return pool[0](x, win)
    return xp.max(_windows(x, win, out, xp), axis=-1)


def avg_pool(x: Array, window: IntOrTuple, /, *, xp: Any = None) -> Array:
    """Mean over non-overlapping windows (stride = window), channels first.

    Spatial sizes that the window does not divide lose their remainder, as torch's
    default ``ceil_mode=False`` does.

    Examples
    --------
    >>> import numpy as np
    >>> avg_pool(np.arange(10.0).reshape(1, 1, 2, 5), (2, 2))
    array([[[[3., 5.]]]])
    """
    xp = array_namespace(x) if xp is None else xp
    win, out = _pool_plan(x, window, "avg_pool")
    return xp.mean(_windows(x, win, out, xp), axis=-1)


def max_pool_vjp(x: Array, g: Array, window: IntOrTuple, /, *, native: bool = False, xp: Any = None) -> Array:
    """Gradient of ``sum(g * max_pool(x, window))`` with respect to ``x``.

    Each window's gradient goes to its first maximum (row-major order), as torch's
    ``max_pool`` does; the dropped remainder gets zero. ``native`` as in :func:`max_pool`.

    Examples
    --------
    >>> import numpy as np
    >>> max_pool_vjp(np.array([[[3.0, 3.0, 0.0, 1.0, 5.0]]]), np.array([[[10.0, 20.0]]]), 2)  # a tie: the first
    array([[[10.,  0.,  0., 20.,  0.]]])
    """
    xp = array_namespace(x, g) if xp is None else xp
    win, out = _pool_plan(x, window, "max_pool_vjp")
    expected = (*tuple(int(v) for v in x.shape[:2]), *out)
    if tuple(int(v) for v in g.shape) != expected:
        raise ValueError(f"max_pool_vjp: g must have the pooled shape {expected}, got {tuple(g.shape)}")
    pool = _native_pool(native, xp)
    if pool is not None:
        return pool[1](x, g, win)
    xw = _windows(x, win, out, xp)
    top = xp.max(xw, axis=-1)
    taken = None
    pieces = []
    for j in range(math.prod(win)):
        hit = xw[..., j] == top
        first = hit if taken is None else xp.logical_and(hit, xp.logical_not(taken))
        taken = hit if taken is None else xp.logical_or(taken, hit)
        pieces.append(xp.where(first, g, xp.zeros_like(g)))
    spatial = tuple(int(s) for s in x.shape[2:])
    return _unwindow(xp.stack(pieces, axis=-1), spatial, win, out, xp)


def avg_pool_vjp(x: Array, g: Array, window: IntOrTuple, /, *, xp: Any = None) -> Array:
    """Gradient of ``sum(g * avg_pool(x, window))`` with respect to ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> avg_pool_vjp(np.zeros((1, 1, 5)), np.array([[[2.0, 4.0]]]), 2)
    array([[[1., 1., 2., 2., 0.]]])
    """
    xp = array_namespace(x, g) if xp is None else xp
    win, out = _pool_plan(x, window, "avg_pool_vjp")
    k = math.prod(win)
    spread = xp.stack([g / k] * k, axis=-1)
    spatial = tuple(int(s) for s in x.shape[2:])
    return _unwindow(spread, spatial, win, out, xp)
