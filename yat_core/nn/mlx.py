"""MLX: the Yat layers as ``mlx.nn.Module`` objects and the model of any :class:`~yat_core.spec.ModelSpec`.

Layout and names follow MLX: a layer's kernel is ``weight`` of shape
``(output_dims, input_dims)`` (the core's layout, so interchange copies it as is),
sizes are ``input_dims`` / ``output_dims``, absent parameters are not there at all
(as ``nn.Linear(bias=False)``), and the model keeps its layers in the list
``model.layers``, so ``tree_flatten(model.parameters())`` names read
``"layers.0.weight"``, ``"layers.0.alpha"``. The interchange names drop the
``layers.`` prefix and replace ``weight`` with ``kernel``.

A model (:class:`YatModel`, :func:`build_model`) is built from any
:class:`~yat_core.spec.ModelSpec`: Yat layers from this module, the others MLX's own
(``nn.Linear``, ``nn.Conv{1,2,3}d``, ``nn.MaxPool{1,2,3}d``, ``nn.AvgPool{1,2,3}d``;
:func:`layer_from_spec`). It runs channels last, MLX's layout; its flatten moves the
channels first so the flattened order, and with it the next dense kernel, is the
core's. :func:`predict` takes the core's layout. Every convolution kernel (Yat or
plain) is exported and imported through :func:`kernel_to_core` /
:func:`kernel_from_core`. The vision transformer's kinds build too: patches (channels
last in, tokens flattened channels first out), a position table (``weight``, the
core's ``table``), :class:`YatMultiHeadAttention` for ``"yat_attention"``, MLX's own
``nn.MultiHeadAttention(bias=True)`` for the softmax ``"attention"`` (its projections
hold the core's exactly: ``q_kernel`` is ``query_proj.weight``, ``o_bias``
``out_proj.bias``), the token mean; ``residual`` layers add their input.

The Yat convolutions :class:`YatConv1d`, :class:`YatConv2d`, :class:`YatConv3d` and
:class:`YatConvTranspose1d` ... :class:`YatConvTranspose3d` are channels last as
``mlx.nn.Conv2d`` / ``ConvTranspose2d``: input ``(N, *spatial, C)``, ``weight`` of
shape ``(out, *k, in/groups)`` for both kinds; :func:`kernel_to_core` /
:func:`kernel_from_core` convert it to the core's layout (``(out, in/groups, *k)``,
transposed ``(in, out/groups, *k)``), and their ``export_params()`` /
``import_params()`` speak the core's unprefixed names and layout.

:class:`YatMultiHeadAttention` is argued, named and called as ``nn.MultiHeadAttention``
(MLX's masks: ``"causal"``, boolean, or additive ``0`` / ``-inf``); :class:`YatEmbed`
as ``nn.Embedding``, with ``attend`` for a tied Yat output layer.

The layers are array code over :func:`yat_core.product.yat_product`,
:func:`yat_core.conv.yat_conv` / :func:`~yat_core.conv.yat_conv_transpose` and
:func:`yat_core.attention.yat_attention`, so
``save_weights`` / ``load_weights``, ``nn.value_and_grad`` and ``mx.compile``
work as for MLX's own layers. Training lives in :mod:`yat_core.runners.mlx`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

from yat_core._lazy import unavailable

try:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_reduce
except ImportError as exc:
    raise unavailable("mlx", exc, "mlx", "yat_core.nn.mlx") from None

from yat_core.attention import yat_attention, yat_embed, yat_embed_attend
from yat_core.conv import yat_conv, yat_conv_transpose
from yat_core.mlp import LEARNABLE, LayerSpec, ModelSpec, init_mlp_numpy
from yat_core.namespaces.mlx import namespace
from yat_core.nn.interchange import check_params, export_arrays, import_arrays
from yat_core.nn.options import (
    attention_layer_spec,
    attention_spec_options,
    check_native_kinds,
    check_size,
    conv_class,
    conv_layer_spec,
    conv_spec_options,
    forward_options,
    names_layer,
    spec_options,
    yat_layer_spec,
)
from yat_core.product import DEFAULT_EPSILON, softplus_inverse, yat_product
from yat_core.spec import ATTENTION_KINDS, CONV_KINDS

__all__ = [
    "YatNMN",
    "YatConv1d",
    "YatConv2d",
    "YatConv3d",
    "YatConvTranspose1d",
    "YatConvTranspose2d",
    "YatConvTranspose3d",
    "YatMultiHeadAttention",
    "YatEmbed",
    "conv_from_spec",
    "kernel_to_core",
    "kernel_from_core",
    "layer_from_spec",
    "YatModel",
    "YatMLP",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "predict",
]

#: Core parameter name -> MLX attribute, where they differ (``nn.Linear`` calls the kernel ``weight``,
#: ``nn.Embedding`` its table ``weight``).
_ATTR = {"kernel": "weight", "table": "weight"}
#: An attention layer's projection (the core's prefix of ``q_kernel``, ...) -> ``nn.MultiHeadAttention``'s name.
_PROJECTIONS = {"q": "query_proj", "k": "key_proj", "v": "value_proj", "o": "out_proj"}


class YatNMN(nn.Module):
    """Dense Yat layer: ``alpha * (x @ weight.T + bias)**2 / (|x - weight_j|**2 + epsilon)``.

    A thin shell over :func:`yat_core.product.yat_product`.

    Parameters
    ----------
    input_dims, output_dims : int
        Sizes of each input and output sample.
    bias : bool or float
        ``True``: a learnable bias (initialised uniform ``±1/sqrt(input_dims)``);
        ``False``: none; a number: that constant added to every unit.
    alpha : bool or float
        ``True``: a learnable scale initialised to 1.0; ``False``: none; a number:
        that constant scale.
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise inputs and kernel rows first.

    Notes
    -----
    A fresh layer draws its kernel from MLX's generator with the core's
    distribution (normal, std ``sqrt(2 / (in + out))``). :func:`build_model` loads
    :func:`yat_core.mlp.init_mlp_numpy` instead, identical in every framework.

    Examples
    --------
    >>> from mlx.utils import tree_flatten
    >>> layer = YatNMN(4, 3)
    >>> sorted(k for k, _ in tree_flatten(layer.trainable_parameters()))
    ['alpha', 'bias', 'weight']
    >>> layer(mx.zeros((2, 4))).shape
    (2, 3)
    >>> YatNMN(4, 3, bias=False, alpha=2.0)
    YatNMN(input_dims=4, output_dims=3, bias=False, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False)
    """

    @names_layer
    def __init__(
        self,
        input_dims: int,
        output_dims: int,
        bias: bool | float = True,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        # A dataclass, not a container: MLX keeps it as a plain attribute, not a parameter.
        self.spec = yat_layer_spec(
            input_dims,
            output_dims,
            bias=bias,
            alpha=alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            names=("input_dims", "output_dims"),
        )
        fan_in, fan_out = self.spec.in_features, self.spec.out_features
        self.weight = mx.random.normal((fan_out, fan_in)) * math.sqrt(2.0 / (fan_in + fan_out))
        if self.spec.bias == LEARNABLE:
            bound = 1.0 / math.sqrt(fan_in)
            self.bias = mx.random.uniform(-bound, bound, (fan_out,))
        if self.spec.alpha == LEARNABLE:
            self.alpha = mx.array(1.0)
        if self.spec.learnable_epsilon:
            self.epsilon_raw = mx.array(softplus_inverse(self.spec.epsilon))

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> YatNMN:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.in_features, spec.out_features, **spec_options(spec))

    def __call__(self, x: mx.array) -> mx.array:
        xp = namespace()
        return yat_product(x, self.weight, **forward_options(self.spec, lambda name: getattr(self, name), xp), xp=xp)

    def _extra_repr(self) -> str:
        sizes = {"input_dims": self.spec.in_features, "output_dims": self.spec.out_features}
        return ", ".join(f"{k}={v}" for k, v in {**sizes, **spec_options(self.spec)}.items())


# ---------------------------------------------------------------- convolutions

_C = TypeVar("_C", bound="_YatConvNd")


def kernel_to_core(spec: LayerSpec, kernel: Any) -> Any:
    """A convolution's kernel from MLX's layout ``(out, *k, in/groups)`` to the core's.

    The core's is ``(out, in/groups, *k)`` for a convolution (``"yat_conv"`` and the
    plain ``"conv"``) and ``(in, out/groups, *k)`` (PyTorch's) for a transposed one; MLX
    keeps both as ``(out, *k, in/groups)``. Works on MLX and NumPy arrays alike.

    Examples
    --------
    >>> from yat_core.nn.options import conv_layer_spec
    >>> spec = conv_layer_spec(4, 6, (3, 2), n_spatial=2, groups=2, output_padding=0)
    >>> kernel_to_core(spec, np.zeros((6, 3, 2, 2))).shape
    (4, 3, 3, 2)
    """
    n = len(spec.kernel_size)
    if spec.kind != "yat_conv_transpose":
        return kernel.transpose(0, n + 1, *range(1, n + 1))
    g, k = spec.groups, spec.kernel_size
    out_g, in_g = spec.out_features // g, spec.in_features // g
    # (g, out/g, *k, in/g) -> (g, in/g, out/g, *k)
    regrouped = kernel.reshape(g, out_g, *k, in_g).transpose(0, n + 2, 1, *range(2, n + 2))
    return regrouped.reshape(spec.in_features, out_g, *k)


def kernel_from_core(spec: LayerSpec, kernel: Any) -> Any:
    """The inverse of :func:`kernel_to_core`: the core's layout to MLX's ``(out, *k, in/groups)``.

    Examples
    --------
    >>> from yat_core.nn.options import conv_layer_spec
    >>> kernel_from_core(conv_layer_spec(4, 6, 3, n_spatial=1, groups=2), np.zeros((6, 2, 3))).shape
    (6, 3, 2)
    """
    n = len(spec.kernel_size)
    if spec.kind != "yat_conv_transpose":
        return kernel.transpose(0, *range(2, n + 2), 1)
    g, k = spec.groups, spec.kernel_size
    out_g, in_g = spec.out_features // g, spec.in_features // g
    # (g, in/g, out/g, *k) -> (g, out/g, *k, in/g)
    regrouped = kernel.reshape(g, in_g, out_g, *k).transpose(0, 2, *range(3, n + 3), 1)
    return regrouped.reshape(spec.out_features, *k, in_g)


#: Core kinds whose kernel MLX keeps in its convolution layout.


def _to_core(spec: LayerSpec, name: str, value: np.ndarray) -> np.ndarray:
    # Convolution kernels change layout; dense kernels and the other parameters are the core's already.
    # (np.ascontiguousarray would turn a 0-d alpha into shape (1,): kernels only.)
    return np.ascontiguousarray(kernel_to_core(spec, value)) if name == "kernel" and spec.kind in CONV_KINDS else value


def _from_core(spec: LayerSpec, name: str, value: np.ndarray) -> np.ndarray:
    return (
        np.ascontiguousarray(kernel_from_core(spec, value)) if name == "kernel" and spec.kind in CONV_KINDS else value
    )


class _YatConvNd(nn.Module):
    """What the six Yat convolutions share: parameters, forward, repr, interchange.

    Subclasses set the number of spatial dimensions (``_n_spatial``) and, through
    their ``__init__``, whether the convolution is transposed; the rest is here, once.
    The geometry is read from ``self.spec`` (properties, not module state), so
    ``parameters()`` and ``state`` hold the arrays only.
    """

    _n_spatial: ClassVar[int]
    transposed: ClassVar[bool] = False

    def _setup(self, spec: LayerSpec) -> None:
        # A dataclass, not a container: MLX keeps it as a plain attribute, not a parameter.
        self.spec = spec
        fan_in, fan_out = spec.fans
        shape = kernel_from_core(spec, np.empty(spec.param_shapes["kernel"])).shape
        self.weight = mx.random.normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))
        if spec.bias == LEARNABLE:
            bound = 1.0 / math.sqrt(fan_in)
            self.bias = mx.random.uniform(-bound, bound, (spec.out_features,))
        if spec.alpha == LEARNABLE:
            self.alpha = mx.array(1.0)
        if spec.learnable_epsilon:
            self.epsilon_raw = mx.array(softplus_inverse(spec.epsilon))

    in_channels = property(lambda self: self.spec.in_features, doc="Input channels.")
    out_channels = property(lambda self: self.spec.out_features, doc="Output channels.")
    kernel_size = property(lambda self: self.spec.kernel_size, doc="One size per spatial dimension.")
    stride = property(lambda self: self.spec.conv_options["stride"], doc="One stride per spatial dimension.")
    padding = property(lambda self: self.spec.conv_options["padding"], doc="Per dimension, or 'valid' / 'same'.")
    dilation = property(lambda self: self.spec.conv_options["dilation"], doc="One per spatial dimension.")
    groups = property(lambda self: self.spec.groups, doc="Channel groups.")

    @classmethod
    def from_spec(cls: type[_C], spec: LayerSpec) -> _C:
        """The layer of a core :class:`~yat_core.spec.LayerSpec` (``"yat_conv"`` or ``"yat_conv_transpose"``).

        Examples
        --------
        >>> from yat_core.nn.options import conv_layer_spec
        >>> YatConv2d.from_spec(conv_layer_spec(1, 8, 3, n_spatial=2, padding="same")).padding
        'same'
        """
        kind = "yat_conv_transpose" if cls.transposed else "yat_conv"
        if spec.kind != kind or len(spec.kernel_size) != cls._n_spatial:
            raise ValueError(
                f"{cls.__name__} is built from a {kind!r} spec with {cls._n_spatial} spatial dimension(s), "
                f"got kind {spec.kind!r} with kernel_size {spec.kernel_size}"
            )
        build: Callable[..., _C] = cls  # the subclasses' __init__ take the sizes and options
        return build(spec.in_features, spec.out_features, **conv_spec_options(spec))

    def __call__(self, x: mx.array) -> mx.array:
        n, name = self._n_spatial, type(self).__name__
        if x.ndim != n + 2:
            raise ValueError(
                f"{name} takes channels-last input of shape (N, *spatial, C) with {n} spatial dimension(s), "
                f"i.e. {n + 2} dimensions; got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.spec.in_features:
            raise ValueError(
                f"{name} takes {self.spec.in_features} input channels on the last axis (N, *spatial, C); "
                f"got shape {tuple(x.shape)}"
            )
        xp = namespace()
        first = mx.transpose(x, (0, n + 1, *range(1, n + 1)))  # the core is channels first
        options = forward_options(self.spec, lambda attr: getattr(self, attr), xp)
        conv = yat_conv_transpose if self.transposed else yat_conv
        kernel = kernel_to_core(self.spec, self.weight)
        # mx.conv_general (0.32) has no grouped 3-D convolution: those take the core's unfold.
        native = self._n_spatial < 3 or self.spec.groups == 1
        y = conv(first, kernel, **self.spec.conv_options, **options, native=native, xp=xp)
        return mx.transpose(y, (0, *range(2, n + 2), 1))

    def _extra_repr(self) -> str:
        options = conv_spec_options(self.spec)
        geometry = ("kernel_size", "stride", "padding", "dilation", "output_padding", "groups")
        yat = ("bias", "alpha", "epsilon", "learnable_epsilon", "spherical")
        shown = [f"{k}={options[k]!r}" for k in (*geometry, *yat) if k in options]
        return ", ".join([f"{self.spec.in_features}, {self.spec.out_features}", *shown])

    def export_params(self) -> dict[str, np.ndarray]:
        """The parameters as ``{core name: numpy array}`` in the core's layout.

        Examples
        --------
        >>> layer = YatConv2d(4, 6, 3, groups=2)
        >>> layer.weight.shape, layer.export_params()["kernel"].shape
        ((6, 3, 3, 2), (6, 2, 3, 3))
        """
        return {
            name: _to_core(self.spec, name, np.array(getattr(self, _ATTR.get(name, name))))
            for name in self.spec.param_shapes
        }

    def import_params(self: _C, params: Mapping[str, Any]) -> _C:
        """Set the parameters from ``params`` (core names without a prefix, core layout) in place; return the layer.

        Names, shapes and dtypes are checked first, so a bad mapping changes nothing;
        values are cast to each parameter's dtype.

        Examples
        --------
        >>> layer = YatConvTranspose1d(2, 3, 4, bias=False).import_params(
        ...     {"kernel": np.ones((2, 3, 4)), "alpha": np.array(2.0)})
        >>> layer.weight.shape, layer.alpha.item()
        ((3, 4, 2), 2.0)
        """
        for name, value in check_params(params, self.spec).items():
            attr = _ATTR.get(name, name)
            setattr(self, attr, mx.array(_from_core(self.spec, name, value), dtype=getattr(self, attr).dtype))
        mx.eval(self.parameters())
        return self


class _YatConv(_YatConvNd):
    """A direct Yat convolution with ``mlx.nn.Conv{1,2,3}d``'s arguments (documented on :class:`YatConv2d`)."""

    @names_layer
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool | float = True,
        *,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        self._setup(
            conv_layer_spec(
                in_channels,
                out_channels,
                kernel_size,
                n_spatial=self._n_spatial,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=bias,
                alpha=alpha,
                epsilon=epsilon,
                learnable_epsilon=learnable_epsilon,
                spherical=spherical,
            )
        )


class _YatConvTranspose(_YatConvNd):
    """A transposed Yat convolution with ``mlx.nn.ConvTranspose{1,2,3}d``'s arguments (see :class:`YatConvTranspose2d`)."""

    transposed = True

    @names_layer
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        output_padding: int | tuple[int, ...] = 0,
        bias: bool | float = True,
        groups: int = 1,
        *,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        self._setup(
            conv_layer_spec(
                in_channels,
                out_channels,
                kernel_size,
                n_spatial=self._n_spatial,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                output_padding=output_padding,
                transposed=True,
                bias=bias,
                alpha=alpha,
                epsilon=epsilon,
                learnable_epsilon=learnable_epsilon,
                spherical=spherical,
            )
        )

    output_padding = property(lambda self: self.spec.conv_options["output_padding"], doc="One per spatial dimension.")


class YatConv1d(_YatConv):
    """Yat convolution over one spatial dimension: :class:`YatConv2d` for ``(N, L, C)`` inputs.

    Examples
    --------
    >>> layer = YatConv1d(4, 6, 3, padding="same", groups=2)
    >>> layer.weight.shape, layer(mx.zeros((2, 10, 4))).shape
    ((6, 3, 2), (2, 10, 6))
    """

    _n_spatial = 1


class YatConv2d(_YatConv):
    """Yat convolution over two spatial dimensions, as :class:`mlx.nn.Conv2d`: channels last.

    Every output is the ⵟ-product of one input patch with one filter,
    ``alpha * (<patch, w_o> + bias_o)**2 / (|patch - w_o|**2 + epsilon)``: a thin shell
    over :func:`yat_core.conv.yat_conv` (the input and kernel transposed to the core's
    channels-first layout and back), with MLX's own convolution for the dot and
    patch-norm terms (``native=True``).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups
        As for :class:`mlx.nn.Conv2d` (``padding`` also ``"valid"`` or ``"same"``).
    bias : bool or float
        ``True``: a learnable bias (uniform ``±1/sqrt(fan_in)``); ``False``: none; a
        number: that constant added to every output (in the numerator, before the square).
    alpha, epsilon, learnable_epsilon, spherical
        The Yat options as for :class:`YatNMN` (keyword only); ``spherical`` normalises
        every patch and filter.

    Notes
    -----
    Input ``(N, H, W, C_in)``, output ``(N, H_out, W_out, C_out)``; parameter ``weight``
    of shape ``(C_out, kH, kW, C_in / groups)`` (MLX's layout; :func:`kernel_to_core`
    gives the core's), ``bias`` ``(C_out,)``, scalars ``alpha`` and ``epsilon_raw``
    (epsilon = ``softplus(epsilon_raw)``); absent ones are not there at all.

    A fresh layer draws its parameters from MLX's generator with the core's
    distributions (kernel normal, std ``sqrt(2 / (fan_in + fan_out))`` with the fans of
    :attr:`~yat_core.spec.LayerSpec.fans`; bias uniform ``±1/sqrt(fan_in)``; alpha 1.0);
    ``from_spec`` then ``import_params`` of :func:`yat_core.mlp.init_layer_numpy` values
    gives the weights every framework starts from.

    Examples
    --------
    >>> from mlx.utils import tree_flatten
    >>> layer = YatConv2d(1, 8, 3, stride=2, padding=1)
    >>> [(name, v.shape) for name, v in tree_flatten(layer.parameters())]
    [('weight', (8, 3, 3, 1)), ('bias', (8,)), ('alpha', ())]
    >>> layer(mx.zeros((2, 28, 28, 1))).shape
    (2, 14, 14, 8)
    >>> YatConv2d(4, 8, (3, 5), bias=False, alpha=2.0, groups=2)
    YatConv2d(4, 8, kernel_size=(3, 5), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=2, bias=False, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False)
    """

    _n_spatial = 2


class YatConv3d(_YatConv):
    """Yat convolution over three spatial dimensions: :class:`YatConv2d` for ``(N, D, H, W, C)`` inputs.

    Examples
    --------
    >>> layer = YatConv3d(2, 4, 3, dilation=2)
    >>> layer.weight.shape, layer(mx.zeros((1, 6, 7, 8, 2))).shape
    ((4, 3, 3, 3, 2), (1, 2, 3, 4, 4))
    """

    _n_spatial = 3


class YatConvTranspose1d(_YatConvTranspose):
    """Yat transposed convolution over one spatial dimension: :class:`YatConvTranspose2d` for ``(N, L, C)``.

    Examples
    --------
    >>> layer = YatConvTranspose1d(4, 6, 3, stride=2, groups=2)
    >>> layer.weight.shape, layer(mx.zeros((2, 5, 4))).shape
    ((6, 3, 2), (2, 11, 6))
    """

    _n_spatial = 1


class YatConvTranspose2d(_YatConvTranspose):
    """Yat transposed convolution over two spatial dimensions, as :class:`mlx.nn.ConvTranspose2d`: channels last.

    A thin shell over :func:`yat_core.conv.yat_conv_transpose`: the direct Yat
    convolution of the zero-inserted input with the flipped kernel, so ``dot`` is
    ``mx.conv_transpose2d(x, weight)``; MLX's own convolution computes the dot and
    patch-norm terms (``native=True``).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, output_padding, bias
        As for :class:`mlx.nn.ConvTranspose2d` (the output size is
        ``(i-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1``).
    groups : int
        Channel groups (``mlx.nn.ConvTranspose2d`` has none; ``mx.conv_transpose2d`` does).
    alpha, epsilon, learnable_epsilon, spherical
        As for :class:`YatConv2d`.

    Notes
    -----
    Input ``(N, H, W, C_in)``; ``weight`` of shape ``(C_out, kH, kW, C_in / groups)``
    (MLX's layout for transposed convolutions too; the core's, PyTorch's, is
    ``(C_in, C_out / groups, kH, kW)``: :func:`kernel_to_core`).

    Examples
    --------
    >>> layer = YatConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    >>> layer.weight.shape, layer(mx.zeros((2, 7, 7, 8))).shape
    ((4, 3, 3, 8), (2, 14, 14, 4))
    """

    _n_spatial = 2


class YatConvTranspose3d(_YatConvTranspose):
    """Yat transposed convolution over three spatial dimensions: :class:`YatConvTranspose2d` for ``(N, D, H, W, C)``.

    Examples
    --------
    >>> layer = YatConvTranspose3d(2, 2, 2, stride=2)
    >>> layer.weight.shape, layer(mx.zeros((1, 2, 3, 4, 2))).shape
    ((2, 2, 2, 2, 2), (1, 4, 6, 8, 2))
    """

    _n_spatial = 3


#: The Yat convolutions by (transposed, spatial dimensions).
_CONV_CLASSES: dict[tuple[bool, int], type[_YatConvNd]] = {
    (cls.transposed, cls._n_spatial): cls
    for cls in (YatConv1d, YatConv2d, YatConv3d, YatConvTranspose1d, YatConvTranspose2d, YatConvTranspose3d)
}


def conv_from_spec(spec: LayerSpec) -> _YatConvNd:
    """The Yat convolution class that fits ``spec`` (kind and spatial dimensions), built from it.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> type(conv_from_spec(LayerSpec("yat_conv_transpose", 4, 2, kernel_size=(2,), stride=(2,)))).__name__
    'YatConvTranspose1d'
    """
    return conv_class(spec, _CONV_CLASSES).from_spec(spec)


# ---------------------------------------------------------------- attention and embedding

#: An additive mask value at or below this masks its key: ``-inf``, and the most negative finite value of every
#: float type (``create_additive_causal_mask`` fills with ``mx.finfo(dtype).min``; float16's is the largest).
_MASKED = -65504.0


def _read_flag(flag: mx.array) -> bool | None:
    """The value of a boolean scalar, or None inside ``mx.compile`` / ``vmap``, where values cannot be read."""
    try:
        return bool(flag.item())
    except ValueError as exc:
        if "[eval]" in str(exc):
            return None
        raise


def _attention_mask(mask: Any, tq: int, tk: int) -> tuple[mx.array | None, mx.array | None]:
    """MLX's attention ``mask`` as the core's boolean one (True: may attend) and a flag of refused values.

    ``None``; ``"causal"`` (MLX's rule: query ``i`` of ``tq`` sees keys ``j <= i + tk - tq``,
    the core's ``j <= i`` when ``tq == tk``); a boolean array (True: may attend, as
    ``mx.fast.scaled_dot_product_attention`` takes it); or an additive float array, ``0``
    where the query may attend and ``-inf`` (or ``<= -65504``) where it may not. The Yat
    score is a ratio, not a sum, so any other additive value has no meaning here: it is
    refused with a ValueError, or, inside ``mx.compile`` where values cannot be read,
    returned as a flag that turns the output into NaN.
    """
    if mask is None:
        return None, None
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(
                f"a string mask must be 'causal' (as mx.fast.scaled_dot_product_attention takes), got {mask!r}"
            )
        return mx.arange(tq)[:, None] + (tk - tq) >= mx.arange(tk)[None, :], None
    if not isinstance(mask, mx.array):
        raise TypeError(f"mask must be None, 'causal' or an mx.array (boolean or additive), got {type(mask).__name__}")
    if mask.dtype == mx.bool_:
        return mask, None
    if not mx.issubdtype(mask.dtype, mx.floating):
        raise TypeError(
            f"mask must be boolean (True: may attend) or additive floats (0 / -inf), got dtype {mask.dtype}"
        )
    allowed = mask == 0
    refused = mx.any(mx.logical_not(mx.logical_or(allowed, mask <= _MASKED)))
    flag = _read_flag(refused)
    if flag:
        values = np.array(mask)
        bad = values[(values != 0) & ~(values <= _MASKED)]
        raise ValueError(
            "an additive mask for Yat attention holds 0 (attend) and -inf or a large negative number such as "
            "mx.finfo(dtype).min (masked) only: the Yat score is a ratio, so other values have no meaning; "
            f"got {bad.flat[0]}"
        )
    return allowed, (refused if flag is None else None)


class YatMultiHeadAttention(nn.Module):
    """Multi-head attention with Yat scores, named, argued and laid out as :class:`mlx.nn.MultiHeadAttention`.

    The queries, keys and values are projected (``query_proj``, ``key_proj``,
    ``value_proj``: ``nn.Linear``, ``weight`` of shape ``(out, in)``), split into
    ``num_heads`` heads by reshaping the last axis, attended by
    :func:`yat_core.attention.yat_attention` (score
    ``alpha * (q.k)**2 / ((|q - k|**2 + epsilon) * sqrt(head_dims))``, softmax over the
    keys), merged back and projected by ``out_proj``.

    Parameters
    ----------
    dims, num_heads, query_input_dims, key_input_dims, value_input_dims, value_dims, value_output_dims
        As for :class:`mlx.nn.MultiHeadAttention` (``num_heads`` divides ``dims`` and ``value_dims``).
    bias : bool
        Learnable biases in the four projections. True by default (``nn.MultiHeadAttention``'s
        default is False): the Yat transformer's projections have them.
    alpha : bool or float
        ``True``: a learnable score scale ``alpha`` initialised to 1.0; ``False``: none (1);
        a number: that constant.
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise each query and key head first (distance ``2 - 2 q.k``).

    Notes
    -----
    ``__call__(queries, keys, values, mask=None)`` takes ``(..., tokens, features)`` inputs and
    MLX's masks, broadcast to ``(..., num_heads, queries, keys)``: ``"causal"``, a boolean
    array (True: may attend) or an additive one (``0`` attends; ``-inf`` or a large negative
    number, as :meth:`mlx.nn.MultiHeadAttention.create_additive_causal_mask` gives, masks).
    Other additive values (a learned bias such as ALiBi) are refused: the Yat score is a
    ratio, not a sum. A query whose keys are all masked gives zero attention (then
    ``out_proj``'s bias) and finite gradients. The projections start as ``nn.Linear`` does
    (uniform ``±1/sqrt(in)``, the core's distribution); :func:`build_model` loads
    :func:`yat_core.mlp.init_mlp_numpy` instead.

    Examples
    --------
    >>> from mlx.utils import tree_flatten
    >>> layer = YatMultiHeadAttention(8, 2)
    >>> [(name, v.shape) for name, v in tree_flatten(layer.parameters())][:2]
    [('query_proj.weight', (8, 8)), ('query_proj.bias', (8,))]
    >>> x = mx.zeros((3, 5, 8))
    >>> layer(x, x, x, mask="causal").shape
    (3, 5, 8)
    >>> YatMultiHeadAttention(8, 2, bias=False, alpha=2.0, spherical=True)
    YatMultiHeadAttention(dims=8, num_heads=2, bias=False, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=True
      (query_proj): Linear(input_dims=8, output_dims=8, bias=False)
      (key_proj): Linear(input_dims=8, output_dims=8, bias=False)
      (value_proj): Linear(input_dims=8, output_dims=8, bias=False)
      (out_proj): Linear(input_dims=8, output_dims=8, bias=False)
    )
    """

    @names_layer
    def __init__(
        self,
        dims: int,
        num_heads: int,
        query_input_dims: int | None = None,
        key_input_dims: int | None = None,
        value_input_dims: int | None = None,
        value_dims: int | None = None,
        value_output_dims: int | None = None,
        bias: bool = True,
        *,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        # A dataclass, not a container: MLX keeps it as a plain attribute, not a parameter.
        self.spec = attention_layer_spec(
            dims,
            num_heads,
            bias=bias,
            alpha=alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            names=("dims", "num_heads"),
        )
        dims, num_heads, bias = self.spec.in_features, self.spec.heads, self.spec.bias == LEARNABLE

        def size(value: int | None, name: str, default: int) -> int:
            # None is the default; anything else (0 included) is checked, not replaced.
            return default if value is None else check_size(value, name)

        query_input_dims = size(query_input_dims, "query_input_dims", dims)
        key_input_dims = size(key_input_dims, "key_input_dims", dims)
        value_input_dims = size(value_input_dims, "value_input_dims", key_input_dims)
        value_dims = size(value_dims, "value_dims", dims)
        value_output_dims = size(value_output_dims, "value_output_dims", dims)
        if value_dims % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide value_dims={value_dims}")
        self.num_heads = num_heads
        self.query_proj = nn.Linear(query_input_dims, dims, bias=bool(bias))
        self.key_proj = nn.Linear(key_input_dims, dims, bias=bool(bias))
        self.value_proj = nn.Linear(value_input_dims, value_dims, bias=bool(bias))
        self.out_proj = nn.Linear(value_dims, value_output_dims, bias=bool(bias))
        if self.spec.alpha == LEARNABLE:
            self.alpha = mx.array(1.0)
        if self.spec.learnable_epsilon:
            self.epsilon_raw = mx.array(softplus_inverse(self.spec.epsilon))

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> YatMultiHeadAttention:
        """The layer of a core ``"yat_attention"`` :class:`~yat_core.spec.LayerSpec` (its ``residual`` is the model's).

        Examples
        --------
        >>> YatMultiHeadAttention.from_spec(LayerSpec("yat_attention", 64, 64, heads=4)).num_heads
        4
        """
        return cls(spec.in_features, spec.heads, **attention_spec_options(spec))

    def __call__(self, queries: mx.array, keys: mx.array, values: mx.array, mask: Any = None) -> mx.array:
        q, k, v = self.query_proj(queries), self.key_proj(keys), self.value_proj(values)
        # (..., T, features) -> (..., T, heads, head_dims): the core's layout, head j = features j*d .. (j+1)*d.
        q, k, v = (mx.unflatten(a, -1, (self.num_heads, -1)) for a in (q, k, v))
        allowed, refused = _attention_mask(mask, q.shape[-3], k.shape[-3])
        xp = namespace()
        # The projections own the bias; the score takes alpha, epsilon and spherical.
        options = forward_options(dataclasses.replace(self.spec, bias=None), lambda name: getattr(self, name), xp)
        del options["bias"]
        out = yat_attention(q, k, v, mask=allowed, **options, xp=xp)
        out = mx.flatten(out, -2, -1)
        if refused is not None:  # values that could not be read (mx.compile): refused as NaN
            out = mx.where(refused, mx.array(math.nan, out.dtype), out)
        return self.out_proj(out)

    def _extra_repr(self) -> str:
        sizes = {"dims": self.spec.in_features, "num_heads": self.num_heads}
        defaults = {
            "query_input_dims": self.spec.in_features,
            "key_input_dims": self.spec.in_features,
            "value_input_dims": self.key_proj.weight.shape[1],
            "value_dims": self.spec.in_features,
            "value_output_dims": self.spec.in_features,
        }
        actual = {
            "query_input_dims": self.query_proj.weight.shape[1],
            "key_input_dims": self.key_proj.weight.shape[1],
            "value_input_dims": self.value_proj.weight.shape[1],
            "value_dims": self.value_proj.weight.shape[0],
            "value_output_dims": self.out_proj.weight.shape[0],
        }
        sizes.update({name: value for name, value in actual.items() if value != defaults[name]})
        options = attention_spec_options(self.spec)
        return ", ".join(f"{k}={v}" for k, v in {**sizes, **options}.items())

    def _check_square(self) -> None:
        d = self.spec.in_features
        shapes = {p.weight.shape for p in (self.query_proj, self.key_proj, self.value_proj, self.out_proj)}
        if shapes != {(d, d)}:
            raise ValueError(
                f"the core's attention layer has {d} -> {d} projections; this layer's are {sorted(shapes)}, "
                "so it has no core names"
            )

    def export_params(self) -> dict[str, np.ndarray]:
        """The parameters as ``{core name: numpy array}`` (``q_kernel`` ``(out, in)``, ``q_bias``, ..., ``alpha``).

        Only for the core's shape: every projection ``dims -> dims``.

        Examples
        --------
        >>> list(YatMultiHeadAttention(8, 2, bias=False, learnable_epsilon=True).export_params())
        ['q_kernel', 'k_kernel', 'v_kernel', 'o_kernel', 'alpha', 'epsilon_raw']
        """
        self._check_square()
        return {name: np.array(_read_param(self, self.spec, name)) for name in self.spec.param_shapes}

    def import_params(self, params: Mapping[str, Any]) -> YatMultiHeadAttention:
        """Set the parameters from ``params`` (core names without a prefix) in place; return the layer.

        Names, shapes and dtypes are checked first, so a bad mapping changes nothing.
        """
        self._check_square()
        for name, value in check_params(params, self.spec).items():
            _write_param(self, self.spec, name, value)
        mx.eval(self.parameters())
        return self


def _param_path(spec: LayerSpec, name: str) -> tuple[str, ...]:
    """Where a layer keeps the core parameter ``name``: ``q_kernel`` is ``query_proj.weight``, ``kernel`` ``weight``."""
    prefix, _, rest = name.partition("_")
    if spec.kind in ATTENTION_KINDS and prefix in _PROJECTIONS and rest in ("kernel", "bias"):
        return _PROJECTIONS[prefix], _ATTR.get(rest, rest)
    return (_ATTR.get(name, name),)


def _read_param(layer: nn.Module, spec: LayerSpec, name: str) -> Any:
    return functools.reduce(getattr, _param_path(spec, name), layer)


def _write_param(layer: nn.Module, spec: LayerSpec, name: str, value: np.ndarray) -> None:
    *parents, attr = _param_path(spec, name)
    owner = functools.reduce(getattr, parents, layer)
    setattr(owner, attr, mx.array(_from_core(spec, name, value), dtype=getattr(owner, attr).dtype))


class YatEmbed(nn.Module):
    """A Yat embedding, named and argued as :class:`mlx.nn.Embedding`: a table looked up by ids, and ``attend``.

    ``layer(ids)`` gives the rows of ``weight`` (``(num_embeddings, dims)``) for integer ids
    of any shape (:func:`yat_core.attention.yat_embed`); ``layer.attend(query)`` scores
    queries ``(..., dims)`` against every row, ``alpha * (q.E_j)**2 / (|q - E_j|**2 + epsilon)``
    (:func:`yat_core.attention.yat_embed_attend`): a tied output layer, where
    ``nn.Embedding`` has ``as_linear``.

    Parameters
    ----------
    num_embeddings, dims : int
        As for :class:`mlx.nn.Embedding`: vocabulary size and row size.
    alpha : bool or float
        ``attend``'s scale: ``True`` learnable (initialised to 1.0), ``False`` none, a number a constant.
    epsilon, learnable_epsilon, spherical
        ``attend``'s options, as for :class:`YatNMN`.

    Notes
    -----
    The table starts as ``nn.Embedding``'s (normal, std ``sqrt(1 / dims)``). Ids are not
    range-checked on the device (as ``nn.Embedding``'s are not).

    Examples
    --------
    >>> layer = YatEmbed(10, 4)
    >>> layer(mx.array([[1, 2, 3]])).shape, layer.attend(mx.zeros((2, 4))).shape
    ((1, 3, 4), (2, 10))
    >>> layer(mx.array([1.0]))
    Traceback (most recent call last):
    ...
    TypeError: embedding ids must be an integer array, got mlx.core.float32
    """

    @names_layer
    def __init__(
        self,
        num_embeddings: int,
        dims: int,
        *,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        # attend is the dense Yat product with the table as its kernel (vocab, dims), without bias.
        self.spec = yat_layer_spec(
            dims,
            num_embeddings,
            bias=False,
            alpha=alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            names=("dims", "num_embeddings"),
        )
        self.weight = mx.random.normal((num_embeddings, dims), scale=math.sqrt(1.0 / dims))
        if self.spec.alpha == LEARNABLE:
            self.alpha = mx.array(1.0)
        if self.spec.learnable_epsilon:
            self.epsilon_raw = mx.array(softplus_inverse(self.spec.epsilon))

    def __call__(self, x: mx.array) -> mx.array:
        return yat_embed(self.weight, x, xp=namespace())

    def attend(self, query: mx.array) -> mx.array:
        """Yat scores of ``query`` ``(..., dims)`` against every row of the table: ``(..., num_embeddings)``."""
        xp = namespace()
        options = forward_options(self.spec, lambda name: getattr(self, name), xp)
        del options["bias"]
        return yat_embed_attend(query, self.weight, **options, xp=xp)

    def _extra_repr(self) -> str:
        options = spec_options(self.spec)
        del options["bias"]
        sizes = f"{self.spec.out_features}, {self.spec.in_features}"
        return ", ".join([sizes, *(f"{k}={v}" for k, v in options.items())])


# ---------------------------------------------------------------- the model


class _Baseline(nn.Module):
    """What a core ``"linear"`` or ``"conv"`` layer adds to MLX's own: a constant bias and a ReLU.

    Mixed in before ``nn.Linear`` / ``nn.Conv{1,2,3}d``, whose ``__call__`` it wraps; the
    weight and a learnable bias stay theirs (``"layers.0.weight"``, ``"layers.0.bias"``).
    """

    spec: LayerSpec

    def __call__(self, x: mx.array) -> mx.array:
        out = super().__call__(x)
        if isinstance(self.spec.bias, float):  # a constant; a learnable one is the native layer's
            out = out + self.spec.bias
        return nn.relu(out) if self.spec.activation == "relu" else out


class _Linear(_Baseline, nn.Linear):
    """``nn.Linear`` of a core ``"linear"`` layer."""


class _Conv(_Baseline):
    """:class:`_Baseline` for ``nn.Conv{1,2,3}d``, plus the right-hand unit that ``"same"`` may need."""

    def __call__(self, x: mx.array) -> mx.array:
        # MLX pads both sides alike; "same" with an even span puts its odd unit on the right (the core's rule).
        extra = _conv_padding(self.spec)[1]
        if any(extra):
            x = mx.pad(x, [(0, 0), *((0, e) for e in extra), (0, 0)])
        return super().__call__(x)


class _Conv1d(_Conv, nn.Conv1d):
    """``nn.Conv1d`` of a core ``"conv"`` layer."""


class _Conv2d(_Conv, nn.Conv2d):
    """``nn.Conv2d`` of a core ``"conv"`` layer."""


class _Conv3d(_Conv, nn.Conv3d):
    """``nn.Conv3d`` of a core ``"conv"`` layer (no groups: MLX 0.32's has none)."""


class _Flatten(nn.Module):
    """``"flatten"`` in the core's order: ``(n, *spatial, C)`` moved channels first, then flattened.

    So the dense kernel after it is the same array in every framework.
    """

    def __call__(self, x: mx.array) -> mx.array:
        return mx.transpose(x, (0, x.ndim - 1, *range(1, x.ndim - 1))).reshape(x.shape[0], -1)


class _Patches(nn.Module):
    """``"patches"``: channels-last images ``(n, H, W, C)`` to tokens ``(n, tokens, C * ph * pw)``.

    Tokens in row-major order over the patch grid, each patch flattened channels first
    (``c, i, j``), the core's order, so the embedding kernel after it is the core's array.
    """

    def __init__(self, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size = tuple(kernel_size)

    def __call__(self, x: mx.array) -> mx.array:
        (ph, pw), (n, height, width, c) = self.kernel_size, x.shape
        rows, cols = height // ph, width // pw
        x = x.reshape(n, rows, ph, cols, pw, c).transpose(0, 1, 3, 5, 2, 4)
        return x.reshape(n, rows * cols, c * ph * pw)

    def _extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class _PosEmbed(nn.Module):
    """``"pos_embed"``: adds the learnable table ``weight`` ``(tokens, dims)`` to a token sequence.

    The core calls it ``table``; ``weight``, as ``nn.Embedding`` calls its table (started
    normal with deviation 0.02, the core's distribution).
    """

    def __init__(self, tokens: int, dims: int) -> None:
        super().__init__()
        self.weight = mx.random.normal((tokens, dims), scale=0.02)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.weight

    def _extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class _TokenMean(nn.Module):
    """``"token_mean"``: ``(n, tokens, dims)`` to ``(n, dims)``, the mean over the tokens."""

    def __call__(self, x: mx.array) -> mx.array:
        return mx.mean(x, axis=1)


#: MLX's own layers by spatial dimensions - 1.
_CONVS = (_Conv1d, _Conv2d, _Conv3d)
_POOLS: dict[str, tuple[Any, ...]] = {
    "max_pool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
    "avg_pool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
}


def _conv_padding(spec: LayerSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A ``"conv"`` spec's padding as MLX's symmetric ``padding`` plus extra units on the right."""
    padding, n = spec.conv_options["padding"], len(spec.kernel_size)
    if padding == "valid":
        return (0,) * n, (0,) * n
    if padding == "same":  # stride 1: a total of dilation * (kernel - 1), the odd unit on the right
        totals = [d * (k - 1) for k, d in zip(spec.kernel_size, spec.conv_options["dilation"])]
        return tuple(t // 2 for t in totals), tuple(t % 2 for t in totals)
    return padding, (0,) * n


def layer_from_spec(spec: LayerSpec) -> nn.Module:
    """The MLX layer of one core layer: Yat ones from this module, the others MLX's own, channels last.

    ``"conv"`` is ``nn.Conv{1,2,3}d`` (geometry from ``spec.conv_options``; ``"same"``
    with an even span pads its odd unit on the right first, as the core does) and
    ``"linear"`` ``nn.Linear``, each plus the spec's constant bias and ReLU; pooling is
    ``nn.MaxPool{1,2,3}d`` / ``nn.AvgPool{1,2,3}d`` with ``stride = kernel_size``;
    ``"flatten"`` flattens in the core's (channels-first) order.

    Raises
    ------
    ValueError
        For a grouped 3-D ``"conv"``: ``mlx.nn.Conv3d`` has no groups.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> layer_from_spec(LayerSpec("conv", 1, 8, kernel_size=(3, 3), padding="same", activation="relu"))
    _Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, bias=True)
    >>> layer_from_spec(LayerSpec("max_pool", 8, 8, kernel_size=(2, 2)))
    MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))
    """
    if spec.kind == "yat":
        return YatNMN.from_spec(spec)
    if spec.kind in ("yat_conv", "yat_conv_transpose"):
        return conv_from_spec(spec)
    if spec.kind == "flatten":
        return _Flatten()
    if spec.kind == "yat_attention":
        return YatMultiHeadAttention.from_spec(spec)
    if spec.kind == "attention":  # MLX's own; bias=True holds the core's projection biases exactly
        return nn.MultiHeadAttention(spec.in_features, spec.heads, bias=spec.bias == LEARNABLE)
    if spec.kind == "patches":
        return _Patches((spec.kernel_size[0], spec.kernel_size[1]))
    if spec.kind == "pos_embed":
        return _PosEmbed(spec.tokens, spec.in_features)
    if spec.kind == "token_mean":
        return _TokenMean()
    n, bias = len(spec.kernel_size), spec.bias == LEARNABLE
    if spec.kind in _POOLS:  # non-overlapping windows: the stride defaults to the window
        return _POOLS[spec.kind][n - 1](spec.kernel_size)
    # Typed Any: mypy does not follow the mixin to the native constructors, whose arguments differ per kind.
    cls: Any = _Linear
    geometry: tuple[Any, ...] = ()
    groups: dict[str, int] = {}
    if spec.kind == "conv":
        options = spec.conv_options
        if n == 3 and options["groups"] != 1:
            raise ValueError(f"mlx.nn.Conv3d has no groups, so a 3-D 'conv' layer cannot have groups={spec.groups}")
        cls, groups = _CONVS[n - 1], ({"groups": options["groups"]} if n < 3 else {})
        geometry = (spec.kernel_size, options["stride"], _conv_padding(spec)[0], options["dilation"])
        if n == 1:  # nn.Conv1d takes ints
            geometry = tuple(v[0] for v in geometry)
    layer: _Baseline = cls(spec.in_features, spec.out_features, *geometry, bias=bias, **groups)
    layer.spec = spec
    return layer


def _channels_last(x: mx.array) -> mx.array:
    """``(n, C, *spatial)`` -> ``(n, *spatial, C)``; features ``(n, F)`` as they are."""
    return x if x.ndim < 3 else mx.transpose(x, (0, *range(2, x.ndim), 1))


class YatModel(nn.Module):
    """The model of a :class:`~yat_core.spec.ModelSpec`: ``model.layers`` in turn, channels last.

    Input is MLX's layout: ``(n, *spatial, C)`` for images (``(n, 28, 28, 1)``),
    ``(n, features)`` for an MLP. Any other input with as many values per sample (flat
    ``(n, 784)`` as :func:`yat_core.mlp.flatten_images` gives, pixels ``(n, 28, 28)``,
    the core's ``(n, C, H, W)``) is read in the core's channels-first order and moved
    channels last.

    Examples
    --------
    >>> from mlx.utils import tree_flatten
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> model = YatModel(seed_spec())
    >>> [name for name, _ in tree_flatten(model.parameters())][:3]
    ['layers.0.weight', 'layers.0.bias', 'layers.0.alpha']
    >>> model(mx.zeros((2, 28, 28))).shape
    (2, 10)
    >>> cnn = YatModel(cnn_spec())
    >>> [type(layer).__name__ for layer in cnn.layers]
    ['YatConv2d', 'MaxPool2d', 'YatConv2d', 'MaxPool2d', '_Flatten', 'YatNMN', '_Linear']
    >>> cnn(mx.zeros((2, 28, 28, 1))).shape, cnn(mx.zeros((2, 784))).shape
    ((2, 10), (2, 10))
    >>> from yat_core.spec import vit_spec
    >>> [type(layer).__name__ for layer in YatModel(vit_spec()).layers][:5]
    ['_Patches', '_Linear', '_PosEmbed', 'YatMultiHeadAttention', 'YatNMN']
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = [layer_from_spec(layer) for layer in spec.layers]

    def __call__(self, x: mx.array) -> mx.array:
        shape = self.spec.input_shape
        native = (*shape[1:], shape[0]) if len(shape) > 1 else shape
        if tuple(x.shape[1:]) != native:
            if x.ndim < 2 or math.prod(x.shape[1:]) != math.prod(shape):
                raise ValueError(
                    f"the model takes inputs of shape (n, {', '.join(map(str, native))}) or any (n, ...) of "
                    f"{math.prod(shape)} values per sample in the core's order, got {tuple(x.shape)}"
                )
            x = _channels_last(x.reshape(x.shape[0], *shape))
        for spec, layer in zip(self.spec.layers, self.layers):
            out = layer(x, x, x) if spec.kind in ATTENTION_KINDS else layer(x)  # the spec's attention is self-attention
            x = x + out if spec.residual else out
        return x


#: The name the MLP-only code used; every spec builds a :class:`YatModel` now.
YatMLP = YatModel

_M = TypeVar("_M", YatModel, _YatConvNd)


def build_model(spec: ModelSpec, seed: int, *, dtype: mx.Dtype = mx.float32) -> YatModel:
    """The native model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> count_params(build_model(seed_spec(), seed=0)), count_params(build_model(cnn_spec(), seed=0))
    (235148, 225037)
    """
    check_native_kinds(spec, "mlx")
    model = YatModel(spec)
    if dtype != mx.float32:
        model.set_dtype(dtype)
    # Drawn in the model's dtype, as the core draws them.
    return import_params(model, init_mlp_numpy(spec, seed, np.dtype(str(dtype).rsplit(".", 1)[-1])))


def export_params(model: YatModel | _YatConvNd) -> dict[str, np.ndarray]:
    """The model's parameters as ``{core name: numpy array}`` in the core's layouts.

    ``"0.kernel"`` of a dense layer is ``(out, in)``, of a convolution ``(out, in/groups, *k)``
    (converted from MLX's ``(out, *k, in/groups)`` by :func:`kernel_to_core`). A single Yat
    convolution gives its own, unprefixed (``"kernel"``, ``"bias"``, ...):
    :meth:`_YatConvNd.export_params`.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> model = build_model(cnn_spec(), 0)
    >>> model.layers[2].weight.shape, export_params(model)["2.kernel"].shape
    ((64, 3, 3, 32), (64, 32, 3, 3))
    """
    if isinstance(model, _YatConvNd):
        return model.export_params()
    spec, layers = model.spec, model.layers
    return export_arrays(
        spec, lambda i, name: _to_core(spec.layers[i], name, np.array(_read_param(layers[i], spec.layers[i], name)))
    )


def import_params(model: _M, params: Mapping[str, Any]) -> _M:
    """Set ``model``'s parameters from ``params`` (core names and layouts) in place; return it.

    ``model`` is a :class:`YatModel` or a single Yat convolution (unprefixed names, the
    core's layout: :meth:`_YatConvNd.import_params`).

    Values are cast to each parameter's dtype; names, shapes and dtypes are checked
    first (:func:`yat_core.nn.interchange.check_params`), so a bad mapping leaves the
    model as it was.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatModel(seed_spec()), init_mlp_numpy(seed_spec(), 0))
    >>> model.layers[0].alpha.item()
    1.0
    """

    if isinstance(model, _YatConvNd):
        return model.import_params(params)
    spec, layers = model.spec, model.layers

    def write(index: int, name: str, value: np.ndarray) -> None:
        _write_param(layers[index], spec.layers[index], name, value)

    import_arrays(spec, params, write)
    mx.eval(model.parameters())
    return model


def count_params(model: nn.Module) -> int:
    """Learnable scalars, counted as MLX users do (sizes of ``trainable_parameters()``).

    Examples
    --------
    >>> count_params(YatNMN(784, 256))
    200961
    """
    return int(tree_reduce(lambda total, v: total + v.size, model.trainable_parameters(), 0))


def predict(model: YatModel, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` in the core's layout, as a NumPy array.

    ``x`` is ``(n, *spec.input_shape)`` (channels first, as the core takes it) or flat
    ``(n, prod(input_shape))``; it is moved channels last for the model.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> predict(build_model(seed_spec(), 0), np.zeros((3, 784), np.float32)).shape
    (3, 10)
    >>> predict(build_model(cnn_spec(), 0), np.zeros((3, 1, 28, 28), np.float32)).shape
    (3, 10)
    """
    dtype = next(iter(dict(tree_flatten(model.parameters())).values())).dtype
    h = mx.array(np.asarray(x), dtype=dtype)
    return np.array(model(_channels_last(h.reshape(h.shape[0], *model.spec.input_shape))))
