"""Flax Linen: the Yat layers as ``linen.Module`` subclasses, and the model of any :class:`~yat_core.spec.ModelSpec`.

:class:`YatNMN` takes the attributes ``linen.Dense`` takes (``features``,
``use_bias``, ``dtype``, ``param_dtype``, ``precision``, ``kernel_init``,
``bias_init``; shard it with ``nn.with_partitioning``-wrapped initialisers) and
keeps its ``kernel`` ``(in, features)`` as ``linen.Dense`` does; export and import
transpose it to the core's ``(out, in)``.

:class:`YatConv` and :class:`YatConvTranspose` are the Yat convolutions as
``linen.Conv`` / ``linen.ConvTranspose`` are built: channels last, 1, 2 or 3 spatial
dimensions (``len(kernel_size)``), the input features taken from the input, kernels
``(*kernel_size, in/groups, features)`` and ``(*kernel_size, features/groups, in)``
in ``{"params": {"kernel", "bias", "alpha", "epsilon_raw"}}``;
``layer.export_params(variables)`` / ``layer.import_params(mapping)`` speak the
core's names and layouts.

:class:`YatMultiHeadDotProductAttention` is Yat attention laid out as
``linen.MultiHeadDotProductAttention`` (``query`` / ``key`` / ``value`` / ``out``
``linen.DenseGeneral`` projections, Flax's masks, ``is_causal``); :class:`YatEmbed`
is ``linen.Embed`` with a Yat ``attend``.

:class:`YatModel` (also ``YatMLP``) is a spec's network, built as
:class:`yat_core.nn.nnx.YatModel` is (``"linear"`` -> ``linen.Dense``, ``"conv"`` ->
``linen.Conv``, pooling ``linen.max_pool`` / ``avg_pool``, flatten in the core's
channels-first order; ``"yat_attention"`` -> :class:`YatMultiHeadDotProductAttention`,
``"attention"`` -> ``linen.MultiHeadDotProductAttention``, ``"pos_embed"`` -> a
``table`` param). Submodules are named after the spec's layer index, so the
variables of :func:`~yat_core.spec.cnn_spec` read ``{"params": {"0": {"kernel",
"bias", "alpha"}, "2": ..., "5": ..., "6": {"kernel", "bias"}}}`` (pooling and flatten
have none). It takes channels-last inputs ``(n, *spatial, C)``; :func:`predict` takes
the core's.

Linen modules hold no state: :func:`build_model` returns a *bound* module
(``module.bind(variables)``) that is callable and carries its parameters, and
:func:`import_params` returns a new bound module. Training lives in
:mod:`yat_core.runners.linen`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, TypeVar

import numpy as np

from yat_core._lazy import unavailable

try:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax.linen.linear import default_embed_init
    from flax.nnx.nn.dtypes import promote_dtype
except ImportError as exc:
    raise unavailable("flax", exc, "flax", "yat_core.nn.linen") from None

from yat_core.mlp import LayerSpec, ModelSpec, init_mlp_numpy
from yat_core.nn._flax import (
    Initializer,
    attention_initializers,
    attention_spec,
    channels_last,
    check_conv_input,
    conv_kernel_size,
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
    "YatMultiHeadDotProductAttention",
    "YatEmbed",
    "YatModel",
    "YatMLP",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "predict",
    "params_to_tree",
    "tree_to_params",
    "xavier_normal",
    "fan_in_uniform",
]

Tree = dict[str, Any]


class YatNMN(nn.Module):
    """Dense Yat layer: ``alpha * (x @ kernel + bias)**2 / (|x - kernel[:, j]|**2 + epsilon)``.

    A thin shell over :func:`yat_core.product.yat_product`; the input size is
    taken from the input, as ``linen.Dense`` does.

    Attributes
    ----------
    features : int
        Number of output units.
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
        when None, as in ``linen.Dense``.
    param_dtype : dtype
        Dtype of the parameters.
    precision : jax.lax.Precision, str or pair, optional
        Precision of the matrix product, as ``linen.Dense``'s (a pair must name one
        precision for both operands).
    kernel_init : initializer
        Default :data:`xavier_normal`, the core's distribution;
        wrap it in ``nn.with_partitioning`` to annotate the kernel's sharding.
    bias_init : initializer, optional
        Default :func:`fan_in_uniform` of the input size.

    Examples
    --------
    >>> variables = YatNMN(3).init(jax.random.key(0), jnp.zeros((1, 4)))
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'alpha': (), 'bias': (3,), 'kernel': (4, 3)}
    """

    features: int
    use_bias: bool | float = True
    use_alpha: bool | float = True
    epsilon: float = DEFAULT_EPSILON
    learnable_epsilon: bool = False
    spherical: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer = xavier_normal
    bias_init: Initializer | None = None

    @names_layer
    def __post_init__(self) -> None:
        # What does not depend on the input is refused when the layer is made, not at its first call.
        self._spec(1)
        super().__post_init__()

    def _spec(self, in_features: int) -> LayerSpec:
        return yat_layer_spec(
            in_features,
            self.features,
            bias=self.use_bias,
            alpha=self.use_alpha,
            epsilon=self.epsilon,
            learnable_epsilon=self.learnable_epsilon,
            spherical=self.spherical,
            names=("the input's features", "features"),
            option_names=("use_bias", "use_alpha"),
        )

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> YatNMN:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (its input size comes from the input).

        Examples
        --------
        >>> from yat_core.nn.options import yat_layer_spec
        >>> YatNMN.from_spec(yat_layer_spec(4, 3, alpha=2.0)).use_alpha
        2.0
        """
        return cls(spec.out_features, **flax_options(spec), **kwargs)

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        spec = self._spec(inputs.shape[-1])
        params = {
            name: self.param(name, init, shape, self.param_dtype)
            for name, (init, shape) in yat_initializers(spec, self.kernel_init, self.bias_init).items()
        }
        return yat_dense(spec, inputs, params, dtype=self.dtype, precision=self.precision)


