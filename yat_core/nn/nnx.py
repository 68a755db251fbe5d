"""Flax NNX: the Yat layers as ``nnx.Module`` subclasses, and the model of any :class:`~yat_core.spec.ModelSpec`.

:class:`YatNMN` takes the arguments ``nnx.Linear`` takes (``use_bias``, ``dtype``,
``param_dtype``, ``precision``, ``kernel_init``, ``bias_init``, ``kernel_metadata``,
``bias_metadata``, ``rngs``) and keeps its ``kernel`` ``(in_features,
out_features)`` as ``nnx.Linear`` does; export and import transpose it to the
core's ``(out, in)``. Bias, alpha and epsilon_raw keep the core's names.

:class:`YatConv` and :class:`YatConvTranspose` are the Yat convolutions as
``nnx.Conv`` / ``nnx.ConvTranspose`` are built: channels last, 1, 2 or 3 spatial
dimensions (``len(kernel_size)``), kernels ``(*kernel_size, in/groups, out)`` and
``(*kernel_size, out/groups, in)``; ``layer.export_params()`` /
``layer.import_params(mapping)`` speak the core's names and layouts.

:class:`YatMultiHeadAttention` is Yat attention laid out as ``nnx.MultiHeadAttention``
(``query`` / ``key`` / ``value`` / ``out`` ``nnx.LinearGeneral`` projections, Flax's
masks, ``is_causal``); :class:`YatEmbed` is ``nnx.Embed`` with a Yat ``attend``.

:class:`YatModel` (also ``YatMLP``) is a spec's network: ``"yat"`` -> :class:`YatNMN`,
``"linear"`` -> ``nnx.Linear``, ``"yat_conv"`` / ``"yat_conv_transpose"`` ->
:class:`YatConv` / :class:`YatConvTranspose`, ``"conv"`` -> ``nnx.Conv`` (a ReLU
after it and after ``"linear"`` where the spec says), ``"max_pool"`` / ``"avg_pool"``
-> ``nnx.max_pool`` / ``nnx.avg_pool``, ``"flatten"`` in the core's (channels-first)
order; the vision transformer's ``"yat_attention"`` -> :class:`YatMultiHeadAttention`,
``"attention"`` (the softmax baseline) -> ``nnx.MultiHeadAttention``, ``"pos_embed"``
-> a learnable ``table``, ``"patches"`` and ``"token_mean"`` as the core cuts and
averages the tokens. It holds its layers in ``model.layers`` (an ``nnx.List``, one entry per spec
layer, None for pooling and flatten), so ``model.layers[0].kernel`` is the
interchange's ``"0.kernel"`` in Flax's layout. It takes channels-last inputs
``(n, *spatial, C)``; :func:`predict` takes the core's. Training lives in
:mod:`yat_core.runners.nnx`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import numpy as np

from yat_core._lazy import unavailable

try:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from flax.nnx.nn.dtypes import promote_dtype
    from flax.nnx.nn.linear import default_embed_init
except ImportError as exc:
    raise unavailable("flax", exc, "flax", "yat_core.nn.nnx") from None

from yat_core.mlp import LayerSpec, ModelSpec, init_mlp_numpy
from yat_core.nn._flax import (
    Initializer,
    attention_initializers,
    attention_spec,
    channels_last,
    embed_attend,
    embed_lookup,
    embed_spec,
    export_layer,
    fan_in_uniform,
    flax_attention_options,
    flax_conv_options,
    flax_conv_spec,
    flax_options,
    flax_param_path,
    import_layer,
    matmul_precision,
    plain_layer_options,
    position_init,
    run_model,
    softmax_attention_options,
    to_core_param,
    to_flax_param,
    xavier_normal,
    yat_attention_forward,
    yat_conv_forward,
    yat_dense,
    yat_initializers,
)
from yat_core.nn.interchange import export_arrays, import_arrays
from yat_core.nn.options import check_native_kinds, check_size, names_layer, yat_layer_spec
from yat_core.product import DEFAULT_EPSILON, softplus_inverse

__all__ = [
    "YatNMN",
    "YatConv",
    "YatConvTranspose",
    "YatMultiHeadAttention",
    "YatEmbed",
    "YatModel",
    "YatMLP",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "predict",
    "xavier_normal",
    "fan_in_uniform",
]

_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def _create_params(
    module: nnx.Module,
    inits: Mapping[str, tuple[Initializer, tuple[int, ...]]],
    param_dtype: Any,
    rngs: nnx.Rngs,
    metadata: Mapping[str, Mapping[str, Any]],
) -> None:
    """Set ``module.kernel``, ``.bias``, ``.alpha``, ``.epsilon_raw``: an ``nnx.Param`` each, or ``None`` when absent."""
    for name in ("kernel", "bias", "alpha", "epsilon_raw"):
        if name not in inits:
            setattr(module, name, nnx.data(None))
            continue
        init, shape = inits[name]
        # Only kernel and bias draw keys: alpha and epsilon_raw start at constants.
        key = rngs.params() if name in ("kernel", "bias") else None
        setattr(module, name, nnx.Param(init(key, shape, param_dtype), **metadata.get(name, _NO_METADATA)))


class YatNMN(nnx.Module):
    """Dense Yat layer: ``alpha * (x @ kernel + bias)**2 / (|x - kernel[:, j]|**2 + epsilon)``.

    A thin shell over :func:`yat_core.product.yat_product`, built as ``nnx.Linear`` is.

    Parameters
    ----------
    in_features, out_features : int
    use_bias : bool or float
        ``True``: a learnable bias (``bias_init``); ``False``: none; a number: that
        constant added to every unit.
    use_alpha : bool or float
        ``True``: a learnable scale initialised to 1.0; ``False``: none; a number:
        that constant scale.
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise inputs and kernel columns first.
    dtype : dtype, optional
        Computation dtype; inputs and parameters are promoted to their common type
        when None, as in ``nnx.Linear``.
    param_dtype : dtype
        Dtype of the parameters.
    precision : jax.lax.Precision, str or pair, optional
        Precision of the matrix product, as ``nnx.Linear``'s (a pair must name one
        precision for both operands).
    kernel_init : initializer
        Default :data:`xavier_normal`, the core's distribution.
    bias_init : initializer, optional
        Default :func:`fan_in_uniform` of ``in_features``.
    rngs : nnx.Rngs
    kernel_metadata, bias_metadata : mapping
        Metadata of the kernel and bias ``nnx.Param`` (e.g. ``out_sharding``), as in
        ``nnx.Linear``.

    Notes
    -----
    :func:`build_model` loads :func:`yat_core.mlp.init_mlp_numpy` instead of the
    initialisers, so the same seed gives the same weights in every framework.

    Examples
    --------
    >>> layer = YatNMN(4, 3, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.alpha.get_value().item()
    ((4, 3), 1.0)
    >>> layer(jnp.zeros((2, 4))).shape
    (2, 3)
    """

    kernel: nnx.Param
    bias: nnx.Param | None
    alpha: nnx.Param | None
    epsilon_raw: nnx.Param | None

    @names_layer
    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool | float = True,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer = xavier_normal,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        self.spec = yat_layer_spec(
            in_features,
            out_features,
            bias=use_bias,
            alpha=use_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            option_names=("use_bias", "use_alpha"),
        )
        self.in_features, self.out_features = self.spec.in_features, self.spec.out_features
        matmul_precision(precision)  # a bad precision fails here, not at the first call
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        inits = yat_initializers(self.spec, kernel_init, bias_init)
        _create_params(self, inits, param_dtype, rngs, {"kernel": kernel_metadata, "bias": bias_metadata})

    @classmethod
    def from_spec(cls, spec: LayerSpec, *, rngs: nnx.Rngs, **kwargs: Any) -> YatNMN:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``).

        Examples
        --------
        >>> from yat_core.nn.options import yat_layer_spec
        >>> YatNMN.from_spec(yat_layer_spec(4, 3, bias=False), rngs=nnx.Rngs(0)).bias is None
        True
        """
        return cls(spec.in_features, spec.out_features, **flax_options(spec), rngs=rngs, **kwargs)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        params = {name: getattr(self, name)[...] for name in self.spec.param_shapes}
        return yat_dense(self.spec, inputs, params, dtype=self.dtype, precision=self.precision)


_Conv = TypeVar("_Conv", bound="_YatConvBase")


class _YatConvBase(nnx.Module):
    """What :class:`YatConv` and :class:`YatConvTranspose` share (every spatial rank, both directions)."""

    _kind: ClassVar[str]
    kernel: nnx.Param
    bias: nnx.Param | None
    alpha: nnx.Param | None
    epsilon_raw: nnx.Param | None

    def _build(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Any,
        *,
        dtype: Any,
        param_dtype: Any,
        precision: Any,
        kernel_init: Initializer | None,
        bias_init: Initializer | None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any],
        bias_metadata: Mapping[str, Any],
        padding: Any,
        **options: Any,
    ) -> None:
        transpose = self._kind == "yat_conv_transpose"
        self.spec = flax_conv_spec(
            in_features, out_features, kernel_size, transpose=transpose, padding=padding, **options
        )
        self.in_features, self.out_features = self.spec.in_features, self.spec.out_features
        self.kernel_size, self.strides = self.spec.kernel_size, self.spec.stride
        self.kernel_dilation, self.feature_group_count = self.spec.dilation, self.spec.groups
        self.padding = padding if isinstance(padding, (str, int)) else tuple(padding)
        matmul_precision(precision)  # a bad precision fails here, not at the first call
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        inits = yat_initializers(self.spec, kernel_init, bias_init)
        _create_params(self, inits, param_dtype, rngs, {"kernel": kernel_metadata, "bias": bias_metadata})

    @classmethod
    def from_spec(cls: type[_Conv], spec: LayerSpec, *, rngs: nnx.Rngs, **kwargs: Any) -> _Conv:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat_conv"`` or ``"yat_conv_transpose"``).

        Examples
        --------
        >>> from yat_core.nn.options import conv_layer_spec
        >>> layer = YatConv.from_spec(conv_layer_spec(1, 32, 3, n_spatial=2), rngs=nnx.Rngs(0))
        >>> layer.kernel.shape, layer.padding
        ((3, 3, 1, 32), (0, 0))
        """
        if spec.kind != cls._kind:
            raise ValueError(f"{cls.__name__} is built from a spec of kind {cls._kind!r}, not {spec.kind!r}")
        build: Any = cls  # a subclass: YatConv or YatConvTranspose, whose __init__ takes these
        return build(spec.in_features, spec.out_features, **flax_conv_options(spec), rngs=rngs, **kwargs)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        params = {name: getattr(self, name)[...] for name in self.spec.param_shapes}
        return yat_conv_forward(
            self.spec, inputs, params, padding=self.padding, dtype=self.dtype, precision=self.precision
        )

    def export_params(self) -> dict[str, np.ndarray]:
        """The layer's parameters as ``{core name: numpy array}``, the kernel in the core's layout.

        Examples
        --------
        >>> YatConv(3, 8, (5, 4), rngs=nnx.Rngs(0)).export_params()["kernel"].shape
        (8, 3, 5, 4)
        """
        return export_layer(self.spec, lambda name: getattr(self, name).get_value())

    def import_params(self: _Conv, params: Mapping[str, Any]) -> _Conv:
        """Set the parameters from ``{core name: array}`` (the core's layout) in place; return the layer.

        Names and shapes are checked first (nothing is written unless all fit); values
        are cast to each parameter's dtype and keep its sharding.

        Examples
        --------
        >>> layer = YatConv(3, 8, (5, 4), rngs=nnx.Rngs(0))
        >>> other = YatConv(3, 8, (5, 4), rngs=nnx.Rngs(1)).import_params(layer.export_params())
        >>> bool(jnp.all(other.kernel[...] == layer.kernel[...]))
        True
        """
        for name, value in import_layer(self.spec, params).items():
            variable = getattr(self, name)
            old = variable.get_value()
            variable.set_value(jax.device_put(jnp.asarray(value, dtype=old.dtype), old.sharding))
        return self


_CONV_PARAMETERS = """
    Parameters
    ----------
    in_features, out_features : int
        Input and output channels (features, channels last).
    kernel_size : int or sequence of int
        The kernel's spatial shape; its length (an int: 1) is the number of spatial
        dimensions, 1, 2 or 3.
    strides, kernel_dilation : int or sequence of int, optional
        One for every spatial dimension or one each (``None``: 1).
    feature_group_count : int
        Groups of input and output channels convolved separately (both divisible by it).
    use_bias : bool or float
        ``True``: a learnable bias per output channel (``bias_init``); ``False``: none;
        a number: that constant. It enters the numerator, before the square.
    use_alpha : bool or float
        ``True``: a learnable scale initialised to 1.0; ``False``: none; a number: that
        constant scale.
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise every patch and every filter first.
    dtype : dtype, optional
        Computation dtype; inputs and parameters are promoted to their common type when
        None, as in ``nnx.Conv``.
    param_dtype : dtype
        Dtype of the parameters.
    precision : jax.lax.Precision, str, pair or jax.lax.DotAlgorithmPreset, optional
        Precision of the convolutions (the dot and patch-norm terms), as ``nnx.Conv``'s;
        None inherits JAX's default, as there (a pair must name one precision for both
        operands).
    kernel_init : initializer, optional
        Default: the core's distribution, normal with std ``sqrt(2 / (fan_in +
        fan_out))`` over the core's fans (:func:`yat_core.nn._flax.core_kernel_init`),
        drawn with JAX's generator from ``rngs``.
    bias_init : initializer, optional
        Default: uniform on ``±1/sqrt(fan_in)`` (the core's; ``fan_in`` counts the
        receptive field).
    rngs : nnx.Rngs
    kernel_metadata, bias_metadata : mapping
        Metadata of the kernel and bias ``nnx.Param`` (e.g. ``out_sharding``), as in
        ``nnx.Conv``.
