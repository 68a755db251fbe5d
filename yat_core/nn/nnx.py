"""Flax NNX: the Yat layer as an ``nnx.Module``, the seed model, and its training run.

Layout and names follow Flax: a layer's ``kernel`` has shape
``(in_features, out_features)``, as in ``nnx.Linear``, and is transposed to the
core's ``(out, in)`` when handed to :func:`~yat_core.product.yat_product` (free
under ``jit``) and on export / import. Bias, alpha and epsilon_raw keep the core's
names. The model holds its layers in ``model.layers`` (an ``nnx.List``), one per
spec layer, so ``model.layers[0].kernel`` is the interchange's ``"0.kernel"``
transposed.

Training uses ``nnx.Optimizer`` over ``optax.adamw`` with the step under
``nnx.jit``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from yat_core.backends.jax import JaxBackend
from yat_core.mlp import LEARNABLE, LayerSpec, MLPSpec, flatten_images, init_mlp_numpy
from yat_core.nn.interchange import check_params, native_option, yat_layer_spec
from yat_core.product import DEFAULT_EPSILON, softplus, softplus_inverse, yat_product

__all__ = [
    "YatNMN",
    "YatMLP",
    "build_model",
    "export_params",
    "import_params",
    "count_params",
    "predict",
    "make_runner",
    "NNXRunner",
    "xavier_normal",
    "fan_in_uniform",
]

#: Distributions whose versions a receipt of this framework records.
DISTRIBUTIONS = ("flax", "jax", "jaxlib", "optax")

Initializer = Callable[..., jax.Array]
#: The core's Yat kernel distribution: normal, std ``sqrt(2 / (fan_in + fan_out))`` (not truncated).
xavier_normal: Initializer = nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")


def fan_in_uniform(fan_in: int) -> Initializer:
    """Uniform on ``±1/sqrt(fan_in)``: the core's bias (and linear kernel) distribution.

    Examples
    --------
    >>> w = fan_in_uniform(4)(jax.random.key(0), (1000,))
    >>> bool(jnp.all(jnp.abs(w) <= 0.5))
    True
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _value(variable: nnx.Variable | None) -> jax.Array | None:
    return None if variable is None else variable.get_value()


