"""TensorFlow modules over the core: :class:`YatNMN`, :class:`Linear`, :class:`YatMLP` and a runner.

Plain ``tf.Module`` subclasses (no Keras layers): every parameter is a
``tf.Variable`` held by an attribute, so ``trainable_variables`` and
``tf.train.Checkpoint`` see all of them (the seed model's 235,148 scalars).
The forward passes call :func:`yat_core.yat_product` through :func:`tf_namespace`,
an array-API namespace built on ``tf`` (array-api-compat does not cover
TensorFlow tensors).

Naming follows TensorFlow's module guide: ``in_features`` / ``out_features``,
variables ``kernel`` (core layout ``(out, in)``), ``bias``, ``alpha`` and
``epsilon_raw``; ``bias`` and ``alpha`` take ``True`` (learnable), ``False``
(absent) or a number (constant), as in every framework of :mod:`yat_core.nn`.
Initial values are the core's (:func:`~yat_core.mlp.init_mlp_numpy`).

Training is TensorFlow's idiom: a ``tf.function``-compiled step with
``tf.GradientTape`` and ``tf.keras.optimizers.AdamW`` applied to the plain
``tf.Variable`` objects. TensorFlow 2.16+ ships Keras 3 as ``tf.keras``, whose
optimizers follow ``KERAS_BACKEND``: the runner needs the tensorflow backend
(the default when the variable is unset).
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from yat_core.errors import BackendUnavailableError
from yat_core.losses import count_correct, softmax_cross_entropy
from yat_core.mlp import LayerSpec, MLPSpec, flatten_images, init_mlp_numpy
from yat_core.nn.interchange import check_params, layer_option, native_option, yat_layer_spec
from yat_core.product import DEFAULT_EPSILON, dense, softplus, yat_product

__all__ = [
    "YatNMN",
    "Linear",
    "YatMLP",
    "tf_namespace",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "predict",
    "make_runner",
    "TFRunner",
]

Array = Any
#: Distributions whose versions a receipt of this framework records (the optimizer is tf.keras).
DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "keras")
_SCALARS = (bool, int, float)


# ------------------------------------------------------------ array-API namespace


def _isdtype(dtype: Any, kind: Any) -> bool:
    if isinstance(kind, tuple):
        return any(_isdtype(dtype, k) for k in kind)
    d = tf.as_dtype(dtype)
    if not isinstance(kind, str):
        return d == tf.as_dtype(kind)
    kinds = {
        "bool": d.is_bool,
        "real floating": d.is_floating,
        "complex floating": d.is_complex,
        "signed integer": d.is_integer and not d.is_unsigned,
        "unsigned integer": d.is_integer and d.is_unsigned,
        "integral": d.is_integer,
        "numeric": not d.is_bool,
    }
    if kind not in kinds:
        raise ValueError(f"unknown dtype kind {kind!r}")
    return kinds[kind]


def _like(a: Any, b: Any) -> tuple[Any, Any]:
    # TF does not promote Python scalars in where/maximum: give them the tensor's dtype.
    if isinstance(a, _SCALARS) and not isinstance(b, _SCALARS):
        a = tf.constant(a, dtype=b.dtype)
    elif isinstance(b, _SCALARS) and not isinstance(a, _SCALARS):
        b = tf.constant(b, dtype=a.dtype)
    return a, b


def _where(condition: Array, x1: Any, x2: Any, /) -> Array:
    return tf.where(condition, *_like(x1, x2))


def _maximum(x1: Any, x2: Any, /) -> Array:
    return tf.maximum(*_like(x1, x2))


def _asarray(obj: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> Array:
    if dtype is None:
        return tf.convert_to_tensor(obj)
    dtype = tf.as_dtype(dtype)
    if tf.is_tensor(obj) or isinstance(obj, tf.Variable):
        return tf.cast(obj, dtype)
    # Through NumPy, so Python floats reach float64 unrounded (tf would make them float32 first).
    return tf.convert_to_tensor(np.asarray(obj, dtype=dtype.as_numpy_dtype))


def _astype(x: Array, dtype: Any, /, *, copy: bool = True, device: Any = None) -> Array:
    return tf.cast(x, tf.as_dtype(dtype))


def _sum(x: Array, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Array:
    x = x if dtype is None else tf.cast(x, tf.as_dtype(dtype))
    return tf.reduce_sum(x, axis=axis, keepdims=keepdims)


def _max(x: Array, /, *, axis: Any = None, keepdims: bool = False) -> Array:
    return tf.reduce_max(x, axis=axis, keepdims=keepdims)


def _mean(x: Array, /, *, axis: Any = None, keepdims: bool = False) -> Array:
    return tf.reduce_mean(x, axis=axis, keepdims=keepdims)


def _argmax(x: Array, /, *, axis: int | None = None, keepdims: bool = False) -> Array:
    # tf.argmax reads axis=None as axis 0; the array API means "over the flattened array".
    if axis is None:
        flat = tf.argmax(tf.reshape(x, [-1]), axis=0)
        return tf.reshape(flat, [1] * len(x.shape)) if keepdims else flat
    out = tf.argmax(x, axis=axis)
    return tf.expand_dims(out, axis) if keepdims else out


def _arange(start: Any, /, stop: Any = None, step: Any = 1, *, dtype: Any = None, device: Any = None) -> Array:
    return tf.range(start, stop, step, dtype=None if dtype is None else tf.as_dtype(dtype))


def _expand_dims(x: Array, /, *, axis: int = 0) -> Array:
    return tf.expand_dims(x, axis)


def _reshape(x: Array, /, shape: tuple[int, ...], *, copy: Any = None) -> Array:
    return tf.reshape(x, shape)


def _take(x: Array, indices: Array, /, *, axis: int | None = None) -> Array:
    if axis is None:
        return tf.gather(tf.reshape(x, [-1]), indices)
    return tf.gather(x, indices, axis=axis)


@functools.cache
def tf_namespace() -> types.SimpleNamespace:
    """An array-API namespace over ``tf`` for the calls yat_core makes (eager or in ``tf.function``).

    Examples
    --------
    >>> xp = tf_namespace()
    >>> x = xp.asarray([[1.0, -2.0]])
    >>> xp.where(x > 0, x, 0.0).numpy().tolist(), xp.isdtype(x.dtype, "real floating")
    ([[1.0, 0.0]], True)
    """
    return types.SimpleNamespace(
        __name__="yat_core.nn.tf.namespace",
        isdtype=_isdtype,
        asarray=_asarray,
        astype=_astype,
        matrix_transpose=tf.linalg.matrix_transpose,
        sum=_sum,
        max=_max,
        mean=_mean,
        argmax=_argmax,
        arange=_arange,
        expand_dims=_expand_dims,
        reshape=_reshape,
        take=_take,
        where=_where,
        maximum=_maximum,
        sqrt=tf.sqrt,
        exp=tf.exp,
        log=tf.math.log,
        log1p=tf.math.log1p,
        abs=tf.abs,
        bool=tf.bool,
        uint8=tf.uint8,
        int32=tf.int32,
        int64=tf.int64,
        float32=tf.float32,
        float64=tf.float64,
    )


# ------------------------------------------------------------ modules


def _read(variable: tf.Variable | None) -> Array | None:
    # A tensor read of the variable: differentiable under GradientTape, with the `ndim` the core checks.
    return None if variable is None else tf.convert_to_tensor(variable)


class _CoreModule(tf.Module):
    """Variables of one core layer, created with the core's initial values."""

    def __init__(self, spec: LayerSpec, *, seed: int | None, dtype: Any, name: str | None) -> None:
        super().__init__(name=name)
        self.spec = spec
        self.dtype = tf.as_dtype(dtype)
        initial = init_mlp_numpy(MLPSpec((spec,)), seed, self.dtype.as_numpy_dtype)
        with self.name_scope:
            for param in ("kernel", "bias", "alpha", "epsilon_raw"):
                value = initial.get(f"0.{param}")
                setattr(self, param, None if value is None else tf.Variable(value, name=param))

    def param_variables(self) -> dict[str, tf.Variable]:
        """The learnable variables under the core's names, in the core's order."""
        return {n: getattr(self, n) for n in self.spec.param_shapes}

    def _constant_or(self, name: str) -> Any:
        # The variable's tensor when learnable, else the spec's constant (or None).
        variable = getattr(self, name)
        return _read(variable) if variable is not None else getattr(self.spec, name)