"""


def _with_parameters(cls: type[_Conv]) -> type[_Conv]:
    """Insert the parameters the convolutions share into ``cls``'s docstring, before its examples."""
    parameters = _CONV_PARAMETERS
    if cls._kind == "yat_conv_transpose":
        parameters = parameters.replace(
            "    strides, kernel_dilation",
            "    output_padding : int or sequence of int\n        torch's, with an int ``padding`` only.\n"
            "    strides, kernel_dilation",
        )
    cls.__doc__ = (cls.__doc__ or "").replace("\n    Examples\n", parameters + "\n    Examples\n", 1)
    return cls


@_with_parameters
class YatConv(_YatConvBase):
    """Yat convolution, as ``nnx.Conv``: ``alpha * (dot + bias)**2 / (|patch - filter|**2 + epsilon)`` per position.

    A thin shell over :func:`yat_core.conv.yat_conv` (``native=True``: JAX's own
    convolution for the dot and patch-norm terms): inputs ``(*batch, *spatial,
    in_features)``, kernel ``(*kernel_size, in_features/feature_group_count,
    out_features)``, output ``(*batch, *spatial_out, out_features)``. The arguments
    are ``nnx.Conv``'s, without ``input_dilation``, ``mask``,
    ``conv_general_dilated``, ``promote_dtype`` and ``preferred_element_type``, plus
    the Yat options.

    ``padding`` is Flax's: ``"SAME"`` (the default: ``ceil(size / stride)`` outputs at
    any stride, the odd unit on the high side), ``"SAME_LOWER"``, ``"VALID"``,
    ``"CIRCULAR"``, ``"REFLECT"``, ``"CAUSAL"`` (1-D), an int, or one int or ``(low,
    high)`` pair per spatial dimension. Zero padding puts zeros in the patches, as the
    core's does; where the core cannot say it (``"SAME"`` at stride > 1, unequal pairs,
    the wrapping modes) the layer pads the input and the core pads nothing
    (``spec.padding`` is the core's share).

    Examples
    --------
    >>> layer = YatConv(3, 8, (3, 3), strides=2, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.alpha[...].item()
    ((3, 3, 3, 8), 1.0)
    >>> layer(jnp.zeros((2, 9, 9, 3))).shape
    (2, 5, 5, 8)
    """

    _kind = "yat_conv"

    @names_layer
    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: None | int | Sequence[int] = 1,
        *,
        padding: Any = "SAME",
        kernel_dilation: None | int | Sequence[int] = 1,
        feature_group_count: int = 1,
        use_bias: bool | float = True,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        self._build(
            in_features,
            out_features,
            kernel_size,
            strides=strides,
            padding=padding,
            kernel_dilation=kernel_dilation,
            feature_group_count=feature_group_count,
            use_bias=use_bias,
            use_alpha=use_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            bias_init=bias_init,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )


@_with_parameters
class YatConvTranspose(_YatConvBase):
    """Yat transposed convolution, built as ``nnx.ConvTranspose``, computed as torch's ``ConvTranspose``.

    A thin shell over :func:`yat_core.conv.yat_conv_transpose` (``native=True``):
    inputs ``(*batch, *spatial, in_features)``, kernel ``(*kernel_size,
    out_features/feature_group_count, in_features)`` (the layout of
    ``nnx.ConvTranspose(transpose_kernel=True)``: the core's, i.e. torch's, ``(in,
    out/groups, *k)`` with the spatial axes first), output ``(*batch, *spatial_out,
    out_features)``. With that kernel its dot term is the gradient of a convolution, as
    ``nnx.ConvTranspose(transpose_kernel=True)`` and ``torch.nn.ConvTranspose`` compute
    it (Flax's default ``transpose_kernel=False`` would use the kernel unflipped). The
    arguments are ``nnx.ConvTranspose``'s, without ``mask``, ``transpose_kernel``,
    ``promote_dtype`` and ``preferred_element_type``, plus ``output_padding``,
    ``feature_group_count`` and the Yat options.

    ``padding`` (default ``"SAME"``, as Flax's):

    - an int, or one int per spatial dimension: **torch's** ``padding`` (each side of
      the output shrinks by it: ``(size-1)*stride - 2*padding + K + output_padding``
      outputs, ``K = dilation*(k-1) + 1``), with ``output_padding`` (torch's: extra
      size on the high side, smaller than the stride or the dilation). Flax reads an
      int as padding of the zero-inserted input instead: Flax's ``p`` is torch's
      ``K - 1 - p``.
    - ``"VALID"``: Flax's, ``size*stride + max(K - stride, 0)`` outputs (torch's
      padding 0, output_padding ``max(stride - K, 0)``).
    - ``"SAME"``: Flax's, ``size*stride`` outputs placed as
      ``nnx.ConvTranspose(padding="SAME", transpose_kernel=True)`` places them (torch's
      padding and output_padding where they can say it; where Flax pads one less on
      the high side, e.g. a 3x3 kernel at stride 2, one more output is computed and
      dropped).

    Flax's ``(low, high)`` pairs, ``"CIRCULAR"`` and ``output_padding`` with a string
    padding are refused. :func:`yat_core.nn._flax.transpose_padding` does the mapping;
    ``spec`` holds torch's pair.

    Examples
    --------
    >>> layer = YatConvTranspose(4, 2, (3, 3), strides=2, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape
    (3, 3, 2, 4)
    >>> layer(jnp.zeros((1, 5, 5, 4))).shape, layer.spec.padding, layer.spec.output_padding
    ((1, 10, 10, 2), (0, 0), (0, 0))
    >>> YatConvTranspose(4, 2, 3, strides=2, padding=1, output_padding=1, rngs=nnx.Rngs(0))(jnp.zeros((1, 5, 4))).shape
    (1, 10, 2)
    """

    _kind = "yat_conv_transpose"

    @names_layer
    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: None | int | Sequence[int] = None,
        *,
        padding: Any = "SAME",
        output_padding: int | Sequence[int] = 0,
        kernel_dilation: None | int | Sequence[int] = None,
        feature_group_count: int = 1,
        use_bias: bool | float = True,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        self._build(
            in_features,
            out_features,
            kernel_size,
            strides=strides,
            padding=padding,
            output_padding=output_padding,
            kernel_dilation=kernel_dilation,
            feature_group_count=feature_group_count,
            use_bias=use_bias,
            use_alpha=use_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            bias_init=bias_init,
            rngs=rngs,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )


