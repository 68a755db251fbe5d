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

:class:`YatModel` (also ``YatMLP``) is a spec's network: ``"yat"`` -> :class:`YatNMN`,
``"linear"`` -> ``nnx.Linear``, ``"yat_conv"`` / ``"yat_conv_transpose"`` ->
:class:`YatConv` / :class:`YatConvTranspose`, ``"conv"`` -> ``nnx.Conv`` (a ReLU
after it and after ``"linear"`` where the spec says), ``"max_pool"`` / ``"avg_pool"``
-> ``nnx.max_pool`` / ``nnx.avg_pool``, ``"flatten"`` in the core's (channels-first)
order. It holds its layers in ``model.layers`` (an ``nnx.List``, one entry per spec
layer, None for pooling and flatten), so ``model.layers[0].kernel`` is the
interchange's ``"0.kernel"`` in Flax's layout. It takes channels-last inputs
``(n, *spatial, C)``; :func:`predict` takes the core's. Training lives in
:mod:`yat_core.runners.nnx`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yat_core.mlp import LayerSpec, ModelSpec, init_mlp_numpy
from yat_core.nn._flax import (
    Initializer,
    channels_last,
    export_layer,
    fan_in_uniform,
    flax_conv_options,
    flax_conv_spec,
    flax_options,
    import_layer,
    matmul_precision,
    plain_layer_options,
    run_model,
    to_core_param,
    to_flax_param,
    xavier_normal,
    yat_conv_forward,
    yat_dense,
    yat_initializers,
)
from yat_core.nn.interchange import export_arrays, import_arrays
from yat_core.nn.options import check_native_kinds, yat_layer_spec
from yat_core.product import DEFAULT_EPSILON

__all__ = [
    "YatNMN",
    "YatConv",
    "YatConvTranspose",
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


def _layer(spec: LayerSpec, **kwargs: Any) -> nnx.Module | None:
    """The NNX module of one spec layer; None for pooling and flatten (:func:`~yat_core.nn._flax.run_model` runs them)."""
    if spec.kind in ("linear", "conv"):
        cls = nnx.Linear if spec.kind == "linear" else nnx.Conv
        return cls(spec.in_features, spec.out_features, **plain_layer_options(spec), **kwargs)
    yat: Any = {"yat": YatNMN, "yat_conv": YatConv, "yat_conv_transpose": YatConvTranspose}.get(spec.kind)
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
        return to_core_param(model.spec.layers[i], name, getattr(model.layers[i], name).get_value())

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
        variable = getattr(model.layers[i], name)
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
