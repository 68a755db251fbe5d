"""Flax Linen: the Yat layer as a ``linen.Module``, the seed model, and its training run.

Layout and names follow Flax: a layer's ``kernel`` has shape ``(in, features)``,
as in ``linen.Dense``, and is transposed to the core's ``(out, in)`` when handed
to :func:`~yat_core.product.yat_product` (free under ``jit``) and on export /
import. Submodules are named after the spec's layer index, so the variables read
``{"params": {"0": {"kernel", "bias", "alpha"}, "1": ..., "2": {"kernel", "bias"}}}``.

Linen modules hold no state: :func:`build_model` returns a *bound* module
(``module.bind(variables)``) that is callable and carries its parameters, and
:func:`import_params` returns a new bound module. Training is functional: a
``flax.training.train_state.TrainState`` over ``optax.adamw``, the step under
``jax.jit``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.linen.dtypes import promote_dtype
from flax.training.train_state import TrainState

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
    "LinenRunner",
    "params_to_tree",
    "tree_to_params",
    "xavier_normal",
    "fan_in_uniform",
]

#: Distributions whose versions a receipt of this framework records.
DISTRIBUTIONS = ("flax", "jax", "jaxlib", "optax")

Initializer = Callable[..., jax.Array]
Tree = dict[str, Any]
#: The core's Yat kernel distribution: normal, std ``sqrt(2 / (fan_in + fan_out))`` (not truncated).
xavier_normal: Initializer = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


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
        Computation dtype (inferred from inputs and parameters when None).
    param_dtype : dtype
        Dtype of the parameters.
    kernel_init : initializer
        Default :data:`xavier_normal`, the core's distribution.
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
    kernel_init: Initializer = xavier_normal
    bias_init: Initializer | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spec = yat_layer_spec(x.shape[-1], self.features, bias=self.use_bias, alpha=self.use_alpha,
                              epsilon=self.epsilon, learnable_epsilon=self.learnable_epsilon,
                              spherical=self.spherical)
        bias_init = fan_in_uniform(spec.in_features) if self.bias_init is None else self.bias_init
        kernel = self.param("kernel", self.kernel_init, (spec.in_features, spec.out_features), self.param_dtype)
        bias = alpha = eps_raw = None
        if spec.bias == LEARNABLE:
            bias = self.param("bias", bias_init, (spec.out_features,), self.param_dtype)
        if spec.alpha == LEARNABLE:
            alpha = self.param("alpha", nn.initializers.ones, (), self.param_dtype)
        if spec.learnable_epsilon:
            raw = softplus_inverse(spec.epsilon)
            eps_raw = self.param("epsilon_raw", nn.initializers.constant(raw), (), self.param_dtype)
        x, kernel, bias, alpha, eps_raw = promote_dtype(x, kernel, bias, alpha, eps_raw, dtype=self.dtype)
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
    # What a core linear layer adds to linen.Dense: a constant bias, a ReLU.
    if spec.bias not in (LEARNABLE, None):
        h = h + spec.bias
    return nn.relu(h) if spec.activation == "relu" else h


class YatMLP(nn.Module):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec`: flatten, then submodules ``"0"``, ``"1"``, ...

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> variables = YatMLP(seed_spec()).init(jax.random.key(0), jnp.zeros((1, 784)))
    >>> sorted(variables["params"]), sorted(variables["params"]["0"])
    (['0', '1', '2'], ['alpha', 'bias', 'kernel'])
    """

    spec: MLPSpec
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.spec.layers):
            if layer.kind == "yat":
                h = YatNMN(layer.out_features, use_bias=native_option(layer.bias),
                           use_alpha=native_option(layer.alpha), epsilon=layer.epsilon,
                           learnable_epsilon=layer.learnable_epsilon, spherical=layer.spherical,
                           dtype=self.dtype, param_dtype=self.param_dtype, name=str(i))(h)
            else:
                init = fan_in_uniform(layer.in_features)  # nn.Linear's defaults, as the core draws them
                h = nn.Dense(layer.out_features, use_bias=layer.bias == LEARNABLE, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=init, bias_init=init, name=str(i))(h)
                h = _linear_tail(h, layer)
        return h


def params_to_tree(spec: MLPSpec, params: Mapping[str, Any], dtype: Any = jnp.float32) -> Tree:
    """Core-named parameters as a Linen ``params`` tree (kernels transposed to ``(in, out)``).

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> tree = params_to_tree(seed_spec(), init_mlp_numpy(seed_spec(), 0))
    >>> tree["0"]["kernel"].shape
    (784, 256)
    """
    arrays = check_params(params, spec)
    tree: Tree = {}
    for name, value in arrays.items():
        index, attr = name.split(".", 1)
        tree.setdefault(index, {})[attr] = jnp.asarray(value.T if attr == "kernel" else value, dtype=dtype)
    return tree