def _scalar_params(module: nnx.Module, spec: LayerSpec, param_dtype: Any) -> None:
    """Set ``module.alpha`` (1.0) and ``module.epsilon_raw`` (``softplus_inverse(epsilon)``) where ``spec`` learns them."""
    inits = {"alpha": 1.0, "epsilon_raw": softplus_inverse(spec.epsilon)}
    for name, value in inits.items():
        learned = name in spec.param_shapes
        setattr(module, name, nnx.Param(jnp.full((), value, param_dtype)) if learned else nnx.data(None))


class YatMultiHeadAttention(nnx.Module):
    """Multi-head Yat attention, as ``nnx.MultiHeadAttention``: Yat scores in place of the scaled dot product.

    Query, key and value are projected by ``nnx.LinearGeneral`` submodules ``query``,
    ``key``, ``value`` (kernel ``(in_features, num_heads, head_dim)``, bias
    ``(num_heads, head_dim)``), attended by :func:`yat_core.attention.yat_attention`
    (``alpha * (q.k)^2 / ((|q - k|^2 + epsilon) * sqrt(head_dim))``, softmax over the
    keys) and merged by ``out`` (kernel ``(num_heads, head_dim, out_features)``): the
    layout of ``nnx.MultiHeadAttention``, whose arguments it takes without dropout
    (``dropout_rate``, ``broadcast_dropout``, ``deterministic``, ``keep_rngs``),
    ``decode``, ``normalize_qk``, ``num_kv_heads``, ``in_kv_features``,
    ``attention_fn`` and the dtype-promotion and dot-general hooks, plus the Yat
    options.

    Parameters
    ----------
    num_heads : int
        Divides ``qkv_features``; ``head_dim = qkv_features // num_heads``.
    in_features : int
        Features of the inputs (query, key and value alike).
    qkv_features, out_features : int, optional
        Features of the projections and of the output (default ``in_features``).
    use_bias : bool
        Learnable biases in the four projections.
    use_alpha : bool or float
        ``True``: a learnable score scale ``alpha`` initialised to 1.0; ``False``: none
        (1); a number: that constant.
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise every query and key first.
    dtype : dtype, optional
        Computation dtype (the projections' and so the attention's), as in
        ``nnx.MultiHeadAttention``.
    param_dtype : dtype
    precision : jax.lax.Precision, str or pair, optional
        Of the projections and of the attention's products.
    kernel_init, bias_init : initializer, optional
        Of the query, key and value projections; default uniform on
        ``±1/sqrt(in_features)``, the core's distribution.
    out_kernel_init, out_bias_init : initializer, optional
        Of the output projection; default ``kernel_init`` / ``bias_init`` when given,
        else uniform on ``±1/sqrt(qkv_features)``.
    rngs : nnx.Rngs
    kernel_metadata, bias_metadata, out_kernel_metadata, out_bias_metadata : mapping
        Metadata of the projections' ``nnx.Param`` (e.g. ``out_sharding``).

    Notes
    -----
    ``mask`` is Flax's: broadcast to ``(*batch, num_heads, q_length, kv_length)``,
    True (or nonzero, as ``nnx.make_attention_mask`` and ``nnx.make_causal_mask``
    build it) where the query may attend; ``is_causal=True`` adds the causal mask. A
    query that may attend to nothing gets zero weights and a zero attention output (the
    output projection's bias remains), where Flax's softmax attention spreads it
    uniformly.

    Examples
    --------
    >>> layer = YatMultiHeadAttention(4, 16, rngs=nnx.Rngs(0))
    >>> layer.query.kernel.shape, layer.out.kernel.shape, layer.alpha[...].item()
    ((16, 4, 4), (4, 4, 16), 1.0)
    >>> x = jnp.ones((2, 5, 16))
    >>> layer(x, mask=nnx.make_causal_mask(jnp.ones((2, 5)))).shape
    (2, 5, 16)
    """

    alpha: nnx.Param | None
    epsilon_raw: nnx.Param | None

    @names_layer
    def __init__(
        self,
        num_heads: int,
        in_features: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        *,
        use_bias: bool = True,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Initializer | None = None,
        out_kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        out_bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        out_kernel_metadata: Mapping[str, Any] = _NO_METADATA,
        bias_metadata: Mapping[str, Any] = _NO_METADATA,
        out_bias_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        self.in_features = check_size(in_features, "in_features")
        self.qkv_features = self.in_features if qkv_features is None else check_size(qkv_features, "qkv_features")
        self.out_features = self.in_features if out_features is None else check_size(out_features, "out_features")
        self.spec = attention_spec(
            num_heads,
            self.qkv_features,
            use_bias=use_bias,
            use_alpha=use_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
        )
        self.num_heads = self.spec.heads
        self.head_dim = self.qkv_features // self.num_heads
        matmul_precision(precision)  # a bad precision fails here, not at the first call
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        qkv_inits, out_inits = attention_initializers(
            self.in_features, self.qkv_features, kernel_init, out_kernel_init, bias_init, out_bias_init
        )
        common: dict[str, Any] = {
            "use_bias": bool(use_bias),
            "dtype": dtype,
            "param_dtype": param_dtype,
            "precision": precision,
            "rngs": rngs,
        }
        heads = (self.num_heads, self.head_dim)
        qkv_metadata: dict[str, Any] = {"kernel_metadata": kernel_metadata, "bias_metadata": bias_metadata}
        self.query = nnx.LinearGeneral(self.in_features, heads, **qkv_inits, **qkv_metadata, **common)
        self.key = nnx.LinearGeneral(self.in_features, heads, **qkv_inits, **qkv_metadata, **common)
        self.value = nnx.LinearGeneral(self.in_features, heads, **qkv_inits, **qkv_metadata, **common)
        self.out = nnx.LinearGeneral(
            heads,
            self.out_features,
            axis=(-2, -1),
            **out_inits,
            kernel_metadata=out_kernel_metadata,
            bias_metadata=out_bias_metadata,
            **common,
        )
        _scalar_params(self, self.spec, param_dtype)

    @classmethod
    def from_spec(cls, spec: LayerSpec, *, rngs: nnx.Rngs, **kwargs: Any) -> YatMultiHeadAttention:
        """The layer described by a core :class:`~yat_core.spec.LayerSpec` (kind ``"yat_attention"``).

        Examples
        --------
        >>> from yat_core.spec import LayerSpec
        >>> YatMultiHeadAttention.from_spec(LayerSpec("yat_attention", 8, 8, heads=2, alpha=None), rngs=nnx.Rngs(0)).alpha is None
        True
        """
        options = flax_attention_options(spec)
        return cls(options.pop("num_heads"), spec.in_features, **options, rngs=rngs, **kwargs)

    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
    ) -> jax.Array:
        """Attend ``inputs_q (..., q_length, in_features)`` to ``inputs_k`` (default: itself) and ``inputs_v``.

        ``inputs_v`` defaults to ``inputs_k``; ``mask`` and ``is_causal`` as the class
        describes. Returns ``(..., q_length, out_features)``.
        """
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError("inputs_k cannot be None when inputs_v is given")
            inputs_k = inputs_q
        inputs_v = inputs_k if inputs_v is None else inputs_v
        if inputs_q.shape[-1] != self.in_features:
            raise ValueError(f"the layer takes inputs with {self.in_features} features, got shape {inputs_q.shape}")
        query, key, value = self.query(inputs_q), self.key(inputs_k), self.value(inputs_v)
        scalars: dict[str, Any] = {
            name: getattr(self, name)[...] for name in ("alpha", "epsilon_raw") if name in self.spec.param_shapes
        }
        x = yat_attention_forward(
            self.spec, query, key, value, scalars, mask=mask, is_causal=is_causal, precision=self.precision
        )
        return self.out(x)


