"""TensorFlow modules over the core: :class:`YatNMN`, :class:`Linear` and :class:`YatMLP`.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from yat_core.mlp import LayerSpec, MLPSpec, init_layer_numpy
from yat_core.namespaces.tf import namespace
from yat_core.nn.interchange import export_arrays, import_arrays
from yat_core.nn.options import (
    check_size,
    forward_options,
    linear_layer_spec,
    native_option,
    spec_options,
    yat_layer_spec,
)
from yat_core.product import DEFAULT_EPSILON, dense, yat_product

__all__ = ["YatNMN", "Linear", "YatMLP", "build_model", "export_params", "import_params", "count_params", "predict"]

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


class _CoreModule(_Module):
    """Variables of one core layer, created with the core's initial values, kernel ``(in, units)``."""

    def __init__(self, spec: LayerSpec, *, seed: Seed, dtype: Any, name: str | None) -> None:
        super().__init__(name=name)
        self.spec, self.dtype = spec, _float_dtype(dtype)
        self.in_features, self.units = spec.in_features, spec.out_features
        initial = init_layer_numpy(spec, _generator(seed))
        initial["kernel"] = initial["kernel"].T  # the layout Dense stores, (in, units)
        with self.name_scope:
            for param in ("kernel", "bias", "alpha", "epsilon_raw"):
                value = initial.get(param)
                variable = None if value is None else tf.Variable(value.astype(self.dtype.as_numpy_dtype), name=param)
                setattr(self, param, variable)
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
        spec = linear_layer_spec(in_features, check_size(units, "units"), bias=use_bias, activation=activation)
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


class YatMLP(_Module):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec` as a ``tf.Module``: inputs flattened, then each layer.

    ``self.layers`` is a list of modules, which ``tf.Module`` tracks: every
    layer's variables are in ``trainable_variables`` and in checkpoints. The layers
    draw their initial values in turn from one generator, so ``seed`` gives the
    weights of :func:`~yat_core.mlp.init_mlp_numpy` for that seed.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = YatMLP(seed_spec(), seed=0)
    >>> count_params(model), len(model.trainable_variables)
    (235148, 8)
    >>> tuple(model(tf.zeros((2, 28, 28))).shape)
    (2, 10)
    """

    def __init__(
        self, spec: MLPSpec, *, seed: Seed = None, dtype: Any = tf.float32, name: str | None = "yat_mlp"
    ) -> None:
        super().__init__(name=name)
        self.spec, self.dtype = spec, _float_dtype(dtype)
        rng = _generator(seed)
        with self.name_scope:
            self.layers = [_layer(layer, i, rng, dtype) for i, layer in enumerate(spec.layers)]
        self._trace(None)  # any rank: (n, 784) or images (n, 28, 28)

    @tf.Module.with_name_scope
    def call(self, x: Array) -> Array:
        # Flattened per example, then held to the first layer's size: a clear error, not a matmul's.
        x = tf.ensure_shape(tf.reshape(x, [tf.shape(x)[0], -1]), [None, self.spec.in_features])
        for layer in self.layers:
            x = layer.call(x)
        return x


def _layer(spec: LayerSpec, index: int, rng: np.random.Generator, dtype: Any) -> _CoreModule:
    cls, name = (YatNMN, "yat_nmn") if spec.kind == "yat" else (Linear, "linear")
    return cls.from_spec(spec, seed=rng, dtype=dtype, name=f"{name}_{index}")


# ------------------------------------------------------------ model and interchange


def build_model(spec: MLPSpec, seed: int = 0, *, dtype: Any = tf.float32) -> YatMLP:
    """The TensorFlow model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy` for ``seed``.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> count_params(build_model(seed_spec(), seed=0))
    235148
    """
    return YatMLP(spec, seed=seed, dtype=dtype)


def _checked(model: Any) -> YatMLP:
    if not isinstance(model, YatMLP):
        raise TypeError(f"expected a yat_core.nn.tf.YatMLP (see build_model), got {type(model).__name__}")
    return model


def export_params(model: YatMLP) -> dict[str, np.ndarray]:
    """The model's parameters as ``{name: numpy array}`` in the core's names and layouts (kernels ``(out, in)``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = build_model(seed_spec(), seed=0)
    >>> params = export_params(model)
    >>> params["0.kernel"].shape, tuple(model.layers[0].kernel.shape)
    ((256, 784), (784, 256))
    """
    layers = _checked(model).layers
    return export_arrays(model.spec, lambda i, name: getattr(layers[i], name).numpy(), kernel_in_out=True)


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
    """Assign a ``{name: array}`` mapping (core names and layouts) to the model and return it.

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
    layers = _checked(model).layers

    def write(index: int, name: str, value: np.ndarray) -> None:
        variable = getattr(layers[index], name)
        variable.assign(value.astype(variable.dtype.as_numpy_dtype))

    import_arrays(model.spec, params, write, kernel_in_out=True)
    return model


def count_params(model: tf.Module) -> int:
    """Learnable scalars of the model: the sizes of its ``trainable_variables``.

    Examples
    --------
    >>> count_params(YatNMN(784, 256))
    200961
    """
    return sum(v.shape.num_elements() for v in model.trainable_variables)


def predict(model: YatMLP, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` (NumPy, ``(n, in)`` or ``(n, 28, 28)``), as a NumPy array.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> predict(build_model(seed_spec()), np.zeros((3, 28, 28), np.float32)).shape
    (3, 10)
    """
    return model(tf.convert_to_tensor(np.asarray(x, dtype=model.dtype.as_numpy_dtype))).numpy()
