"""Keras 3 layers over the core: :class:`YatNMN`, :class:`Linear`, the Yat convolutions, and the model of a spec.

The layers run on every Keras backend (jax, torch, tensorflow): they call
:func:`yat_core.yat_product` through :func:`yat_core.namespaces.keras.namespace`,
an array-API namespace over ``keras.ops``. Keras picks its backend from
``KERAS_BACKEND`` when it is first imported, so set it before anything imports Keras.

The layers follow ``keras.layers.Dense``: ``units`` is the output size (the input
size is read at build), the kernel is stored ``(in, units)``, the arguments are
``use_bias``, ``kernel_initializer``, ``bias_initializer``, ``kernel_regularizer``,
``bias_regularizer``, ``kernel_constraint``, ``bias_constraint`` (``activity_regularizer``,
``name``, ``dtype`` go to :class:`keras.layers.Layer`), inputs need at least two
dimensions, and masks pass through unchanged. ``use_bias`` and ``use_alpha`` take
``True`` (learnable), ``False`` (absent) or a number (constant), as in every
framework of :mod:`yat_core.nn`. The interchange format keeps the core's ``(out, in)``
kernels: :func:`export_params` and :func:`import_params` transpose.

The Yat convolutions :class:`YatConv1D`, :class:`YatConv2D`, :class:`YatConv3D` and
:class:`YatConv1DTranspose`, :class:`YatConv2DTranspose`, :class:`YatConv3DTranspose`
follow ``keras.layers.Conv2D`` / ``Conv2DTranspose`` the same way (arguments, kernel
layout, ``data_format`` both ways, output shapes) and call
:func:`yat_core.conv.yat_conv` / :func:`yat_core.conv.yat_conv_transpose`; each has
``export_params`` / ``import_params`` in the core's names and layout, ``spec`` and
``from_spec``. They run the core on :func:`yat_core.namespaces.keras.namespace`, whose
native convolution (in :mod:`yat_core.namespaces.native`) is the backend library's own
(torch, JAX, TensorFlow) and ``keras.ops.conv`` on symbolic tensors.
The core's convolution needs every size known; in a TensorFlow graph whose batch size
is unknown (Keras's ``fit`` steps on the tensorflow backend) a layer maps it over the
examples with ``keras.ops.vectorized_map``, which TensorFlow batches again.

:class:`YatMultiHeadAttention` is ``keras.layers.MultiHeadAttention`` with the Yat
score: Keras's arguments, ``EinsumDense`` projections, masks and causal option, and
:func:`yat_core.attention.yat_attention` in place of the scaled dot product.
:class:`YatEmbed` is ``keras.layers.Embedding`` with :meth:`YatEmbed.attend`, the
Yat score of queries against its table (:func:`yat_core.attention.yat_embed_attend`).

:func:`build_model` builds any :class:`~yat_core.spec.ModelSpec` (the MLP, the CNN,
the vision transformer) from these layers and Keras's own (``Conv2D``,
``MaxPooling2D``, ``MultiHeadAttention``, ``GlobalAveragePooling1D``, ...) as a
:class:`YatSequential` taking Keras's layout (channels last by default); its
flatten and its patches are the core's channels-first order (:class:`ChannelsFirstFlatten`,
:class:`Patches`), so every kernel is the same array in every framework.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import numpy as np

from yat_core._lazy import unavailable

try:
    import keras
    from keras import ops
except ImportError as exc:
    raise unavailable("keras", exc, "keras", "yat_core.nn.keras") from None

from yat_core.attention import yat_attention, yat_attention_weights, yat_embed, yat_embed_attend
from yat_core.mlp import LEARNABLE, LayerSpec, ModelSpec, init_mlp_numpy
from yat_core.namespaces.keras import dtype_name, namespace
from yat_core.nn._keras_style import (
    KerasConvArgs,
    from_core,
    input_layout,
    layout_reshape,
    native_variable,
    patches_channels_last,
    to_core,
    to_framework_layout,
)
from yat_core.nn.interchange import check_params, export_arrays, import_arrays
from yat_core.nn.options import (
    attention_spec_options,
    check_flag,
    check_native_kinds,
    check_size,
    conv_class,
    conv_layer_spec,
    forward_options,
    kernel_from_core,
    kernel_to_core,
    linear_layer_spec,
    names_layer,
    native_option,
    per_dim,
    score_options,
    spec_options,
    yat_layer_spec,
)
from yat_core.product import DEFAULT_EPSILON, dense, softplus, softplus_inverse, yat_product
from yat_core.spec import ATTENTION_KINDS, TOKEN_KINDS, spec_from_record, spec_record

__all__ = [
    "YatNMN",
    "Linear",
    "YatConv1D",
    "YatConv2D",
    "YatConv3D",
    "YatConv1DTranspose",
    "YatConv2DTranspose",
    "YatConv3DTranspose",
    "conv_from_spec",
    "YatMultiHeadAttention",
    "YatEmbed",
    "Patches",
    "AddPositionEmbedding",
    "SelfAttention",
    "Residual",
    "ChannelsFirstFlatten",
    "YatSequential",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "model_spec",
    "predict",
]

Array = Any


def _fan_in_uniform(in_features: int) -> keras.initializers.Initializer:
    # PyTorch's nn.Linear default, as the core's init_mlp_numpy draws biases and linear kernels.
    bound = 1.0 / float(np.sqrt(in_features))
    return keras.initializers.RandomUniform(-bound, bound)


def _read(variable: Any) -> Array:
    # The backend tensor behind a Keras variable (autocast under mixed precision), differentiable.
    return ops.convert_to_tensor(variable)


class _CoreLayer(keras.layers.Layer):
    """What both layers share: Dense's arguments, weights from the core spec, mask pass-through, config."""

    def __init__(
        self,
        template: LayerSpec,
        *,
        kernel_initializer: Any = None,
        bias_initializer: Any = None,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # The core's options, already checked; in_features is a placeholder until build.
        self._template = template
        self._spec: LayerSpec | None = None
        self.units = template.out_features
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the last input dimension must be known, got input shape {input_shape}")
        in_features = int(input_shape[-1])
        self._spec = spec = dataclasses.replace(self._template, in_features=in_features)
        default_kernel = (
            keras.initializers.VarianceScaling(1.0, "fan_avg", "untruncated_normal")
            if spec.kind == "yat"
            else _fan_in_uniform(in_features)
        )  # the core's draws
        weights = {
            "kernel": (self.kernel_initializer or default_kernel, self.kernel_regularizer, self.kernel_constraint),
            "bias": (
                self.bias_initializer or _fan_in_uniform(in_features),
                self.bias_regularizer,
                self.bias_constraint,
            ),
            "alpha": (keras.initializers.Ones(), None, None),
            "epsilon_raw": (keras.initializers.Constant(softplus_inverse(spec.epsilon)), None, None),
        }
        shapes = spec.param_shapes
        for name, (initializer, regularizer, constraint) in weights.items():
            shape = shapes.get(name)
            setattr(
                self,
                name,
                None
                if shape is None
                else self.add_weight(
                    name=name,
                    shape=shape[::-1],
                    initializer=initializer,
                    regularizer=regularizer,
                    constraint=constraint,
                ),
            )  # shape[::-1]: Dense's (in, units) kernel; 0-d and 1-d unchanged
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: in_features})

    @property
    def spec(self) -> LayerSpec:
        """The core's description of the layer, known once it is built (it holds the input size)."""
        if self._spec is None:
            raise AttributeError("You must build the layer before accessing `spec`.")
        return self._spec

    def param_variables(self) -> dict[str, keras.Variable]:
        """The learnable variables under the core's names, in the core's order (empty before build)."""
        return {} if self._spec is None else {name: getattr(self, name) for name in self._spec.param_shapes}

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "use_bias": native_option(self._template.bias),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }


