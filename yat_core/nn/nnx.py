"""Flax NNX: the Yat layer as an ``nnx.Module``, and the model of an :class:`~yat_core.mlp.MLPSpec`.

:class:`YatNMN` takes the arguments ``nnx.Linear`` takes (``use_bias``, ``dtype``,
``param_dtype``, ``precision``, ``kernel_init``, ``bias_init``, ``kernel_metadata``,
``bias_metadata``, ``rngs``) and keeps its ``kernel`` ``(in_features,
out_features)`` as ``nnx.Linear`` does; export and import transpose it to the
core's ``(out, in)``. Bias, alpha and epsilon_raw keep the core's names. The model
holds its layers in ``model.layers`` (an ``nnx.List``), one per spec layer, so
``model.layers[0].kernel`` is the interchange's ``"0.kernel"`` transposed.
Training lives in :mod:`yat_core.runners.nnx`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yat_core.mlp import LEARNABLE, LayerSpec, MLPSpec, init_mlp_numpy
from yat_core.nn._flax import (
    Initializer,
    fan_in_uniform,
    flax_options,
    linear_tail,
    matmul_precision,
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
    "xavier_normal",
    "fan_in_uniform",
]

_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


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
        metadata = {"kernel": kernel_metadata, "bias": bias_metadata}
        for name in ("kernel", "bias", "alpha", "epsilon_raw"):
            if name not in inits:
                setattr(self, name, nnx.data(None))
                continue
            init, shape = inits[name]
            # Only kernel and bias draw keys: alpha and epsilon_raw start at constants.
            key = rngs.params() if name in ("kernel", "bias") else None
            setattr(self, name, nnx.Param(init(key, shape, param_dtype), **metadata.get(name, _NO_METADATA)))

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


def _linear(spec: LayerSpec, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Linear:
    init = fan_in_uniform(spec.in_features)  # nn.Linear's defaults, as the core draws them
    return nnx.Linear(
        spec.in_features,
        spec.out_features,
        use_bias=spec.bias == LEARNABLE,
        kernel_init=init,
        bias_init=init,
        rngs=rngs,
        **kwargs,
    )


class YatMLP(nnx.Module):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec`: flatten, then ``model.layers`` in turn.

    ``dtype``, ``param_dtype`` and ``precision`` go to every layer.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = YatMLP(seed_spec(), rngs=nnx.Rngs(0))
    >>> [type(layer).__name__ for layer in model.layers]
    ['YatNMN', 'YatNMN', 'Linear']
    >>> model(jnp.zeros((2, 28, 28))).shape
    (2, 10)
    """

    def __init__(
        self, spec: MLPSpec, *, dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None, rngs: nnx.Rngs
    ) -> None:
        self.spec = spec
        kwargs = {"dtype": dtype, "param_dtype": param_dtype, "precision": precision, "rngs": rngs}
        self.layers = nnx.List(
            [
                YatNMN.from_spec(layer, **kwargs) if layer.kind == "yat" else _linear(layer, **kwargs)
                for layer in spec.layers
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for spec, layer in zip(self.spec.layers, self.layers):
            h = layer(h)
            if spec.kind == "linear":
                h = linear_tail(h, spec)
        return h


def build_model(
    spec: MLPSpec, seed: int, *, dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None
) -> YatMLP:
    """The native model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> count_params(build_model(seed_spec(), seed=0))
    235148
    """
    model = YatMLP(spec, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=nnx.Rngs(seed))
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
    return export_arrays(model.spec, lambda i, name: getattr(model.layers[i], name).get_value(), kernel_in_out=True)


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
    """Set ``model``'s parameters from ``params`` (core names and layouts) in place; return it.

    Values are cast to each parameter's dtype and keep its sharding; names and
    shapes are checked first by :func:`yat_core.nn.interchange.check_params`.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatMLP(seed_spec(), rngs=nnx.Rngs(5)), init_mlp_numpy(seed_spec(), 0))
    >>> bool(jnp.all(model.layers[0].kernel.get_value().T == init_mlp_numpy(seed_spec(), 0)["0.kernel"]))
    True
    """

    def write(i: int, name: str, value: np.ndarray) -> None:
        variable = getattr(model.layers[i], name)
        old = variable.get_value()
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