class YatNMN(_CoreModule):
    """Dense Yat layer as a ``tf.Module``: ``alpha * (x @ kernel.T + bias)^2 / (|x - kernel_j|^2 + epsilon)``.

    A thin shell over :func:`yat_core.yat_product`.

    Parameters
    ----------
    in_features, out_features : int
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
    seed : int or None
        Seed of the core's initialisation (Xavier-normal kernel, bias uniform
        in ``±1/sqrt(in)``); None draws fresh values.
    dtype : tf.DType
    name : str, optional

    Examples
    --------
    >>> layer = YatNMN(3, 4, seed=0)
    >>> tuple(layer(tf.ones((2, 3))).shape), [v.name for v in layer.trainable_variables]
    ((2, 4), ['yat_nmn/alpha:0', 'yat_nmn/bias:0', 'yat_nmn/kernel:0'])
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool | float = True,
                 alpha: bool | float = True, epsilon: float = DEFAULT_EPSILON, learnable_epsilon: bool = False,
                 spherical: bool = False, seed: int | None = None, dtype: Any = tf.float32,
                 name: str | None = None) -> None:
        spec = yat_layer_spec(in_features, out_features, bias=bias, alpha=alpha, epsilon=epsilon,
                              learnable_epsilon=learnable_epsilon, spherical=spherical)
        super().__init__(spec, seed=seed, dtype=dtype, name=name)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> "YatNMN":
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.in_features, spec.out_features, bias=native_option(spec.bias),
                   alpha=native_option(spec.alpha), epsilon=spec.epsilon,
                   learnable_epsilon=spec.learnable_epsilon, spherical=spec.spherical, **kwargs)

    @tf.Module.with_name_scope
    def __call__(self, x: Array) -> Array:
        xp, spec = tf_namespace(), self.spec
        epsilon = softplus(_read(self.epsilon_raw), xp=xp) if spec.learnable_epsilon else spec.epsilon
        return yat_product(tf.convert_to_tensor(x), _read(self.kernel), bias=self._constant_or("bias"),
                           alpha=self._constant_or("alpha"), epsilon=epsilon, spherical=spec.spherical, xp=xp)


class Linear(_CoreModule):
    """Linear layer ``x @ kernel.T + bias`` over :func:`yat_core.dense`, kernel ``(out, in)``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool or float
        ``True``: learnable (default); ``False``: none; a number: a constant.
    activation : None or "relu"
    seed : int or None
        Seed of the core's initialisation (uniform in ``±1/sqrt(in)``).
    dtype : tf.DType
    name : str, optional

    Examples
    --------
    >>> layer = Linear(128, 10, seed=0)
    >>> tuple(layer(tf.ones((2, 128))).shape), count_params(layer)
    ((2, 10), 1290)
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool | float = True,
                 activation: str | None = None, seed: int | None = None, dtype: Any = tf.float32,
                 name: str | None = None) -> None:
        spec = LayerSpec("linear", int(in_features), int(out_features), bias=layer_option(bias, "bias"),
                         activation=activation)
        super().__init__(spec, seed=seed, dtype=dtype, name=name)

    @classmethod
    def from_spec(cls, spec: LayerSpec, **kwargs: Any) -> "Linear":
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"linear"``)."""
        return cls(spec.in_features, spec.out_features, bias=native_option(spec.bias),
                   activation=spec.activation, **kwargs)

    @tf.Module.with_name_scope
    def __call__(self, x: Array) -> Array:
        out = dense(tf.convert_to_tensor(x), _read(self.kernel), xp=tf_namespace())
        bias = self._constant_or("bias")
        out = out if bias is None else out + bias
        return tf.nn.relu(out) if self.spec.activation == "relu" else out


class YatMLP(tf.Module):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec` as a ``tf.Module``: inputs flattened, then each layer.

    ``self.layers`` is a list of modules, which ``tf.Module`` tracks: every
    layer's variables, the output layer's included, are in ``trainable_variables``
    and in checkpoints.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = YatMLP(seed_spec(), seed=0)
    >>> count_params(model), len(model.trainable_variables)
    (235148, 8)
    >>> tuple(model(tf.zeros((2, 28, 28))).shape)
    (2, 10)
    """

    def __init__(self, spec: MLPSpec, *, seed: int | None = 0, dtype: Any = tf.float32,
                 name: str | None = "yat_mlp") -> None:
        super().__init__(name=name)
        self.spec = spec
        with self.name_scope:
            self.layers = [_native_layer(layer, i, seed, dtype) for i, layer in enumerate(spec.layers)]
        if seed is not None:  # the whole model's draws, in the core's order
            import_params(self, init_mlp_numpy(spec, seed))

    @tf.Module.with_name_scope
    def __call__(self, x: Array) -> Array:
        x = tf.convert_to_tensor(x)
        x = tf.reshape(x, [tf.shape(x)[0], -1]) if len(x.shape) != 2 else x
        for layer in self.layers:
            x = layer(x)
        return x


