"""Keras 3 layers over the core: :class:`YatNMN`, :class:`Linear`, the seed model and its runner.

The layers run on every Keras backend (jax, torch, tensorflow): they call
:func:`yat_core.yat_product` through :func:`keras_namespace`, an array-API
namespace built on ``keras.ops``. Keras picks its backend from the
``KERAS_BACKEND`` environment variable when it is first imported, so set it
before anything imports Keras.

Naming follows Keras: ``units`` is the output size (the input size is read when
the layer is built), ``kernel_initializer`` / ``bias_initializer`` set the
initial values, and the variables are ``kernel``, ``bias``, ``alpha`` and
``epsilon_raw``. ``bias`` and ``alpha`` take ``True`` (learnable), ``False``
(absent) or a number (constant), as in every framework of :mod:`yat_core.nn`.
The kernel keeps the core's ``(out, in)`` layout (Keras's own ``Dense`` stores
``(in, out)``): it goes to the core untransposed and the interchange mapping
needs no conversion.

Training uses Keras's own idiom: ``model.compile`` with
``keras.optimizers.AdamW`` and ``SparseCategoricalCrossentropy(from_logits=True)``,
then ``model.train_on_batch`` on each batch of the shared batch order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import types
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from yat_core.errors import BackendUnavailableError
from yat_core.losses import count_correct, softmax_cross_entropy
from yat_core.mlp import LayerSpec, MLPSpec, flatten_images, init_mlp_numpy
from yat_core.nn.interchange import check_params, layer_option, native_option, yat_layer_spec
from yat_core.product import DEFAULT_EPSILON, dense, softplus, softplus_inverse, yat_product

__all__ = [
    "YatNMN",
    "Linear",
    "keras_namespace",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "model_spec",
    "predict",
    "make_runner",
    "KerasRunner",
]

Array = Any
#: Distributions whose versions a receipt of this framework records.
DISTRIBUTIONS = ("keras",)


# ------------------------------------------------------------ array-API namespace


def _dtype_name(dtype: Any) -> str:
    # Every backend's dtype object (np.float32, torch.float32, tf.float32, "float32") to its name.
    return keras.backend.standardize_dtype(dtype)


def _isdtype(dtype: Any, kind: Any) -> bool:
    if isinstance(kind, tuple):
        return any(_isdtype(dtype, k) for k in kind)
    name = _dtype_name(dtype)
    if not isinstance(kind, str):
        return name == _dtype_name(kind)
    kinds = {
        "bool": name == "bool",
        "real floating": name.startswith("float") or name == "bfloat16",
        "complex floating": name.startswith("complex"),
        "signed integer": name.startswith("int"),
        "unsigned integer": name.startswith("uint"),
        "integral": name.startswith(("int", "uint")),
        "numeric": name != "bool",
    }
    if kind not in kinds:
        raise ValueError(f"unknown dtype kind {kind!r}")
    return kinds[kind]


def _asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> Array:
    return ops.convert_to_tensor(obj, dtype=None if dtype is None else _dtype_name(dtype))


def _astype(x: Array, dtype: Any, /, *, copy: bool = True, device: Any = None) -> Array:
    return ops.cast(x, _dtype_name(dtype))


def _matrix_transpose(x: Array, /) -> Array:
    return ops.swapaxes(x, -1, -2)


def _sum(x: Array, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Array:
    x = x if dtype is None else ops.cast(x, _dtype_name(dtype))
    return ops.sum(x, axis=axis, keepdims=keepdims)


def _max(x: Array, /, *, axis: Any = None, keepdims: bool = False) -> Array:
    return ops.max(x, axis=axis, keepdims=keepdims)


def _mean(x: Array, /, *, axis: Any = None, keepdims: bool = False) -> Array:
    return ops.mean(x, axis=axis, keepdims=keepdims)


def _argmax(x: Array, /, *, axis: int | None = None, keepdims: bool = False) -> Array:
    return ops.argmax(x, axis=axis, keepdims=keepdims)


def _arange(start: Any, /, stop: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None) -> Array:
    return ops.arange(start, stop, step, dtype=None if dtype is None else _dtype_name(dtype))


def _expand_dims(x: Array, /, *, axis: int = 0) -> Array:
    return ops.expand_dims(x, axis)


def _reshape(x: Array, /, shape: tuple[int, ...], *, copy: Any = None) -> Array:
    return ops.reshape(x, shape)


def _take(x: Array, indices: Array, /, *, axis: int | None = None) -> Array:
    return ops.take(x, indices, axis=axis)


@functools.cache
def keras_namespace() -> types.SimpleNamespace:
    """An array-API namespace over ``keras.ops``: the calls yat_core makes, on any Keras backend.

    Arrays are the backend's own tensors (``jax.Array``, ``torch.Tensor``,
    ``tf.Tensor``), which array-api-compat does not cover for every backend;
    dtypes are Keras's dtype names (``"float32"``).

    Examples
    --------
    >>> import numpy as np
    >>> xp = keras_namespace()
    >>> x = xp.asarray(np.array([[1.0, -2.0]], np.float32))
    >>> tuple(xp.matrix_transpose(x).shape), xp.isdtype(x.dtype, "real floating")
    ((2, 1), True)
    """
    return types.SimpleNamespace(
        __name__="yat_core.nn.keras.namespace",
        isdtype=_isdtype,
        asarray=_asarray,
        astype=_astype,
        matrix_transpose=_matrix_transpose,
        sum=_sum,
        max=_max,
        mean=_mean,
        argmax=_argmax,
        arange=_arange,
        expand_dims=_expand_dims,
        reshape=_reshape,
        take=_take,
        where=ops.where,
        maximum=ops.maximum,
        sqrt=ops.sqrt,
        exp=ops.exp,
        log=ops.log,
        log1p=ops.log1p,
        abs=ops.abs,
        bool="bool",
        uint8="uint8",
        int32="int32",
        int64="int64",
        float32="float32",
        float64="float64",
    )


# ------------------------------------------------------------ layers


def _fan_in_uniform(in_features: int) -> keras.initializers.Initializer:
    # PyTorch's nn.Linear default, as the core's init_mlp_numpy draws biases and linear kernels.
    bound = 1.0 / float(np.sqrt(in_features))
    return keras.initializers.RandomUniform(-bound, bound)


def _xavier_normal() -> keras.initializers.Initializer:
    # Untruncated normal, std sqrt(2 / (fan_in + fan_out)): the core's Yat kernel init.
    return keras.initializers.VarianceScaling(1.0, mode="fan_avg", distribution="untruncated_normal")


def _read(variable: Any) -> Array:
    # The backend tensor behind a Keras variable, still differentiable with respect to it.
    return ops.convert_to_tensor(variable)


class _CoreLayer(keras.layers.Layer):
    """Shared parts of the layers: the core spec, variable listing, output shape, config."""

    def __init__(self, template: LayerSpec, *, kernel_initializer: Any = None, bias_initializer: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The options, already checked by the core; in_features is a placeholder until build.
        self._template = template
        self.spec: LayerSpec | None = None
        self.units = template.out_features
        self.kernel_initializer = None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        self.bias_initializer = None if bias_initializer is None else keras.initializers.get(bias_initializer)

    def param_variables(self) -> dict[str, keras.Variable]:
        """The learnable variables under the core's names, in the core's order (empty before build)."""
        return {} if self.spec is None else {n: getattr(self, n) for n in self.spec.param_shapes}

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.units)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_features = int(input_shape[-1])
        self.spec = dataclasses.replace(self._template, in_features=in_features)
        default_kernel = _xavier_normal() if self.spec.kind == "yat" else _fan_in_uniform(in_features)
        initializers = {
            "kernel": self.kernel_initializer or default_kernel,
            "bias": self.bias_initializer or _fan_in_uniform(in_features),
            "alpha": keras.initializers.Ones(),
            "epsilon_raw": keras.initializers.Constant(softplus_inverse(self.spec.epsilon)),
        }
        shapes = self.spec.param_shapes
        for name, initializer in initializers.items():
            variable = None
            if name in shapes:
                variable = self.add_weight(name=name, shape=shapes[name], initializer=initializer)
            setattr(self, name, variable)

    def _constant_or(self, name: str) -> Any:
        # The variable's tensor when learnable, else the spec's constant (or None).
        variable = getattr(self, name)
        return _read(variable) if variable is not None else getattr(self.spec, name)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            units=self.units,
            bias=native_option(self._template.bias),
            kernel_initializer=_serialize(self.kernel_initializer),
            bias_initializer=_serialize(self.bias_initializer),
        )
        return config


def _serialize(initializer: Any) -> Any:
    return None if initializer is None else keras.initializers.serialize(initializer)


@keras.saving.register_keras_serializable(package="yat_core")
class YatNMN(_CoreLayer):
    """Dense Yat layer: ``y = alpha * (x @ kernel.T + bias)^2 / (|x - kernel_j|^2 + epsilon)``.

    A thin Keras shell over :func:`yat_core.yat_product`; works on the jax,
    torch and tensorflow Keras backends.

    Parameters
    ----------
    units : int
        Number of output units (``out_features``); the input size is read at build.
    bias : bool or float
        ``True``: a learnable bias (default); ``False``: none; a number: that
        constant added to every unit.
    alpha : bool or float
        ``True``: a learnable scale initialised to 1.0 (default); ``False``: none;
        a number: that constant scale (e.g. ``math.sqrt(2)``).
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise inputs and kernel rows; the distance becomes ``2 - 2 dot``.
    kernel_initializer, bias_initializer : Keras initializer, optional
        Default to the core's distributions: untruncated Xavier-normal kernel,
        bias uniform in ``±1/sqrt(in)``. :func:`build_model` instead loads
        :func:`~yat_core.mlp.init_mlp_numpy`, identical in every framework.
    **kwargs
        Passed to :class:`keras.layers.Layer` (``name``, ``dtype``, ...).

    Examples
    --------
    >>> import numpy as np
    >>> layer = YatNMN(4, name="yat")
    >>> y = layer(np.ones((2, 3), np.float32))
    >>> tuple(y.shape), layer.count_params()  # kernel (4, 3) + bias 4 + alpha 1
    ((2, 4), 17)
    >>> sorted(layer.param_variables())
    ['alpha', 'bias', 'kernel']
    """

    def __init__(self, units: int, *, bias: bool | float = True, alpha: bool | float = True,
                 epsilon: float = DEFAULT_EPSILON, learnable_epsilon: bool = False, spherical: bool = False,
                 **kwargs: Any) -> None:
        template = yat_layer_spec(1, units, bias=bias, alpha=alpha, epsilon=epsilon,
                                  learnable_epsilon=learnable_epsilon, spherical=spherical)
        super().__init__(template, **kwargs)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> "YatNMN":
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.out_features, bias=native_option(spec.bias), alpha=native_option(spec.alpha),
                   epsilon=spec.epsilon, learnable_epsilon=spec.learnable_epsilon, spherical=spec.spherical,
                   **kwargs)

    def call(self, inputs: Array) -> Array:
        xp, spec = keras_namespace(), self.spec
        epsilon = softplus(_read(self.epsilon_raw), xp=xp) if spec.learnable_epsilon else spec.epsilon
        return yat_product(inputs, _read(self.kernel), bias=self._constant_or("bias"),
                           alpha=self._constant_or("alpha"), epsilon=epsilon, spherical=spec.spherical, xp=xp)

    def get_config(self) -> dict[str, Any]:
        t = self._template
        return {**super().get_config(), "alpha": native_option(t.alpha), "epsilon": t.epsilon,
                "learnable_epsilon": t.learnable_epsilon, "spherical": t.spherical}


@keras.saving.register_keras_serializable(package="yat_core")
class Linear(_CoreLayer):
    """Linear layer ``x @ kernel.T + bias`` over :func:`yat_core.dense`, kernel ``(out, in)``.

    The seed model's output layer. Unlike ``keras.layers.Dense`` it keeps the
    core's kernel layout and takes a constant bias, so every core
    :class:`~yat_core.mlp.LayerSpec` maps onto it.

    Parameters
    ----------
    units : int
    bias : bool or float
        ``True``: learnable (default); ``False``: none; a number: a constant.
    activation : None or "relu"
    kernel_initializer, bias_initializer : Keras initializer, optional
        Default: uniform in ``±1/sqrt(in)`` (PyTorch's ``nn.Linear``, as the core).
    **kwargs
        Passed to :class:`keras.layers.Layer`.

    Examples
    --------
    >>> import numpy as np
    >>> layer = Linear(10)
    >>> tuple(layer(np.ones((2, 128), np.float32)).shape), layer.count_params()
    ((2, 10), 1290)
    """

    def __init__(self, units: int, *, bias: bool | float = True, activation: str | None = None,
                 **kwargs: Any) -> None:
        template = LayerSpec("linear", 1, int(units), bias=layer_option(bias, "bias"), activation=activation)
        super().__init__(template, **kwargs)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> "Linear":
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"linear"``)."""
        return cls(spec.out_features, bias=native_option(spec.bias), activation=spec.activation, **kwargs)

    def call(self, inputs: Array) -> Array:
        out = dense(inputs, _read(self.kernel), xp=keras_namespace())
        bias = self._constant_or("bias")
        out = out if bias is None else out + bias
        return keras.activations.relu(out) if self.spec.activation == "relu" else out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activation": self._template.activation}


# ------------------------------------------------------------ model and interchange


def build_model(spec: MLPSpec, seed: int = 0, *, dtype: str = "float32") -> keras.Sequential:
    """The Keras model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy` for ``seed``.

    A ``keras.Sequential`` taking flattened inputs ``(n, in_features)`` and
    returning logits; its ``i``-th layer holds the core's ``"i.kernel"``, ...

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = build_model(seed_spec(), seed=0)
    >>> [layer.name for layer in model.layers], model.count_params()
    (['yat_nmn_0', 'yat_nmn_1', 'linear_2'], 235148)
    """
    layers: list[Any] = [keras.Input(shape=(spec.in_features,), dtype=dtype)]
    for i, layer in enumerate(spec.layers):
        cls, name = (YatNMN, "yat_nmn") if layer.kind == "yat" else (Linear, "linear")
        layers.append(cls.from_spec(layer, name=f"{name}_{i}", dtype=dtype))
    model = keras.Sequential(layers, name="yat_mlp")
    return import_params(model, init_mlp_numpy(spec, seed))


def _core_layers(model: keras.Model) -> list[_CoreLayer]:
    layers = list(model.layers)
    foreign = [type(layer).__name__ for layer in layers if not isinstance(layer, _CoreLayer)]
    if foreign:
        raise TypeError(
            f"the model holds layers yat_core cannot name ({', '.join(foreign)}); "
            "export and import work on models of YatNMN and Linear layers (see build_model)"
        )
    if not layers or not all(layer.built for layer in layers):
        raise ValueError("the model is not built yet: give it a keras.Input or call it once")
    return layers


def model_spec(model: keras.Model) -> MLPSpec:
    """The core :class:`~yat_core.mlp.MLPSpec` a built model of this module implements.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model_spec(build_model(seed_spec())) == seed_spec()
    True
    """
    return MLPSpec(tuple(layer.spec for layer in _core_layers(model)))


def _variables(model: keras.Model) -> dict[str, keras.Variable]:
    return {f"{i}.{name}": var for i, layer in enumerate(_core_layers(model))
            for name, var in layer.param_variables().items()}


def export_params(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's parameters as ``{name: numpy array}`` in the core's names and layouts.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> params = export_params(build_model(seed_spec(), seed=0))
    >>> params["0.kernel"].shape, params["0.alpha"].shape, params["2.bias"].shape
    ((256, 784), (), (10,))
    """
    return {name: np.array(ops.convert_to_numpy(var.value)) for name, var in _variables(model).items()}


def import_params(model: keras.Model, params: Mapping[str, Any]) -> keras.Model:
    """Assign a ``{name: array}`` mapping (core names and layouts) to the model and return it.

    Names and shapes are checked first by
    :func:`yat_core.nn.interchange.check_params`, so a bad mapping raises and
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
    arrays = check_params(params, model_spec(model))
    for name, variable in _variables(model).items():
        variable.assign(arrays[name].astype(_dtype_name(variable.dtype)))
    return model


def count_params(model: keras.Model) -> int:
    """Learnable scalars, counted by Keras (``model.count_params()``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> count_params(build_model(seed_spec()))
    235148
    """
    return int(model.count_params())


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` (NumPy, ``(n, in)`` or ``(n, 28, 28)``), as a NumPy array.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> predict(build_model(seed_spec()), np.zeros((3, 28, 28), np.float32)).shape
    (3, 10)
    """
    x = np.asarray(x)
    return np.asarray(model.predict_on_batch(x.reshape(len(x), -1)))


# ------------------------------------------------------------ training runner


def _default_device() -> str:
    """Where the backend puts new tensors, e.g. ``"cpu:0"`` or ``"cuda:0"``."""
    try:
        return keras.distribution.list_devices()[0]
    except (AttributeError, NotImplementedError, IndexError):
        # The torch backend has no distribution support: ask a tensor instead.
        return str(ops.convert_to_tensor(np.zeros(1)).device)


def _device_key(name: str) -> tuple[str, int]:
    # "cuda:0", "gpu", "GPU:0" -> ("gpu", 0); "cpu" -> ("cpu", 0).
    kind, _, index = str(name).lower().rpartition("device:")[-1].partition(":")
    return ("gpu" if kind in ("cuda", "gpu") else kind), int(index or 0)


def _resolve_device(name: str | None) -> str | None:
    """The device scope the runner uses (None: the backend's default), after checking ``name`` exists."""
    if name is None:
        return None
    backend = keras.backend.backend()
    try:
        with keras.device(name):
            placed = ops.convert_to_tensor(np.zeros(1))
    except (ValueError, RuntimeError, AssertionError) as exc:
        raise BackendUnavailableError(f"Keras ({backend}) cannot use device {name!r}: {exc}") from None
    where = str(getattr(placed, "device", ""))
    if _device_key(name)[0] != "cpu" and "cpu" in where.lower():
        # Some backends fall back to the CPU silently; say so instead.
        raise BackendUnavailableError(f"Keras ({backend}) has no device {name!r} here; tensors land on {where}")
    if backend != "torch":
        return name
    # Keras's torch backend creates variables without gradients under keras.device: use its default device.
    if _device_key(name) == _device_key(_default_device()):
        return None
    raise BackendUnavailableError(
        f"Keras's torch backend trains on its default device ({_default_device()}) only; "
        f"asked for {name!r} (select GPUs with CUDA_VISIBLE_DEVICES)"
    )


class KerasRunner:
    """Trains the Keras model with ``keras.optimizers.AdamW`` and ``model.train_on_batch``.

    Implements :class:`yat_core.train.Runner`; the shared loop supplies the batch
    order, so every batch equals the core's (final partial batch included).

    Notes
    -----
    Keras's AdamW takes the recipe's lr, betas, epsilon and weight decay, corrects
    both moments for bias, and decays every variable before the Adam step
    (``p -= lr * wd * p``), as the core's :func:`~yat_core.optim.adamw_update`
    does. One difference remains: Keras adds ``epsilon`` to ``sqrt(v)`` of the
    *uncorrected* second moment, the core to the corrected one, so a Keras step
    equals a core step whose epsilon is ``epsilon / sqrt(1 - beta_2**t)`` at step
    ``t`` (31.6 times larger at step 1, 1.15 times after 1,407 steps).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.train import TrainConfig
    >>> runner = KerasRunner(seed_spec(), TrainConfig(backend="keras"))
    >>> runner.name, runner.n_params()
    ('keras', 235148)
    """

    name = "keras"
    framework = "keras"

    def __init__(self, spec: MLPSpec, config: Any) -> None:
        self.backend = keras.backend.backend()
        self.dtype = config.dtype
        self._check_dtype()
        self.xp = keras_namespace()
        self._device = _resolve_device(config.device)
        with self._placement():
            self.model = build_model(spec, config.seed, dtype=config.dtype)
            self.model.compile(
                optimizer=keras.optimizers.AdamW(
                    learning_rate=config.lr, weight_decay=config.weight_decay,
                    beta_1=config.b1, beta_2=config.b2, epsilon=config.adam_eps,
                ),
                # Keras losses compute in floatx (float32) unless told otherwise.
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=config.dtype),
            )

    def _check_dtype(self) -> None:
        probe = ops.convert_to_tensor(np.zeros(1, np.dtype(self.dtype)))
        if _dtype_name(probe.dtype) != self.dtype:
            raise ValueError(
                f"the Keras {self.backend} backend computes {self.dtype} as {_dtype_name(probe.dtype)} here "
                "(for jax, set JAX_ENABLE_X64=1 to train in float64)"
            )

    def _placement(self) -> contextlib.AbstractContextManager:
        return keras.device(self._device) if self._device else contextlib.nullcontext()

    def device_name(self) -> str:
        return f"keras-backend={self.backend} {self._device or _default_device()}"

    def n_params(self) -> int:
        return count_params(self.model)

    def put(self, a: np.ndarray) -> Array:
        with self._placement():
            return ops.convert_to_tensor(a)

    def step(self, images: Array, labels: Array, idx: Array) -> Any:
        with self._placement():
            x = flatten_images(ops.take(images, idx, axis=0), self.dtype, xp=self.xp)
            y = ops.take(labels, idx, axis=0)
            return self.model.train_on_batch(x, y)

    def evaluate(self, images: Array, labels: Array) -> tuple[Any, Any]:
        # The metric is the core's (on the host), so every framework reports the same quantity.
        with self._placement():
            logits = self.model.predict_on_batch(flatten_images(images, self.dtype, xp=self.xp))
        y = ops.convert_to_numpy(labels)
        return softmax_cross_entropy(logits, y) * len(y), count_correct(logits, y)

    def settle(self, loss: Any) -> None:
        """Nothing to do: ``train_on_batch`` returns the loss as a host number."""

    def synchronize(self, tree: Any) -> None:
        """Nothing to do: every step has finished when ``train_on_batch`` returns."""

    def to_float(self, value: Any) -> float:
        return float(np.asarray(ops.convert_to_numpy(value)))

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


def make_runner(spec: MLPSpec, config: Any) -> KerasRunner:
    """A :class:`KerasRunner` for :func:`yat_core.train.train` (``yat-core train --framework keras``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.train import TrainConfig
    >>> make_runner(seed_spec(), TrainConfig(backend="keras")).device_name().startswith("keras-backend=")
    True
    """
    return KerasRunner(spec, config)