@keras.saving.register_keras_serializable(package="yat_core")
class YatNMN(_CoreLayer):
    """Dense Yat layer: ``y = alpha * (x @ kernel + bias)^2 / (|x - kernel[:, j]|^2 + epsilon)``.

    ``keras.layers.Dense`` with the ⵟ-product in place of the dot product: the
    same kernel layout ``(in, units)``, argument names and mask behaviour.

    Parameters
    ----------
    units : int
        Number of output units; the input size is read at build.
    use_bias, use_alpha : bool or float
        ``True``: a learnable bias / scale (the default; alpha starts at 1.0);
        ``False``: none; a number: that constant (e.g. ``use_alpha=math.sqrt(2)``).
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise inputs and kernel columns; the distance becomes ``2 - 2 dot``.
    kernel_initializer, bias_initializer : Keras initializer, optional
        Default (None): the core's distributions, untruncated Xavier-normal kernel and
        bias uniform in ``±1/sqrt(in)``; :func:`build_model` loads
        :func:`~yat_core.mlp.init_mlp_numpy` instead, identical in every framework.
    kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint : optional
        As ``keras.layers.Dense``.
    **kwargs
        Passed to :class:`keras.layers.Layer` (``name``, ``dtype``, ``activity_regularizer``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> layer = YatNMN(4, name="yat")
    >>> y = layer(np.ones((2, 3), np.float32))
    >>> tuple(y.shape), tuple(layer.kernel.shape), layer.count_params()  # kernel (3, 4) + bias 4 + alpha 1
    ((2, 4), (3, 4), 17)
    >>> sorted(layer.param_variables())
    ['alpha', 'bias', 'kernel']
    >>> YatNMN(4, use_bias=0.5, use_alpha=False).get_config()["use_bias"]
    0.5
    """

    @names_layer
    def __init__(
        self,
        units: int,
        *,
        use_bias: bool | float = True,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        **kwargs: Any,
    ) -> None:
        template = yat_layer_spec(
            1,
            check_size(units, "units"),
            bias=use_bias,
            alpha=use_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            option_names=("use_bias", "use_alpha"),
        )
        super().__init__(template, **kwargs)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> YatNMN:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        options = spec_options(spec)
        return cls(spec.out_features, use_bias=options.pop("bias"), use_alpha=options.pop("alpha"), **options, **kwargs)

    def call(self, inputs: Array) -> Array:
        xp = namespace()
        options = forward_options(self.spec, lambda name: _read(getattr(self, name)), xp)
        return yat_product(inputs, xp.matrix_transpose(_read(self.kernel)), **options, xp=xp)

    def get_config(self) -> dict[str, Any]:
        t = self._template
        return {
            **super().get_config(),
            "use_alpha": native_option(t.alpha),
            "epsilon": t.epsilon,
            "learnable_epsilon": t.learnable_epsilon,
            "spherical": t.spherical,
        }