class YatEmbed(nnx.Module):
    """A Yat embedding, as ``nnx.Embed``: a table ``embedding (num_embeddings, features)`` looked up by integer ids.

    ``layer(ids)`` is :func:`yat_core.attention.yat_embed` (ids of any shape ->
    ``(*ids.shape, features)``; non-integer ids are refused with a ``TypeError``);
    ``layer.attend(query)`` scores queries ``(..., features)`` against every row with the
    ⵟ-product, :func:`yat_core.attention.yat_embed_attend` (``(..., num_embeddings)``):
    the tied output layer, where ``nnx.Embed.attend`` takes the dot product.

    Parameters
    ----------
    num_embeddings, features : int
    use_alpha : bool or float
        Of ``attend``: ``True``, a learnable scale initialised to 1.0; ``False``: none;
        a number: that constant.
    epsilon : float
        Of ``attend``: added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Of ``attend``: normalise queries and rows first.
    dtype : dtype, optional
        Computation dtype, as in ``nnx.Embed``.
    param_dtype : dtype
    precision : jax.lax.Precision, str or pair, optional
        Of ``attend``'s products.
    embedding_init : initializer
        Default ``nnx.Embed``'s (normal, variance ``1/features``).
    rngs : nnx.Rngs
    embedding_metadata : mapping

    Examples
    --------
    >>> embed = YatEmbed(10, 4, rngs=nnx.Rngs(0))
    >>> embed.embedding.shape, embed(jnp.array([[1, 2, 3]])).shape, embed.attend(jnp.ones((2, 4))).shape
    ((10, 4), (1, 3, 4), (2, 10))
    """

    alpha: nnx.Param | None
    epsilon_raw: nnx.Param | None

    @names_layer
    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        embedding_init: Initializer = default_embed_init,
        rngs: nnx.Rngs,
        embedding_metadata: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        self.spec = embed_spec(
            num_embeddings,
            features,
            use_alpha=use_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
        )
        self.num_embeddings, self.features = self.spec.out_features, self.spec.in_features
        matmul_precision(precision)
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        table = embedding_init(rngs.params(), (self.num_embeddings, self.features), param_dtype)
        self.embedding = nnx.Param(table, **embedding_metadata)
        _scalar_params(self, self.spec, param_dtype)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return embed_lookup(self.embedding[...], inputs, dtype=self.dtype)

    def attend(self, query: jax.Array) -> jax.Array:
        """Yat scores of ``query (..., features)`` against every embedding: ``(..., num_embeddings)``."""
        scalars: dict[str, Any] = {
            name: getattr(self, name)[...] for name in ("alpha", "epsilon_raw") if name in self.spec.param_shapes
        }
        return embed_attend(self.spec, query, self.embedding[...], scalars, dtype=self.dtype, precision=self.precision)


