"""Keras's conventions without Keras: what :mod:`yat_core.nn.keras` and :mod:`yat_core.nn.tf` share.

The Keras layers and the TensorFlow modules take Keras's argument names and layouts:
channels-last data, kernels ``(*kernel_size, in/groups, filters)``, Keras's ``"same"``
and transposed-convolution padding. That logic lives here once, on plain Python and
NumPy values, for both:

- :class:`KerasConvArgs`, the arguments of a Yat convolution as Keras names them,
  checked, and the core's geometry they give (:func:`yat_core.conv.yat_conv` is
  torch-style);
- the model's input layout: :func:`input_layout` (one sample, channels last),
  :func:`layout_reshape` (which inputs the model reshapes) and
  :func:`to_framework_layout` (the core's layout to the model's, for ``predict``);
- :func:`to_core` / :func:`from_core`: a parameter between the model's layout and
  the core's (convolution kernels, attention's projections; dense kernels are
  :func:`~yat_core.nn.interchange.export_arrays`'s ``kernel_in_out``);
- :func:`native_variable`: where a layer keeps the parameter of a core name
  (attention's projections in ``query_dense``, ``key_dense``, ``value_dense``,
  ``output_dense``, as ``keras.layers.MultiHeadAttention`` keeps them).

**Attention's layout.** ``keras.layers.MultiHeadAttention`` keeps each projection in
an ``EinsumDense``: query, key and value kernels ``(dim, heads, head_size)`` with
biases ``(heads, head_size)``, the output kernel ``(heads, head_size, dim)`` with a
bias ``(dim,)``. The core's kernels are ``(out, in)`` with head ``j`` the features
``j*d .. (j+1)*d`` of the output: the same numbers, transposed and reshaped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from yat_core.conv import yat_conv, yat_conv_transpose
from yat_core.mlp import LayerSpec
from yat_core.nn.options import (
    conv_spec_options,
    keras_transpose_padding,
    kernel_from_core,
    kernel_to_core,
    per_dim,
    same_padding,
)

__all__ = [
    "KerasConvArgs",
    "input_layout",
    "layout_reshape",
    "to_framework_layout",
    "to_core",
    "from_core",
    "native_variable",
    "patches_channels_last",
]

Array = Any
#: Kinds whose kernel is a convolution's: ``(*k, in/groups, out)`` natively, ``(out, in/groups, *k)`` in the core.
CONV_KINDS = ("yat_conv", "yat_conv_transpose", "conv")
#: Attention kinds, and the attribute of the layer holding each of their projections (Keras's names).
ATTENTION_KINDS = ("yat_attention", "attention")
PROJECTION_LAYERS = {"q": "query_dense", "k": "key_dense", "v": "value_dense", "o": "output_dense"}


class KerasConvArgs:
    """A Yat convolution's Keras arguments as attributes, and the core's geometry they give.

    Mixed into the Keras layers and the TensorFlow modules: a subclass sets ``rank``
    and ``transposed``, calls :meth:`_set_conv_args` in its constructor and
    :meth:`_core_conv` in its forward, and has a ``name``.
    """

    rank: ClassVar[int] = 0
    transposed: ClassVar[bool] = False
    filters: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str | tuple[int, ...]
    data_format: str
    dilation_rate: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...] | None
    #: Transposed: per spatial dimension the core's ``(padding, output_padding, crop)``; else empty.
    _geometry: tuple[tuple[int, int, int], ...]

    def _set_conv_args(
        self,
        kernel_size: int | tuple[int, ...],
        strides: int | tuple[int, ...],
        padding: str | int | tuple[int, ...],
        data_format: str,
        dilation_rate: int | tuple[int, ...],
        output_padding: int | tuple[int, ...] | None,
    ) -> None:
        n = self.rank
        self.kernel_size = per_dim(kernel_size, n, "kernel_size", 1)
        self.strides = per_dim(strides, n, "strides", 1)
        self.dilation_rate = per_dim(dilation_rate, n, "dilation_rate", 1)
        if isinstance(padding, str):
            if padding.lower() not in ("valid", "same"):
                raise ValueError(f"padding must be 'valid', 'same' or ints (torch's rule), got {padding!r}")
            self.padding = padding.lower()
        else:
            self.padding = per_dim(padding, n, "padding", 0)
        data_format = str(data_format).lower()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
        self.data_format = data_format
        if not self.transposed and output_padding is not None:
            raise TypeError(f"{type(self).__name__} takes no output_padding (the transposed convolutions do)")
        self.output_padding = None if output_padding is None else per_dim(output_padding, n, "output_padding", 0)
        self._geometry = self._transpose_geometry() if self.transposed else ()

    def _transpose_geometry(self) -> tuple[tuple[int, int, int], ...]:
        """Per dimension the core's ``(padding, output_padding, crop)`` (see :func:`~yat_core.nn.options.keras_transpose_padding`)."""
        out_pad = self.output_padding
        if isinstance(self.padding, tuple):  # torch's rule, as the core takes it
            geometry = tuple((p, 0 if out_pad is None else out_pad[i], 0) for i, p in enumerate(self.padding))
            for i, (_, op, _) in enumerate(geometry):
                if op >= self.strides[i] and op >= self.dilation_rate[i]:
                    raise ValueError(
                        f"output_padding must be smaller than strides or dilation_rate (torch's rule with integer "
                        f"padding), got output_padding={out_pad}, strides={self.strides}, "
                        f"dilation_rate={self.dilation_rate}"
                    )
            return geometry
        if out_pad is not None and any(op >= s for op, s in zip(out_pad, self.strides)):
            raise ValueError(
                f"output_padding must be smaller than strides in every dimension (Keras's rule), "
                f"got output_padding={out_pad}, strides={self.strides}"
            )
        return tuple(
            keras_transpose_padding(k, s, d, self.padding, None if out_pad is None else out_pad[i])
            for i, (k, s, d) in enumerate(zip(self.kernel_size, self.strides, self.dilation_rate))
        )

    def _exact_spec(self, spec: LayerSpec) -> LayerSpec:
        """``spec`` (the layer's options and channels) with the core's padding for these Keras arguments.

        Raises ``ValueError`` where Keras's padding has no torch-style equivalent: a
        ``"same"`` convolution with strides > 1 (its padding depends on the input
        size and may be one-sided) and a ``"same"`` transposed convolution whose
        padding is larger on the left (kernel 3, stride 2, for example).
        """
        name = getattr(self, "name", type(self).__name__)
        if self.transposed:
            if any(crop for _, _, crop in self._geometry):
                raise ValueError(
                    f"{name}: Keras's padding={self.padding!r} with kernel_size={self.kernel_size}, "
                    f"strides={self.strides} pads more on the left than on the right, which torch-style padding "
                    "(the core's LayerSpec) cannot describe"
                )
            return dataclasses.replace(
                spec,
                padding=tuple(p for p, _, _ in self._geometry),
                output_padding=tuple(op for _, op, _ in self._geometry),
            )
        if self.padding == "same" and max(self.strides) > 1:
            raise ValueError(
                f"{name}: Keras's padding='same' with strides={self.strides} depends on the input size; "
                "the core's LayerSpec (torch's rule) has 'same' for stride 1 only"
            )
        return dataclasses.replace(spec, padding=self.padding)

    def _spatial_output(self, i: int, size: int | None) -> int | None:
        """Output size of spatial dimension ``i`` for an input of ``size`` (None: unknown)."""
        if size is None:
            return None
        k, s, d = self.kernel_size[i], self.strides[i], self.dilation_rate[i]
        if self.transposed:
            p, op, crop = self._geometry[i]
            return (size - 1) * s - 2 * p + d * (k - 1) + op + 1 - crop
        if self.padding == "same":
            return -(-size // s)
        p = self.padding[i] if isinstance(self.padding, tuple) else 0
        return (size + 2 * p - d * (k - 1) - 1) // s + 1

    @classmethod
    def _spec_arguments(cls, spec: LayerSpec) -> dict[str, Any]:
        """``from_spec``'s keyword arguments, Keras's names, for a core ``"yat_conv"`` / ``"yat_conv_transpose"`` spec.

        Padding is passed as the spec has it: ``"valid"``, ``"same"`` (stride 1) or
        integers (torch's rule), so the layer computes what the spec says.
        """
        options = conv_spec_options(spec)
        kind = "yat_conv_transpose" if cls.transposed else "yat_conv"
        if spec.kind != kind or len(spec.kernel_size) != cls.rank:
            raise ValueError(
                f"{cls.__name__} is built from a {kind!r} spec with {cls.rank} spatial dimensions, got "
                f"{spec.kind!r} with kernel_size {spec.kernel_size}"
            )
        extra = {"output_padding": options["output_padding"]} if cls.transposed else {}
        return {
            "filters": spec.out_features,
            "kernel_size": options["kernel_size"],
            "strides": options["stride"],
            "padding": options["padding"],
            "dilation_rate": options["dilation"],
            "groups": options["groups"],
            "use_bias": options["bias"],
            "use_alpha": options["alpha"],
            "epsilon": options["epsilon"],
            "learnable_epsilon": options["learnable_epsilon"],
            "spherical": options["spherical"],
            **extra,
        }

    def _core_conv(
        self, x: Array, kernel: Array, options: dict[str, Any], xp: Any, pad: Callable[[Array, list], Array]
    ) -> Array:
        """The core's convolution of channels-first ``x`` (every size known) with the core-layout ``kernel``.

        ``options`` are :func:`~yat_core.mlp.forward_options`'s; ``pad(x, pairs)`` zero-pads
        (``keras.ops.pad``, ``tf.pad``) for Keras's one-sided ``"same"``.
        """
        geometry: dict[str, Any] = {"stride": self.strides, "dilation": self.dilation_rate, "groups": self.groups}
        if self.transposed:
            pads = tuple(p for p, _, _ in self._geometry)
            out_pads = tuple(op for _, op, _ in self._geometry)
            y = yat_conv_transpose(
                x, kernel, padding=pads, output_padding=out_pads, native=True, xp=xp, **geometry, **options
            )
            if any(crop for _, _, crop in self._geometry):
                crops = (slice(0, int(m) - c) for m, (_, _, c) in zip(y.shape[2:], self._geometry))
                y = y[(slice(None), slice(None), *crops)]
            return y
        padding: Any = self.padding
        if padding == "same" and max(self.strides) > 1:  # TensorFlow's rule: may be one-sided
            spatial = [int(v) for v in x.shape[2:]]
            pairs = [same_padding(*a) for a in zip(spatial, self.kernel_size, self.strides, self.dilation_rate)]
            if any(lo != hi for lo, hi in pairs):
                x = pad(x, [(0, 0), (0, 0), *((0, hi - lo) for lo, hi in pairs)])
            padding = tuple(lo for lo, _ in pairs)
        return yat_conv(x, kernel, padding=padding, native=True, xp=xp, **geometry, **options)


# ------------------------------------------------------------ models


def input_layout(input_shape: tuple[int, ...], channels_last: bool) -> tuple[int, ...]:
    """One sample's shape as the model takes it: the core's ``(C, *spatial)`` as ``(*spatial, C)`` when channels last.

    Examples
    --------
    >>> input_layout((1, 28, 28), True), input_layout((1, 28, 28), False), input_layout((784,), True)
    ((28, 28, 1), (1, 28, 28), (784,))
    """
    shape = tuple(int(v) for v in input_shape)
    return (*shape[1:], shape[0]) if channels_last and len(shape) > 1 else shape


def layout_reshape(shape: tuple[int | None, ...], layout: tuple[int, ...], what: str) -> tuple[int, ...] | None:
    """The shape an input of ``shape`` is reshaped to, ``(-1, *layout)``, or None when it has the layout already.

    The model takes ``(n, *layout)``, and inputs of another rank holding the same
    number of values per example (flat ``(n, prod(layout))``, images ``(n, 28, 28)``),
    which it reshapes. An input of the layout's rank but another shape (channels
    first where the model is channels last) is refused, not silently reshaped.

    Examples
    --------
    >>> layout_reshape((5, 784), (28, 28, 1), "cnn"), layout_reshape((5, 28, 28, 1), (28, 28, 1), "cnn")
    ((-1, 28, 28, 1), None)
    >>> layout_reshape((5, 1, 28, 28), (28, 28, 1), "cnn")
    Traceback (most recent call last):
    ...
    ValueError: cnn takes inputs (n, 28, 28, 1), or (n, ...) of 784 values per example in that order; got shape (5, 1, 28, 28)
    """
    per_example = tuple(shape[1:])
    if len(per_example) == len(layout) and all(v is None or v == w for v, w in zip(per_example, layout)):
        return None  # the layout (sizes a graph does not know yet included)
    size = math.prod(layout)
    known = None not in per_example
    if len(per_example) != len(layout) and (not known or math.prod(v or 0 for v in per_example) == size):
        return (-1, *layout)
    raise ValueError(
        f"{what} takes inputs (n, {', '.join(map(str, layout))}), or (n, ...) of {size} values per example "
        f"in that order; got shape {tuple(shape)}"
    )


def to_framework_layout(x: Any, input_shape: tuple[int, ...], channels_last: bool) -> np.ndarray:
    """NumPy input in the core's layout (``(n, *input_shape)`` channels first, or flat) in the model's layout.

    Examples
    --------
    >>> x = np.arange(12.0).reshape(1, 3, 2, 2)  # (n, C, H, W)
    >>> to_framework_layout(x, (3, 2, 2), True)[0, 0, 0], to_framework_layout(x.reshape(1, -1), (3, 2, 2), True).shape
    (array([0., 4., 8.]), (1, 2, 2, 3))
    """
    x = np.asarray(x)
    if x.ndim < 2 or math.prod(x.shape[1:]) != math.prod(input_shape):
        raise ValueError(
            f"expected inputs (n, {', '.join(map(str, input_shape))}) in the core's layout, or flat "
            f"(n, {math.prod(input_shape)}); got shape {x.shape}"
        )
    x = x.reshape(len(x), *input_shape)
    return np.ascontiguousarray(np.moveaxis(x, 1, -1) if channels_last and len(input_shape) > 1 else x)


def to_core(layer: LayerSpec, name: str, value: np.ndarray) -> np.ndarray:
    """A parameter of ``layer`` read from the model, in the core's layout (convolution and attention kernels converted).

    Examples
    --------
    >>> to_core(LayerSpec("conv", 1, 32, kernel_size=(3, 3)), "kernel", np.zeros((3, 3, 1, 32))).shape
    (32, 1, 3, 3)
    >>> attention = LayerSpec("yat_attention", 8, 8, heads=2)
    >>> to_core(attention, "q_kernel", np.zeros((8, 2, 4))).shape, to_core(attention, "q_bias", np.zeros((2, 4))).shape
    ((8, 8), (8,))
    """
    if layer.kind in ATTENTION_KINDS and name[:2] in ("q_", "k_", "v_", "o_"):
        if name == "o_kernel":  # (heads, head_size, dim) -> (dim, heads * head_size)
            return np.ascontiguousarray(value.reshape(-1, value.shape[-1]).T)
        if name.endswith("_kernel"):  # (dim, heads, head_size) -> (heads * head_size, dim)
            return np.ascontiguousarray(value.reshape(value.shape[0], -1).T)
        return np.ascontiguousarray(value.reshape(-1))  # biases: (heads, head_size) -> (dim,)
    return kernel_to_core(value) if name == "kernel" and layer.kind in CONV_KINDS else value


def from_core(layer: LayerSpec, name: str, value: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_core`: a core-layout value in the model's layout.

    Examples
    --------
    >>> attention = LayerSpec("yat_attention", 8, 8, heads=2)
    >>> from_core(attention, "o_kernel", np.zeros((8, 8))).shape, from_core(attention, "k_bias", np.zeros(8)).shape
    ((2, 4, 8), (2, 4))
    """
    if layer.kind in ATTENTION_KINDS and name[:2] in ("q_", "k_", "v_", "o_"):
        heads = layer.heads
        if name == "o_kernel":
            return np.ascontiguousarray(value.T.reshape(heads, -1, value.shape[0]))
        if name.endswith("_kernel"):
            return np.ascontiguousarray(value.T.reshape(value.shape[1], heads, -1))
        return np.ascontiguousarray(value.reshape(heads, -1)) if name != "o_bias" else value
    return kernel_from_core(value) if name == "kernel" and layer.kind in CONV_KINDS else value


def native_variable(holder: Any, layer: LayerSpec, name: str) -> Any:
    """The variable of ``holder`` (a Keras layer or TensorFlow module of ``layer``) under core name ``name``.

    Attention's projections live in ``holder.query_dense.kernel`` and so on (Keras's
    ``MultiHeadAttention``), a position table in ``holder.embeddings``; every other
    parameter is the attribute of its own name.
    """
    if layer.kind in ATTENTION_KINDS and name[:2] in ("q_", "k_", "v_", "o_"):
        projection, _, part = name.partition("_")
        return getattr(getattr(holder, PROJECTION_LAYERS[projection]), part)
    if layer.kind == "pos_embed":
        return holder.embeddings
    return getattr(holder, name)


def patches_channels_last(x: Any, patch_size: tuple[int, int], ops: Any) -> Any:
    """``(n, H, W, C) -> (n, tokens, C * ph * pw)``: the core's ``"patches"`` of a channels-last image.

    Tokens in row-major order over the patch grid, each patch flattened channels first
    ``(c, i, j)`` as :func:`yat_core.mlp._patches` does, so the dense kernel after it is
    the core's array. ``ops`` supplies ``reshape`` and ``transpose`` (``keras.ops``, or
    TensorFlow's under the same names); ``H``, ``W`` and ``C`` must be known.

    Examples
    --------
    >>> x = np.arange(2 * 4 * 4 * 3.0).reshape(2, 4, 4, 3)
    >>> ops = type("ops", (), {"reshape": staticmethod(np.reshape), "transpose": staticmethod(np.transpose)})
    >>> patches_channels_last(x, (2, 2), ops).shape
    (2, 4, 12)
    """
    (ph, pw), (height, width, channels) = patch_size, (int(v) for v in x.shape[1:])
    rows, cols = height // ph, width // pw
    x = ops.reshape(x, (-1, rows, ph, cols, pw, channels))
    x = ops.transpose(x, (0, 1, 3, 5, 2, 4))  # (n, rows, cols, C, ph, pw)
    return ops.reshape(x, (-1, rows * cols, channels * ph * pw))