@keras.saving.register_keras_serializable(package="yat_core")
class Linear(_CoreLayer):
    """``keras.layers.Dense`` as the core's linear layer: ``activation(x @ kernel + bias)``.

    The model's linear layers. It differs from ``Dense`` only where the core
    :class:`~yat_core.mlp.LayerSpec` asks: ``use_bias`` may be a constant, the
    activation is None or ``"relu"``, and the default initialisers are the core's
    (uniform in ``±1/sqrt(in)``, PyTorch's ``nn.Linear``).

    Examples
    --------
    >>> import numpy as np
    >>> layer = Linear(10, activation="relu")
    >>> tuple(layer(np.ones((2, 128), np.float32)).shape), tuple(layer.kernel.shape), layer.count_params()
    ((2, 10), (128, 10), 1290)
    """

    @names_layer
    def __init__(
        self, units: int, activation: Literal["relu"] | None = None, use_bias: bool | float = True, **kwargs: Any
    ) -> None:
        template = linear_layer_spec(
            1, check_size(units, "units"), bias=use_bias, activation=activation, bias_name="use_bias"
        )
        super().__init__(template, **kwargs)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> Linear:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"linear"``)."""
        return cls(spec.out_features, activation=spec.activation, use_bias=native_option(spec.bias), **kwargs)

    def call(self, inputs: Array) -> Array:
        xp, spec = namespace(), self.spec
        bias = _read(self.bias) if spec.bias == LEARNABLE else spec.bias
        out = dense(inputs, xp.matrix_transpose(_read(self.kernel)), bias=bias, xp=xp)
        return ops.relu(out) if spec.activation == "relu" else out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activation": self._template.activation}


# ------------------------------------------------------------ convolutions


class _YatConv(KerasConvArgs, keras.layers.Layer):
    """What the six Yat convolutions share; a subclass only sets ``rank`` and ``transposed``.

    Documented on :class:`YatConv2D` and :class:`YatConv2DTranspose`. The Keras
    arguments and the core geometry they give are :class:`~yat_core.nn._keras_style.KerasConvArgs`'s,
    shared with the TensorFlow modules.
    """

    @names_layer
    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, ...],
        strides: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = "valid",
        *,
        output_padding: int | tuple[int, ...] | None = None,
        data_format: str | None = None,
        dilation_rate: int | tuple[int, ...] = 1,
        groups: int = 1,
        use_bias: bool | float = True,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        kernel_initializer: Any = None,
        bias_initializer: Any = None,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        n = self.rank
        self.filters = check_size(filters, "filters")
        self.groups = check_size(groups, "groups")
        if self.filters % self.groups:
            raise ValueError(f"groups={self.groups} must divide filters={self.filters}")
        data_format = keras.config.image_data_format() if data_format is None else data_format
        self._set_conv_args(kernel_size, strides, padding, data_format, dilation_rate, output_padding)
        # The core's options, checked (filters divisible by groups, epsilon > 0, ...); in channels come at build.
        self._template = conv_layer_spec(
            self.groups,
            self.filters,
            self.kernel_size,
            n_spatial=n,
            stride=self.strides,
            dilation=self.dilation_rate,
            groups=self.groups,
            output_padding=(0,) * n if self.transposed else None,
            bias=use_bias,
            alpha=use_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            names=("groups", "filters"),
            option_names=("use_bias", "use_alpha"),
        )
        self._param_spec: LayerSpec | None = None
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=n + 2)

    @property
    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        last = self.data_format == "channels_last"
        spatial = tuple(input_shape[1:-1] if last else input_shape[2:])
        out = tuple(self._spatial_output(i, size) for i, size in enumerate(spatial))
        return (input_shape[0], *out, self.filters) if last else (input_shape[0], self.filters, *out)

    # ---------------------------------------------------------------- weights

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[self._channel_axis]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known, got input shape {input_shape}")
        self._param_spec = spec = dataclasses.replace(self._template, in_features=int(channels))
        fan_in, fan_out = spec.fans
        weights = {  # the core's draws by default: Xavier-normal kernel, bias uniform in ±1/sqrt(fan_in)
            "kernel": (
                self.kernel_initializer or keras.initializers.RandomNormal(0.0, math.sqrt(2.0 / (fan_in + fan_out))),
                self.kernel_regularizer,
                self.kernel_constraint,
            ),
            "bias": (self.bias_initializer or _fan_in_uniform(fan_in), self.bias_regularizer, self.bias_constraint),
            "alpha": (keras.initializers.Ones(), None, None),
            "epsilon_raw": (keras.initializers.Constant(softplus_inverse(spec.epsilon)), None, None),
        }
        shapes = spec.param_shapes
        for name, (initializer, regularizer, constraint) in weights.items():
            shape = shapes.get(name)
            if shape is not None and name == "kernel":
                shape = (*shape[2:], shape[1], shape[0])  # Keras's layout (see kernel_from_core)
            setattr(
                self,
                name,
                None
                if shape is None
                else self.add_weight(
                    name=name, shape=shape, initializer=initializer, regularizer=regularizer, constraint=constraint
                ),
            )
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={self._channel_axis: int(channels)})

    def _built_spec(self) -> LayerSpec:
        if self._param_spec is None:
            raise ValueError(f"{self.name} is not built yet: call it once or build it with an input shape")
        return self._param_spec

    @property
    def spec(self) -> LayerSpec:
        """The core's exact description of the (built) layer.

        Raises ``ValueError`` where Keras's padding has no torch-style equivalent: a
        ``"same"`` convolution with strides > 1 (its padding depends on the input
        size and may be one-sided) and a ``"same"`` transposed convolution whose
        Keras padding is larger on the left (kernel 3, stride 2, for example).
        """
        if self._param_spec is None:
            raise AttributeError("You must build the layer before accessing `spec`.")
        return self._exact_spec(self._param_spec)

    def param_variables(self) -> dict[str, keras.Variable]:
        """The learnable variables under the core's names, in the core's order (empty before build)."""
        return {} if self._param_spec is None else {n: getattr(self, n) for n in self._param_spec.param_shapes}

    def export_params(self) -> dict[str, np.ndarray]:
        """The parameters as ``{core name: numpy array}`` in the core's layout (kernel ``(filters, in/groups, *k)``).

        Examples
        --------
        >>> layer = YatConv2DTranspose(6, 3, groups=2)
        >>> layer.build((None, 8, 8, 4))
        >>> tuple(layer.kernel.shape), {k: v.shape for k, v in layer.export_params().items()}
        ((3, 3, 3, 4), {'kernel': (4, 3, 3, 3), 'bias': (6,), 'alpha': ()})
        """
        spec = self._built_spec()
        out = {name: np.array(ops.convert_to_numpy(getattr(self, name).value)) for name in spec.param_shapes}
        out["kernel"] = kernel_to_core(out["kernel"])
        return out

    def import_params(self, params: Mapping[str, Any]) -> _YatConv:
        """Assign ``params`` (core names without a prefix, core layout) to the layer; return it.

        Names, shapes and dtypes are checked first, so a bad mapping changes nothing;
        values are cast to each variable's dtype.
        """
        checked = check_params(params, self._built_spec())
        for name, value in checked.items():
            variable = getattr(self, name)
            native = kernel_from_core(value) if name == "kernel" else value
            variable.assign(native.astype(dtype_name(variable.dtype)))
        return self

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> _YatConv:
        """The layer a core ``"yat_conv"`` / ``"yat_conv_transpose"`` spec describes, built for its channels.

        Padding is passed as the spec has it: ``"valid"``, ``"same"`` (stride 1) or
        integers (torch's rule), so the layer computes what the spec says.
        """
        layer = cls(**cls._spec_arguments(spec), **kwargs)
        channels = (spec.in_features,)
        spatial = (None,) * cls.rank
        layer.build(
            (None, *spatial, *channels) if layer.data_format == "channels_last" else (None, *channels, *spatial)
        )
        return layer

    # ---------------------------------------------------------------- forward

    def call(self, inputs: Array) -> Array:
        n = self.rank
        last = self.data_format == "channels_last"
        x = ops.transpose(inputs, (0, n + 1, *range(1, n + 1))) if last else inputs
        if x.shape[0] is None:
            # A TensorFlow graph with an unknown batch (Keras's tf.function steps): the core's convolution
            # needs every size known, so it runs per example, which tf.vectorized_map batches again.
            y = ops.vectorized_map(lambda example: self._forward(ops.expand_dims(example, 0))[0], x)
        else:
            y = self._forward(x)
        return ops.transpose(y, (0, *range(2, n + 2), 1)) if last else y

    def _forward(self, x: Array) -> Array:
        """The core's convolution of channels-first ``x`` (every size known)."""
        xp, spec, n = namespace(), self._built_spec(), self.rank
        kernel = ops.transpose(_read(self.kernel), (n + 1, n, *range(n)))  # the core's layout
        options = forward_options(spec, lambda name: _read(getattr(self, name)), xp)
        return self._core_conv(x, kernel, options, xp, ops.pad)

    def get_config(self) -> dict[str, Any]:
        t = self._template
        config = {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "use_bias": native_option(t.bias),
            "use_alpha": native_option(t.alpha),
            "epsilon": t.epsilon,
            "learnable_epsilon": t.learnable_epsilon,
            "spherical": t.spherical,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }
        if self.transposed:
            config["output_padding"] = self.output_padding
        return config


@keras.saving.register_keras_serializable(package="yat_core")
class YatConv1D(_YatConv):
    """1-D Yat convolution, ``keras.layers.Conv1D``'s arguments; see :class:`YatConv2D`.

    Examples
    --------
    >>> layer = YatConv1D(4, 3, padding="same")
    >>> tuple(layer(np.ones((2, 10, 3), np.float32)).shape), tuple(layer.kernel.shape)
    ((2, 10, 4), (3, 3, 4))
    """

    rank = 1


@keras.saving.register_keras_serializable(package="yat_core")
class YatConv2D(_YatConv):
    """2-D Yat convolution: the ⵟ-product of every input patch with every filter, as ``keras.layers.Conv2D``.

    ``y = alpha * (patch . w + bias)^2 / (|patch - w|^2 + epsilon)`` per filter ``w``
    (DESIGN.md section 1), computed by :func:`yat_core.conv.yat_conv` (``native=True``:
    the library's convolution for the dot and patch-norm terms, :mod:`yat_core.namespaces.native`).
    :class:`YatConv1D` and :class:`YatConv3D` are the same with 1 and 3 spatial dimensions.

    Parameters
    ----------
    filters : int
        Output channels (divisible by ``groups``); the input channels are read at build.
    kernel_size, strides, dilation_rate : int or tuple of ints
        As ``Conv2D`` (strides and dilation together are allowed: the core computes them).
    padding : "valid", "same" or int / tuple of ints
        ``"valid"`` and ``"same"`` as Keras (``"same"`` with strides: TensorFlow's rule,
        output ``ceil(size/stride)``, the odd unit of padding on the right); integers
        are torch's symmetric zero padding, what :meth:`from_spec` passes.
    data_format : "channels_last" or "channels_first", optional
        Default ``keras.config.image_data_format()`` (``"channels_last"``). Both give the
        same numbers; the layer hands the core its channels-first layout.
    groups : int
        As ``Conv2D``: ``filters`` and the input channels split into ``groups`` groups.
    use_bias, use_alpha : bool or float
        ``True``: learnable (alpha starts at 1.0); ``False``: none; a number: a constant.
    epsilon, learnable_epsilon, spherical
        As :class:`YatNMN`.
    kernel_initializer, bias_initializer : Keras initializer, optional
        Default (None): the core's distributions (:func:`~yat_core.mlp.init_layer_numpy`'s),
        drawn by Keras's RNG: kernel normal with std ``sqrt(2/(fan_in+fan_out))``, bias
        uniform in ``±1/sqrt(fan_in)``, fans as the core counts them (``spec.fans``).
    kernel_regularizer, bias_regularizer, kernel_constraint, bias_constraint : optional
        As ``Conv2D``.
    **kwargs
        Passed to :class:`keras.layers.Layer` (``name``, ``dtype``, ``activity_regularizer``, ...).

    Notes
    -----
    The kernel is stored ``(*kernel_size, in/groups, filters)`` as ``Conv2D`` stores it;
    :meth:`export_params` / :meth:`import_params` convert to and from the core's
    ``(filters, in/groups, *kernel_size)``. There is no ``activation`` (the product is
    the non-linearity).

    Examples
    --------
    >>> layer = YatConv2D(8, 3, strides=2, padding="same", name="yat_conv")
    >>> y = layer(np.ones((2, 9, 9, 4), np.float32))
    >>> tuple(y.shape), tuple(layer.kernel.shape), layer.count_params()  # kernel 3*3*4*8 + bias 8 + alpha 1
    ((2, 5, 5, 8), (3, 3, 4, 8), 297)
    >>> YatConv2D(8, 3, data_format="channels_first", groups=2).compute_output_shape((None, 4, 9, 9))
    (None, 8, 7, 7)
    >>> YatConv2D(6, 3, groups=4)
    Traceback (most recent call last):
    ...
    ValueError: keras YatConv2D: groups=4 must divide filters=6
    """

    rank = 2


@keras.saving.register_keras_serializable(package="yat_core")
class YatConv3D(_YatConv):
    """3-D Yat convolution, ``keras.layers.Conv3D``'s arguments; see :class:`YatConv2D`.

    Examples
    --------
    >>> tuple(YatConv3D(2, 2)(np.ones((1, 3, 4, 5, 1), np.float32)).shape)
    (1, 2, 3, 4, 2)
    """

    rank = 3


@keras.saving.register_keras_serializable(package="yat_core")
class YatConv1DTranspose(_YatConv):
    """1-D transposed Yat convolution, ``keras.layers.Conv1DTranspose``'s arguments; see :class:`YatConv2DTranspose`.

    Examples
    --------
    >>> tuple(YatConv1DTranspose(4, 3, strides=2, padding="same")(np.ones((2, 5, 3), np.float32)).shape)
    (2, 10, 4)
    """

    rank = 1
    transposed = True


@keras.saving.register_keras_serializable(package="yat_core")
class YatConv2DTranspose(_YatConv):
    """2-D transposed Yat convolution, as ``keras.layers.Conv2DTranspose``, computed by :func:`yat_core.conv.yat_conv_transpose`.

    The arguments of :class:`YatConv2D` plus ``output_padding``; the output shape is
    ``keras.layers.Conv2DTranspose``'s for the same arguments. The kernel is stored
    ``(*kernel_size, filters/groups, in)`` as ``Conv2DTranspose`` stores it (``groups``
    is an addition: Keras's transposed convolutions have none), the core's
    ``(in, filters/groups, *kernel_size)`` reversed.

    **Padding, Keras to torch.** Keras defines a transposed convolution as the direct
    one over the zero-inserted input padded ``(left, right)`` (span ``s = dilation*(k-1)+1``):
    ``"valid"``: ``left = s-1``, ``right = s-1 + output_padding`` (default
    ``max(s, stride) - s``); ``"same"``: a total ``t = stride + s - 2`` (or
    ``s + s % 2 - 2 + output_padding`` when given), ``left = min(ceil(t/2), s-1)``,
    ``right = t - left``. The core (torch) pads ``(s-1-padding, s-1-padding+output_padding)``,
    so the layer calls it with ``padding = s-1-left`` and ``output_padding = right-left``;
    where ``right < left`` (``"same"`` with ``t`` odd: kernel 3 stride 2, kernel 2 stride 1)
    it uses ``output_padding = 0`` and crops the last output of that dimension. Integer
    ``padding`` is torch's rule as it stands (``output_padding`` default 0).

    Examples
    --------
    >>> layer = YatConv2DTranspose(8, 3, strides=2, padding="same")
    >>> y = layer(np.ones((2, 5, 5, 4), np.float32))
    >>> tuple(y.shape), tuple(layer.kernel.shape)
    ((2, 10, 10, 8), (3, 3, 8, 4))
    """

    rank = 2
    transposed = True


@keras.saving.register_keras_serializable(package="yat_core")
class YatConv3DTranspose(_YatConv):
    """3-D transposed Yat convolution, ``keras.layers.Conv3DTranspose``'s arguments; see :class:`YatConv2DTranspose`.

    Examples
    --------
    >>> tuple(YatConv3DTranspose(2, 2, strides=2)(np.ones((1, 2, 3, 4, 1), np.float32)).shape)
    (1, 4, 6, 8, 2)
    """

    rank = 3
    transposed = True


_CONV_CLASSES: dict[tuple[bool, int], type[_YatConv]] = {
    (cls.transposed, cls.rank): cls
    for cls in (YatConv1D, YatConv2D, YatConv3D, YatConv1DTranspose, YatConv2DTranspose, YatConv3DTranspose)
}


def conv_from_spec(spec: LayerSpec, **kwargs: Any) -> _YatConv:
    """The Yat convolution class that fits ``spec`` (kind and spatial dimensions), built from it.

    Examples
    --------
    >>> from yat_core.nn.options import conv_layer_spec
    >>> layer = conv_from_spec(conv_layer_spec(4, 2, 2, n_spatial=1, stride=2, output_padding=1))
    >>> type(layer).__name__, tuple(layer.kernel.shape), layer.spec.output_padding
    ('YatConv1DTranspose', (2, 2, 4), (1,))
    """
    return conv_class(spec, _CONV_CLASSES).from_spec(spec, **kwargs)


# ------------------------------------------------------------ attention and embedding


class _YatScore:
    """The Yat options of a layer (alpha, epsilon, spherical) and their values in a forward pass.

    Mixed into :class:`YatMultiHeadAttention` and :class:`YatEmbed`: ``use_alpha``
    ``True`` (a learnable ``alpha`` weight, initialised to 1.0), ``False`` or a
    constant; ``learnable_epsilon`` makes an ``epsilon_raw`` weight (``epsilon =
    softplus(epsilon_raw)``, initialised at ``epsilon``).
    """

    use_alpha: Any
    epsilon: float
    learnable_epsilon: bool
    spherical: bool
    alpha: Any
    epsilon_raw: Any

    def _set_yat_options(self, use_alpha: Any, epsilon: float, learnable_epsilon: bool, spherical: bool) -> None:
        options = score_options(use_alpha, epsilon, learnable_epsilon, spherical, alpha_name="use_alpha")
        self.use_alpha = options["alpha"]  # the core's option: "learnable", a float or None
        self.epsilon, self.learnable_epsilon, self.spherical = (
            options["epsilon"],
            options["learnable_epsilon"],
            options["spherical"],
        )
        self.alpha = self.epsilon_raw = None

    def _add_yat_weights(self) -> None:
        add_weight = self.add_weight  # type: ignore[attr-defined]
        if self.use_alpha == LEARNABLE:
            self.alpha = add_weight(name="alpha", shape=(), initializer=keras.initializers.Ones())
        if self.learnable_epsilon:
            initial = keras.initializers.Constant(softplus_inverse(self.epsilon))
            self.epsilon_raw = add_weight(name="epsilon_raw", shape=(), initializer=initial)

    def _yat_options(self, xp: Any) -> dict[str, Any]:
        alpha = _read(self.alpha) if self.use_alpha == LEARNABLE else self.use_alpha
        epsilon = softplus(_read(self.epsilon_raw), xp=xp) if self.learnable_epsilon else self.epsilon
        return {"alpha": alpha, "epsilon": epsilon, "spherical": self.spherical}

    def _yat_config(self) -> dict[str, Any]:
        return {
            "use_alpha": native_option(self.use_alpha),
            "epsilon": self.epsilon,
            "learnable_epsilon": self.learnable_epsilon,
            "spherical": self.spherical,
        }


@keras.saving.register_keras_serializable(package="yat_core")
class YatMultiHeadAttention(_YatScore, keras.layers.MultiHeadAttention):
    """``keras.layers.MultiHeadAttention`` with the Yat score: :func:`yat_core.attention.yat_attention`.

    Everything but the score is Keras's own (this is a subclass): the arguments,
    the ``EinsumDense`` projections ``query_dense``, ``key_dense``, ``value_dense``
    (kernels ``(dim, num_heads, key_dim)``, biases ``(num_heads, key_dim)``) and
    ``output_dense`` (kernel ``(num_heads, value_dim, dim)``), ``call(query, value,
    key=None, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
    return_attention_scores=False, training=None, use_causal_mask=False)``, the masks
    (``attention_mask (B, T, S)``, True or 1 where the query may attend; the Keras masks
    of the inputs; ``use_causal_mask``), ``use_gate``, ``sliding_window``, ``get_config``
    and ``.keras`` files. The score of query ``i`` and key ``j`` (per head, ``d =
    key_dim``) is ``alpha * (q.k)^2 / ((|q - k|^2 + epsilon) * sqrt(d))``, softmax over
    the allowed keys; a query whose keys are all masked gets zero weights and a zero
    attention output (Keras's softmax would average every value instead).

    Parameters
    ----------
    num_heads, key_dim, value_dim, dropout, use_bias, output_shape, attention_axes
        As ``MultiHeadAttention``. ``dropout`` drops attention weights in training (the
        weights are then :func:`yat_core.attention.yat_attention_weights`, applied to
        the values here). The Yat score attends over one axis: ``attention_axes`` must be
        None (inputs ``(B, T, dim)``) or the axis just before the features.
    use_alpha : bool or float
        ``True``: a learnable scale ``alpha`` initialised to 1.0 (default); ``False``:
        none; a number: that constant.
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise each projected query and key first (the distance becomes ``2 - 2 q.k``).
    **kwargs
        ``MultiHeadAttention``'s others (``kernel_initializer``, default Glorot-uniform,
        ``bias_initializer``, regularizers, constraints, ``use_gate``, ``sliding_window``,
        ``seed``, ``name``, ``dtype``). ``flash_attention`` is refused: the score is not
        a dot product.

    Examples
    --------
    >>> layer = YatMultiHeadAttention(num_heads=2, key_dim=4, name="mha")
    >>> x = np.ones((3, 5, 8), np.float32)
    >>> out, scores = layer(x, x, return_attention_scores=True)
    >>> tuple(out.shape), tuple(scores.shape), tuple(layer.query_dense.kernel.shape), layer.count_params()
    ((3, 5, 8), (3, 2, 5, 5), (8, 2, 4), 289)
    """

    @names_layer
    def __init__(
        self,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        dropout: float = 0.0,
        use_bias: bool = True,
        output_shape: Any = None,
        attention_axes: Any = None,
        *,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("flash_attention", None):
            raise ValueError("YatMultiHeadAttention has no flash attention: the Yat score is not a dot product")
        # Checked here: Keras's own check lets True through as 1.
        num_heads, key_dim = check_size(num_heads, "num_heads"), check_size(key_dim, "key_dim")
        value_dim = None if value_dim is None else check_size(value_dim, "value_dim")
        super().__init__(
            num_heads,
            key_dim,
            value_dim=value_dim,
            dropout=dropout,
            use_bias=use_bias,
            output_shape=output_shape,
            attention_axes=attention_axes,
            flash_attention=False,
            **kwargs,
        )
        self._set_yat_options(use_alpha, epsilon, learnable_epsilon, spherical)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> YatMultiHeadAttention:
        """The layer of a core ``"yat_attention"`` spec (``heads`` heads of ``in_features / heads``).

        Its residual, if any, is the model's (:class:`SelfAttention`).
        """
        options = attention_spec_options(spec)
        heads = spec.heads
        return cls(
            heads,
            spec.in_features // heads,
            use_bias=options.pop("bias"),
            use_alpha=options.pop("alpha"),
            **options,
            **kwargs,
        )

    def build(self, query_shape: Any, value_shape: Any, key_shape: Any = None) -> None:
        super().build(query_shape, value_shape, key_shape)
        token_axis = len(query_shape) - 2  # of the projected (B, ..., T, heads, key_dim)
        if tuple(self._attention_axes) != (token_axis,):
            raise ValueError(
                f"{self.name}: the Yat score attends over one axis, the one before the features "
                f"(attention_axes=None for inputs (B, T, dim)); got attention_axes={self._attention_axes} "
                f"for inputs of shape {tuple(query_shape)}"
            )
        self._add_yat_weights()

    def _compute_attention(
        self,
        query: Array,
        key: Array,
        value: Array,
        attention_mask: Array | None = None,
        training: bool | None = None,
        return_attention_scores: bool = False,
    ) -> tuple[Array, Array | None]:
        # query (B, T, heads, key_dim), key (B, S, heads, key_dim), value (B, S, heads, value_dim): the core's layout.
        xp = namespace()
        # Keras's mask (B, T, S), True: may attend; the core's broadcasts to (B, heads, T, S).
        mask = None if attention_mask is None else ops.expand_dims(ops.cast(attention_mask, "bool"), -3)
        options = self._yat_options(xp)
        dropping = bool(training) and self._dropout > 0
        if not (return_attention_scores or dropping):
            return yat_attention(query, key, value, mask=mask, xp=xp, **options), None
        weights = yat_attention_weights(query, key, mask=mask, xp=xp, **options)  # (B, heads, T, S)
        kept = self._dropout_layer(weights, training=training) if dropping else weights
        return ops.einsum(self._combine_equation, kept, value), weights

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._yat_config()}


@keras.saving.register_keras_serializable(package="yat_core")
class YatEmbed(_YatScore, keras.layers.Layer):
    """``keras.layers.Embedding`` whose table also scores queries: :meth:`attend`, the Yat tied output layer.

    ``YatEmbed(input_dim, output_dim)`` keeps ``embeddings`` ``(input_dim, output_dim)``
    (vocabulary, features) as ``Embedding`` does, looks integer ids up
    (:func:`yat_core.attention.yat_embed`; ids of any other dtype are refused with a
    ``TypeError``, where ``Embedding`` would cast them) and, with ``mask_zero``, masks
    id 0. :meth:`attend` gives each query's Yat score against every row,
    :func:`yat_core.attention.yat_embed_attend` (the dense ⵟ-product with the table as
    kernel, no bias).

    Parameters
    ----------
    input_dim, output_dim : int
        Vocabulary size and embedding size.
    embeddings_initializer, embeddings_regularizer, embeddings_constraint, mask_zero
        As ``Embedding`` (initializer default ``"uniform"``, Keras's).
    use_alpha : bool or float
        :meth:`attend`'s scale: ``True`` a learnable ``alpha`` (1.0 at first), ``False``
        none, a number a constant.
    epsilon, learnable_epsilon, spherical
        :meth:`attend`'s options, as :class:`YatNMN`'s.
    **kwargs
        Passed to :class:`keras.layers.Layer`.

    Examples
    --------
    >>> embed = YatEmbed(10, 4, name="embed")
    >>> h = embed(np.array([[1, 2, 3]]))
    >>> tuple(h.shape), tuple(embed.embeddings.shape), tuple(embed.attend(h).shape)
    ((1, 3, 4), (10, 4), (1, 3, 10))
    """

    @names_layer
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        embeddings_initializer: Any = "uniform",
        embeddings_regularizer: Any = None,
        embeddings_constraint: Any = None,
        mask_zero: bool = False,
        *,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_dim = check_size(input_dim, "input_dim")
        self.output_dim = check_size(output_dim, "output_dim")
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.embeddings_constraint = keras.constraints.get(embeddings_constraint)
        self.mask_zero = check_flag(mask_zero, "mask_zero")
        self.supports_masking = self.mask_zero
        self._set_yat_options(use_alpha, epsilon, learnable_epsilon, spherical)

    def build(self, input_shape: Any = None) -> None:
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.input_dim, self.output_dim),
            initializer=self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            constraint=self.embeddings_constraint,
        )
        self._add_yat_weights()

    def call(self, inputs: Array) -> Array:
        return yat_embed(_read(self.embeddings), inputs, xp=namespace())

    def attend(self, query: Array) -> Array:
        """The Yat score of each query ``(..., output_dim)`` against every row: ``(..., input_dim)``."""
        if not self.built:
            self.build()
        xp = namespace()
        query = ops.convert_to_tensor(query, dtype=self.compute_dtype)
        return yat_embed_attend(query, _read(self.embeddings), xp=xp, **self._yat_options(xp))

    def compute_mask(self, inputs: Array, mask: Any = None) -> Any:
        return ops.not_equal(inputs, 0) if self.mask_zero else None

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape, self.output_dim)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer),
            "embeddings_constraint": keras.constraints.serialize(self.embeddings_constraint),
            "mask_zero": self.mask_zero,
            **self._yat_config(),
        }