class _PositionTable(nnx.Module):
    """A ``"pos_embed"`` layer: adds a learnable ``table (tokens, features)`` to a token sequence."""

    def __init__(self, tokens: int, features: int, *, dtype: Any, param_dtype: Any, precision: Any, rngs: nnx.Rngs):
        del precision  # an addition: no product to set it on
        self.dtype = dtype
        self.table = nnx.Param(position_init(rngs.params(), (tokens, features), param_dtype))

    def __call__(self, h: jax.Array) -> jax.Array:
        h, table = promote_dtype((h, self.table[...]), dtype=self.dtype)
        return h + table


def _layer(spec: LayerSpec, **kwargs: Any) -> nnx.Module | None:
    """The NNX module of one spec layer; None for the kinds :func:`~yat_core.nn._flax.run_model` runs itself."""
    if spec.kind in ("linear", "conv"):
        cls = nnx.Linear if spec.kind == "linear" else nnx.Conv
        return cls(spec.in_features, spec.out_features, **plain_layer_options(spec), **kwargs)
    if spec.kind == "attention":  # the softmax baseline: Flax's own attention holds the core's projections
        return nnx.MultiHeadAttention(
            in_features=spec.in_features, **softmax_attention_options(spec), decode=False, keep_rngs=False, **kwargs
        )
    if spec.kind == "pos_embed":
        return _PositionTable(spec.tokens, spec.in_features, **kwargs)
    yat: Any = {
        "yat": YatNMN,
        "yat_conv": YatConv,
        "yat_conv_transpose": YatConvTranspose,
        "yat_attention": YatMultiHeadAttention,
    }.get(spec.kind)
    return None if yat is None else yat.from_spec(spec, **kwargs)


