"""Flax Linen: the Yat layer as a ``linen.Module``, and the model of an :class:`~yat_core.mlp.MLPSpec`.

:class:`YatNMN` takes the attributes ``linen.Dense`` takes (``features``,
``use_bias``, ``dtype``, ``param_dtype``, ``precision``, ``kernel_init``,
``bias_init``; shard it with ``nn.with_partitioning``-wrapped initialisers) and
keeps its ``kernel`` ``(in, features)`` as ``linen.Dense`` does; export and import
transpose it to the core's ``(out, in)``. Submodules are named after the spec's
layer index, so the variables read
``{"params": {"0": {"kernel", "bias", "alpha"}, "1": ..., "2": {"kernel", "bias"}}}``.

Linen modules hold no state: :func:`build_model` returns a *bound* module
(``module.bind(variables)``) that is callable and carries its parameters, and
:func:`import_params` returns a new bound module. Training lives in
:mod:`yat_core.runners.linen`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from yat_core.mlp import LEARNABLE, LayerSpec, MLPSpec, init_mlp_numpy
from yat_core.nn._flax import (
    Initializer,
    fan_in_uniform,
    flax_options,
    linear_tail,
    xavier_normal,
    yat_dense,
    yat_initializers,
)
from yat_core.nn.interchange import export_arrays, import_arrays
from yat_core.nn.options import yat_layer_spec
from yat_core.product import DEFAULT_EPSILON

__all__ = [
    "YatNMN",
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
        spec = yat_layer_spec(
            inputs.shape[-1],
            self.features,
            bias=self.use_bias,
            alpha=self.use_alpha,
            epsilon=self.epsilon,
            learnable_epsilon=self.learnable_epsilon,
            spherical=self.spherical,
        )
        params = {
            name: self.param(name, init, shape, self.param_dtype)
            for name, (init, shape) in yat_initializers(spec, self.kernel_init, self.bias_init).items()
        }
        return yat_dense(spec, inputs, params, dtype=self.dtype, precision=self.precision)


class YatMLP(nn.Module):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec`: flatten, then submodules ``"0"``, ``"1"``, ...

    ``dtype``, ``param_dtype`` and ``precision`` go to every layer.

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
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        kwargs = {"dtype": self.dtype, "param_dtype": self.param_dtype, "precision": self.precision}
        for i, layer in enumerate(self.spec.layers):
            if layer.kind == "yat":
                h = YatNMN.from_spec(layer, name=str(i), **kwargs)(h)
            else:
                init = fan_in_uniform(layer.in_features)  # nn.Linear's defaults, as the core draws them
                h = nn.Dense(
                    layer.out_features,
                    use_bias=layer.bias == LEARNABLE,
                    kernel_init=init,
                    bias_init=init,
                    name=str(i),
                    **kwargs,
                )(h)
                h = linear_tail(h, layer)
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
    tree: Tree = {}

    def write(i: int, name: str, value: np.ndarray) -> None:
        tree.setdefault(str(i), {})[name] = jnp.asarray(value, dtype=dtype)

    import_arrays(spec, params, write, kernel_in_out=True)
    return tree


def tree_to_params(spec: MLPSpec, tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of :func:`params_to_tree`: ``{core name: numpy array}``, in spec order.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> tree_to_params(seed_spec(), params_to_tree(seed_spec(), init_mlp_numpy(seed_spec(), 0)))["0.kernel"].shape
    (256, 784)
    """
    return export_arrays(spec, lambda i, name: tree[str(i)][name], kernel_in_out=True)


def build_model(
    spec: MLPSpec, seed: int, *, dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None
) -> YatMLP:
    """The bound model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = build_model(seed_spec(), seed=0)
    >>> count_params(model), model(jnp.zeros((2, 784))).shape
    (235148, (2, 10))
    """
    module = YatMLP(spec, dtype=dtype, param_dtype=param_dtype, precision=precision)
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


def _bound_params(model: nn.Module) -> Mapping[str, Any]:
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
def _apply(module: YatMLP, variables: Tree, x: jax.Array) -> Any:
    return module.apply(variables, x)