# ------------------------------------------------------------ the vision transformer's other layers


@keras.saving.register_keras_serializable(package="yat_core")
class Patches(keras.layers.Layer):
    """Non-overlapping image patches as tokens: ``(n, H, W, C) -> (n, (H/ph) * (W/pw), C * ph * pw)``.

    The core's ``"patches"``: tokens in row-major order over the patch grid, each patch
    flattened channels first ``(c, i, j)`` (``keras.ops.image.extract_patches`` flattens
    channels last), so the dense kernel after it is the core's array. ``data_format``
    as Keras's image layers (default ``keras.config.image_data_format()``).

    Examples
    --------
    >>> tuple(Patches((7, 7))(np.zeros((2, 28, 28, 1), "float32")).shape)
    (2, 16, 49)
    """

    @names_layer
    def __init__(self, patch_size: int | tuple[int, int], data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        height, width = per_dim(patch_size, 2, "patch_size", 1)
        self.patch_size = (height, width)
        self.data_format = keras.config.image_data_format() if data_format is None else str(data_format).lower()
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _image_shape(self, input_shape: tuple[int | None, ...]) -> tuple[Any, Any, Any]:
        shape = tuple(input_shape[1:])
        height, width, channels = shape if self.data_format == "channels_last" else (*shape[1:], shape[0])
        ph, pw = self.patch_size
        if height is None or width is None or channels is None or height % ph or width % pw:
            raise ValueError(
                f"{self.name}: patches of {self.patch_size} need known image sizes that they divide, "
                f"got input shape {tuple(input_shape)}"
            )
        return height, width, channels

    def call(self, inputs: Array) -> Array:
        if self.data_format == "channels_first":
            inputs = ops.transpose(inputs, (0, 2, 3, 1))
        self._image_shape((None, *inputs.shape[1:]) if self.data_format == "channels_last" else (None,) * 4)
        return patches_channels_last(inputs, self.patch_size, ops)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        height, width, channels = self._image_shape(input_shape)
        ph, pw = self.patch_size
        return (input_shape[0], (height // ph) * (width // pw), channels * ph * pw)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "patch_size": self.patch_size, "data_format": self.data_format}


@keras.saving.register_keras_serializable(package="yat_core")
class AddPositionEmbedding(keras.layers.Layer):
    """Adds a learned table ``embeddings (sequence_length, dim)`` to token sequences ``(n, sequence_length, dim)``.

    The core's ``"pos_embed"``; the table starts normal with deviation 0.02 (the
    core's draw) unless ``initializer`` says otherwise.

    Examples
    --------
    >>> layer = AddPositionEmbedding(16)
    >>> tuple(layer(np.zeros((2, 16, 8), "float32")).shape), tuple(layer.embeddings.shape)
    ((2, 16, 8), (16, 8))
    """

    @names_layer
    def __init__(
        self,
        sequence_length: int,
        initializer: Any = None,
        regularizer: Any = None,
        constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sequence_length = check_size(sequence_length, "sequence_length")
        self.initializer = keras.initializers.get(initializer) or keras.initializers.RandomNormal(0.0, 0.02)
        self.regularizer = keras.regularizers.get(regularizer)
        self.constraint = keras.constraints.get(constraint)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={1: self.sequence_length})

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the feature dimension must be known, got input shape {input_shape}")
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, int(input_shape[-1])),
            initializer=self.initializer,
            regularizer=self.regularizer,
            constraint=self.constraint,
        )

    def call(self, inputs: Array) -> Array:
        return inputs + _read(self.embeddings)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "sequence_length": self.sequence_length,
            "initializer": keras.initializers.serialize(self.initializer),
            "regularizer": keras.regularizers.serialize(self.regularizer),
            "constraint": keras.constraints.serialize(self.constraint),
        }