def _native_layer(layer: LayerSpec, index: int, seed: int | None, dtype: Any) -> _CoreModule:
    cls, name = (YatNMN, "yat_nmn") if layer.kind == "yat" else (Linear, "linear")
    return cls.from_spec(layer, seed=seed, dtype=dtype, name=f"{name}_{index}")


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


def _variables(model: YatMLP) -> dict[str, tf.Variable]:
    if not isinstance(model, YatMLP):
        raise TypeError(f"expected a yat_core.nn.tf.YatMLP (see build_model), got {type(model).__name__}")
    return {f"{i}.{name}": var for i, layer in enumerate(model.layers)
            for name, var in layer.param_variables().items()}


def export_params(model: YatMLP) -> dict[str, np.ndarray]:
    """The model's parameters as ``{name: numpy array}`` in the core's names and layouts.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> params = export_params(build_model(seed_spec(), seed=0))
    >>> params["0.kernel"].shape, params["2.bias"].shape
    ((256, 784), (10,))
    """
    return {name: var.numpy() for name, var in _variables(model).items()}


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
    """Assign a ``{name: array}`` mapping (core names and layouts) to the model and return it.

    Names and shapes are checked first by
    :func:`yat_core.nn.interchange.check_params`, so a bad mapping raises and
    leaves the model unchanged; values are cast to each variable's dtype.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(build_model(seed_spec()), init_mlp_numpy(seed_spec(), seed=1))
    >>> import_params(model, {**init_mlp_numpy(seed_spec(), 1), "3.kernel": np.zeros(2)})
    Traceback (most recent call last):
    ...
    ValueError: parameters do not fit the model: unexpected 3.kernel
    """
    variables = _variables(model)
    arrays = check_params(params, model.spec)
    for name, variable in variables.items():
        variable.assign(arrays[name].astype(variable.dtype.as_numpy_dtype))
    return model


