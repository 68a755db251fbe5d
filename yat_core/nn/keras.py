"""Keras 3 layers over the core: :class:`YatNMN`, :class:`Linear` and the model of an :class:`~yat_core.mlp.MLPSpec`.

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import keras
import numpy as np
from keras import ops

from yat_core.mlp import LEARNABLE, LayerSpec, MLPSpec, init_mlp_numpy
from yat_core.namespaces.keras import dtype_name, namespace
from yat_core.nn.interchange import export_arrays, import_arrays
from yat_core.nn.options import (
    check_size,
    forward_options,
    linear_layer_spec,
    native_option,
    spec_options,
    yat_layer_spec,
)
from yat_core.product import DEFAULT_EPSILON, dense, softplus_inverse, yat_product

__all__ = ["YatNMN", "Linear", "build_model", "export_params", "import_params", "count_params", "model_spec", "predict"]

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

    def __init__(
        self, units: int, activation: Literal["relu"] | None = None, use_bias: bool | float = True, **kwargs: Any
    ) -> None:
        super().__init__(
            linear_layer_spec(1, check_size(units, "units"), bias=use_bias, activation=activation), **kwargs
        )

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
    return import_params(keras.Sequential(layers, name="yat_mlp"), init_mlp_numpy(spec, seed))


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


def export_params(model: keras.Model) -> dict[str, np.ndarray]:
    """The model's parameters as ``{name: numpy array}`` in the core's names and layouts.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> params = export_params(build_model(seed_spec(), seed=0))
    >>> params["0.kernel"].shape, params["0.alpha"].shape, params["2.bias"].shape
    ((256, 784), (), (10,))
    """
    layers = _core_layers(model)
    return export_arrays(
        model_spec(model), lambda i, name: ops.convert_to_numpy(getattr(layers[i], name).value), kernel_in_out=True
    )


def import_params(model: keras.Model, params: Mapping[str, Any]) -> keras.Model:
    """Assign a ``{name: array}`` mapping (core names and layouts) to the model and return it.

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
    layers = _core_layers(model)

    def write(i: int, name: str, value: np.ndarray) -> None:
        variable = getattr(layers[i], name)
        variable.assign(value.astype(dtype_name(variable.dtype)))

    import_arrays(model_spec(model), params, write, kernel_in_out=True)
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