class _Wrapper(keras.layers.Layer):
    """A layer around one inner layer, kept (and saved) under ``attribute``; same output shape as input."""

    attribute: str = "layer"

    def __init__(self, inner: keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        setattr(self, self.attribute, inner)

    @property
    def inner(self) -> keras.layers.Layer:
        return getattr(self, self.attribute)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), self.attribute: keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        config = dict(config)
        config[cls.attribute] = keras.saving.deserialize_keras_object(config[cls.attribute])
        return cls(**config)


@keras.saving.register_keras_serializable(package="yat_core")
class SelfAttention(_Wrapper):
    """``attention(x, x)``, plus ``x`` when ``residual``: a multi-head attention layer in a ``Sequential``.

    ``attention`` is a :class:`YatMultiHeadAttention` or ``keras.layers.MultiHeadAttention``
    (both take ``(query, value)``); the model's ``"yat_attention"`` / ``"attention"`` layers.

    Examples
    --------
    >>> block = SelfAttention(YatMultiHeadAttention(2, 4), residual=True)
    >>> tuple(block(np.ones((3, 5, 8), "float32")).shape)
    (3, 5, 8)
    """

    attribute = "attention"

    def __init__(self, attention: keras.layers.Layer, residual: bool = False, **kwargs: Any) -> None:
        super().__init__(attention, **kwargs)
        self.residual = bool(residual)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if not self.inner.built:  # a loaded model's inner layer is built from its own config
            self.inner.build(input_shape, input_shape)

    def call(self, inputs: Array) -> Array:
        out = self.inner(inputs, inputs)
        return inputs + out if self.residual else out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "residual": self.residual}