def count_params(model: tf.Module) -> int:
    """Learnable scalars of the model: the sizes of its ``trainable_variables``.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> count_params(YatMLP(seed_spec()))
    235148
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
    dtype = model.trainable_variables[0].dtype.as_numpy_dtype
    return model(tf.convert_to_tensor(np.asarray(x, dtype=dtype))).numpy()


# ------------------------------------------------------------ training runner


def _adamw(config: Any) -> Any:
    import keras  # tf.keras is Keras 3; its optimizers follow the Keras backend

    if keras.backend.backend() != "tensorflow":
        raise BackendUnavailableError(
            "the tf framework trains with tf.keras.optimizers.AdamW, which needs the tensorflow Keras "
            f"backend; Keras runs on {keras.backend.backend()!r} here (unset KERAS_BACKEND or set it "
            "to 'tensorflow' in a fresh process)"
        )
    return tf.keras.optimizers.AdamW(
        learning_rate=config.lr, weight_decay=config.weight_decay,
        beta_1=config.b1, beta_2=config.b2, epsilon=config.adam_eps,
    )


def _device(name: str | None) -> str | None:
    """TensorFlow's name for device ``name`` (torch-style ``"cuda:0"`` or TF's ``"GPU:0"``), checked to exist."""
    if name is None:
        return None
    kind, _, index = name.partition(":")
    kind = {"cuda": "GPU", "gpu": "GPU", "cpu": "CPU"}.get(kind.lower(), kind.upper())
    resolved = f"{kind}:{index or 0}"
    known = [d.name.split("device:")[-1] for d in tf.config.list_logical_devices()]
    if resolved not in known:
        # tf.device would silently fall back to another device; say so instead.
        raise BackendUnavailableError(f"TensorFlow has no device {name!r} here; it sees {', '.join(known)}")
    return resolved


def _distribution() -> str:
    """The installed distribution of TensorFlow (``tensorflow`` or ``tensorflow-cpu``), for the receipt."""
    import importlib.metadata as md

    for name in ("tensorflow", "tensorflow-cpu"):
        try:
            md.version(name)
        except md.PackageNotFoundError:
            continue
        return name
    return "tensorflow"


class TFRunner:
    """Trains :class:`YatMLP` with a ``tf.function`` step, ``tf.GradientTape`` and tf.keras AdamW.

    Implements :class:`yat_core.train.Runner`. The step and the evaluation are
    compiled with XLA (``jit_compile=True``); the optimizer updates the model's
    plain ``tf.Variable`` objects.

    Notes
    -----
    tf.keras's AdamW is Keras's: the recipe's lr, betas, epsilon and weight
    decay, bias correction, decay of every variable before the Adam step. Like
    Keras it adds ``epsilon`` to ``sqrt(v)`` of the uncorrected second moment,
    so a step equals a core step (:func:`~yat_core.optim.adamw_update`) with
    epsilon ``epsilon / sqrt(1 - beta_2**t)`` at step ``t``.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.train import TrainConfig
    >>> runner = TFRunner(seed_spec(), TrainConfig(backend="tf"))
    >>> runner.name, runner.n_params()
    ('tf', 235148)
    """

    name = "tf"

    def __init__(self, spec: MLPSpec, config: Any) -> None:
        self.framework = _distribution()
        self.dtype = tf.as_dtype(config.dtype)
        self._device = _device(config.device)
        with self._placement():
            self.model = build_model(spec, config.seed, dtype=self.dtype)
            self.optimizer = _adamw(config)
            self.optimizer.build(self.model.trainable_variables)
        self._step = tf.function(self._train_step, jit_compile=True)
        self._eval = tf.function(self._eval_step, jit_compile=True)

    def _placement(self) -> contextlib.AbstractContextManager:
        return tf.device(self._device) if self._device else contextlib.nullcontext()

    def _train_step(self, images: tf.Tensor, labels: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
        x = flatten_images(tf.gather(images, idx), self.dtype, xp=tf_namespace())
        y = tf.gather(labels, idx)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(x)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def _eval_step(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # The metric is the core's, so every framework reports the same quantity.
        xp = tf_namespace()
        logits = self.model(flatten_images(images, self.dtype, xp=xp))
        n = tf.cast(tf.shape(labels)[0], logits.dtype)
        return softmax_cross_entropy(logits, labels, xp=xp) * n, count_correct(logits, labels, xp=xp)

    def device_name(self) -> str:
        if self._device:
            return self._device
        gpus = tf.config.list_logical_devices("GPU")
        return "GPU:0" if gpus else "CPU:0"

    def n_params(self) -> int:
        return count_params(self.model)

    def put(self, a: np.ndarray) -> tf.Tensor:
        with self._placement():
            return tf.convert_to_tensor(a)

    def step(self, images: tf.Tensor, labels: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
        with self._placement():
            return self._step(images, labels, idx)

    def evaluate(self, images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with self._placement():
            return self._eval(images, labels)

    def settle(self, loss: Any) -> None:
        """Nothing to do: TensorFlow runs each step when it is called."""

    def synchronize(self, tree: Any) -> None:
        """Nothing to do: reading a value (``to_float``) waits for it."""

    def to_float(self, value: Any) -> float:
        return float(value.numpy()) if hasattr(value, "numpy") else float(value)

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


def make_runner(spec: MLPSpec, config: Any) -> TFRunner:
    """A :class:`TFRunner` for :func:`yat_core.train.train` (``yat-core train --framework tf``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.train import TrainConfig
    >>> make_runner(seed_spec(), TrainConfig(backend="tf")).framework in ("tensorflow", "tensorflow-cpu")
    True
    """
    return TFRunner(spec, config)
