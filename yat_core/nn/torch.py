"""PyTorch: the Yat layers as ``torch.nn.Module`` objects and the model of any :class:`~yat_core.spec.ModelSpec`.

Layout and names follow PyTorch: a layer's kernel is ``weight`` of shape
``(out_features, in_features)`` (the core's layout, so interchange copies it
as is), absent parameters are registered as ``None`` (as ``nn.Linear(bias=False)``
does), and the model is a ``torch.nn.Sequential`` whose children are named
``"0"``, ``"1"``, ... after the spec's layers, so ``state_dict()`` keys read
``"0.weight"``, ``"0.alpha"``, ``"2.bias"``. The interchange names replace
``weight`` with ``kernel``.

A model (:class:`YatModel`, :func:`build_model`) is built from any
:class:`~yat_core.spec.ModelSpec`: Yat layers from this module, the others
PyTorch's own (``nn.Linear``, ``nn.Conv{1,2,3}d``, ``nn.MaxPool{1,2,3}d``,
``nn.AvgPool{1,2,3}d``, ``nn.Flatten``; :func:`layer_from_spec`). PyTorch is channels
first like the core, so inputs, the flatten order and every kernel (``nn.Conv2d``'s
``(out, in/groups, *k)`` included) are the core's: interchange is a plain copy.

The Yat convolutions :class:`YatConv1d`, :class:`YatConv2d`, :class:`YatConv3d` and
:class:`YatConvTranspose1d` ... :class:`YatConvTranspose3d` take ``nn.Conv2d``'s /
``nn.ConvTranspose2d``'s arguments and keep ``weight`` in PyTorch's layout
(``(out, in/groups, *k)``, transposed ``(in, out/groups, *k)``), which is the
core's; their ``export_params()`` / ``import_params()`` speak the core's unprefixed
names (``"kernel"``, ``"bias"``, ``"alpha"``, ``"epsilon_raw"``).

The vision transformer's layers (:func:`yat_core.spec.vit_spec`): ``"yat_attention"`` is
:class:`YatMultiHeadAttention`, laid out and called like ``nn.MultiheadAttention``
(``in_proj_weight`` stacks the core's ``q_kernel``, ``k_kernel``, ``v_kernel``;
``out_proj`` holds ``o_kernel``); the softmax baseline's ``"attention"`` is PyTorch's own
``nn.MultiheadAttention(batch_first=True)``, which holds the core's weights exactly;
``"patches"`` is ``nn.Unfold`` with the tokens second, ``"pos_embed"`` a learned
``table``, ``"token_mean"`` the mean over the tokens. :class:`YatEmbed` is
``nn.Embedding``'s table with a Yat :meth:`~YatEmbed.attend`.

The layers are plain tensor code over :func:`yat_core.product.yat_product` and
:func:`yat_core.conv.yat_conv` / :func:`~yat_core.conv.yat_conv_transpose`, so they
work with ``state_dict``, ``torch.export``, ``torch.compile``, ``torch.func``
(``vmap``, ``grad``, ``functional_call``) and ``torch.autograd.gradcheck``.
Training lives in :mod:`yat_core.runners.torch`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

from yat_core._lazy import unavailable

try:
    import array_api_compat.torch as torch_xp
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as exc:
    raise unavailable("torch", exc, "torch", "yat_core.nn.torch") from None

from yat_core.attention import yat_attention, yat_attention_weights, yat_embed, yat_embed_attend
from yat_core.conv import yat_conv, yat_conv_transpose
from yat_core.mlp import LEARNABLE, LayerSpec, ModelSpec, init_mlp_numpy
from yat_core.nn.interchange import check_params, export_arrays, import_arrays
from yat_core.nn.options import (
    attention_layer_spec,
    attention_spec_options,
    check_flag,
    check_native_kinds,
    conv_class,
    conv_layer_spec,
    conv_spec_options,
    forward_options,
    names_layer,
    native_option,
    spec_options,
    yat_layer_spec,
)
from yat_core.product import DEFAULT_EPSILON, softplus_inverse, yat_product
from yat_core.spec import ATTENTION_KINDS

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
    "layer_from_spec",
    "YatModel",
    "YatMLP",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "predict",
]

#: Core parameter name -> PyTorch attribute, where they differ (``nn.Linear`` calls the kernel ``weight``).
_ATTR = {"kernel": "weight"}


class YatNMN(nn.Module):
    """Dense Yat layer: ``alpha * (x @ weight.T + bias)**2 / (|x - weight_j|**2 + epsilon)``.

    A thin shell over :func:`yat_core.product.yat_product`.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output sample.
    bias : bool or float
        ``True``: a learnable bias (initialised uniform ``±1/sqrt(in_features)``);
        ``False``: none; a number: that constant added to every unit.
    alpha : bool or float
        ``True``: a learnable scale initialised to 1.0; ``False``: none; a number:
        that constant scale (e.g. ``math.sqrt(2)``).
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise inputs and kernel rows first.
    device, dtype
        As for :class:`torch.nn.Linear`.

    Notes
    -----
    A fresh layer draws its kernel with :func:`torch.nn.init.xavier_normal_` (the
    core's distribution) from PyTorch's global generator. :func:`build_model`
    instead loads :func:`yat_core.mlp.init_mlp_numpy`, identical in every framework.

    Examples
    --------
    >>> layer = YatNMN(4, 3)
    >>> sorted(name for name, _ in layer.named_parameters())
    ['alpha', 'bias', 'weight']
    >>> layer(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    >>> YatNMN(4, 3, bias=False, alpha=2.0)
    YatNMN(in_features=4, out_features=3, bias=False, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False)
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    alpha: nn.Parameter | None
    epsilon_raw: nn.Parameter | None

    @names_layer
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool | float = True,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.spec = yat_layer_spec(
            in_features,
            out_features,
            bias=bias,
            alpha=alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
        )
        self.in_features, self.out_features = self.spec.in_features, self.spec.out_features
        shapes = self.spec.param_shapes  # the learnable ones only
        for name in ("kernel", "bias", "alpha", "epsilon_raw"):
            shape = shapes.get(name)
            param = None if shape is None else nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            self.register_parameter(_ATTR.get(name, name), param)
        self.reset_parameters()

    @classmethod
    def from_spec(cls, spec: LayerSpec, **factory: Any) -> YatNMN:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.in_features, spec.out_features, **spec_options(spec), **factory)

    def reset_parameters(self) -> None:
        """Draw fresh initial values (the core's distributions, PyTorch's generator)."""
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        if self.alpha is not None:
            nn.init.ones_(self.alpha)
        if self.epsilon_raw is not None:
            nn.init.constant_(self.epsilon_raw, softplus_inverse(self.spec.epsilon))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        options = forward_options(self.spec, lambda name: getattr(self, name), torch_xp)
        return yat_product(x, self.weight, **options, xp=torch_xp)

    def extra_repr(self) -> str:
        options = spec_options(self.spec)
        return ", ".join(
            f"{k}={v}"
            for k, v in {"in_features": self.in_features, "out_features": self.out_features, **options}.items()
        )


# ---------------------------------------------------------------- convolutions

_C = TypeVar("_C", bound="_YatConvNd")


class _YatConvNd(nn.Module):
    """What the six Yat convolutions share: parameters, forward, repr, interchange.

    Subclasses set the number of spatial dimensions (``_n_spatial``) and, through
    their ``__init__``, whether the convolution is transposed; the rest is here, once.
    """

    _n_spatial: ClassVar[int]
    transposed: ClassVar[bool] = False

    weight: nn.Parameter
    bias: nn.Parameter | None
    alpha: nn.Parameter | None
    epsilon_raw: nn.Parameter | None

    def _setup(self, spec: LayerSpec, padding_mode: str, device: Any, dtype: Any) -> None:
        if padding_mode != "zeros":
            raise ValueError(
                f"padding_mode must be 'zeros' (the Yat convolution pads with zeros), got {padding_mode!r}"
            )
        self.spec = spec
        self.in_channels, self.out_channels = spec.in_features, spec.out_features
        options = spec.conv_options
        self.kernel_size: tuple[int, ...] = spec.kernel_size
        self.stride: tuple[int, ...] = options["stride"]
        self.padding: tuple[int, ...] | str = options["padding"]
        self.dilation: tuple[int, ...] = options["dilation"]
        self.groups: int = options["groups"]
        self.output_padding: tuple[int, ...] = options.get("output_padding", (0,) * self._n_spatial)
        self.padding_mode = padding_mode
        shapes = spec.param_shapes  # the learnable ones only; the kernel in torch's layout, which is the core's
        for name in ("kernel", "bias", "alpha", "epsilon_raw"):
            shape = shapes.get(name)
            param = None if shape is None else nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            self.register_parameter(_ATTR.get(name, name), param)  # None: absent, as nn.Conv2d(bias=False)
        self.reset_parameters()

    @classmethod
    def from_spec(cls: type[_C], spec: LayerSpec, **factory: Any) -> _C:
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
        options = conv_spec_options(spec)
        return cls(spec.in_features, spec.out_features, **options, **factory)

    def reset_parameters(self) -> None:
        """Draw fresh initial values: the core's distributions, PyTorch's generator.

        Kernel normal with std ``sqrt(2 / (fan_in + fan_out))`` (fans per group, as
        :attr:`~yat_core.spec.LayerSpec.fans` counts them), bias uniform
        ``±1/sqrt(fan_in)``, alpha 1.0, ``epsilon_raw`` at the configured epsilon.
        """
        fan_in, fan_out = self.spec.fans
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        if self.alpha is not None:
            nn.init.ones_(self.alpha)
        if self.epsilon_raw is not None:
            nn.init.constant_(self.epsilon_raw, softplus_inverse(self.spec.epsilon))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self._n_spatial
        if x.dim() not in (n + 1, n + 2):
            raise ValueError(
                f"{type(self).__name__} takes input of shape (N, C, *spatial) or (C, *spatial) with {n} spatial "
                f"dimension(s), i.e. {n + 2} or {n + 1} dimensions; got shape {tuple(x.shape)}"
            )
        batched = x.dim() == n + 2
        h = x if batched else x.unsqueeze(0)
        options = forward_options(self.spec, lambda name: getattr(self, name), torch_xp)
        conv = yat_conv_transpose if self.transposed else yat_conv
        y = conv(h, self.weight, **self.spec.conv_options, **options, native=True, xp=torch_xp)
        return y if batched else y.squeeze(0)

    def extra_repr(self) -> str:
        n = self._n_spatial
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"]
        if self.padding != (0,) * n:
            parts.append(f"padding={self.padding!r}")
        if self.dilation != (1,) * n:
            parts.append(f"dilation={self.dilation}")
        if self.output_padding != (0,) * n:
            parts.append(f"output_padding={self.output_padding}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        options = conv_spec_options(self.spec)
        parts += [f"{k}={options[k]}" for k in ("bias", "alpha", "epsilon", "learnable_epsilon", "spherical")]
        return ", ".join(parts)

    def export_params(self) -> dict[str, np.ndarray]:
        """The parameters as ``{core name: numpy array}`` in the core's layout (PyTorch's own).

        Examples
        --------
        >>> {k: v.shape for k, v in YatConvTranspose2d(4, 6, 3, groups=2).export_params().items()}
        {'kernel': (4, 3, 3, 3), 'bias': (6,), 'alpha': ()}
        """
        return {
            name: np.array(self.get_parameter(_ATTR.get(name, name)).detach().cpu().numpy())
            for name in self.spec.param_shapes
        }

    def import_params(self: _C, params: Mapping[str, Any]) -> _C:
        """Copy ``params`` (core names without a prefix, core layout) into the layer in place; return it.

        Names, shapes and dtypes are checked first, so a bad mapping changes nothing;
        values are cast to each parameter's dtype and device.

        Examples
        --------
        >>> import numpy as np
        >>> layer = YatConv1d(2, 3, 4, bias=False).import_params({"kernel": np.ones((3, 2, 4)), "alpha": np.array(2.0)})
        >>> layer.alpha.item()
        2.0
        """
        checked = check_params(params, self.spec)
        with torch.no_grad():
            for name, value in checked.items():
                # torch.tensor copies: the source may be read-only or strided, which from_numpy cannot share.
                self.get_parameter(_ATTR.get(name, name)).copy_(torch.tensor(value))
        return self


class _YatConv(_YatConvNd):
    """A direct Yat convolution with ``nn.Conv{1,2,3}d``'s arguments (documented on :class:`YatConv2d`)."""

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
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        spec = conv_layer_spec(
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
        self._setup(spec, padding_mode, device, dtype)


class _YatConvTranspose(_YatConvNd):
    """A transposed Yat convolution with ``nn.ConvTranspose{1,2,3}d``'s arguments (see :class:`YatConvTranspose2d`)."""

    transposed = True

    @names_layer
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        output_padding: int | tuple[int, ...] = 0,
        groups: int = 1,
        bias: bool | float = True,
        dilation: int | tuple[int, ...] = 1,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
        *,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        spec = conv_layer_spec(
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
        self._setup(spec, padding_mode, device, dtype)


class YatConv1d(_YatConv):
    """Yat convolution over one spatial dimension: :class:`YatConv2d` for ``(N, C, L)`` inputs.

    Examples
    --------
    >>> layer = YatConv1d(4, 6, 3, padding="same", groups=2)
    >>> tuple(layer.weight.shape), layer(torch.zeros(2, 4, 10)).shape
    ((6, 2, 3), torch.Size([2, 6, 10]))
    """

    _n_spatial = 1


class YatConv2d(_YatConv):
    """Yat convolution over two spatial dimensions, with :class:`torch.nn.Conv2d`'s arguments and layout.

    Every output is the ⵟ-product of one input patch with one filter,
    ``alpha * (<patch, w_o> + bias_o)**2 / (|patch - w_o|**2 + epsilon)``: a thin shell
    over :func:`yat_core.conv.yat_conv`, with PyTorch's own convolution for the dot and
    patch-norm terms (``native=True``).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups
        As for :class:`torch.nn.Conv2d` (``padding`` also ``"valid"`` or ``"same"``).
    bias : bool or float
        ``True``: a learnable bias (uniform ``±1/sqrt(fan_in)``); ``False``: none; a
        number: that constant added to every output (in the numerator, before the square).
    padding_mode : {"zeros"}
        Zero padding only; the other modes are refused.
    device, dtype
        As for :class:`torch.nn.Conv2d`.
    alpha, epsilon, learnable_epsilon, spherical
        The Yat options as for :class:`YatNMN` (keyword only); ``spherical`` normalises
        every patch and filter.

    Notes
    -----
    Input ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``; parameter ``weight`` of shape
    ``(C_out, C_in / groups, kH, kW)`` (PyTorch's layout, which is the core's), ``bias``
    ``(C_out,)``, scalars ``alpha`` and ``epsilon_raw`` (epsilon = ``softplus(epsilon_raw)``).

    A fresh layer draws its parameters with PyTorch's generator from the core's
    distributions (:meth:`reset_parameters`); ``from_spec`` then ``import_params`` of
    :func:`yat_core.mlp.init_layer_numpy` values gives the weights every framework
    starts from.

    Examples
    --------
    >>> layer = YatConv2d(1, 8, 3, stride=2, padding=1)
    >>> [(name, tuple(p.shape)) for name, p in layer.named_parameters()]
    [('weight', (8, 1, 3, 3)), ('bias', (8,)), ('alpha', ())]
    >>> layer(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 8, 14, 14])
    >>> YatConv2d(4, 8, (3, 5), bias=False, alpha=2.0, groups=2)
    YatConv2d(4, 8, kernel_size=(3, 5), stride=(1, 1), groups=2, bias=False, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False)
    """

    _n_spatial = 2


class YatConv3d(_YatConv):
    """Yat convolution over three spatial dimensions: :class:`YatConv2d` for ``(N, C, D, H, W)`` inputs.

    Examples
    --------
    >>> layer = YatConv3d(2, 4, 3, dilation=2)
    >>> tuple(layer.weight.shape), layer(torch.zeros(1, 2, 6, 7, 8)).shape
    ((4, 2, 3, 3, 3), torch.Size([1, 4, 2, 3, 4]))
    """

    _n_spatial = 3


class YatConvTranspose1d(_YatConvTranspose):
    """Yat transposed convolution over one spatial dimension: :class:`YatConvTranspose2d` for ``(N, C, L)``.

    Examples
    --------
    >>> layer = YatConvTranspose1d(4, 6, 3, stride=2, groups=2)
    >>> tuple(layer.weight.shape), layer(torch.zeros(2, 4, 5)).shape
    ((4, 3, 3), torch.Size([2, 6, 11]))
    """

    _n_spatial = 1


class YatConvTranspose2d(_YatConvTranspose):
    """Yat transposed convolution over two spatial dimensions, with :class:`torch.nn.ConvTranspose2d`'s arguments.

    A thin shell over :func:`yat_core.conv.yat_conv_transpose`: the direct Yat
    convolution of the zero-inserted input with the flipped kernel, so ``dot`` is
    ``conv_transpose2d(x, weight)``; PyTorch's own convolution computes the dot and
    patch-norm terms (``native=True``).

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, dilation
        As for :class:`torch.nn.ConvTranspose2d` (``padding`` an int or a tuple; the
        output size is ``(i-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1``).
    bias, padding_mode, device, dtype, alpha, epsilon, learnable_epsilon, spherical
        As for :class:`YatConv2d`.

    Notes
    -----
    Input ``(N, C_in, H, W)`` or ``(C_in, H, W)``; ``weight`` of shape
    ``(C_in, C_out / groups, kH, kW)`` (PyTorch's layout, which is the core's).

    Examples
    --------
    >>> layer = YatConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    >>> tuple(layer.weight.shape), layer(torch.zeros(2, 8, 7, 7)).shape
    ((8, 4, 3, 3), torch.Size([2, 4, 14, 14]))
    """

    _n_spatial = 2


class YatConvTranspose3d(_YatConvTranspose):
    """Yat transposed convolution over three spatial dimensions: :class:`YatConvTranspose2d` for ``(N, C, D, H, W)``.

    Examples
    --------
    >>> layer = YatConvTranspose3d(2, 2, 2, stride=2)
    >>> tuple(layer.weight.shape), layer(torch.zeros(1, 2, 2, 3, 4)).shape
    ((2, 2, 2, 2, 2), torch.Size([1, 2, 4, 6, 8]))
    """

    _n_spatial = 3


#: The Yat convolutions by (transposed, spatial dimensions).
_CONV_CLASSES: dict[tuple[bool, int], type[_YatConvNd]] = {
    (cls.transposed, cls._n_spatial): cls
    for cls in (YatConv1d, YatConv2d, YatConv3d, YatConvTranspose1d, YatConvTranspose2d, YatConvTranspose3d)
}


def conv_from_spec(spec: LayerSpec, **factory: Any) -> _YatConvNd:
    """The Yat convolution class that fits ``spec`` (kind and spatial dimensions), built from it.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> conv_from_spec(LayerSpec("yat_conv_transpose", 4, 2, kernel_size=(2,), stride=(2,), output_padding=(1,)))
    YatConvTranspose1d(4, 2, kernel_size=(2,), stride=(2,), output_padding=(1,), bias=True, alpha=True, epsilon=1e-05, learnable_epsilon=False, spherical=False)
    """
    return conv_class(spec, _CONV_CLASSES).from_spec(spec, **factory)


# ---------------------------------------------------------------- attention and embedding

#: The projections stacked in ``in_proj_weight`` / ``in_proj_bias``, in PyTorch's order.
_QKV = ("q", "k", "v")


def _allowed(mask: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """A PyTorch attention mask (True or -inf: not allowed) as the core's (True: may attend).

    A float mask is added to PyTorch's scores; only its 0 (keep) and -inf (drop) have
    a meaning for the Yat scores, so other values are refused rather than guessed at.
    """
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return ~mask
    if mask.is_floating_point():
        keep = mask == 0
        if not bool(torch.all(keep | (mask == -math.inf))):
            raise ValueError(
                f"{name} is a float mask that PyTorch adds to softmax scores; YatMultiHeadAttention takes boolean "
                "masks (True: not allowed) or float masks of 0 (allowed) and -inf (not allowed) only"
            )
        return keep
    raise TypeError(f"{name} must be a boolean tensor (True: not allowed) or a float one, got dtype {mask.dtype}")


class YatMultiHeadAttention(nn.Module):
    """Multi-head attention with Yat scores, argued and laid out like :class:`torch.nn.MultiheadAttention`.

    The queries, keys and values are linear projections of ``query``, ``key`` and
    ``value``, split into ``num_heads`` heads of ``embed_dim // num_heads`` features;
    each head weighs the values by the softmax over the keys of the ⵟ-product score
    ``alpha * (q.k)**2 / ((|q - k|**2 + epsilon) * sqrt(head_dim))``
    (:func:`yat_core.attention.yat_attention`), and ``out_proj`` maps the merged heads back.

    Parameters
    ----------
    embed_dim, num_heads : int
        As for :class:`torch.nn.MultiheadAttention` (``num_heads`` divides ``embed_dim``).
    bias : bool
        Learnable biases on the four projections (``in_proj_bias``, ``out_proj.bias``).
    batch_first : bool
        Inputs ``(N, T, E)`` when True (the default here), ``(T, N, E)`` when False.
    device, dtype
        As for :class:`torch.nn.MultiheadAttention`.
    alpha : bool or float
        Keyword only. ``True``: a learnable score scale initialised to 1.0; ``False``:
        none; a number: that constant.
    epsilon, learnable_epsilon, spherical
        The Yat options as for :class:`YatNMN`: epsilon added to the squared distance
        (learned as ``softplus(epsilon_raw)`` when ``learnable_epsilon``); ``spherical``
        normalises every query and key first.

    Notes
    -----
    Parameters are PyTorch's: ``in_proj_weight`` ``(3 * E, E)`` holds the query, key
    and value kernels stacked in that order, each ``(out, in)`` (the core's layout),
    ``in_proj_bias`` ``(3 * E,)`` likewise, ``out_proj`` an :class:`torch.nn.Linear`,
    plus the scalars ``alpha`` and ``epsilon_raw``. :meth:`export_params` /
    :meth:`import_params` speak the core's names (``q_kernel`` ... ``o_bias``).

    Where it differs from PyTorch's: ``batch_first`` defaults to True; ``is_causal=True``
    applies the causal mask itself (combined with any ``attn_mask``, which it does not
    need); a query whose keys are all masked gets zero weights and output (PyTorch's
    softmax gives NaN); a float mask may hold 0 and -inf only. There is no dropout,
    and key and value share ``embed_dim``.

    A fresh layer draws its projections with PyTorch's generator from the core's
    distribution (uniform ``±1/sqrt(embed_dim)``, as ``nn.Linear``);
    :func:`build_model` loads :func:`yat_core.mlp.init_mlp_numpy` instead.

    Examples
    --------
    >>> mha = YatMultiHeadAttention(8, 2)
    >>> [(name, tuple(p.shape)) for name, p in mha.named_parameters()]
    [('in_proj_weight', (24, 8)), ('in_proj_bias', (24,)), ('alpha', ()), ('out_proj.weight', (8, 8)), ('out_proj.bias', (8,))]
    >>> x = torch.zeros(3, 5, 8)
    >>> out, weights = mha(x, x, x, key_padding_mask=torch.tensor([[False] * 4 + [True]] * 3))
    >>> out.shape, weights.shape, weights[0, 0].tolist()
    (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]), [0.25, 0.25, 0.25, 0.25, 0.0])
    """

    in_proj_weight: nn.Parameter
    in_proj_bias: nn.Parameter | None
    alpha: nn.Parameter | None
    epsilon_raw: nn.Parameter | None

    @names_layer
    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        batch_first: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        self.spec = attention_layer_spec(
            embed_dim,
            num_heads,
            bias=bias,
            alpha=alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
        )
        e, bias = self.spec.in_features, self.spec.bias == LEARNABLE
        self.embed_dim, self.num_heads, self.head_dim = e, self.spec.heads, e // self.spec.heads
        self.batch_first = check_flag(batch_first, "batch_first")
        # The score's options; the projections own the bias.
        self._score_spec = dataclasses.replace(self.spec, bias=None)
        factory = {"device": device, "dtype": dtype}
        self.in_proj_weight = nn.Parameter(torch.empty(3 * e, e, **factory))
        self.register_parameter("in_proj_bias", nn.Parameter(torch.empty(3 * e, **factory)) if bias else None)
        shapes = self.spec.param_shapes
        for name in ("alpha", "epsilon_raw"):
            self.register_parameter(name, nn.Parameter(torch.empty((), **factory)) if name in shapes else None)
        self.out_proj = nn.Linear(e, e, bias=bias, **factory)
        self.reset_parameters()

    @classmethod
    def from_spec(cls, spec: LayerSpec, **factory: Any) -> YatMultiHeadAttention:
        """The layer of a core ``"yat_attention"`` :class:`~yat_core.spec.LayerSpec` (``residual`` is the model's).

        Examples
        --------
        >>> layer = YatMultiHeadAttention.from_spec(LayerSpec("yat_attention", 64, 64, heads=4, spherical=True))
        >>> layer.num_heads, layer.head_dim, layer.spec.spherical
        (4, 16, True)
        """
        return cls(spec.in_features, spec.heads, **attention_spec_options(spec), **factory)

    def reset_parameters(self) -> None:
        """Draw fresh initial values: the core's distributions (every projection ``±1/sqrt(E)``), PyTorch's generator."""
        bound = 1.0 / math.sqrt(self.embed_dim)
        for name in self.spec.param_shapes:
            param = _attention_param(self, name)
            with torch.no_grad():
                if name == "alpha":
                    param.fill_(1.0)
                elif name == "epsilon_raw":
                    param.fill_(softplus_inverse(self.spec.epsilon))
                else:
                    param.uniform_(-bound, bound)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``query`` to ``key``/``value``; return ``(output, weights or None)``.

        Parameters
        ----------
        query : Tensor
            ``(N, L, E)`` (``batch_first``), ``(L, N, E)`` otherwise, or unbatched ``(L, E)``.
        key, value : Tensor
            ``(N, S, E)``, ``(S, N, E)`` or ``(S, E)``, as ``query``.
        key_padding_mask : Tensor, optional
            ``(N, S)`` (``(S,)`` unbatched); True (or -inf) marks a key to ignore.
        need_weights : bool
            Also return the attention weights (computed a second time from the scores;
            pass False where they are not needed).
        attn_mask : Tensor, optional
            ``(L, S)`` or ``(N * num_heads, L, S)`` (``(num_heads, L, S)`` unbatched); True
            (or -inf) marks a pair not allowed to attend.
        average_attn_weights : bool
            Return the weights averaged over the heads ``(N, L, S)`` rather than per head
            ``(N, num_heads, L, S)``.
        is_causal : bool
            Query ``i`` sees keys ``j <= i`` only, combined with ``attn_mask``.

        Returns
        -------
        output : Tensor
            Shaped as ``query``.
        weights : Tensor or None
            Zero for masked keys, and on a query whose keys are all masked.
        """
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "query, key and value must all be batched (3-D) or all unbatched (2-D), got shapes "
                f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.shape[-1] != self.embed_dim:
                raise ValueError(f"{name} must have {self.embed_dim} features last, got shape {tuple(t.shape)}")
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
            if attn_mask is not None and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, tq, tk = query.shape[0], query.shape[1], key.shape[1]
        heads = [
            F.linear(x, _attention_param(self, f"{p}_kernel"), self._in_bias(p)).reshape(
                x.shape[0], x.shape[1], self.num_heads, self.head_dim
            )
            for p, x in zip(_QKV, (query, key, value))
        ]
        mask = self._mask(key_padding_mask, attn_mask, n, tq, tk)
        options = forward_options(self._score_spec, lambda name: getattr(self, name), torch_xp)
        del options["bias"]
        a = yat_attention(*heads, mask=mask, causal=bool(is_causal), **options, xp=torch_xp)
        out = self.out_proj(a.reshape(n, tq, self.embed_dim))
        weights = None
        if need_weights:
            weights = yat_attention_weights(*heads[:2], mask=mask, causal=bool(is_causal), **options, xp=torch_xp)
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _in_bias(self, p: str) -> torch.Tensor | None:
        return None if self.in_proj_bias is None else _attention_param(self, f"{p}_bias")

    def _mask(
        self, key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None, n: int, tq: int, tk: int
    ) -> torch.Tensor | None:
        # PyTorch's masks combined into one the core takes: (N, H, L, S)-broadcastable, True = may attend.
        keys = _allowed(key_padding_mask, "key_padding_mask")
        if keys is not None:
            if tuple(keys.shape) != (n, tk):
                raise ValueError(f"key_padding_mask must have shape (N, S) = {(n, tk)}, got {tuple(keys.shape)}")
            keys = keys[:, None, None, :]
        pairs = _allowed(attn_mask, "attn_mask")
        if pairs is not None:
            if pairs.dim() == 4 and tuple(pairs.shape) == (1, self.num_heads, tq, tk):  # unbatched (H, L, S)
                pass
            elif pairs.dim() == 3 and tuple(pairs.shape) == (n * self.num_heads, tq, tk):
                pairs = pairs.reshape(n, self.num_heads, tq, tk)
            elif tuple(pairs.shape) != (tq, tk):
                raise ValueError(
                    f"attn_mask must have shape (L, S) = {(tq, tk)} or (N * num_heads, L, S) = "
                    f"{(n * self.num_heads, tq, tk)}, got {tuple(pairs.shape)}"
                )
        if keys is None or pairs is None:
            return keys if pairs is None else pairs
        return torch.logical_and(keys, pairs)

    def extra_repr(self) -> str:
        options = {
            "embed_dim": self.embed_dim,
            "num_heads": self.num_heads,
            "bias": self.in_proj_bias is not None,
            "batch_first": self.batch_first,
            "alpha": native_option(self.spec.alpha),
            "epsilon": self.spec.epsilon,
            "learnable_epsilon": self.spec.learnable_epsilon,
            "spherical": self.spec.spherical,
        }
        return ", ".join(f"{k}={v}" for k, v in options.items())

    def export_params(self) -> dict[str, np.ndarray]:
        """The parameters under the core's names (``q_kernel``, ``q_bias``, ... ``o_bias``, ``alpha``), core layout.

        Examples
        --------
        >>> {k: v.shape for k, v in YatMultiHeadAttention(8, 2, bias=False).export_params().items()}
        {'q_kernel': (8, 8), 'k_kernel': (8, 8), 'v_kernel': (8, 8), 'o_kernel': (8, 8), 'alpha': ()}
        """
        return {name: np.array(_attention_param(self, name).detach().cpu().numpy()) for name in self.spec.param_shapes}

    def import_params(self, params: Mapping[str, Any]) -> YatMultiHeadAttention:
        """Copy ``params`` (core names, no prefix) into the layer in place; return it.

        Names, shapes and dtypes are checked first, so a bad mapping changes nothing.
        """
        checked = check_params(params, self.spec)
        with torch.no_grad():
            for name, value in checked.items():
                _attention_param(self, name).copy_(torch.tensor(value))
        return self


def _attention_param(layer: YatMultiHeadAttention | nn.MultiheadAttention, name: str) -> torch.Tensor:
    """One core-named parameter of an attention layer (Yat or PyTorch's own), as a view of PyTorch's.

    ``q_kernel`` / ``k_kernel`` / ``v_kernel`` are row blocks of ``in_proj_weight``
    (biases of ``in_proj_bias``), ``o_kernel`` / ``o_bias`` are ``out_proj``'s.
    """
    if name in ("alpha", "epsilon_raw"):
        return layer.get_parameter(name)
    p, what = name.split("_", 1)
    if p == "o":
        return layer.out_proj.get_parameter(_ATTR.get(what, what))
    full = layer.in_proj_weight if what == "kernel" else layer.in_proj_bias
    if full is None:
        raise ValueError(f"{name}: the attention layer has no projection biases")
    start = _QKV.index(p) * layer.embed_dim
    return full[start : start + layer.embed_dim]


class YatEmbed(nn.Module):
    """An embedding table looked up by integer ids, like :class:`torch.nn.Embedding`, that also scores queries
    against every row with the ⵟ-product (:meth:`attend`: a tied output layer).

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        The vocabulary size and the size of each row, as for :class:`torch.nn.Embedding`.
    device, dtype
        As for :class:`torch.nn.Embedding`.
    alpha : bool or float
        Keyword only; the scale of :meth:`attend`'s scores: ``True`` a learnable scalar
        initialised to 1.0, ``False`` none, a number that constant.
    epsilon, learnable_epsilon, spherical
        :meth:`attend`'s Yat options, as for :class:`YatNMN`.

    Notes
    -----
    The table is ``weight`` ``(num_embeddings, embedding_dim)``, drawn standard normal
    as ``nn.Embedding`` draws it. ``padding_idx``, ``max_norm`` and sparse gradients
    are not offered.

    Examples
    --------
    >>> emb = YatEmbed(10, 4)
    >>> emb(torch.tensor([[1, 2, 3]])).shape, emb.attend(torch.zeros(2, 4)).shape
    (torch.Size([1, 3, 4]), torch.Size([2, 10]))
    >>> sorted(name for name, _ in emb.named_parameters())
    ['alpha', 'weight']
    """

    weight: nn.Parameter
    alpha: nn.Parameter | None
    epsilon_raw: nn.Parameter | None

    @names_layer
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        device: Any = None,
        dtype: Any = None,
        *,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        # attend() is the dense product with the table as its (out=vocab, in=d) kernel: that layer's spec.
        self.spec = yat_layer_spec(
            embedding_dim,
            num_embeddings,
            bias=False,
            alpha=alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            names=("embedding_dim", "num_embeddings"),
        )
        self.num_embeddings, self.embedding_dim = self.spec.out_features, self.spec.in_features
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.num_embeddings, self.embedding_dim, **factory))
        shapes = self.spec.param_shapes
        for name in ("alpha", "epsilon_raw"):
            self.register_parameter(name, nn.Parameter(torch.empty((), **factory)) if name in shapes else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw a standard normal table (``nn.Embedding``'s), alpha 1.0, ``epsilon_raw`` at epsilon."""
        nn.init.normal_(self.weight)
        if self.alpha is not None:
            nn.init.ones_(self.alpha)
        if self.epsilon_raw is not None:
            nn.init.constant_(self.epsilon_raw, softplus_inverse(self.spec.epsilon))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of integer ``ids`` of any shape: ``(*ids.shape, embedding_dim)``.

        Raises
        ------
        TypeError
            For ids that are not an integer tensor.
        """
        return yat_embed(self.weight, ids, xp=torch_xp)

    def attend(self, query: torch.Tensor) -> torch.Tensor:
        """The Yat score of each query ``(..., embedding_dim)`` against every row: ``(..., num_embeddings)``.

        ``alpha * (query . row)**2 / (|query - row|**2 + epsilon)``
        (:func:`yat_core.attention.yat_embed_attend`).
        """
        options = forward_options(self.spec, lambda name: getattr(self, name), torch_xp)
        del options["bias"]
        return yat_embed_attend(query, self.weight, **options, xp=torch_xp)

    def extra_repr(self) -> str:
        options = spec_options(self.spec)
        del options["bias"]
        return f"{self.num_embeddings}, {self.embedding_dim}, " + ", ".join(f"{k}={v}" for k, v in options.items())


class _Baseline(nn.Module):
    """What a core ``"linear"`` or ``"conv"`` layer adds to PyTorch's own: a constant bias, a ReLU, the residual.

    Mixed in before ``nn.Linear`` / ``nn.Conv{1,2,3}d``, whose ``forward`` it wraps;
    the weight and a learnable bias stay theirs (``"0.weight"``, ``"0.bias"``).
    """

    spec: LayerSpec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if isinstance(self.spec.bias, float):  # a constant; a learnable one is the native layer's
            out = out + self.spec.bias
        out = F.relu(out) if self.spec.activation == "relu" else out
        return x + out if self.spec.residual else out


class _Linear(_Baseline, nn.Linear):
    """``nn.Linear`` of a core ``"linear"`` layer."""


class _Conv1d(_Baseline, nn.Conv1d):
    """``nn.Conv1d`` of a core ``"conv"`` layer."""


class _Conv2d(_Baseline, nn.Conv2d):
    """``nn.Conv2d`` of a core ``"conv"`` layer."""


class _Conv3d(_Baseline, nn.Conv3d):
    """``nn.Conv3d`` of a core ``"conv"`` layer."""


class _ResidualYatNMN(YatNMN):
    """:class:`YatNMN` of a core ``"yat"`` layer with ``residual=True``: its input plus its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class _YatSelfAttention(YatMultiHeadAttention):
    """:class:`YatMultiHeadAttention` of a core ``"yat_attention"`` layer: self-attention on ``(N, T, E)``
    tokens, plus its input when the spec's ``residual`` is set."""

    residual: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = super().forward(x, x, x, need_weights=False)[0]
        return x + out if self.residual else out


class _SelfAttention(nn.MultiheadAttention):
    """PyTorch's own ``nn.MultiheadAttention(batch_first=True)`` of a core ``"attention"`` layer (the softmax
    baseline): self-attention, plus its input when the spec's ``residual`` is set.

    Its ``in_proj_weight`` stacks the core's ``q_kernel``, ``k_kernel``, ``v_kernel``
    (each ``(out, in)``), its heads split the features in contiguous blocks and its
    score is ``q.k / sqrt(head_dim)``: :func:`yat_core.attention.softmax_attention`.
    """

    residual: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override, unused-ignore]
        out = super().forward(x, x, x, need_weights=False)[0]
        return x + out if self.residual else out


class _Patches(nn.Unfold):
    """``(N, C, H, W) -> (N, tokens, C * ph * pw)``: ``nn.Unfold`` of non-overlapping patches, tokens second.

    Unfold flattens each patch channels first ``(c, i, j)`` and orders the patches
    row-major over the grid: the core's ``"patches"`` order.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).transpose(1, 2)


class _PositionTable(nn.Module):
    """A learned ``(tokens, features)`` table added to every sequence (core kind ``"pos_embed"``, parameter ``table``)."""

    def __init__(self, tokens: int, features: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.empty(tokens, features, device=device, dtype=dtype))
        nn.init.normal_(self.table, 0.0, 0.02)  # the core's initial distribution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table


class _TokenMean(nn.Module):
    """``(N, tokens, features) -> (N, features)``: the mean over the tokens (core kind ``"token_mean"``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


def _self_attention(spec: LayerSpec, **factory: Any) -> nn.Module:
    """The self-attention layer of a core attention spec: Yat scores ours, softmax ones PyTorch's own."""
    layer: _YatSelfAttention | _SelfAttention
    if spec.kind == "yat_attention":
        layer = _YatSelfAttention.from_spec(spec, **factory)  # type: ignore[assignment, unused-ignore]
    else:
        layer = _SelfAttention(spec.in_features, spec.heads, bias=spec.bias == LEARNABLE, batch_first=True, **factory)
    layer.residual = spec.residual
    return layer


#: PyTorch's own layers by spatial dimensions - 1.
_CONVS = (_Conv1d, _Conv2d, _Conv3d)
_POOLS: dict[str, tuple[type[nn.Module], ...]] = {
    "max_pool": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d),
    "avg_pool": (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d),
}


def layer_from_spec(spec: LayerSpec, **factory: Any) -> nn.Module:
    """The PyTorch layer of one core layer: Yat ones from this module, the others PyTorch's own.

    ``"conv"`` is ``nn.Conv{1,2,3}d`` (geometry from ``spec.conv_options``, PyTorch's
    ``padding="same"`` rule being the core's) and ``"linear"`` ``nn.Linear``, each plus
    the spec's constant bias and ReLU; pooling is ``nn.MaxPool{1,2,3}d`` /
    ``nn.AvgPool{1,2,3}d`` with ``stride = kernel_size``; ``"flatten"`` is
    ``nn.Flatten()``, whose ``(C, *spatial)`` order is the core's. The token kinds: Yat
    attention is :class:`YatMultiHeadAttention` as self-attention, softmax attention
    ``nn.MultiheadAttention(batch_first=True)``, ``"patches"`` ``nn.Unfold`` (tokens
    second), ``"pos_embed"`` a learned ``table``, ``"token_mean"`` the mean over tokens;
    a spec's ``residual`` adds each layer's input to its output.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> layer_from_spec(LayerSpec("conv", 1, 8, kernel_size=(3, 3), padding="same", activation="relu"))
    _Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=same)
    >>> layer_from_spec(LayerSpec("max_pool", 8, 8, kernel_size=(2, 2)))
    MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=0, dilation=1, ceil_mode=False)
    """
    if spec.kind == "yat":
        return (_ResidualYatNMN if spec.residual else YatNMN).from_spec(spec, **factory)
    if spec.kind in ATTENTION_KINDS:
        return _self_attention(spec, **factory)
    if spec.kind == "patches":
        return _Patches(spec.kernel_size, stride=spec.kernel_size)
    if spec.kind == "pos_embed":
        return _PositionTable(spec.tokens, spec.in_features, **factory)
    if spec.kind == "token_mean":
        return _TokenMean()
    if spec.kind in ("yat_conv", "yat_conv_transpose"):
        return conv_from_spec(spec, **factory)
    if spec.kind == "flatten":
        return nn.Flatten()
    if spec.kind in _POOLS:  # non-overlapping windows: the stride defaults to the window
        return _POOLS[spec.kind][len(spec.kernel_size) - 1](spec.kernel_size)
    # Typed Any: each nn.Conv{n}d types its kernel_size as an n-tuple, which a spec's tuple[int, ...] is not.
    cls: Any = _Linear if spec.kind == "linear" else _CONVS[len(spec.kernel_size) - 1]
    geometry = {} if spec.kind == "linear" else {"kernel_size": spec.kernel_size, **spec.conv_options}
    layer: _Baseline = cls(spec.in_features, spec.out_features, **geometry, bias=spec.bias == LEARNABLE, **factory)
    layer.spec = spec
    return layer


class YatModel(nn.Sequential):
    """The model of a :class:`~yat_core.spec.ModelSpec`: one child per layer, named ``"0"``, ``"1"``, ...

    Input is channels first, PyTorch's layout and the core's: ``(n, *spec.input_shape)``
    (``(n, C, H, W)`` for images, ``(n, features)`` for an MLP). Any other input with
    as many values per sample (flat ``(n, 784)``, pixels ``(n, 28, 28)``) is reshaped
    to it first.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> model = YatModel(seed_spec())
    >>> list(model.state_dict())[:3]
    ['0.weight', '0.bias', '0.alpha']
    >>> model(torch.zeros(2, 28, 28)).shape
    torch.Size([2, 10])
    >>> [type(child).__name__ for child in YatModel(cnn_spec())]
    ['YatConv2d', 'MaxPool2d', 'YatConv2d', 'MaxPool2d', 'Flatten', 'YatNMN', '_Linear']
    """

    def __init__(self, spec: ModelSpec, **factory: Any) -> None:
        super().__init__(*(layer_from_spec(layer, **factory) for layer in spec.layers))
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.spec.input_shape
        if tuple(x.shape[1:]) != shape:
            if x.dim() < 2 or math.prod(x.shape[1:]) != math.prod(shape):
                raise ValueError(
                    f"the model takes inputs of shape (n, {', '.join(map(str, shape))}) or any (n, ...) of "
                    f"{math.prod(shape)} values per sample, got {tuple(x.shape)}"
                )
            x = x.reshape(x.shape[0], *shape)
        return super().forward(x)


#: The name the MLP-only code used; every spec builds a :class:`YatModel` now.
YatMLP = YatModel

_M = TypeVar("_M", YatModel, _YatConvNd, YatMultiHeadAttention)


def build_model(spec: ModelSpec, seed: int, *, device: Any = None, dtype: torch.dtype = torch.float32) -> YatModel:
    """The native model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> count_params(build_model(seed_spec(), seed=0)), count_params(build_model(cnn_spec(), seed=0))
    (235148, 225037)
    """
    check_native_kinds(spec, "torch")
    model = YatModel(spec, device=device, dtype=dtype)
    # Drawn in the model's dtype, as the core draws them (float32 values are not float64 ones).
    return import_params(model, init_mlp_numpy(spec, seed, np.dtype(str(dtype).removeprefix("torch."))))


def _param(model: YatModel, index: int, name: str) -> torch.Tensor:
    layer = model[index]
    if isinstance(layer, (YatMultiHeadAttention, nn.MultiheadAttention)):
        return _attention_param(layer, name)
    return layer.get_parameter(_ATTR.get(name, name))


def export_params(model: YatModel | _YatConvNd | YatMultiHeadAttention) -> dict[str, np.ndarray]:
    """The model's parameters as ``{core name: numpy array}`` in PyTorch's layouts, which are the core's.

    ``"0.kernel"`` of a dense layer is ``(out, in)``, of a convolution ``(out, in/groups, *k)``.

    An attention layer's ``q_kernel``, ``k_kernel``, ``v_kernel`` are the row blocks of
    its ``in_proj_weight``, ``o_kernel`` its ``out_proj.weight``.

    A single Yat convolution or attention layer gives its own, unprefixed (``"kernel"``,
    ``"q_kernel"``, ...): :meth:`_YatConvNd.export_params`, :meth:`YatMultiHeadAttention.export_params`.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> params = export_params(build_model(seed_spec(), 0))
    >>> params["0.kernel"].shape, params["0.alpha"].shape
    ((256, 784), ())
    """
    if isinstance(model, (_YatConvNd, YatMultiHeadAttention)):
        return model.export_params()
    return export_arrays(model.spec, lambda i, name: _param(model, i, name).detach().cpu().numpy())


def import_params(model: _M, params: Mapping[str, Any]) -> _M:
    """Copy ``params`` (core names and layouts) into ``model`` in place and return it.

    ``model`` is a :class:`YatModel`, a single Yat convolution or a single
    :class:`YatMultiHeadAttention` (unprefixed names: :meth:`_YatConvNd.import_params`,
    :meth:`YatMultiHeadAttention.import_params`).

    Values are cast to each parameter's dtype and device; names, shapes and dtypes
    are checked first (:func:`yat_core.nn.interchange.check_params`), so a bad
    mapping leaves the model as it was.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatModel(seed_spec()), init_mlp_numpy(seed_spec(), 1))
    >>> model[0].alpha.item()
    1.0
    """

    if isinstance(model, (_YatConvNd, YatMultiHeadAttention)):
        return model.import_params(params)
    mlp: YatModel = model

    def write(index: int, name: str, value: np.ndarray) -> None:
        # torch.tensor copies: the source may be read-only or strided, which from_numpy cannot share.
        _param(mlp, index, name).copy_(torch.tensor(value))

    with torch.no_grad():
        import_arrays(mlp.spec, params, write)
    return model


def count_params(model: nn.Module) -> int:
    """Learnable scalars, counted as PyTorch users do (``numel`` of each trainable parameter).

    Examples
    --------
    >>> count_params(YatNMN(784, 256))
    200961
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def predict(model: YatModel, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` in the core's layout, as a NumPy array.

    ``x`` is ``(n, *spec.input_shape)`` (channels first, which is PyTorch's layout too)
    or flat ``(n, prod(input_shape))``; the model reshapes it.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> predict(build_model(seed_spec(), 0), np.zeros((3, 784), np.float32)).shape
    (3, 10)
    >>> predict(build_model(cnn_spec(), 0), np.zeros((3, 1, 28, 28), np.float32)).shape
    (3, 10)
    """
    p = next(model.parameters())
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x)).to(p.device, p.dtype)).cpu().numpy()