@keras.saving.register_keras_serializable(package="yat_core")
class Residual(_Wrapper):
    """``x + layer(x)``: the core's ``residual=True`` around a dense layer (:class:`YatNMN`, :class:`Linear`).

    Examples
    --------
    >>> tuple(Residual(YatNMN(8))(np.ones((3, 5, 8), "float32")).shape)
    (3, 5, 8)
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(layer, **kwargs)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if not self.inner.built:
            self.inner.build(input_shape)

    def call(self, inputs: Array) -> Array:
        return inputs + self.inner(inputs)


# ------------------------------------------------------------ model and interchange


@keras.saving.register_keras_serializable(package="yat_core")
class ChannelsFirstFlatten(keras.layers.Layer):
    """``keras.layers.Flatten`` in the core's order: channels first, ``(n, C, *spatial) -> (n, C * prod(spatial))``.

    Channels-last inputs ``(n, *spatial, C)`` are transposed to channels first before
    they are flattened, so the dense kernel after a flatten is the core's array in every
    framework (the interchange stays a plain copy). The model's ``"flatten"`` layer.

    Examples
    --------
    >>> x = np.arange(12.0, dtype="float32").reshape(1, 2, 2, 3)  # (n, H, W, C)
    >>> ops.convert_to_numpy(ChannelsFirstFlatten()(x))[0, :4]  # channel 0 of the four pixels first
    array([0., 3., 6., 9.], dtype=float32)
    """

    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = keras.config.image_data_format() if data_format is None else str(data_format).lower()

    def call(self, inputs: Array) -> Array:
        d = len(inputs.shape)
        if self.data_format == "channels_last" and d > 2:
            inputs = ops.transpose(inputs, (0, d - 1, *range(1, d - 1)))
        return ops.reshape(inputs, (-1, math.prod(inputs.shape[1:])))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        features = input_shape[1:]
        return (input_shape[0], None if None in features else math.prod(features))  # type: ignore[arg-type]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "data_format": self.data_format}


@keras.saving.register_keras_serializable(package="yat_core")
class YatSequential(keras.Sequential):
    """The ``keras.Sequential`` of a :class:`~yat_core.spec.ModelSpec`: its layers, and the spec they implement.

    A Sequential in every respect (``layers``, ``compile`` / ``fit``, ``.keras``
    files, which keep the spec) but one: besides inputs ``(n, *layout)`` in Keras's
    ``data_format`` (:attr:`layout`: ``(28, 28, 1)`` for the CNN channels last,
    ``(784,)`` for the MLP) it takes inputs of another rank holding the same values per
    example, flat ``(n, 784)`` or images ``(n, 28, 28)``, and reshapes them, so the runner
    can feed it flattened pixels. An input of the layout's rank but another shape
    (channels first) is refused. :func:`build_model` makes one.
    """

    def __init__(
        self,
        layers: Any = None,
        trainable: bool = True,
        name: str | None = None,
        *,
        spec: ModelSpec | None = None,
        data_format: str | None = None,
    ) -> None:
        super().__init__(layers, trainable=trainable, name=name)
        self._model_spec = spec
        self.data_format = keras.config.image_data_format() if data_format is None else data_format

    @property
    def spec(self) -> ModelSpec:
        """The core's description of the model."""
        if self._model_spec is None:
            raise ValueError(f"{self.name} was made without a ModelSpec; build it with build_model(spec)")
        return self._model_spec

    @property
    def layout(self) -> tuple[int, ...]:
        """One example's shape as the model takes it (the spec's input shape, channels last by default)."""
        return input_layout(self.spec.input_shape, self.data_format == "channels_last")

    def _to_layout(self, x: Array) -> Array:
        if getattr(x.shape, "rank", 0) is None:  # a TensorFlow graph retraced for inputs of any rank
            return ops.reshape(x, (-1, *self.layout))
        target = layout_reshape(tuple(x.shape), self.layout, self.name)
        return x if target is None else ops.reshape(x, target)

    def call(self, inputs: Array, training: bool | None = None, mask: Any = None, **kwargs: Any) -> Array:
        return super().call(self._to_layout(inputs), training=training, mask=mask, **kwargs)

    def compute_output_spec(self, inputs: Any, training: bool | None = None, mask: Any = None, **kwargs: Any) -> Any:
        return super().compute_output_spec(self._to_layout(inputs), training=training, mask=mask, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "spec": spec_record(self.spec), "data_format": self.data_format}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> YatSequential:
        config = dict(config)
        spec, data_format = config.pop("spec"), config.pop("data_format")
        model = super().from_config(config, custom_objects=custom_objects)
        model._model_spec, model.data_format = spec_from_record(spec), data_format
        return model


