"""TensorFlow modules over the core: :class:`YatNMN`, :class:`Linear`, the Yat convolutions and :class:`YatModel`.

Plain ``tf.Module`` subclasses (no Keras layers), made as TensorFlow's own
modules and its ``Dense`` layer are:

- **Layout and names.** The kernel is ``(in_features, units)``, as ``Dense``
  stores it (BREAKING: it was the core's ``(out, in)`` before); the forward hands
  its transpose to :func:`yat_core.yat_product`. Arguments are
  ``YatNMN(in_features, units, use_bias=..., use_alpha=..., ...)`` and
  ``Linear(in_features, units, activation=None, use_bias=True)``: ``units``,
  ``activation`` and ``use_bias`` as ``Dense`` (and :mod:`yat_core.nn.keras`) name
  them, ``in_features`` first because a ``tf.Module`` creates its variables in its
  constructor. Inputs are ``(batch, in_features)``. Variables are ``kernel``,
  ``bias``, ``alpha`` and ``epsilon_raw``; ``use_bias`` and ``use_alpha`` take
  ``True`` (learnable), ``False`` (absent) or a number (a constant).
  The interchange mapping (:func:`export_params`) keeps the core's ``(out, in)``,
  so ``.npz`` files are unchanged.
- **Variables.** Every parameter is a ``tf.Variable`` attribute, so
  ``trainable_variables`` and ``tf.train.Checkpoint`` see all of them.
- **Saving.** ``__call__`` is a ``tf.function`` whose input signature is the
  module's (any batch size, the module's dtype), so a plain
  ``tf.saved_model.save(module, path)`` stores it, as the object's ``__call__``
  and as its ``serving_default`` signature, and ``tf.saved_model.load(path)``
  gives a callable with the same outputs. ``call`` is the same forward untraced,
  as Keras names it, for use inside a caller's own ``tf.function``.
- **Initial values** are the core's (:func:`~yat_core.mlp.init_layer_numpy`:
  Xavier-normal Yat kernels, uniform ``±1/sqrt(in)`` linear kernels and biases),
  drawn from ``numpy.random.default_rng(seed)``. With ``seed=None`` that seed is
  drawn from TensorFlow's global random state, so, as with TensorFlow's own random
  ops, ``tf.random.set_seed(s)`` before construction makes the weights
  reproducible and different global seeds give different weights.
  :func:`build_model` gives the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

**Convolutions.** :class:`YatConv1D`, :class:`YatConv2D`, :class:`YatConv3D` and
:class:`YatConv1DTranspose`, :class:`YatConv2DTranspose`, :class:`YatConv3DTranspose`
take Keras's names (``filters``, ``kernel_size``, ``strides``, ``padding``,
``data_format``, ``dilation_rate``, ``groups``, ``use_bias``, ``output_padding``),
after ``in_channels``; channels last by default; kernels ``(*k, in/groups, filters)``
(transposed: ``(*k, filters/groups, in)``) as Keras stores them; Keras's output shapes,
``"same"`` and transposed padding included. Their forward is
:func:`yat_core.conv.yat_conv` / :func:`yat_core.conv.yat_conv_transpose` on
:func:`yat_core.namespaces.tf.namespace` with ``tf.nn.convolution`` as the native
convolution (:mod:`yat_core.namespaces.native`). The core's
convolution needs every size known when it is traced, so their ``__call__`` is a
``tf.function`` traced per input shape (no fixed signature; a module does not know
its inputs' spatial sizes): ``tf.saved_model.save`` keeps the shapes the module has
been called with, and ``tf.saved_model.load`` gives a callable for those shapes with
the same outputs. Inside a caller's ``tf.function`` whose batch size is unknown, the
module maps the core over the examples with ``tf.vectorized_map``, which TensorFlow
batches again.

**Attention.** :class:`YatMultiHeadAttention` is multi-head attention with the Yat
score (:func:`yat_core.attention.yat_attention`), laid out as
``keras.layers.MultiHeadAttention`` and ``yat_core.nn.keras.YatMultiHeadAttention``:
sub-modules ``query_dense``, ``key_dense``, ``value_dense`` with kernels ``(dim,
num_heads, key_dim)`` and biases ``(num_heads, key_dim)``, ``output_dense`` with a
kernel ``(num_heads, value_dim, dim)``; ``attention_mask`` ``(B, T, S)``, True where a
query may attend; ``use_causal_mask``. :class:`MultiHeadAttention` is the same module
with TensorFlow's scaled dot-product softmax (the baseline). Their ``__call__`` is a
``tf.function`` traced per call signature, which ``tf.saved_model.save`` keeps.
:class:`YatEmbed` is an embedding table ``(input_dim, output_dim)`` looked up by
integer ids, whose :meth:`YatEmbed.attend` scores queries against every row.

**Models.** :class:`YatModel` (:func:`build_model`) is the model of any
:class:`~yat_core.spec.ModelSpec`, the MLP, the CNN and the vision transformer: channels-last inputs
``(n, *spatial, C)`` (flat ``(n, 784)`` and ``(n, 28, 28)`` are reshaped), TensorFlow's
own convolution and pooling for the spec's ``"conv"`` and pooling layers, and a flatten
in the core's channels-first order, so every kernel is the same array in every
framework (:func:`export_params` converts convolution kernels to the core's
``(out, in/groups, *k)``). The vision transformer's patches are the core's (each
flattened channels first), attention layers are the modules above, ``residual=True``
adds a layer's input to its output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import numpy as np

from yat_core._lazy import unavailable

try:
    import tensorflow as tf
except ImportError as exc:
    raise unavailable("tensorflow", exc, "tf", "yat_core.nn.tf") from None

from yat_core.attention import yat_attention, yat_attention_weights, yat_embed, yat_embed_attend
from yat_core.conv import linear_conv
from yat_core.mlp import LEARNABLE, LayerSpec, ModelSpec, init_layer_numpy
from yat_core.namespaces.tf import namespace
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
    score_options,
    spec_options,
    yat_layer_spec,
)
from yat_core.product import DEFAULT_EPSILON, dense, softplus, softplus_inverse, yat_product
from yat_core.spec import ATTENTION_KINDS, TOKEN_KINDS

__all__ = [
    "YatNMN",
    "Linear",
    "YatModel",
    "YatMLP",
    "YatConv1D",
    "YatConv2D",
    "YatConv3D",
    "YatConv1DTranspose",
    "YatConv2DTranspose",
    "YatConv3DTranspose",
    "conv_from_spec",
    "YatMultiHeadAttention",
    "MultiHeadAttention",
    "YatEmbed",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "predict",
]

Array = Any
Seed = int | np.random.Generator | None


def _generator(seed: Seed) -> np.random.Generator:
    """The NumPy generator of the core's initial draws; without a seed, seeded from TensorFlow's global state."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        # A TF random op: follows tf.random.set_seed as TensorFlow's own initialisers do.
        seed = int(tf.random.uniform((), maxval=2**62, dtype=tf.int64))
    return np.random.default_rng(seed)