def tree_to_params(spec: MLPSpec, tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of :func:`params_to_tree`: ``{core name: numpy array}``, in spec order."""
    out = {}
    for name in spec.param_shapes:
        index, attr = name.split(".", 1)
        value = np.asarray(tree[index][attr])
        out[name] = np.ascontiguousarray(value.T) if attr == "kernel" else value.copy()
    return out


def build_model(spec: MLPSpec, seed: int, *, dtype: Any = None, param_dtype: Any = jnp.float32) -> YatMLP:
    """The bound model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = build_model(seed_spec(), seed=0)
    >>> count_params(model), model(jnp.zeros((2, 784))).shape
    (235148, (2, 10))
    """
    module = YatMLP(spec, dtype=dtype, param_dtype=param_dtype)
    # Drawn in the parameters' dtype, as the core draws them.
    init = init_mlp_numpy(spec, seed, np.dtype(param_dtype))
    return module.bind({"params": params_to_tree(spec, init, param_dtype)})


def export_params(model: YatMLP) -> dict[str, np.ndarray]:
    """A bound model's parameters as ``{core name: numpy array}`` (kernels ``(out, in)``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> export_params(build_model(seed_spec(), 0))["0.kernel"].shape
    (256, 784)
    """
    return tree_to_params(model.spec, _bound_params(model))


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
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


def _bound_params(model: nn.Module) -> Tree:
    if model.scope is None:
        raise ValueError("this Linen module is not bound to parameters; use build_model() or module.bind(variables)")
    return model.variables["params"]


def predict(model: YatMLP, x: np.ndarray) -> np.ndarray:
    """Logits of a bound model for float inputs ``x`` (NumPy, ``(n, in)``), as a NumPy array.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> predict(build_model(seed_spec(), 0), np.zeros((3, 784), np.float32)).shape
    (3, 10)
    """
    module, variables = model.unbind()
    return np.asarray(_apply(module, variables, jnp.asarray(x)))


@partial(jax.jit, static_argnums=(0,))
def _apply(module: YatMLP, variables: Tree, x: jax.Array) -> jax.Array:
    return module.apply(variables, x)


def _jax_dtype(name: str) -> Any:
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("float64 with JAX needs 64-bit mode: set JAX_ENABLE_X64=1 in the environment")
    return jnp.dtype(name)


@partial(jax.jit, donate_argnums=(0,), static_argnums=(4,))
def _train_step(state: TrainState, images: jax.Array, labels: jax.Array, idx: jax.Array,
                dtype: Any) -> tuple[TrainState, jax.Array]:
    x = flatten_images(jnp.take(images, idx, axis=0), dtype, xp=jnp)
    y = jnp.take(labels, idx, axis=0)

    def loss_fn(params: Tree) -> jax.Array:
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@partial(jax.jit, static_argnums=(3,))
def _eval_step(state: TrainState, images: jax.Array, labels: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    logits = state.apply_fn({"params": state.params}, flatten_images(images, dtype, xp=jnp))
    loss_sum = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
    return loss_sum, jnp.sum(jnp.argmax(logits, axis=-1) == labels)


class LinenRunner:
    """Trains a :class:`YatMLP` functionally: ``TrainState`` over ``optax.adamw``, step under ``jax.jit``."""

    name = "linen"
    framework = "flax"

    def __init__(self, spec: MLPSpec, config: Any) -> None:
        self.backend = JaxBackend(config.device)
        self.dtype = _jax_dtype(config.dtype)
        self.spec = spec
        self.module = YatMLP(spec, param_dtype=self.dtype)
        init = init_mlp_numpy(spec, config.seed, np.dtype(self.dtype))
        params = jax.device_put(params_to_tree(spec, init, self.dtype),
                                self.backend.jax_device)
        opt = config.optimizer()
        # optax.adamw decays every parameter when no mask is given, as the core does.
        tx = optax.adamw(opt.lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
        self.state = TrainState.create(apply_fn=self.module.apply, params=params, tx=tx)

    def device_name(self) -> str:
        return self.backend.device_name()

    def n_params(self) -> int:
        return count_params(self.state.params)

    def put(self, a: np.ndarray) -> jax.Array:
        return self.backend.asarray(a)

    def step(self, images: jax.Array, labels: jax.Array, idx: jax.Array) -> jax.Array:
        self.state, loss = _train_step(self.state, images, labels, idx, self.dtype)
        return loss

    def evaluate(self, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _eval_step(self.state, images, labels, self.dtype)

    def settle(self, loss: Any) -> None:
        """Nothing to do: JAX dispatches asynchronously and keeps no graph."""

    def synchronize(self, tree: Any) -> None:
        self.backend.synchronize((self.state, tree))

    def to_float(self, value: Any) -> float:
        return float(value)

    def export_params(self) -> dict[str, np.ndarray]:
        return tree_to_params(self.spec, self.state.params)

    @property
    def model(self) -> YatMLP:
        """The model bound to the current parameters (as the other runners' ``model``)."""
        return self.module.bind({"params": self.state.params})


def make_runner(spec: MLPSpec, config: Any) -> LinenRunner:
    """A :class:`LinenRunner` for ``yat-core train --framework linen``.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.train import TrainConfig
    >>> make_runner(seed_spec(), TrainConfig()).n_params()
    235148
    """
    return LinenRunner(spec, config)