def _plain_conv(spec: LayerSpec, name: str, **kwargs: Any) -> list[keras.layers.Layer]:
    """Keras's own ``Conv{1,2,3}D`` for a ``"conv"`` spec, after a ``ZeroPadding{1,2,3}D`` for integer padding."""
    n, options = len(spec.kernel_size), spec.conv_options
    if spec.bias not in (LEARNABLE, None):
        raise ValueError(f"{name}: keras.layers.Conv{n}D has no constant bias (the spec's bias is {spec.bias})")
    padding = options["padding"]
    layers: list[keras.layers.Layer] = []
    if not isinstance(padding, str):  # torch's symmetric padding: Keras's convolutions have "valid"/"same" only
        if any(padding):
            pairs = (padding[0],) * 2 if n == 1 else tuple((p, p) for p in padding)
            layers.append(getattr(keras.layers, f"ZeroPadding{n}D")(pairs, name=f"{name}_padding", **kwargs))
        padding = "valid"
    conv = getattr(keras.layers, f"Conv{n}D")
    return [
        *layers,
        conv(
            spec.out_features,
            spec.kernel_size,
            strides=options["stride"],
            padding=padding,
            dilation_rate=options["dilation"],
            groups=spec.groups,
            activation=spec.activation,
            use_bias=spec.bias == LEARNABLE,
            name=name,
            **kwargs,
        ),
    ]


def _keras_layers(spec: LayerSpec, index: int, dtype: str, data_format: str) -> list[keras.layers.Layer]:
    """The Keras layer(s) of one core layer."""
    if spec.kind in ("yat", "linear"):
        dense_layer = (YatNMN if spec.kind == "yat" else Linear).from_spec(
            spec, name=f"{'yat_nmn' if spec.kind == 'yat' else 'linear'}_{index}", dtype=dtype
        )
        return [Residual(dense_layer, name=f"residual_{index}", dtype=dtype) if spec.residual else dense_layer]
    if spec.kind in ATTENTION_KINDS:
        name = f"{spec.kind}_{index}"
        if spec.kind == "yat_attention":
            attention: keras.layers.Layer = YatMultiHeadAttention.from_spec(spec, name=name, dtype=dtype)
        else:  # Keras's own: the same projections, the scaled dot product
            heads = spec.heads
            attention = keras.layers.MultiHeadAttention(
                heads, spec.in_features // heads, use_bias=spec.bias == LEARNABLE, name=name, dtype=dtype
            )
        return [SelfAttention(attention, residual=spec.residual, name=f"self_attention_{index}", dtype=dtype)]
    name, spatial = f"{spec.kind}_{index}", {"data_format": data_format, "dtype": dtype}
    if spec.kind == "patches":
        ph, pw = spec.kernel_size
        return [Patches((ph, pw), name=name, **spatial)]
    if spec.kind == "pos_embed":
        return [AddPositionEmbedding(spec.tokens, name=name, dtype=dtype)]
    if spec.kind == "token_mean":  # the mean over the tokens of (n, tokens, features)
        return [keras.layers.GlobalAveragePooling1D(data_format="channels_last", name=name, dtype=dtype)]
    if spec.kind in ("yat_conv", "yat_conv_transpose"):
        return [conv_from_spec(spec, name=name, **spatial)]
    if spec.kind == "conv":
        return _plain_conv(spec, name, **spatial)
    if spec.kind == "flatten":
        return [ChannelsFirstFlatten(name=name, **spatial)]
    pool = "MaxPooling" if spec.kind == "max_pool" else "AveragePooling"
    window = spec.kernel_size  # non-overlapping windows: stride = window, the remainder dropped ("valid")
    return [getattr(keras.layers, f"{pool}{len(window)}D")(window, strides=window, name=name, **spatial)]