def _float_dtype(dtype: Any) -> tf.DType:
    dtype = tf.as_dtype(dtype)
    if not dtype.is_floating:
        raise TypeError(f"dtype must be a floating dtype, got {dtype.name}")
    return dtype


class _SavedCall:
    """``__call__`` of a module: the ``tf.function`` the module keeps under that name in its ``__dict__``.

    Python calls through the class; ``tf.saved_model.save`` looks the attribute up on
    the instance and finds the function (one function, so also the serving signature).
    """

    def __get__(self, module: Any, owner: type | None = None) -> Any:
        return self if module is None else module.__dict__["__call__"]


class _Module(tf.Module):
    """A module whose ``__call__`` is :meth:`call` as a ``tf.function`` with the module's input signature.

    :meth:`call` is the plain forward, as in Keras: a model calls its layers' and a
    training step calls the model's, so one compiled function holds the whole
    computation (nested ``tf.function`` calls would change the rounding of gradients).
    """

    __call__ = _SavedCall()
    dtype: tf.DType

    def _trace(self, shape: list[int | None] | None) -> None:
        spec = tf.TensorSpec(shape, self.dtype, name="inputs")
        self.__dict__["__call__"] = tf.function(self.call, input_signature=[spec])

    def call(self, x: Array) -> Array:
        """The forward pass, untraced (``__call__`` is its traced, saved form)."""
        raise NotImplementedError

    def _set_score_options(self, use_alpha: Any, epsilon: Any, learnable_epsilon: Any, spherical: Any) -> None:
        """The Yat score's options of an attention or embedding, checked; ``use_alpha`` becomes the core's option."""
        options = score_options(use_alpha, epsilon, learnable_epsilon, spherical, alpha_name="use_alpha")
        self.use_alpha, self.epsilon = options["alpha"], options["epsilon"]
        self.learnable_epsilon, self.spherical = options["learnable_epsilon"], options["spherical"]


def _create_variables(module: _Module, spec: LayerSpec, seed: Seed, native_kernel: Callable[[Any], Any]) -> None:
    """``module.kernel``, ``bias``, ``alpha``, ``epsilon_raw`` (None where the spec has none): the core's initial values.

    ``native_kernel`` turns the core's kernel into the module's layout.
    """
    initial = init_layer_numpy(spec, _generator(seed))
    initial["kernel"] = native_kernel(initial["kernel"])
    with module.name_scope:
        for param in ("kernel", "bias", "alpha", "epsilon_raw"):
            value = initial.get(param)
            variable = None if value is None else tf.Variable(value.astype(module.dtype.as_numpy_dtype), name=param)
            setattr(module, param, variable)


class _CoreModule(_Module):
    """Variables of one core layer, created with the core's initial values, kernel ``(in, units)``."""

    def __init__(self, spec: LayerSpec, *, seed: Seed, dtype: Any, name: str | None) -> None:
        super().__init__(name=name)
        self.spec, self.dtype = spec, _float_dtype(dtype)
        self.in_features, self.units = spec.in_features, spec.out_features
        _create_variables(self, spec, seed, np.transpose)  # the layout Dense stores, (in, units)
        self._trace([None, spec.in_features])

    def _param(self, name: str) -> Array:
        # A tensor read of the variable, differentiable under GradientTape.
        return tf.convert_to_tensor(getattr(self, name))