_Conv = TypeVar("_Conv", bound="_YatConvBase")

_CONV_ATTRIBUTES = """
    Attributes
    ----------
    features : int
        Output channels (the input's are its last axis).
    kernel_size : int or sequence of int
        The kernel's spatial shape; its length (an int: 1) is the number of spatial
        dimensions, 1, 2 or 3.
    strides, kernel_dilation : int or sequence of int, optional
        One for every spatial dimension or one each (``None``: 1).
    padding : str, int or sequence
        As the class describes.
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
        None, as in ``linen.Conv``.
    param_dtype : dtype
        Dtype of the parameters.
    precision : jax.lax.Precision, str, pair or jax.lax.DotAlgorithmPreset, optional
        Precision of the convolutions (the dot and patch-norm terms), as ``linen.Conv``'s;
        None inherits JAX's default, as there (a pair must name one precision for both
        operands).
    kernel_init : initializer, optional
        Default: the core's distribution, normal with std ``sqrt(2 / (fan_in +
        fan_out))`` over the core's fans (:func:`yat_core.nn._flax.core_kernel_init`),
        drawn with JAX's generator from the ``params`` key; wrap an initialiser in
        ``nn.with_partitioning`` to annotate the kernel's sharding.
    bias_init : initializer, optional
        Default: uniform on ``±1/sqrt(fan_in)`` (the core's; ``fan_in`` counts the
        receptive field).
"""


def _with_attributes(cls: type[_Conv]) -> type[_Conv]:
    """Insert the attributes the convolutions share into ``cls``'s docstring, before its examples."""
    attributes = _CONV_ATTRIBUTES
    if cls._kind == "yat_conv_transpose":
        attributes = attributes.replace(
            "    feature_group_count : int",
            "    output_padding : int or sequence of int\n        torch's, with an int ``padding`` only.\n"
            "    feature_group_count : int",
        )
    cls.__doc__ = (cls.__doc__ or "").replace("\n    Examples\n", attributes + "\n    Examples\n", 1)
    return cls