class YatModel(nnx.Module):
    """The network of a :class:`~yat_core.spec.ModelSpec`: ``model.layers`` in turn, channels last.

    Inputs ``(n, *spatial, C)`` (the spec's ``input_shape`` ``(C, *spatial)`` with the
    channels last) or, for an MLP, ``(n, features)``; any other shape of the same size
    per sample (``(n, 784)``, ``(n, 28, 28)``) is read in the core's order, channels
    first. ``dtype``, ``param_dtype`` and ``precision`` go to every layer.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> model = YatModel(cnn_spec(), rngs=nnx.Rngs(0))
    >>> [type(layer).__name__ for layer in model.layers]
    ['YatConv', 'NoneType', 'YatConv', 'NoneType', 'NoneType', 'YatNMN', 'Linear']
    >>> model(jnp.zeros((2, 28, 28, 1))).shape, model.layers[0].kernel.shape
    ((2, 10), (3, 3, 1, 32))
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.spec = spec
        kwargs = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision, "rngs": rngs}
        self.layers = nnx.List([_layer(layer, **kwargs) for layer in spec.layers])

    def __call__(self, x: jax.Array) -> jax.Array:
        return run_model(self.spec, self.layers, x)


#: The name of the MLP-only model; every spec builds a :class:`YatModel` now.
YatMLP = YatModel


def build_model(
    spec: ModelSpec, seed: int, *, dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None
) -> YatModel:
    """The native model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.spec import cnn_relu_spec, seed_spec
    >>> count_params(build_model(seed_spec(), seed=0)), count_params(build_model(cnn_relu_spec(), seed=0))
    (235148, 225034)
    """
    check_native_kinds(spec, "nnx")
    # Abstract (shapes and dtypes only): the layers' own initialisers would draw values that the
    # import replaces, compiling a random draw per shape on the way (seconds for the CNN).
    model = nnx.eval_shape(
        lambda: YatModel(spec, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=nnx.Rngs(seed))
    )
    # Drawn in the parameters' dtype, as the core draws them.
    return import_params(model, init_mlp_numpy(spec, seed, np.dtype(param_dtype)))


def _variable(module: Any, layer: LayerSpec, name: str) -> nnx.Variable:
    """The ``nnx.Param`` of a core parameter (an attention's live in its projection submodules)."""
    node = module
    for attribute in flax_param_path(layer, name):
        node = getattr(node, attribute)
    return node


def export_params(model: YatModel) -> dict[str, np.ndarray]:
    """The model's parameters as ``{core name: numpy array}`` in the core's layouts.

    Dense kernels ``(out, in)``, convolution kernels ``(out, in/groups, *k)``
    (transposed: ``(in, out/groups, *k)``).

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> params = export_params(build_model(cnn_spec(), 0))
    >>> params["0.kernel"].shape, params["5.kernel"].shape
    ((32, 1, 3, 3), (128, 1600))
    """

    def read(i: int, name: str) -> np.ndarray:
        layer = model.spec.layers[i]
        return to_core_param(layer, name, _variable(model.layers[i], layer, name).get_value())

    return export_arrays(model.spec, read, kernel_in_out=True)


def import_params(model: YatModel, params: Mapping[str, Any]) -> YatModel:
    """Set ``model``'s parameters from ``params`` (core names and layouts) in place; return it.

    Values are cast to each parameter's dtype and keep its sharding; names and
    shapes are checked first by :func:`yat_core.nn.interchange.check_params`, so a
    bad mapping leaves the model as it was.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatModel(seed_spec(), rngs=nnx.Rngs(5)), init_mlp_numpy(seed_spec(), 0))
    >>> bool(jnp.all(model.layers[0].kernel.get_value().T == init_mlp_numpy(seed_spec(), 0)["0.kernel"]))
    True
    """

    def write(i: int, name: str, value: np.ndarray) -> None:
        variable = _variable(model.layers[i], model.spec.layers[i], name)
        old = variable.get_value()  # an array, or a jax.ShapeDtypeStruct in build_model's abstract model
        value = to_flax_param(model.spec.layers[i], name, value)
        variable.set_value(jax.device_put(jnp.asarray(value, dtype=old.dtype), old.sharding))

    import_arrays(model.spec, params, write, kernel_in_out=True)
    return model


def count_params(model: nnx.Module) -> int:
    """Learnable scalars, counted as Flax users do (sizes of the ``nnx.Param`` state).

    Examples
    --------
    >>> count_params(YatNMN(784, 256, rngs=nnx.Rngs(0)))
    200961
    """
    return sum(int(leaf.size) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def predict(model: YatModel, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` in the core's layout, as a NumPy array.

    ``x`` is what :func:`yat_core.mlp.mlp_forward` takes: ``(n, *spec.input_shape)``
    (channels first) or flat ``(n, prod)``; it is moved to the model's channels-last
    layout here.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> predict(build_model(cnn_spec(), 0), np.zeros((3, 1, 28, 28), np.float32)).shape
    (3, 10)
    """
    return np.asarray(_predict(model, jnp.asarray(channels_last(np.asarray(x), model.spec))))


@nnx.jit
def _predict(model: YatModel, x: jax.Array) -> jax.Array:
    return model(x)