class YatNMN(_CoreModule):
    """Dense Yat layer as a ``tf.Module``: ``alpha * (x @ kernel + bias)^2 / (|x - kernel[:, j]|^2 + epsilon)``.

    Parameters
    ----------
    in_features : int
        Size of the last input dimension.
    units : int
        Output size.
    use_bias : bool or float
        ``True``: a learnable bias (default); ``False``: none; a number: that
        constant added to every unit.
    use_alpha : bool or float
        ``True``: a learnable scale initialised to 1.0 (default); ``False``: none;
        a number: that constant scale (e.g. ``math.sqrt(2)``).
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise inputs and kernel columns; the distance becomes ``2 - 2 dot``.
    seed : int, numpy.random.Generator or None
        Source of the core's initial draws; None: a seed drawn from TensorFlow's
        global random state (see the module's notes).
    dtype : tf.DType
        Floating dtype of the variables and of the inputs ``__call__`` accepts.
    name : str, optional

    Examples
    --------
    >>> layer = YatNMN(3, 4, seed=0)
    >>> tuple(layer(tf.ones((2, 3))).shape), tuple(layer.kernel.shape)
    ((2, 4), (3, 4))
    >>> [v.name for v in layer.trainable_variables]
    ['yat_nmn/alpha:0', 'yat_nmn/bias:0', 'yat_nmn/kernel:0']
    """

    @names_layer
    def __init__(
        self,
        in_features: int,
        units: int,
        *,
        use_bias: bool | float = True,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        seed: Seed = None,
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        spec = yat_layer_spec(
            in_features,
            check_size(units, "units"),
            bias=use_bias,
            alpha=use_alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            option_names=("use_bias", "use_alpha"),
        )
        super().__init__(spec, seed=seed, dtype=dtype, name=name)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> YatNMN:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        options = spec_options(spec)
        return cls(
            spec.in_features,
            spec.out_features,
            use_bias=options.pop("bias"),
            use_alpha=options.pop("alpha"),
            **options,
            **kwargs,
        )

    @tf.Module.with_name_scope
    def call(self, x: Array) -> Array:
        xp = namespace()
        return yat_product(x, tf.transpose(self._param("kernel")), **forward_options(self.spec, self._param, xp), xp=xp)


class Linear(_CoreModule):
    """Linear layer ``x @ kernel + bias`` (optionally ReLU) over :func:`yat_core.dense`, kernel ``(in, units)``.

    Parameters
    ----------
    in_features, units : int
    activation : None or "relu"
    use_bias : bool or float
        ``True``: learnable (default); ``False``: none; a number: a constant.
    seed : int, numpy.random.Generator or None
        As for :class:`YatNMN` (values uniform in ``±1/sqrt(in)``).
    dtype : tf.DType
    name : str, optional

    Examples
    --------
    >>> layer = Linear(128, 10, seed=0)
    >>> tuple(layer(tf.ones((2, 128))).shape), count_params(layer)
    ((2, 10), 1290)
    """

    @names_layer
    def __init__(
        self,
        in_features: int,
        units: int,
        activation: Literal["relu"] | None = None,
        use_bias: bool | float = True,
        *,
        seed: Seed = None,
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        spec = linear_layer_spec(
            in_features, check_size(units, "units"), bias=use_bias, activation=activation, bias_name="use_bias"
        )
        super().__init__(spec, seed=seed, dtype=dtype, name=name)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> Linear:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"linear"``)."""
        return cls(
            spec.in_features, spec.out_features, activation=spec.activation, use_bias=native_option(spec.bias), **kwargs
        )

    @tf.Module.with_name_scope
    def call(self, x: Array) -> Array:
        bias = self.spec.bias if self.bias is None else self._param("bias")  # constant, absent or learnable
        out = dense(x, tf.transpose(self._param("kernel")), bias=bias, xp=namespace())
        return tf.nn.relu(out) if self.spec.activation == "relu" else out


# ------------------------------------------------------------ convolutions


class _YatConv(KerasConvArgs, _Module):
    """What the six Yat convolutions share; a subclass only sets ``rank`` and ``transposed``.

    Documented on :class:`YatConv2D` and :class:`YatConv2DTranspose`. The Keras
    arguments and the core geometry they give are :class:`~yat_core.nn._keras_style.KerasConvArgs`'s,
    shared with the Keras layers.
    """

    @names_layer
    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel_size: int | tuple[int, ...],
        strides: int | tuple[int, ...] = 1,
        padding: str | int | tuple[int, ...] = "valid",
        *,
        output_padding: int | tuple[int, ...] | None = None,
        data_format: str = "channels_last",
        dilation_rate: int | tuple[int, ...] = 1,
        groups: int = 1,
        use_bias: bool | float = True,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        seed: Seed = None,
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        # Keras's default names: yat_conv2d, yat_conv2d_transpose, ...
        super().__init__(name=name or f"yat_conv{self.rank}d{'_transpose' if self.transposed else ''}")
        n = self.rank
        self.dtype = _float_dtype(dtype)
        self.in_channels = check_size(in_channels, "in_channels")
        self.filters = check_size(filters, "filters")
        self.groups = check_size(groups, "groups")
        self._set_conv_args(kernel_size, strides, padding, data_format, dilation_rate, output_padding)
        # The core's options, checked (groups dividing the channels, epsilon > 0, ...).
        self._param_spec = conv_layer_spec(
            self.in_channels,
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
            names=("in_channels", "filters"),
            option_names=("use_bias", "use_alpha"),
        )
        _create_variables(self, self._param_spec, seed, kernel_from_core)
        # Traced per input shape: the core's convolution needs every size known (see the module's notes).
        self.__dict__["__call__"] = tf.function(self.call)

    @property
    def spec(self) -> LayerSpec:
        """The core's exact description of the layer.

        Raises ``ValueError`` where Keras's padding has no torch-style equivalent: a
        ``"same"`` convolution with strides > 1 (its padding depends on the input
        size and may be one-sided) and a ``"same"`` transposed convolution whose
        padding is larger on the left (kernel 3, stride 2, for example).
        """
        return self._exact_spec(self._param_spec)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> _YatConv:
        """The module a core ``"yat_conv"`` / ``"yat_conv_transpose"`` spec describes.

        Padding is passed as the spec has it: ``"valid"``, ``"same"`` (stride 1) or
        integers (torch's rule), so the module computes what the spec says.
        """
        return cls(spec.in_features, **cls._spec_arguments(spec), **kwargs)

    # ---------------------------------------------------------------- interchange

    def export_params(self) -> dict[str, np.ndarray]:
        """The parameters as ``{core name: numpy array}`` in the core's layout (kernel ``(filters, in/groups, *k)``).

        Examples
        --------
        >>> layer = YatConv2DTranspose(4, 6, 3, groups=2, seed=0)
        >>> tuple(layer.kernel.shape), {k: v.shape for k, v in layer.export_params().items()}
        ((3, 3, 3, 4), {'kernel': (4, 3, 3, 3), 'bias': (6,), 'alpha': ()})
        """
        out = {name: np.asarray(getattr(self, name).numpy()) for name in self._param_spec.param_shapes}
        out["kernel"] = kernel_to_core(out["kernel"])
        return out

    def import_params(self, params: Mapping[str, Any]) -> _YatConv:
        """Assign ``params`` (core names without a prefix, core layout) to the module; return it.

        Names, shapes and dtypes are checked first, so a bad mapping changes nothing;
        values are cast to each variable's dtype.
        """
        checked = check_params(params, self._param_spec)
        for name, value in checked.items():
            variable = getattr(self, name)
            native = kernel_from_core(value) if name == "kernel" else value
            variable.assign(native.astype(variable.dtype.as_numpy_dtype))
        return self

    # ---------------------------------------------------------------- forward

    def _param(self, name: str) -> Array:
        return tf.convert_to_tensor(getattr(self, name))

    @tf.Module.with_name_scope
    def call(self, x: Array) -> Array:
        n = self.rank
        x = tf.convert_to_tensor(x, dtype=self.dtype)
        if x.shape.rank != n + 2:
            raise ValueError(
                f"{self.name}: expected inputs of rank {n + 2} ({self.data_format}: "
                f"{'(batch, *spatial, channels)' if self.data_format == 'channels_last' else '(batch, channels, *spatial)'}), "
                f"got shape {tuple(x.shape)}"
            )
        last = self.data_format == "channels_last"
        if last:
            x = tf.transpose(x, (0, n + 1, *range(1, n + 1)))
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name}: expected {self.in_channels} input channels, got shape {tuple(x.shape)}")
        if x.shape[0] is None:
            # Traced with an unknown batch (a caller's tf.function): the core's convolution needs every
            # size known, so it runs per example, which tf.vectorized_map batches again.
            y = tf.vectorized_map(lambda example: self._forward(example[None])[0], x)
        else:
            y = self._forward(x)
        return tf.transpose(y, (0, *range(2, n + 2), 1)) if last else y

    @tf.autograph.experimental.do_not_convert  # the core branches on shapes only: nothing to convert
    def _forward(self, x: Array) -> Array:
        """The core's convolution of channels-first ``x`` (every size known)."""
        xp, n = namespace(), self.rank
        kernel = tf.transpose(self._param("kernel"), (n + 1, n, *range(n)))  # the core's layout
        options = forward_options(self._param_spec, self._param, xp)
        return self._core_conv(x, kernel, options, xp, tf.pad)


class YatConv1D(_YatConv):
    """1-D Yat convolution as a ``tf.Module``; see :class:`YatConv2D`.

    Examples
    --------
    >>> layer = YatConv1D(3, 4, 3, padding="same", seed=0)
    >>> tuple(layer(tf.ones((2, 10, 3))).shape), tuple(layer.kernel.shape)
    ((2, 10, 4), (3, 3, 4))
    """

    rank = 1


class YatConv2D(_YatConv):
    """2-D Yat convolution as a ``tf.Module``, with ``keras.layers.Conv2D``'s argument names and layout.

    ``y = alpha * (patch . w + bias)^2 / (|patch - w|^2 + epsilon)`` per filter ``w``,
    computed by :func:`yat_core.conv.yat_conv` (``native=True``: ``tf.nn.convolution``
    for the dot and patch-norm terms). :class:`YatConv1D` and
    :class:`YatConv3D` are the same with 1 and 3 spatial dimensions.

    Parameters
    ----------
    in_channels : int
        Input channels (a ``tf.Module`` creates its variables in its constructor).
    filters : int
        Output channels (divisible by ``groups``).
    kernel_size, strides, dilation_rate : int or tuple of ints
    padding : "valid", "same" or int / tuple of ints
        As Keras (``"same"`` with strides: TensorFlow's rule, output
        ``ceil(size/stride)``, the odd unit on the right); integers are torch's
        symmetric zero padding, what :meth:`from_spec` passes.
    data_format : "channels_last" (default) or "channels_first"
    groups : int
    use_bias, use_alpha : bool or float
        ``True``: learnable (alpha starts at 1.0); ``False``: none; a number: a constant.
    epsilon, learnable_epsilon, spherical
        As :class:`YatNMN`.
    seed : int, numpy.random.Generator or None
        Source of the core's initial draws (:func:`~yat_core.mlp.init_layer_numpy`:
        Xavier-normal kernel, bias uniform in ``±1/sqrt(fan_in)``); None: drawn from
        TensorFlow's global random state, as for :class:`YatNMN`.
    dtype : tf.DType
    name : str, optional

    Notes
    -----
    The kernel variable is ``(*kernel_size, in/groups, filters)`` (``Conv2D``'s layout);
    :meth:`export_params` / :meth:`import_params` convert to and from the core's
    ``(filters, in/groups, *kernel_size)``.

    Examples
    --------
    >>> layer = YatConv2D(4, 8, 3, strides=2, padding="same", seed=0)
    >>> tuple(layer(tf.ones((2, 9, 9, 4))).shape), tuple(layer.kernel.shape), count_params(layer)
    ((2, 5, 5, 8), (3, 3, 4, 8), 297)
    >>> sorted(v.name for v in layer.trainable_variables)
    ['yat_conv2d/alpha:0', 'yat_conv2d/bias:0', 'yat_conv2d/kernel:0']
    >>> YatConv2D(4, 6, 3, groups=4)
    Traceback (most recent call last):
    ...
    ValueError: tf YatConv2D: groups=4 must divide 4 and 6 channels
    """

    rank = 2


class YatConv3D(_YatConv):
    """3-D Yat convolution as a ``tf.Module``; see :class:`YatConv2D`.

    Examples
    --------
    >>> tuple(YatConv3D(1, 2, 2, seed=0)(tf.ones((1, 3, 4, 5, 1))).shape)
    (1, 2, 3, 4, 2)
    """

    rank = 3


class YatConv1DTranspose(_YatConv):
    """1-D transposed Yat convolution as a ``tf.Module``; see :class:`YatConv2DTranspose`.

    Examples
    --------
    >>> tuple(YatConv1DTranspose(3, 4, 3, strides=2, padding="same", seed=0)(tf.ones((2, 5, 3))).shape)
    (2, 10, 4)
    """

    rank = 1
    transposed = True


class YatConv2DTranspose(_YatConv):
    """2-D transposed Yat convolution as a ``tf.Module``, as ``keras.layers.Conv2DTranspose``.

    :func:`yat_core.conv.yat_conv_transpose` with the arguments of :class:`YatConv2D`
    plus ``output_padding``; the output shapes are ``Conv2DTranspose``'s, by the
    mapping of Keras's ``padding`` / ``output_padding`` to the core's torch-style ones
    documented on ``yat_core.nn.keras.YatConv2DTranspose``. The kernel variable is
    ``(*kernel_size, filters/groups, in_channels)``, ``Conv2DTranspose``'s layout.

    Examples
    --------
    >>> layer = YatConv2DTranspose(4, 8, 3, strides=2, padding="same", seed=0)
    >>> tuple(layer(tf.ones((2, 5, 5, 4))).shape), tuple(layer.kernel.shape)
    ((2, 10, 10, 8), (3, 3, 8, 4))
    """

    rank = 2
    transposed = True


class YatConv3DTranspose(_YatConv):
    """3-D transposed Yat convolution as a ``tf.Module``; see :class:`YatConv2DTranspose`.

    Examples
    --------
    >>> tuple(YatConv3DTranspose(1, 2, 2, strides=2, seed=0)(tf.ones((1, 2, 3, 4, 1))).shape)
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
    >>> layer = conv_from_spec(conv_layer_spec(4, 2, 2, n_spatial=1, stride=2, output_padding=1), seed=0)
    >>> type(layer).__name__, tuple(layer.kernel.shape), layer.spec.output_padding
    ('YatConv1DTranspose', (2, 2, 4), (1,))
    """
    return conv_class(spec, _CONV_CLASSES).from_spec(spec, **kwargs)


# ------------------------------------------------------------ attention and embedding


class _Projection(tf.Module):
    """One ``EinsumDense`` of Keras's multi-head attention: the input's last ``contracted`` axes times ``kernel``, plus bias.

    The kernel keeps Keras's shape (``(in, heads, head_size)`` or ``(heads, head_size,
    out)``); the product runs as one matrix product over flattened rows, because the
    gradient of ``tf.einsum`` with an ellipsis is slow under XLA on CPU (30 ms against
    under 1 ms for a ViT projection's backward at batch 128).
    """

    def __init__(
        self, kernel: np.ndarray, bias: np.ndarray | None, contracted: int, dtype: tf.DType, name: str
    ) -> None:
        super().__init__(name=name)
        self.contracted = contracted
        with self.name_scope:
            self.kernel = tf.Variable(kernel.astype(dtype.as_numpy_dtype), name="kernel")
            self.bias = None if bias is None else tf.Variable(bias.astype(dtype.as_numpy_dtype), name="bias")

    def project(self, x: Array) -> Array:
        kernel_in, kernel_out = self.kernel.shape[: self.contracted], self.kernel.shape[self.contracted :]
        fan_in, fan_out = math.prod(kernel_in), math.prod(kernel_out)
        rows = tf.reshape(x, (-1, fan_in))
        out = tf.matmul(rows, tf.reshape(tf.convert_to_tensor(self.kernel), (fan_in, fan_out)))
        out = tf.reshape(out, tf.concat([tf.shape(x)[: tf.rank(x) - self.contracted], list(kernel_out)], 0))
        return out if self.bias is None else out + tf.convert_to_tensor(self.bias)


class _Attention(_Module):
    """Multi-head attention's projections, masks and ``__call__``; a subclass has the score (:meth:`_attend`).

    Documented on :class:`YatMultiHeadAttention`.
    """

    @names_layer
    def __init__(
        self,
        query_dim: int,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        *,
        value_input_dim: int | None = None,
        key_input_dim: int | None = None,
        output_shape: int | None = None,
        use_bias: bool = True,
        seed: Seed = None,
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.dtype = _float_dtype(dtype)
        self.query_dim = check_size(query_dim, "query_dim")
        self.num_heads = check_size(num_heads, "num_heads")
        self.key_dim = check_size(key_dim, "key_dim")
        self.value_dim = self.key_dim if value_dim is None else check_size(value_dim, "value_dim")
        self.value_input_dim = (
            self.query_dim if value_input_dim is None else check_size(value_input_dim, "value_input_dim")
        )
        self.key_input_dim = (
            self.value_input_dim if key_input_dim is None else check_size(key_input_dim, "key_input_dim")
        )
        self.output_shape = self.query_dim if output_shape is None else check_size(output_shape, "output_shape")
        if not isinstance(use_bias, bool):
            raise TypeError(
                f"use_bias must be a bool (attention's projections have a learnable bias or none), got {use_bias!r}"
            )
        self.use_bias = use_bias
        rng = _generator(seed)
        heads = self.num_heads
        # The core's draws, in its order (q, k, v, o; kernel (out, in) then bias), uniform in ±1/sqrt(fan_in).
        projections = {
            "query": (self.query_dim, heads * self.key_dim, 1),
            "key": (self.key_input_dim, heads * self.key_dim, 1),
            "value": (self.value_input_dim, heads * self.value_dim, 1),
            "attention_output": (heads * self.value_dim, self.output_shape, 2),
        }
        with self.name_scope:
            for (attr, (fan_in, out, contracted)), layer_name in zip(
                zip(("query_dense", "key_dense", "value_dense", "output_dense"), projections.values()), projections
            ):
                bound = 1.0 / math.sqrt(fan_in)
                kernel = rng.uniform(-bound, bound, (out, fan_in))
                bias = rng.uniform(-bound, bound, (out,)) if use_bias else None
                if attr == "output_dense":  # (heads, value_dim, out)
                    kernel = kernel.T.reshape(heads, self.value_dim, out)
                else:  # (in, heads, head_size), bias (heads, head_size)
                    kernel = kernel.T.reshape(fan_in, heads, out // heads)
                    bias = None if bias is None else bias.reshape(heads, out // heads)
                setattr(self, attr, _Projection(kernel, bias, contracted, self.dtype, layer_name))
            self._create_score_variables()
        # Traced per call signature (shapes, masks, flags): the module's inputs have no one shape.
        self.__dict__["__call__"] = tf.function(self.call)

    def _create_score_variables(self) -> None:
        """The score's own variables (the Yat module's alpha and epsilon), created after the projections."""

    @tf.Module.with_name_scope
    def call(
        self,
        query: Array,
        value: Array,
        key: Array | None = None,
        attention_mask: Array | None = None,
        return_attention_scores: bool = False,
        use_causal_mask: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Attend from ``query (B, T, query_dim)`` to ``value (B, S, ...)`` (``key`` defaults to ``value``).

        ``attention_mask (B, T, S)``: True (or 1) where the query may attend to the key;
        ``use_causal_mask``: query ``i`` sees keys ``j <= i`` only. Returns ``(B, T,
        output_shape)``, and the attention weights ``(B, num_heads, T, S)`` with
        ``return_attention_scores``.
        """
        key = value if key is None else key
        q = self.query_dense.project(tf.convert_to_tensor(query, self.dtype))  # (B, T, heads, key_dim)
        k = self.key_dense.project(tf.convert_to_tensor(key, self.dtype))
        v = self.value_dense.project(tf.convert_to_tensor(value, self.dtype))
        mask = None if attention_mask is None else tf.expand_dims(tf.cast(attention_mask, tf.bool), -3)
        out, weights = self._attend(q, k, v, mask, bool(use_causal_mask), bool(return_attention_scores))
        out = self.output_dense.project(out)
        return (out, weights) if return_attention_scores else out

    def _attend(
        self, q: Array, k: Array, v: Array, mask: Array | None, causal: bool, weights: bool
    ) -> tuple[Array, Array | None]:
        raise NotImplementedError


class YatMultiHeadAttention(_Attention):
    """Multi-head attention with the Yat score as a ``tf.Module``, laid out as ``keras.layers.MultiHeadAttention``.

    Projections as Keras's (``EinsumDense`` sub-modules ``query_dense``, ``key_dense``,
    ``value_dense``: kernels ``(dim, num_heads, key_dim)``, biases ``(num_heads,
    key_dim)``; ``output_dense``: kernel ``(num_heads, value_dim, output_shape)``, bias
    ``(output_shape,)``), then per head :func:`yat_core.attention.yat_attention`:
    ``alpha * (q.k)^2 / ((|q - k|^2 + epsilon) * sqrt(key_dim))``, softmax over the
    allowed keys. A query whose keys are all masked gets zero weights and output.

    Parameters
    ----------
    query_dim : int
        Features of the query inputs (a ``tf.Module`` makes its variables in its constructor).
    num_heads, key_dim : int
    value_dim : int, optional
        Per-head size of the values (default ``key_dim``).
    value_input_dim, key_input_dim : int, optional
        Features of the value and key inputs (default ``query_dim``, then ``value_input_dim``).
    output_shape : int, optional
        Output features (default ``query_dim``).
    use_bias : bool
        Biases on the four projections.
    use_alpha : bool or float
        ``True``: a learnable ``alpha`` initialised to 1.0 (default); ``False``: none; a number: a constant.
    epsilon, learnable_epsilon, spherical
        As :class:`YatNMN`'s (``spherical`` normalises each projected query and key).
    seed : int, numpy.random.Generator or None
        Source of the initial draws: uniform in ``±1/sqrt(fan_in)`` per projection, in the
        core's order (so :meth:`from_spec` gives :func:`~yat_core.mlp.init_layer_numpy`'s values).
    dtype : tf.DType
    name : str, optional

    Examples
    --------
    >>> layer = YatMultiHeadAttention(8, num_heads=2, key_dim=4, seed=0)
    >>> x = tf.ones((3, 5, 8))
    >>> out, weights = layer(x, x, return_attention_scores=True)
    >>> tuple(out.shape), tuple(weights.shape), tuple(layer.query_dense.kernel.shape), count_params(layer)
    ((3, 5, 8), (3, 2, 5, 5), (8, 2, 4), 289)
    """

    @names_layer
    def __init__(
        self,
        query_dim: int,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        *,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        **kwargs: Any,
    ) -> None:
        self._set_score_options(use_alpha, epsilon, learnable_epsilon, spherical)
        super().__init__(query_dim, num_heads, key_dim, value_dim, **kwargs)

    def _create_score_variables(self) -> None:
        numpy_dtype = self.dtype.as_numpy_dtype
        self.alpha = tf.Variable(numpy_dtype(1.0), name="alpha") if self.use_alpha == LEARNABLE else None
        raw = softplus_inverse(self.epsilon)
        self.epsilon_raw = tf.Variable(numpy_dtype(raw), name="epsilon_raw") if self.learnable_epsilon else None

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> YatMultiHeadAttention:
        """The module of a core ``"yat_attention"`` spec (its residual is the model's)."""
        options = attention_spec_options(spec)
        heads = spec.heads
        return cls(
            spec.in_features,
            heads,
            spec.in_features // heads,
            use_bias=options.pop("bias"),
            use_alpha=options.pop("alpha"),
            **options,
            **kwargs,
        )

    def _attend(
        self, q: Array, k: Array, v: Array, mask: Array | None, causal: bool, weights: bool
    ) -> tuple[Array, Array | None]:
        xp = namespace()
        alpha = tf.convert_to_tensor(self.alpha) if self.use_alpha == LEARNABLE else self.use_alpha
        epsilon = softplus(tf.convert_to_tensor(self.epsilon_raw), xp=xp) if self.learnable_epsilon else self.epsilon
        options: dict[str, Any] = {
            "mask": mask,
            "causal": causal,
            "alpha": alpha,
            "epsilon": epsilon,
            "spherical": self.spherical,
        }
        if not weights:
            return yat_attention(q, k, v, xp=xp, **options), None
        a = yat_attention_weights(q, k, xp=xp, **options)  # (B, heads, T, S)
        return tf.einsum("...hts,...shk->...thk", a, v), a


class MultiHeadAttention(_Attention):
    """Scaled dot-product multi-head attention as a ``tf.Module`` (the baseline), written in TensorFlow.

    :class:`YatMultiHeadAttention`'s arguments (without the Yat options) and variables;
    the score is ``q.k / sqrt(key_dim)`` and the softmax ``tf.nn.softmax``. Masked
    scores are set to ``-1e9`` before the softmax, as ``keras.layers.MultiHeadAttention``
    does, so a query whose keys are all masked averages every value (Keras's rule).

    Examples
    --------
    >>> layer = MultiHeadAttention(8, num_heads=2, key_dim=4, seed=0)
    >>> tuple(layer(tf.ones((3, 5, 8)), tf.ones((3, 5, 8))).shape), count_params(layer)
    ((3, 5, 8), 288)
    """

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> MultiHeadAttention:
        """The module of a core ``"attention"`` spec (its residual is the model's)."""
        if spec.kind != "attention":
            raise ValueError(f"MultiHeadAttention is built from an 'attention' spec, not {spec.kind!r}")
        heads = spec.heads
        return cls(spec.in_features, heads, spec.in_features // heads, use_bias=spec.bias == LEARNABLE, **kwargs)

    def _attend(
        self, q: Array, k: Array, v: Array, mask: Array | None, causal: bool, weights: bool
    ) -> tuple[Array, Array | None]:
        scores = tf.einsum("...thk,...shk->...hts", q, k) / math.sqrt(self.key_dim)
        if causal:
            lower = tf.linalg.band_part(tf.ones(tf.shape(scores)[-2:], tf.bool), -1, 0)  # key j <= query i
            mask = lower if mask is None else tf.logical_and(mask, lower)
        if mask is not None:
            scores = tf.where(mask, scores, tf.constant(-1e9, scores.dtype))
        a = tf.nn.softmax(scores, axis=-1)
        return tf.einsum("...hts,...shk->...thk", a, v), (a if weights else None)


class YatEmbed(_Module):
    """An embedding table ``embeddings (input_dim, output_dim)`` whose :meth:`attend` is the Yat tied output layer.

    Named as ``keras.layers.Embedding``: ``__call__(ids)`` looks integer ids of any shape
    up (:func:`yat_core.attention.yat_embed`; other dtypes raise ``TypeError``);
    :meth:`attend` scores queries ``(..., output_dim)`` against every row,
    :func:`yat_core.attention.yat_embed_attend`, ``(..., input_dim)``.

    Parameters
    ----------
    input_dim, output_dim : int
        Vocabulary size and embedding size.
    use_alpha : bool or float
        :meth:`attend`'s scale: ``True`` learnable (1.0 at first), ``False`` none, a number a constant.
    epsilon, learnable_epsilon, spherical
        :meth:`attend`'s options, as :class:`YatNMN`'s.
    seed : int, numpy.random.Generator or None
        The table starts uniform in ``±0.05`` (Keras's ``Embedding`` default), drawn from it.
    dtype : tf.DType
    name : str, optional

    Examples
    --------
    >>> embed = YatEmbed(10, 4, seed=0)
    >>> h = embed(tf.constant([[1, 2, 3]]))
    >>> tuple(h.shape), tuple(embed.attend(h).shape)
    ((1, 3, 4), (1, 3, 10))
    """

    @names_layer
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        *,
        use_alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        seed: Seed = None,
        dtype: Any = tf.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.dtype = _float_dtype(dtype)
        self.input_dim, self.output_dim = check_size(input_dim, "input_dim"), check_size(output_dim, "output_dim")
        self._set_score_options(use_alpha, epsilon, learnable_epsilon, spherical)
        numpy_dtype = self.dtype.as_numpy_dtype
        table = _generator(seed).uniform(-0.05, 0.05, (self.input_dim, self.output_dim)).astype(numpy_dtype)
        with self.name_scope:
            self.embeddings = tf.Variable(table, name="embeddings")
            self.alpha = tf.Variable(numpy_dtype(1.0), name="alpha") if self.use_alpha == LEARNABLE else None
            raw = numpy_dtype(softplus_inverse(self.epsilon))
            self.epsilon_raw = tf.Variable(raw, name="epsilon_raw") if self.learnable_epsilon else None
        self.__dict__["__call__"] = tf.function(self.call)

    @tf.Module.with_name_scope
    def call(self, ids: Array) -> Array:
        """The rows of ``ids`` (integers, any shape): ``(*ids.shape, output_dim)``."""
        return yat_embed(tf.convert_to_tensor(self.embeddings), tf.convert_to_tensor(ids), xp=namespace())

    @tf.Module.with_name_scope
    def attend(self, query: Array) -> Array:
        """The Yat score of each query ``(..., output_dim)`` against every row: ``(..., input_dim)``."""
        xp = namespace()
        alpha = tf.convert_to_tensor(self.alpha) if self.use_alpha == LEARNABLE else self.use_alpha
        epsilon = softplus(tf.convert_to_tensor(self.epsilon_raw), xp=xp) if self.learnable_epsilon else self.epsilon
        query = tf.convert_to_tensor(query, self.dtype)
        table = tf.convert_to_tensor(self.embeddings)
        return yat_embed_attend(query, table, alpha=alpha, epsilon=epsilon, spherical=self.spherical, xp=xp)


# ------------------------------------------------------------ the model's other layers and the model


class _SpecLayer(_Module):
    """A model layer without a class of its own in TensorFlow: the core spec it computes, ``__call__`` traced per shape."""

    def __init__(self, spec: LayerSpec, *, dtype: Any, name: str | None) -> None:
        super().__init__(name=name)
        self.spec, self.dtype = spec, _float_dtype(dtype)
        self.__dict__["__call__"] = tf.function(self.call)


class _Conv(_SpecLayer):
    """A ``"conv"`` layer: TensorFlow's convolution (``tf.nn.convolution``) plus bias, and ReLU when the spec says so.

    Channels last, kernel ``(*kernel_size, in/groups, filters)`` as Keras stores it.
    The convolution is :func:`yat_core.conv.linear_conv` with ``native=True``: TensorFlow's
    own, by way of the core's geometry (torch's padding rule, groups, strides with dilation).
    """

    def __init__(self, spec: LayerSpec, *, seed: Seed, dtype: Any, name: str | None) -> None:
        super().__init__(spec, dtype=dtype, name=name)
        _create_variables(self, spec, seed, kernel_from_core)

    def call(self, x: Array) -> Array:
        n = len(self.spec.kernel_size)
        kernel = tf.transpose(tf.convert_to_tensor(self.kernel), (n + 1, n, *range(n)))  # the core's layout
        bias = self.spec.bias if self.bias is None else tf.convert_to_tensor(self.bias)
        x = tf.transpose(x, (0, n + 1, *range(1, n + 1)))  # channels first, as the core takes it
        y = linear_conv(x, kernel, bias=bias, native=True, xp=namespace(), **self.spec.conv_options)
        y = tf.transpose(y, (0, *range(2, n + 2), 1))
        return tf.nn.relu(y) if self.spec.activation == "relu" else y


class _Pool(_SpecLayer):
    """A ``"max_pool"`` / ``"avg_pool"`` layer: ``tf.nn.max_pool`` / ``tf.nn.avg_pool``, window = stride, channels last."""

    def call(self, x: Array) -> Array:
        pool = tf.nn.max_pool if self.spec.kind == "max_pool" else tf.nn.avg_pool
        window = list(self.spec.kernel_size)
        return pool(x, ksize=window, strides=window, padding="VALID")  # the remainder dropped, as the core does


class _Patches(_SpecLayer):
    """A ``"patches"`` layer: channels-last images ``(n, H, W, C)`` to tokens, each patch flattened channels first."""

    def call(self, x: Array) -> Array:
        ph, pw = self.spec.kernel_size
        return patches_channels_last(x, (ph, pw), tf)


class _PositionEmbedding(_SpecLayer):
    """A ``"pos_embed"`` layer: adds the table ``embeddings (tokens, features)`` (the core's ``table``)."""

    def __init__(self, spec: LayerSpec, *, seed: Seed, dtype: Any, name: str | None) -> None:
        super().__init__(spec, dtype=dtype, name=name)
        table = init_layer_numpy(spec, _generator(seed))["table"]
        with self.name_scope:
            self.embeddings = tf.Variable(table.astype(self.dtype.as_numpy_dtype), name="embeddings")

    def call(self, x: Array) -> Array:
        return x + tf.convert_to_tensor(self.embeddings)


class _TokenMean(_SpecLayer):
    """A ``"token_mean"`` layer: the mean over the tokens, ``(n, tokens, features) -> (n, features)``."""

    def call(self, x: Array) -> Array:
        return tf.reduce_mean(x, axis=1)


class _Flatten(_SpecLayer):
    """A ``"flatten"`` layer in the core's order: channels-last ``(n, *spatial, C)`` to channels first, then flat."""

    def call(self, x: Array) -> Array:
        d = x.shape.rank
        return tf.reshape(tf.transpose(x, (0, d - 1, *range(1, d - 1))), [-1, self.spec.out_features])


class YatModel(_Module):
    """The model of a :class:`~yat_core.spec.ModelSpec` as a ``tf.Module``: each layer in turn, channels last.

    Inputs are ``(n, *layout)``: the spec's input shape channels last (:attr:`layout`,
    ``(28, 28, 1)`` for the CNN, ``(784,)`` for the MLP); inputs of another rank holding
    the same values per example (flat ``(n, 784)``, images ``(n, 28, 28)``) are
    reshaped to it, an input of the layout's rank but another shape is refused.
    ``self.layers`` is a list of modules, one per core layer, which ``tf.Module``
    tracks: every layer's variables are in ``trainable_variables`` and in checkpoints.
    The layers draw their initial values in turn from one generator, so ``seed``
    gives the weights of :func:`~yat_core.mlp.init_mlp_numpy` for that seed.
    Per core layer: ``"yat"`` :class:`YatNMN`, ``"linear"`` :class:`Linear`,
    ``"yat_conv"`` / ``"yat_conv_transpose"`` the Yat convolutions, ``"conv"``
    ``tf.nn.convolution``, ``"max_pool"`` / ``"avg_pool"`` ``tf.nn.max_pool`` /
    ``tf.nn.avg_pool``, ``"flatten"`` a flatten in the core's channels-first order (so
    the dense kernel after it is the core's array); ``"patches"`` the core's patches of
    the channels-last image, ``"pos_embed"`` an added table ``embeddings``,
    ``"yat_attention"`` :class:`YatMultiHeadAttention` and ``"attention"``
    :class:`MultiHeadAttention` (self-attention), ``"token_mean"`` ``tf.reduce_mean``
    over the tokens. A layer with ``residual=True`` adds its input to its output.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> model = YatModel(seed_spec(), seed=0)
    >>> count_params(model), len(model.trainable_variables)
    (235148, 8)
    >>> tuple(model(tf.zeros((2, 28, 28))).shape)
    (2, 10)
    >>> cnn = YatModel(cnn_spec(), seed=0)
    >>> cnn.name, cnn.layout, count_params(cnn), tuple(cnn(tf.zeros((2, 28, 28, 1))).shape)
    ('yat_cnn', (28, 28, 1), 225037, (2, 10))
    """

    def __init__(self, spec: ModelSpec, *, seed: Seed = None, dtype: Any = tf.float32, name: str | None = None) -> None:
        if name is None:
            vit = any(layer.kind in TOKEN_KINDS for layer in spec.layers)
            name = "yat_vit" if vit else ("yat_mlp" if len(spec.input_shape) == 1 else "yat_cnn")
        super().__init__(name=name)
        self.spec, self.dtype = spec, _float_dtype(dtype)
        self.layout = input_layout(spec.input_shape, channels_last=True)
        rng = _generator(seed)
        with self.name_scope:
            self.layers = [_layer(layer, i, rng, dtype) for i, layer in enumerate(spec.layers)]
        self._trace(None)  # any rank: the layout, (n, 784) or images (n, 28, 28)

    @tf.Module.with_name_scope
    def call(self, x: Array) -> Array:
        if x.shape.rank is not None:  # inside __call__ the rank is unknown: the size check below still holds
            layout_reshape(tuple(x.shape), self.layout, self.name)
        batch = x.shape[0] if x.shape.rank and x.shape[0] is not None else tf.shape(x)[0]
        # Flattened per example, then held to the model's size: a clear error, not a matmul's.
        x = tf.ensure_shape(tf.reshape(x, [batch, -1]), [None, self.spec.in_features])
        if len(self.layout) > 1:
            x = tf.reshape(x, [batch, *self.layout])
        for spec, layer in zip(self.spec.layers, self.layers):
            call: Any = layer.call
            y = call(x, x) if spec.kind in ATTENTION_KINDS else call(x)  # self-attention
            x = x + y if spec.residual else y
        return x


#: The name the MLP-only module had; it builds any spec now.
YatMLP = YatModel


def _layer(spec: LayerSpec, index: int, rng: np.random.Generator, dtype: Any) -> _Module:
    if spec.kind in ("yat", "linear"):
        cls, name = (YatNMN, "yat_nmn") if spec.kind == "yat" else (Linear, "linear")
        return cls.from_spec(spec, seed=rng, dtype=dtype, name=f"{name}_{index}")
    name = f"{spec.kind}_{index}"
    if spec.kind in ("yat_conv", "yat_conv_transpose"):
        return conv_from_spec(spec, seed=rng, dtype=dtype, name=name)
    if spec.kind == "conv":
        return _Conv(spec, seed=rng, dtype=dtype, name=name)
    if spec.kind in ATTENTION_KINDS:
        attention: type[_Attention] = YatMultiHeadAttention if spec.kind == "yat_attention" else MultiHeadAttention
        return attention.from_spec(spec, seed=rng, dtype=dtype, name=name)
    if spec.kind == "pos_embed":
        return _PositionEmbedding(spec, seed=rng, dtype=dtype, name=name)
    simple = {"flatten": _Flatten, "patches": _Patches, "token_mean": _TokenMean}
    return simple.get(spec.kind, _Pool)(spec, dtype=dtype, name=name)


# ------------------------------------------------------------ interchange


def build_model(spec: ModelSpec, seed: int = 0, *, dtype: Any = tf.float32) -> YatModel:
    """The TensorFlow model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy` for ``seed``.

    Examples
    --------
    >>> from yat_core.spec import cnn_relu_spec, seed_spec
    >>> count_params(build_model(seed_spec(), seed=0)), count_params(build_model(cnn_relu_spec()))
    (235148, 225034)
    """
    check_native_kinds(spec, "tf")
    return YatModel(spec, seed=seed, dtype=dtype)


def _checked(model: Any) -> YatModel:
    if not isinstance(model, YatModel):
        raise TypeError(
            f"expected a yat_core.nn.tf.YatModel (YatMLP before; see build_model), got {type(model).__name__}"
        )
    return model


def export_params(model: YatModel | _YatConv) -> dict[str, np.ndarray]:
    """The model's parameters as ``{name: numpy array}`` in the core's names and layouts.

    Dense kernels ``(out, in)``, convolution kernels ``(out, in/groups, *k)`` (transposed
    ``(in, out/groups, *k)``). A single Yat convolution gives its own, unprefixed
    (``"kernel"``, ``"bias"``, ...): :meth:`_YatConv.export_params`.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> model = build_model(seed_spec(), seed=0)
    >>> params = export_params(model)
    >>> params["0.kernel"].shape, tuple(model.layers[0].kernel.shape)
    ((256, 784), (784, 256))
    >>> cnn = build_model(cnn_spec())
    >>> export_params(cnn)["2.kernel"].shape, tuple(cnn.layers[2].kernel.shape)
    ((64, 32, 3, 3), (3, 3, 32, 64))
    """
    if isinstance(model, _YatConv):
        return model.export_params()
    spec, layers = _checked(model).spec, model.layers

    def read(i: int, name: str) -> np.ndarray:
        return to_core(spec.layers[i], name, native_variable(layers[i], spec.layers[i], name).numpy())

    return export_arrays(spec, read, kernel_in_out=True)


_M = TypeVar("_M", YatModel, _YatConv)


def import_params(model: _M, params: Mapping[str, Any]) -> _M:
    """Assign a ``{name: array}`` mapping (core names and layouts) to the model and return it.

    ``model`` is a :class:`YatModel` or a single Yat convolution (unprefixed names:
    :meth:`_YatConv.import_params`).

    Names, shapes and dtypes are checked first, so a bad mapping raises and leaves
    the model unchanged; values are cast to each variable's dtype.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(build_model(seed_spec()), init_mlp_numpy(seed_spec(), seed=1))
    >>> import_params(model, {**init_mlp_numpy(seed_spec(), 1), "3.kernel": np.zeros(2)})
    Traceback (most recent call last):
    ...
    ValueError: parameters do not fit the model: unexpected 3.kernel
    """
    if isinstance(model, _YatConv):
        return model.import_params(params)
    spec, layers = _checked(model).spec, model.layers

    def write(index: int, name: str, value: np.ndarray) -> None:
        variable = native_variable(layers[index], spec.layers[index], name)
        variable.assign(from_core(spec.layers[index], name, value).astype(variable.dtype.as_numpy_dtype))

    import_arrays(spec, params, write, kernel_in_out=True)
    return model


def count_params(model: tf.Module) -> int:
    """Learnable scalars of the model: the sizes of its ``trainable_variables``.

    Examples
    --------
    >>> count_params(YatNMN(784, 256))
    200961
    """
    return sum(v.shape.num_elements() for v in model.trainable_variables)


def predict(model: YatModel, x: np.ndarray) -> np.ndarray:
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
    x = to_framework_layout(x, _checked(model).spec.input_shape, channels_last=True)
    return model(tf.convert_to_tensor(x.astype(model.dtype.as_numpy_dtype))).numpy()