class YatNMN(nnx.Module):
    """Dense Yat layer: ``alpha * (x @ kernel + bias)**2 / (|x - kernel[:, j]|**2 + epsilon)``.

    A thin shell over :func:`yat_core.product.yat_product`.

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
        Computation dtype (inferred from inputs and parameters when None).
    param_dtype : dtype
        Dtype of the parameters.
    kernel_init : initializer
        Default :data:`xavier_normal`, the core's distribution.
    bias_init : initializer, optional
        Default :func:`fan_in_uniform` of ``in_features``.
    rngs : nnx.Rngs

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
        kernel_init: Initializer = xavier_normal,
        bias_init: Initializer | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        self.spec = yat_layer_spec(in_features, out_features, bias=use_bias, alpha=use_alpha, epsilon=epsilon,
                                   learnable_epsilon=learnable_epsilon, spherical=spherical)
        self.in_features, self.out_features = self.spec.in_features, self.spec.out_features
        self.dtype, self.param_dtype = dtype, param_dtype
        bias_init = fan_in_uniform(self.in_features) if bias_init is None else bias_init
        spec = self.spec
        self.kernel = nnx.Param(kernel_init(rngs.params(), (self.in_features, self.out_features), param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (self.out_features,), param_dtype)) \
            if spec.bias == LEARNABLE else None
        self.alpha = nnx.Param(jnp.ones((), param_dtype)) if spec.alpha == LEARNABLE else None
        self.epsilon_raw = nnx.Param(jnp.full((), softplus_inverse(spec.epsilon), param_dtype)) \
            if spec.learnable_epsilon else None

    @classmethod
    def from_spec(cls, spec: LayerSpec, *, rngs: nnx.Rngs, **kwargs: Any) -> "YatNMN":
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.in_features, spec.out_features, use_bias=native_option(spec.bias),
                   use_alpha=native_option(spec.alpha), epsilon=spec.epsilon,
                   learnable_epsilon=spec.learnable_epsilon, spherical=spec.spherical, rngs=rngs, **kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        spec = self.spec
        x, kernel, bias, alpha, eps_raw = promote_dtype(
            (x, _value(self.kernel), _value(self.bias), _value(self.alpha), _value(self.epsilon_raw)),
            dtype=self.dtype,
        )
        return yat_product(
            x,
            kernel.T,  # Flax's (in, out) to the core's (out, in)
            bias=bias if bias is not None else spec.bias,
            alpha=alpha if alpha is not None else spec.alpha,
            epsilon=softplus(eps_raw, xp=jnp) if eps_raw is not None else spec.epsilon,
            spherical=spec.spherical,
            xp=jnp,
        )


def _linear_tail(h: jax.Array, spec: LayerSpec) -> jax.Array:
    # What a core linear layer adds to nnx.Linear: a constant bias, a ReLU.
    if spec.bias not in (LEARNABLE, None):
        h = h + spec.bias
    return jax.nn.relu(h) if spec.activation == "relu" else h


def _linear(spec: LayerSpec, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Linear:
    init = fan_in_uniform(spec.in_features)  # nn.Linear's defaults, as the core draws them
    return nnx.Linear(spec.in_features, spec.out_features, use_bias=spec.bias == LEARNABLE,
                      kernel_init=init, bias_init=init, rngs=rngs, **kwargs)


class YatMLP(nnx.Module):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec`: flatten, then ``model.layers`` in turn.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = YatMLP(seed_spec(), rngs=nnx.Rngs(0))
    >>> [type(layer).__name__ for layer in model.layers]
    ['YatNMN', 'YatNMN', 'Linear']
    >>> model(jnp.zeros((2, 28, 28))).shape
    (2, 10)
    """

    def __init__(self, spec: MLPSpec, *, dtype: Any = None, param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs) -> None:
        self.spec = spec
        kwargs = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.layers = nnx.List([
            YatNMN.from_spec(layer, **kwargs) if layer.kind == "yat" else _linear(layer, **kwargs)
            for layer in spec.layers
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for spec, layer in zip(self.spec.layers, self.layers):
            h = layer(h)
            if spec.kind == "linear":
                h = _linear_tail(h, spec)
        return h


def _variables(model: YatMLP) -> dict[str, nnx.Variable]:
    """Every parameter's Variable under its core name, in the spec's order."""
    return {
        f"{i}.{name}": getattr(layer, name)
        for i, (spec, layer) in enumerate(zip(model.spec.layers, model.layers))
        for name in spec.param_shapes
    }


def build_model(spec: MLPSpec, seed: int, *, dtype: Any = None, param_dtype: Any = jnp.float32) -> YatMLP:
    """The native model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> count_params(build_model(seed_spec(), seed=0))
    235148
    """
    model = YatMLP(spec, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
    # Drawn in the parameters' dtype, as the core draws them.
    return import_params(model, init_mlp_numpy(spec, seed, np.dtype(param_dtype)))


def export_params(model: YatMLP) -> dict[str, np.ndarray]:
    """The model's parameters as ``{core name: numpy array}`` (kernels transposed to ``(out, in)``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> export_params(build_model(seed_spec(), 0))["0.kernel"].shape
    (256, 784)
    """
    out = {}
    for name, variable in _variables(model).items():
        value = np.asarray(variable.get_value())
        out[name] = np.ascontiguousarray(value.T) if name.endswith(".kernel") else value.copy()
    return out


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
    """Set ``model``'s parameters from ``params`` (core names and layouts) in place; return it.

    Values are cast to each parameter's dtype; names and shapes are checked first
    by :func:`yat_core.nn.interchange.check_params`.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatMLP(seed_spec(), rngs=nnx.Rngs(5)), init_mlp_numpy(seed_spec(), 0))
    >>> bool(jnp.all(model.layers[0].kernel.get_value().T == init_mlp_numpy(seed_spec(), 0)["0.kernel"]))
    True
    """
    arrays = check_params(params, model.spec)
    for name, variable in _variables(model).items():
        value = arrays[name].T if name.endswith(".kernel") else arrays[name]
        old = variable.get_value()
        variable.set_value(jax.device_put(jnp.asarray(value, dtype=old.dtype), old.sharding))
    return model


def count_params(model: nnx.Module) -> int:
    """Learnable scalars, counted as Flax users do (sizes of the ``nnx.Param`` state).

    Examples
    --------
    >>> count_params(YatNMN(784, 256, rngs=nnx.Rngs(0)))
    200961
    """
    return sum(int(leaf.size) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def predict(model: YatMLP, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` (NumPy, ``(n, in)``), as a NumPy array.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> predict(build_model(seed_spec(), 0), np.zeros((3, 784), np.float32)).shape
    (3, 10)
    """
    return np.asarray(_predict(model, jnp.asarray(x)))


@nnx.jit
def _predict(model: YatMLP, x: jax.Array) -> jax.Array:
    return model(x)


def _batch(images: jax.Array, labels: jax.Array, idx: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    x = flatten_images(jnp.take(images, idx, axis=0), dtype, xp=jnp)
    return x, jnp.take(labels, idx, axis=0)


@partial(nnx.jit, donate_argnums=(0, 1), static_argnums=(5,))
def _train_step(model: YatMLP, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array,
                idx: jax.Array, dtype: Any) -> jax.Array:
    x, y = _batch(images, labels, idx, dtype)

    def loss_fn(model: YatMLP) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@partial(nnx.jit, static_argnums=(3,))
def _eval_step(model: YatMLP, images: jax.Array, labels: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    logits = model(flatten_images(images, dtype, xp=jnp))
    loss_sum = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    return loss_sum, jnp.sum(jnp.argmax(logits, axis=-1) == labels)


def _jax_dtype(name: str) -> Any:
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("float64 with JAX needs 64-bit mode: set JAX_ENABLE_X64=1 in the environment")
    return jnp.dtype(name)


class NNXRunner:
    """Trains a :class:`YatMLP` with ``nnx.Optimizer(optax.adamw)``, the step under ``nnx.jit``."""

    name = "nnx"
    framework = "flax"

    def __init__(self, spec: MLPSpec, config: Any) -> None:
        self.spec = spec
        self.backend = JaxBackend(config.device)
        self.dtype = _jax_dtype(config.dtype)
        with jax.default_device(self.backend.jax_device):
            self.model = build_model(spec, config.seed, param_dtype=self.dtype)
            opt = config.optimizer()
            # optax.adamw decays every parameter when no mask is given, as the core does.
            tx = optax.adamw(opt.lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
            self.optimizer = nnx.Optimizer(self.model, tx, wrt=nnx.Param)

    def device_name(self) -> str:
        return self.backend.device_name()

    def n_params(self) -> int:
        return count_params(self.model)

    def put(self, a: np.ndarray) -> jax.Array:
        return self.backend.asarray(a)

    def step(self, images: jax.Array, labels: jax.Array, idx: jax.Array) -> jax.Array:
        return _train_step(self.model, self.optimizer, images, labels, idx, self.dtype)

    def evaluate(self, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _eval_step(self.model, images, labels, self.dtype)

    def settle(self, loss: Any) -> None:
        """Nothing to do: JAX dispatches asynchronously and keeps no graph."""

    def synchronize(self, tree: Any) -> None:
        self.backend.synchronize(tree)

    def to_float(self, value: Any) -> float:
        return float(value)

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


def make_runner(spec: MLPSpec, config: Any) -> NNXRunner:
    """An :class:`NNXRunner` for ``yat-core train --framework nnx``.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.train import TrainConfig
    >>> make_runner(seed_spec(), TrainConfig()).n_params()
    235148
    """
    return NNXRunner(spec, config)