class _YatConvBase(nn.Module):
    """What :class:`YatConv` and :class:`YatConvTranspose` share (every spatial rank, both directions)."""

    features: int
    kernel_size: int | Sequence[int]
    strides: None | int | Sequence[int] = 1
    padding: Any = "SAME"
    kernel_dilation: None | int | Sequence[int] = 1
    feature_group_count: int = 1
    use_bias: bool | float = True
    use_alpha: bool | float = True
    epsilon: float = DEFAULT_EPSILON
    learnable_epsilon: bool = False
    spherical: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer | None = None
    bias_init: Initializer | None = None

    _kind: ClassVar[str]

    @names_layer
    def __post_init__(self) -> None:
        # What does not depend on the input is refused when the layer is made; the groups stand in
        # for the input's channels, which only the first call knows.
        groups, features = (
            check_size(self.feature_group_count, "feature_group_count"),
            check_size(self.features, "features"),
        )
        if features % groups:
            raise ValueError(f"feature_group_count={groups} must divide features={features}")
        self.layer_spec(groups)
        super().__post_init__()

    def layer_spec(self, in_features: int) -> LayerSpec:
        """The core's description of this layer on inputs with ``in_features`` channels (runs every check).

        Examples
        --------
        >>> YatConv(8, (3, 3), feature_group_count=2).layer_spec(4).param_shapes["kernel"]
        (8, 2, 3, 3)
        """
        transpose = self._kind == "yat_conv_transpose"
        extra = {"output_padding": getattr(self, "output_padding", 0)} if transpose else {}
        return flax_conv_spec(
            in_features,
            self.features,
            self.kernel_size,
            transpose=transpose,
            strides=self.strides,
            padding=self.padding,
            kernel_dilation=self.kernel_dilation,
            feature_group_count=self.feature_group_count,
            use_bias=self.use_bias,
            use_alpha=self.use_alpha,
            epsilon=self.epsilon,
            learnable_epsilon=self.learnable_epsilon,
            spherical=self.spherical,
            names=("the input's features", "features"),
            **extra,
        )

    @classmethod
    def from_spec(cls: type[_Conv], spec: LayerSpec, **kwargs: Any) -> _Conv:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (its input features come from the input).

        Examples
        --------
        >>> from yat_core.nn.options import conv_layer_spec
        >>> YatConvTranspose.from_spec(conv_layer_spec(8, 4, 2, n_spatial=1, stride=2, output_padding=1)).output_padding
        (1,)
        """
        if spec.kind != cls._kind:
            raise ValueError(f"{cls.__name__} is built from a spec of kind {cls._kind!r}, not {spec.kind!r}")
        return cls(spec.out_features, **flax_conv_options(spec), **kwargs)

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        check_conv_input(inputs, len(conv_kernel_size(self.kernel_size)))
        spec = self.layer_spec(inputs.shape[-1])
        params = {
            name: self.param(name, init, shape, self.param_dtype)
            for name, (init, shape) in yat_initializers(spec, self.kernel_init, self.bias_init).items()
        }
        return yat_conv_forward(spec, inputs, params, padding=self.padding, dtype=self.dtype, precision=self.precision)

    def _in_features(self, kernel: Any, core_layout: bool) -> int:
        """The input features a kernel (core or Flax layout) was made for."""
        shape = np.shape(kernel)
        if len(shape) < 3:
            raise ValueError(f"parameters do not fit the layer: kernel has shape {shape}, not (A, B, *kernel_size)")
        a, b = (shape[0], shape[1]) if core_layout else (shape[-1], shape[-2])
        # conv: (out, in/groups, *k); transposed: (in, out/groups, *k)
        return int(a) if self._kind == "yat_conv_transpose" else int(b) * self.feature_group_count

    def export_params(self, variables: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """The parameters as ``{core name: numpy array}``, the kernel in the core's layout.

        ``variables``: a variables dict or a ``params`` tree; the bound module's own when omitted.

        Examples
        --------
        >>> layer = YatConv(8, (5, 4))
        >>> variables = layer.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
        >>> layer.export_params(variables)["kernel"].shape
        (8, 3, 5, 4)
        """
        tree = _bound_params(self) if variables is None else variables
        tree = tree.get("params", tree)
        spec = self.layer_spec(self._in_features(tree["kernel"], core_layout=False))
        return export_layer(spec, lambda name: tree[name])

    def import_params(self: _Conv, params: Mapping[str, Any]) -> _Conv:
        """This layer bound to ``params`` (core names and layouts): a new bound module.

        The input features are read from the kernel; names and shapes are checked
        first, values cast to ``param_dtype``. ``.variables`` is the Linen tree.

        Examples
        --------
        >>> layer = YatConv(8, (5, 4), use_bias=False)
        >>> bound = layer.import_params({"kernel": np.zeros((8, 3, 5, 4)), "alpha": np.ones(())})
        >>> jax.tree.map(jnp.shape, bound.variables["params"])
        {'alpha': (), 'kernel': (5, 4, 3, 8)}
        """
        module = self.unbind()[0] if self.scope is not None else self
        if "kernel" not in params:
            raise ValueError("parameters do not fit the layer: missing kernel")
        spec = module.layer_spec(module._in_features(params["kernel"], core_layout=True))
        tree = {name: jnp.asarray(v, dtype=module.param_dtype) for name, v in import_layer(spec, params).items()}
        return module.bind({"params": tree})


@_with_attributes
class YatConv(_YatConvBase):
    """Yat convolution, as ``linen.Conv``: ``alpha * (dot + bias)**2 / (|patch - filter|**2 + epsilon)`` per position.

    A thin shell over :func:`yat_core.conv.yat_conv` (``native=True``: JAX's own
    convolution for the dot and patch-norm terms): inputs ``(*batch, *spatial,
    in)``, kernel ``(*kernel_size, in/feature_group_count, features)``, output
    ``(*batch, *spatial_out, features)``. The attributes are ``linen.Conv``'s, without
    ``input_dilation``, ``mask``, ``conv_general_dilated``,
    ``conv_general_dilated_cls``, ``promote_dtype`` and ``preferred_element_type``,
    plus the Yat options.

    ``padding`` is Flax's: ``"SAME"`` (the default: ``ceil(size / stride)`` outputs at
    any stride, the odd unit on the high side), ``"SAME_LOWER"``, ``"VALID"``,
    ``"CIRCULAR"``, ``"REFLECT"``, ``"CAUSAL"`` (1-D), an int, or one int or ``(low,
    high)`` pair per spatial dimension; zero padding puts zeros in the patches, as the
    core's does (see :class:`yat_core.nn.nnx.YatConv`).

    Examples
    --------
    >>> layer = YatConv(8, (3, 3), strides=2)
    >>> variables = layer.init(jax.random.key(0), jnp.zeros((2, 9, 9, 3)))
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'alpha': (), 'bias': (8,), 'kernel': (3, 3, 3, 8)}
    >>> layer.apply(variables, jnp.zeros((2, 9, 9, 3))).shape
    (2, 5, 5, 8)
    """

    _kind = "yat_conv"


@_with_attributes
class YatConvTranspose(_YatConvBase):
    """Yat transposed convolution, built as ``linen.ConvTranspose``, computed as torch's ``ConvTranspose``.

    A thin shell over :func:`yat_core.conv.yat_conv_transpose` (``native=True``):
    inputs ``(*batch, *spatial, in)``, kernel ``(*kernel_size,
    features/feature_group_count, in)`` (``linen.ConvTranspose(transpose_kernel=True)``'s
    layout: the core's, i.e. torch's, ``(in, out/groups, *k)`` with the spatial axes
    first), output ``(*batch, *spatial_out, features)``. The attributes are
    ``linen.ConvTranspose``'s, without ``mask``, ``transpose_kernel``,
    ``promote_dtype`` and ``preferred_element_type``, plus ``output_padding``,
    ``feature_group_count`` and the Yat options.

    ``padding`` (default ``"SAME"``): an int or one per spatial dimension is
    **torch's** (each side of the output shrinks by it; Flax's int ``p`` is torch's
    ``K - 1 - p``, ``K = dilation*(k-1) + 1``), with torch's ``output_padding``;
    ``"VALID"`` and ``"SAME"`` are Flax's (``size*stride + max(K - stride, 0)`` and
    ``size*stride`` outputs, placed as ``ConvTranspose(transpose_kernel=True)`` places
    them). The mapping is :func:`yat_core.nn._flax.transpose_padding`'s, described in
    :class:`yat_core.nn.nnx.YatConvTranspose`.

    Examples
    --------
    >>> layer = YatConvTranspose(2, (3, 3), strides=2)
    >>> variables = layer.init(jax.random.key(0), jnp.zeros((1, 5, 5, 4)))
    >>> variables["params"]["kernel"].shape, layer.apply(variables, jnp.zeros((1, 5, 5, 4))).shape
    ((3, 3, 2, 4), (1, 10, 10, 2))
    """

    strides: None | int | Sequence[int] = None
    kernel_dilation: None | int | Sequence[int] = None
    output_padding: int | Sequence[int] = 0

    _kind = "yat_conv_transpose"


def _scalar_params(module: nn.Module, spec: LayerSpec) -> dict[str, jax.Array]:
    """``alpha`` (1.0) and ``epsilon_raw`` (``softplus_inverse(epsilon)``), the ones ``spec`` learns, as params of ``module``."""
    inits = {
        "alpha": jax.nn.initializers.ones,
        "epsilon_raw": jax.nn.initializers.constant(softplus_inverse(spec.epsilon)),
    }
    param_dtype = module.param_dtype
    return {
        name: module.param(name, init, (), param_dtype) for name, init in inits.items() if name in spec.param_shapes
    }


class YatMultiHeadDotProductAttention(nn.Module):
    """Multi-head Yat attention, as ``linen.MultiHeadDotProductAttention``: Yat scores in place of the scaled dot product.

    Query, key and value are projected by ``linen.DenseGeneral`` submodules
    ``query``, ``key``, ``value`` (kernel ``(in, num_heads, head_dim)``, bias
    ``(num_heads, head_dim)``), attended by :func:`yat_core.attention.yat_attention`
    and merged by ``out`` (kernel ``(num_heads, head_dim, out_features)``): the variables
    of ``linen.MultiHeadDotProductAttention`` (plus ``alpha`` / ``epsilon_raw``), whose
    attributes it takes without dropout (``dropout_rate``, ``broadcast_dropout``,
    ``deterministic``), ``decode``, ``normalize_qk``, ``attention_fn`` and the
    dot-general hooks, plus the Yat options. The input features come from the input.

    Attributes
    ----------
    num_heads : int
        Divides ``qkv_features``; ``head_dim = qkv_features // num_heads``.
    qkv_features, out_features : int, optional
        Features of the projections and of the output (default: the query's features).
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
        Computation dtype, as in ``linen.MultiHeadDotProductAttention``.
    param_dtype : dtype
    precision : jax.lax.Precision, str or pair, optional
        Of the projections and of the attention's products.
    kernel_init, bias_init : initializer, optional
        Of the query, key and value projections; default uniform on ``±1/sqrt(in)``, the
        core's distribution.
    out_kernel_init, out_bias_init : initializer, optional
        Of the output projection; default ``kernel_init`` / ``bias_init`` when given,
        else uniform on ``±1/sqrt(qkv_features)``.

    Notes
    -----
    ``__call__(inputs_q, inputs_k=None, inputs_v=None, *, mask=None, is_causal=False)``:
    ``inputs_k`` defaults to ``inputs_q``, ``inputs_v`` to ``inputs_k``; ``mask`` is
    Flax's, broadcast to ``(*batch, num_heads, q_length, kv_length)``, True (or nonzero,
    as ``linen.make_attention_mask`` / ``make_causal_mask`` build it) where the query may
    attend; ``is_causal=True`` adds the causal mask. A query that may attend to nothing
    gets zero weights and a zero attention output (the output bias remains), where
    Flax's softmax attention spreads it uniformly.

    Examples
    --------
    >>> x = jnp.ones((2, 5, 16))
    >>> layer = YatMultiHeadDotProductAttention(num_heads=4)
    >>> variables = layer.init(jax.random.key(0), x)
    >>> variables["params"]["query"]["kernel"].shape, variables["params"]["out"]["kernel"].shape
    ((16, 4, 4), (4, 4, 16))
    >>> layer.apply(variables, x, mask=nn.make_causal_mask(jnp.ones((2, 5)))).shape
    (2, 5, 16)
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    use_bias: bool = True
    use_alpha: bool | float = True
    epsilon: float = DEFAULT_EPSILON
    learnable_epsilon: bool = False
    spherical: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer | None = None
    out_kernel_init: Initializer | None = None
    bias_init: Initializer | None = None
    out_bias_init: Initializer | None = None

    @names_layer
    def __post_init__(self) -> None:
        # What does not depend on the input is refused when the layer is made, not at its first call.
        heads = check_size(self.num_heads, "num_heads")
        self._spec(heads if self.qkv_features is None else self.qkv_features)
        if self.out_features is not None:
            check_size(self.out_features, "out_features")
        super().__post_init__()

    def _spec(self, qkv_features: int) -> LayerSpec:
        return attention_spec(
            self.num_heads,
            qkv_features,
            use_bias=self.use_bias,
            use_alpha=self.use_alpha,
            epsilon=self.epsilon,
            learnable_epsilon=self.learnable_epsilon,
            spherical=self.spherical,
        )

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> YatMultiHeadDotProductAttention:
        """The layer described by a core :class:`~yat_core.spec.LayerSpec` (kind ``"yat_attention"``).

        Examples
        --------
        >>> from yat_core.spec import LayerSpec
        >>> YatMultiHeadDotProductAttention.from_spec(LayerSpec("yat_attention", 8, 8, heads=2, alpha=2.0)).use_alpha
        2.0
        """
        return cls(**flax_attention_options(spec), **kwargs)

    @nn.compact
    def __call__(
        self,
        inputs_q: jax.Array,
        inputs_k: jax.Array | None = None,
        inputs_v: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        is_causal: bool = False,
    ) -> jax.Array:
        if inputs_k is None:
            if inputs_v is not None:
                raise ValueError("inputs_k cannot be None when inputs_v is given")
            inputs_k = inputs_q
        inputs_v = inputs_k if inputs_v is None else inputs_v
        in_features = inputs_q.shape[-1]
        qkv = in_features if self.qkv_features is None else self.qkv_features
        spec = self._spec(qkv)
        heads = (spec.heads, qkv // spec.heads)
        common: dict[str, Any] = {
            "use_bias": bool(self.use_bias),
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "precision": self.precision,
        }
        projected = []
        for name, inputs in (("query", inputs_q), ("key", inputs_k), ("value", inputs_v)):
            inits, _ = attention_initializers(
                inputs.shape[-1], qkv, self.kernel_init, self.out_kernel_init, self.bias_init, self.out_bias_init
            )
            projected.append(nn.DenseGeneral(heads, axis=-1, name=name, **inits, **common)(inputs))
        _, out_inits = attention_initializers(
            in_features, qkv, self.kernel_init, self.out_kernel_init, self.bias_init, self.out_bias_init
        )
        query, key, value = projected
        scalars = _scalar_params(self, spec)
        x = yat_attention_forward(
            spec, query, key, value, scalars, mask=mask, is_causal=is_causal, precision=self.precision
        )
        out_features = in_features if self.out_features is None else self.out_features
        return nn.DenseGeneral(out_features, axis=(-2, -1), name="out", **out_inits, **common)(x)


class YatEmbed(nn.Module):
    """A Yat embedding, as ``linen.Embed``: a table ``embedding (num_embeddings, features)`` looked up by integer ids.

    ``layer(ids)`` is :func:`yat_core.attention.yat_embed` (``(*ids.shape,
    features)``; non-integer ids are refused with a ``TypeError``);
    ``layer.attend(query)`` (with ``method="attend"`` in ``apply``) scores queries
    ``(..., features)`` against every row with the ⵟ-product,
    :func:`yat_core.attention.yat_embed_attend`, where ``linen.Embed.attend`` takes the
    dot product.

    Attributes
    ----------
    num_embeddings, features : int
    use_alpha : bool or float
        Of ``attend``: ``True``, a learnable scale initialised to 1.0 (param
        ``alpha``); ``False``: none; a number: that constant.
    epsilon : float
        Of ``attend``: added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Of ``attend``: normalise queries and rows first.
    dtype : dtype, optional
        Computation dtype, as in ``linen.Embed``.
    param_dtype : dtype
    precision : jax.lax.Precision, str or pair, optional
        Of ``attend``'s products.
    embedding_init : initializer
        Default ``linen.Embed``'s (normal, variance ``1/features``).

    Examples
    --------
    >>> embed = YatEmbed(10, 4)
    >>> variables = embed.init(jax.random.key(0), jnp.array([1, 2]))
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'alpha': (), 'embedding': (10, 4)}
    >>> embed.apply(variables, jnp.ones((2, 4)), method="attend").shape
    (2, 10)
    """

    num_embeddings: int
    features: int
    use_alpha: bool | float = True
    epsilon: float = DEFAULT_EPSILON
    learnable_epsilon: bool = False
    spherical: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    embedding_init: Initializer = default_embed_init

    @names_layer
    def __post_init__(self) -> None:
        # Refused when the layer is made, not at its first call.
        self._spec()
        super().__post_init__()

    def _spec(self) -> LayerSpec:
        return embed_spec(
            self.num_embeddings,
            self.features,
            use_alpha=self.use_alpha,
            epsilon=self.epsilon,
            learnable_epsilon=self.learnable_epsilon,
            spherical=self.spherical,
        )

    def setup(self) -> None:
        self.spec = self._spec()
        shape = (self.spec.out_features, self.spec.in_features)
        self.embedding = self.param("embedding", self.embedding_init, shape, self.param_dtype)
        self.scalars = _scalar_params(self, self.spec)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return embed_lookup(self.embedding, inputs, dtype=self.dtype)

    def attend(self, query: jax.Array) -> jax.Array:
        """Yat scores of ``query (..., features)`` against every embedding: ``(..., num_embeddings)``."""
        return embed_attend(self.spec, query, self.embedding, self.scalars, dtype=self.dtype, precision=self.precision)


class _PositionTable(nn.Module):
    """A ``"pos_embed"`` layer: adds a learnable ``table (tokens, features)`` to a token sequence."""

    tokens: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None  # an addition: no product to set it on

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        table = self.param("table", position_init, (self.tokens, h.shape[-1]), self.param_dtype)
        h, table = promote_dtype((h, table), dtype=self.dtype)
        return h + table


def _layer(spec: LayerSpec, **kwargs: Any) -> nn.Module | None:
    """The Linen module of one spec layer; None for the kinds :func:`~yat_core.nn._flax.run_model` runs itself."""
    if spec.kind in ("linear", "conv"):
        cls = nn.Dense if spec.kind == "linear" else nn.Conv
        return cls(spec.out_features, **plain_layer_options(spec), **kwargs)
    if spec.kind == "attention":  # the softmax baseline: Flax's own attention holds the core's projections
        return nn.MultiHeadDotProductAttention(**softmax_attention_options(spec), **kwargs)
    if spec.kind == "pos_embed":
        return _PositionTable(spec.tokens, **kwargs)
    yat: Any = {
        "yat": YatNMN,
        "yat_conv": YatConv,
        "yat_conv_transpose": YatConvTranspose,
        "yat_attention": YatMultiHeadDotProductAttention,
    }.get(spec.kind)
    return None if yat is None else yat.from_spec(spec, **kwargs)


class YatModel(nn.Module):
    """The network of a :class:`~yat_core.spec.ModelSpec`: submodules ``"0"``, ``"1"``, ... in turn, channels last.

    Inputs ``(n, *spatial, C)`` (the spec's ``input_shape`` ``(C, *spatial)`` with the
    channels last) or, for an MLP, ``(n, features)``; any other shape of the same size
    per sample (``(n, 784)``, ``(n, 28, 28)``) is read in the core's order, channels
    first. ``dtype``, ``param_dtype`` and ``precision`` go to every layer.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> variables = YatModel(cnn_spec()).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> sorted(variables["params"]), variables["params"]["0"]["kernel"].shape
    (['0', '2', '5', '6'], (3, 3, 1, 32))
    """

    spec: ModelSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kwargs = {"dtype": self.dtype, "param_dtype": self.param_dtype, "precision": self.precision}
        layers = [_layer(layer, name=str(i), **kwargs) for i, layer in enumerate(self.spec.layers)]
        return run_model(self.spec, layers, x)


#: The name of the MLP-only model; every spec builds a :class:`YatModel` now.
YatMLP = YatModel


def params_to_tree(spec: ModelSpec, params: Mapping[str, Any], dtype: Any = jnp.float32) -> Tree:
    """Core-named parameters as a Linen ``params`` tree in Flax's layouts.

    Dense kernels ``(in, out)``, convolution kernels ``(*k, B, A)`` (the core's ``(A,
    B, *k)``); names and shapes are checked first.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy
    >>> from yat_core.spec import cnn_spec
    >>> tree = params_to_tree(cnn_spec(), init_mlp_numpy(cnn_spec(), 0))
    >>> tree["0"]["kernel"].shape, tree["5"]["kernel"].shape
    ((3, 3, 1, 32), (1600, 128))
    """
    tree: Tree = {}

    def write(i: int, name: str, value: np.ndarray) -> None:
        *modules, leaf = (str(i), *flax_param_path(spec.layers[i], name))
        node = tree
        for module in modules:
            node = node.setdefault(module, {})
        node[leaf] = jnp.asarray(to_flax_param(spec.layers[i], name, value), dtype=dtype)

    import_arrays(spec, params, write, kernel_in_out=True)
    return tree


def tree_to_params(spec: ModelSpec, tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of :func:`params_to_tree`: ``{core name: numpy array}``, in spec order.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> tree_to_params(seed_spec(), params_to_tree(seed_spec(), init_mlp_numpy(seed_spec(), 0)))["0.kernel"].shape
    (256, 784)
    """

    def read(i: int, name: str) -> np.ndarray:
        node = tree[str(i)]
        for key in flax_param_path(spec.layers[i], name):
            node = node[key]
        return to_core_param(spec.layers[i], name, node)

    return export_arrays(spec, read, kernel_in_out=True)


def build_model(
    spec: ModelSpec, seed: int, *, dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None
) -> YatModel:
    """The bound model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> model = build_model(seed_spec(), seed=0)
    >>> count_params(model), model(jnp.zeros((2, 784))).shape, count_params(build_model(cnn_spec(), 0))
    (235148, (2, 10), 225037)
    """
    check_native_kinds(spec, "linen")
    module = YatModel(spec, dtype=dtype, param_dtype=param_dtype, precision=precision)
    # Drawn in the parameters' dtype, as the core draws them.
    init = init_mlp_numpy(spec, seed, np.dtype(param_dtype))
    return module.bind({"params": params_to_tree(spec, init, param_dtype)})


def export_params(model: YatModel) -> dict[str, np.ndarray]:
    """A bound model's parameters as ``{core name: numpy array}`` in the core's layouts.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> params = export_params(build_model(cnn_spec(), 0))
    >>> params["0.kernel"].shape, params["5.kernel"].shape
    ((32, 1, 3, 3), (128, 1600))
    """
    return tree_to_params(model.spec, _bound_params(model))


def import_params(model: YatModel, params: Mapping[str, Any]) -> YatModel:
    """``model`` bound to ``params`` (core names and layouts): a new bound module.

    Linen modules are immutable, so use the return value. Values are cast to the
    model's ``param_dtype``; names and shapes are checked first by
    :func:`yat_core.nn.interchange.check_params`.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(build_model(seed_spec(), 0), init_mlp_numpy(seed_spec(), 1))
    >>> bool(jnp.all(model.variables["params"]["0"]["kernel"].T == init_mlp_numpy(seed_spec(), 1)["0.kernel"]))
    True
    """
    module = model.unbind()[0] if model.scope is not None else model
    return module.bind({"params": params_to_tree(module.spec, params, module.param_dtype)})


def count_params(model: nn.Module | Mapping[str, Any]) -> int:
    """Learnable scalars, counted as Flax users do (sizes of the ``params`` collection).

    Accepts a bound module, a variables dict or a ``params`` tree.

    Examples
    --------
    >>> count_params(YatNMN(256).init(jax.random.key(0), jnp.zeros((1, 784))))
    200961
    """
    tree = _bound_params(model) if isinstance(model, nn.Module) else model
    tree = tree.get("params", tree) if isinstance(tree, Mapping) else tree
    return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))


def _bound_params(model: nn.Module) -> Mapping[str, Any]:
    if model.scope is None:
        raise ValueError("this Linen module is not bound to parameters; use build_model() or module.bind(variables)")
    return model.variables["params"]


def predict(model: YatModel, x: np.ndarray) -> np.ndarray:
    """Logits of a bound model for float inputs ``x`` in the core's layout, as a NumPy array.

    ``x`` is what :func:`yat_core.mlp.mlp_forward` takes: ``(n, *spec.input_shape)``
    (channels first) or flat ``(n, prod)``; it is moved to the model's channels-last
    layout here.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> predict(build_model(cnn_spec(), 0), np.zeros((3, 1, 28, 28), np.float32)).shape
    (3, 10)
    """
    module, variables = model.unbind()
    return np.asarray(_apply(module, variables, jnp.asarray(channels_last(np.asarray(x), module.spec))))


@partial(jax.jit, static_argnums=(0,))
def _apply(module: YatModel, variables: Tree, x: jax.Array) -> Any:
    return module.apply(variables, x)