def build_model(spec: ModelSpec, seed: int = 0, *, dtype: str = "float32") -> YatSequential:
    """The Keras model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy` for ``seed``.

    A :class:`YatSequential` returning logits, inputs in Keras's ``data_format``
    (channels last by default: ``(n, 28, 28, 1)`` for the CNN; flat ``(n, 784)`` or
    ``(n, 28, 28)`` reshaped). Its layers, per core layer: ``"yat"`` :class:`YatNMN`,
    ``"linear"`` :class:`Linear`, ``"yat_conv"`` / ``"yat_conv_transpose"`` the Yat
    convolutions (:func:`conv_from_spec`), ``"conv"`` ``keras.layers.Conv{1,2,3}D`` (with
    its ReLU; integer padding: a ``ZeroPadding{1,2,3}D`` before it), ``"max_pool"`` /
    ``"avg_pool"`` ``keras.layers.MaxPooling{1,2,3}D`` / ``AveragePooling{1,2,3}D``
    (window = stride), ``"flatten"`` :class:`ChannelsFirstFlatten` (the core's order);
    the vision transformer's: ``"patches"`` :class:`Patches`, ``"pos_embed"``
    :class:`AddPositionEmbedding`, ``"yat_attention"`` :class:`YatMultiHeadAttention`
    and ``"attention"`` ``keras.layers.MultiHeadAttention`` (each in a
    :class:`SelfAttention`), ``"token_mean"`` ``keras.layers.GlobalAveragePooling1D``,
    and :class:`Residual` around a dense layer with ``residual=True``.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> model = build_model(seed_spec(), seed=0)
    >>> [layer.name for layer in model.layers], model.count_params()
    (['yat_nmn_0', 'yat_nmn_1', 'linear_2'], 235148)
    >>> cnn = build_model(cnn_spec())
    >>> [type(layer).__name__ for layer in cnn.layers][:3], cnn.layout, cnn.count_params()
    (['YatConv2D', 'MaxPooling2D', 'YatConv2D'], (28, 28, 1), 225037)
    >>> tuple(cnn(np.zeros((2, 784), "float32")).shape), tuple(cnn(np.zeros((2, 28, 28, 1), "float32")).shape)
    ((2, 10), (2, 10))
    """
    check_native_kinds(spec, "keras")
    data_format = keras.config.image_data_format()
    layers: list[Any] = [keras.Input(shape=input_layout(spec.input_shape, data_format == "channels_last"), dtype=dtype)]
    for i, layer in enumerate(spec.layers):
        layers += _keras_layers(layer, i, dtype, data_format)
    if any(layer.kind in TOKEN_KINDS for layer in spec.layers):
        name = "yat_vit"
    else:
        name = "yat_mlp" if len(spec.input_shape) == 1 else "yat_cnn"
    model = YatSequential(layers, name=name, spec=spec, data_format=data_format)
    return import_params(model, init_mlp_numpy(spec, seed))


def _model_layers(model: keras.Model) -> tuple[ModelSpec, list[Any]]:
    """The model's spec and, per core layer, the Keras layer holding its parameters."""
    if isinstance(model, YatSequential):
        padding = tuple(getattr(keras.layers, f"ZeroPadding{n}D") for n in (1, 2, 3))
        layers = [layer for layer in model.layers if not isinstance(layer, padding)]
        return model.spec, [layer.inner if isinstance(layer, _Wrapper) else layer for layer in layers]
    # A keras.Sequential of this module's dense layers (as build_model made them before the model spec).
    layers = list(model.layers)
    foreign = [type(layer).__name__ for layer in layers if not isinstance(layer, _CoreLayer)]
    if foreign:
        raise TypeError(
            f"the model holds layers yat_core cannot name ({', '.join(foreign)}); "
            "export and import work on the models of build_model, or Sequential models of YatNMN and Linear layers"
        )
    if not layers or not all(layer.built for layer in layers):
        raise ValueError("the model is not built yet: give it a keras.Input or call it once")
    return ModelSpec(tuple(layer.spec for layer in layers)), layers


def model_spec(model: keras.Model) -> ModelSpec:
    """The core :class:`~yat_core.spec.ModelSpec` a built model of this module implements.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> model_spec(build_model(seed_spec())) == seed_spec(), model_spec(build_model(cnn_spec())) == cnn_spec()
    (True, True)
    """
    return _model_layers(model)[0]


def export_params(model: keras.Model | _YatConv) -> dict[str, np.ndarray]:
    """The model's parameters as ``{name: numpy array}`` in the core's names and layouts.

    Dense kernels ``(out, in)``, convolution kernels ``(out, in/groups, *k)`` (transposed
    ``(in, out/groups, *k)``). A single Yat convolution gives its own, unprefixed
    (``"kernel"``, ``"bias"``, ...): :meth:`_YatConv.export_params`.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> params = export_params(build_model(seed_spec(), seed=0))
    >>> params["0.kernel"].shape, params["0.alpha"].shape, params["2.bias"].shape
    ((256, 784), (), (10,))
    >>> cnn = build_model(cnn_spec())
    >>> export_params(cnn)["2.kernel"].shape, tuple(cnn.layers[2].kernel.shape)
    ((64, 32, 3, 3), (3, 3, 32, 64))
    """
    if isinstance(model, _YatConv):
        return model.export_params()
    spec, layers = _model_layers(model)

    def read(i: int, name: str) -> np.ndarray:
        variable = native_variable(layers[i], spec.layers[i], name)
        return to_core(spec.layers[i], name, np.asarray(ops.convert_to_numpy(variable.value)))

    return export_arrays(spec, read, kernel_in_out=True)


_M = TypeVar("_M", keras.Model, _YatConv)


def import_params(model: _M, params: Mapping[str, Any]) -> _M:
    """Assign a ``{name: array}`` mapping (core names and layouts) to the model and return it.

    ``model`` is a model of this module or a single Yat convolution (unprefixed names:
    :meth:`_YatConv.import_params`).

    Everything is checked before anything is assigned, so a bad mapping raises and
    leaves the model unchanged; values are cast to each variable's dtype.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(build_model(seed_spec()), init_mlp_numpy(seed_spec(), seed=1))
    >>> import_params(model, {**init_mlp_numpy(seed_spec(), 1), "0.kernel": np.zeros((784, 256))})
    Traceback (most recent call last):
    ...
    ValueError: parameters do not fit the model: 0.kernel has shape (784, 256), expected (256, 784)
    """
    if isinstance(model, _YatConv):
        return model.import_params(params)
    spec, layers = _model_layers(model)

    def write(i: int, name: str, value: np.ndarray) -> None:
        variable = native_variable(layers[i], spec.layers[i], name)
        variable.assign(from_core(spec.layers[i], name, value).astype(dtype_name(variable.dtype)))

    import_arrays(spec, params, write, kernel_in_out=True)
    return model


def count_params(model: keras.Model) -> int:
    """Learnable scalars, counted by Keras (``model.count_params()``).

    Examples
    --------
    >>> from yat_core.spec import cnn_relu_spec, seed_spec
    >>> count_params(build_model(seed_spec())), count_params(build_model(cnn_relu_spec()))
    (235148, 225034)
    """
    return int(model.count_params())


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` in the core's layout, as a NumPy array.

    ``x`` is ``(n, *spec.input_shape)`` (channels first: ``(n, 1, 28, 28)`` for the CNN)
    or flat ``(n, 784)`` (``(n, 28, 28)`` too); it is moved to the model's layout here.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> predict(build_model(seed_spec()), np.zeros((3, 28, 28), np.float32)).shape
    (3, 10)
    >>> predict(build_model(cnn_spec()), np.zeros((3, 1, 28, 28), np.float32)).shape
    (3, 10)
    """
    spec = model_spec(model)
    channels_last = getattr(model, "data_format", "channels_last") == "channels_last"
    return np.asarray(model.predict_on_batch(to_framework_layout(x, spec.input_shape, channels_last)))
