"""MLX: the Yat layer as an ``mlx.nn.Module`` and the model of an :class:`~yat_core.mlp.MLPSpec`.

Layout and names follow MLX: a layer's kernel is ``weight`` of shape
``(output_dims, input_dims)`` (the core's layout, so interchange copies it as is),
sizes are ``input_dims`` / ``output_dims``, absent parameters are not there at all
(as ``nn.Linear(bias=False)``), and the model keeps its layers in the list
``model.layers``, so ``tree_flatten(model.parameters())`` names read
``"layers.0.weight"``, ``"layers.0.alpha"``. The interchange names drop the
``layers.`` prefix and replace ``weight`` with ``kernel``.

The layer is array code over :func:`yat_core.product.yat_product`, so
``save_weights`` / ``load_weights``, ``nn.value_and_grad`` and ``mx.compile``
work as for MLX's own layers. Training lives in :mod:`yat_core.runners.mlx`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_reduce

from yat_core.mlp import LEARNABLE, LayerSpec, MLPSpec, init_mlp_numpy
from yat_core.namespaces.mlx import namespace
from yat_core.nn.interchange import export_arrays, import_arrays
from yat_core.nn.options import forward_options, spec_options, yat_layer_spec
from yat_core.product import DEFAULT_EPSILON, softplus_inverse, yat_product

__all__ = ["YatNMN", "YatMLP", "build_model", "export_params", "import_params", "count_params", "predict"]

#: Core parameter name -> MLX attribute, where they differ (``nn.Linear`` calls the kernel ``weight``).
_ATTR = {"kernel": "weight"}


class YatNMN(nn.Module):
    """Dense Yat layer: ``alpha * (x @ weight.T + bias)**2 / (|x - weight_j|**2 + epsilon)``.

    A thin shell over :func:`yat_core.product.yat_product`.

    Parameters
    ----------
    input_dims, output_dims : int
        Sizes of each input and output sample.
    bias : bool or float
        ``True``: a learnable bias (initialised uniform ``±1/sqrt(input_dims)``);
        ``False``: none; a number: that constant added to every unit.
    alpha : bool or float
        ``True``: a learnable scale initialised to 1.0; ``False``: none; a number:
        that constant scale.
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise inputs and kernel rows first.

    Notes
    -----
    A fresh layer draws its kernel from MLX's generator with the core's
    distribution (normal, std ``sqrt(2 / (in + out))``). :func:`build_model` loads
    :func:`yat_core.mlp.init_mlp_numpy` instead, identical in every framework.

    Examples
    --------
    >>> from mlx.utils import tree_flatten
    >>> layer = YatNMN(4, 3)
    >>> sorted(k for k, _ in tree_flatten(layer.trainable_parameters()))
    ['alpha', 'bias', 'weight']
    >>> layer(mx.zeros((2, 4))).shape
    (2, 3)
    >>> YatNMN(4, 3, bias=False, alpha=2.0)
    YatNMN(input_dims=4, output_dims=3, bias=False, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False)
    """

    def __init__(
        self,
        input_dims: int,
        output_dims: int,
        bias: bool | float = True,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
    ) -> None:
        super().__init__()
        # A dataclass, not a container: MLX keeps it as a plain attribute, not a parameter.
        self.spec = yat_layer_spec(
            input_dims,
            output_dims,
            bias=bias,
            alpha=alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
            names=("input_dims", "output_dims"),
        )
        fan_in, fan_out = self.spec.in_features, self.spec.out_features
        self.weight = mx.random.normal((fan_out, fan_in)) * math.sqrt(2.0 / (fan_in + fan_out))
        if self.spec.bias == LEARNABLE:
            bound = 1.0 / math.sqrt(fan_in)
            self.bias = mx.random.uniform(-bound, bound, (fan_out,))
        if self.spec.alpha == LEARNABLE:
            self.alpha = mx.array(1.0)
        if self.spec.learnable_epsilon:
            self.epsilon_raw = mx.array(softplus_inverse(self.spec.epsilon))

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> YatNMN:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.in_features, spec.out_features, **spec_options(spec))

    def __call__(self, x: mx.array) -> mx.array:
        xp = namespace()
        return yat_product(x, self.weight, **forward_options(self.spec, lambda name: getattr(self, name), xp), xp=xp)

    def _extra_repr(self) -> str:
        sizes = {"input_dims": self.spec.in_features, "output_dims": self.spec.out_features}
        return ", ".join(f"{k}={v}" for k, v in {**sizes, **spec_options(self.spec)}.items())


class _Linear(nn.Linear):
    """``nn.Linear`` plus what a core linear layer may add: a constant bias and a ReLU."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec.in_features, spec.out_features, bias=spec.bias == LEARNABLE)
        self.spec = spec

    def __call__(self, x: mx.array) -> mx.array:
        out = super().__call__(x)
        if isinstance(self.spec.bias, float):  # a constant; a learnable one is nn.Linear's
            out = out + self.spec.bias
        return nn.relu(out) if self.spec.activation == "relu" else out


class YatMLP(nn.Module):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec`: flatten, then ``model.layers`` in turn.

    Examples
    --------
    >>> from mlx.utils import tree_flatten
    >>> from yat_core.mlp import seed_spec
    >>> model = YatMLP(seed_spec())
    >>> [name for name, _ in tree_flatten(model.parameters())][:3]
    ['layers.0.weight', 'layers.0.bias', 'layers.0.alpha']
    >>> model(mx.zeros((2, 28, 28))).shape
    (2, 10)
    """

    def __init__(self, spec: MLPSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = [YatNMN.from_spec(layer) if layer.kind == "yat" else _Linear(layer) for layer in spec.layers]

    def __call__(self, x: mx.array) -> mx.array:
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = layer(h)
        return h


def build_model(spec: MLPSpec, seed: int, *, dtype: mx.Dtype = mx.float32) -> YatMLP:
    """The native model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> count_params(build_model(seed_spec(), seed=0))
    235148
    """
    model = YatMLP(spec)
    if dtype != mx.float32:
        model.set_dtype(dtype)
    # Drawn in the model's dtype, as the core draws them.
    return import_params(model, init_mlp_numpy(spec, seed, np.dtype(str(dtype).rsplit(".", 1)[-1])))


def export_params(model: YatMLP) -> dict[str, np.ndarray]:
    """The model's parameters as ``{core name: numpy array}`` (``"0.kernel"`` is ``(out, in)``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> export_params(build_model(seed_spec(), 0))["0.kernel"].shape
    (256, 784)
    """
    return export_arrays(model.spec, lambda i, name: np.array(getattr(model.layers[i], _ATTR.get(name, name))))


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
    """Set ``model``'s parameters from ``params`` (core names and layouts) in place; return it.

    Values are cast to each parameter's dtype; names, shapes and dtypes are checked
    first (:func:`yat_core.nn.interchange.check_params`), so a bad mapping leaves the
    model as it was.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatMLP(seed_spec()), init_mlp_numpy(seed_spec(), 0))
    >>> model.layers[0].alpha.item()
    1.0
    """

    def write(index: int, name: str, value: np.ndarray) -> None:
        layer, attr = model.layers[index], _ATTR.get(name, name)
        setattr(layer, attr, mx.array(value, dtype=getattr(layer, attr).dtype))

    import_arrays(model.spec, params, write)
    mx.eval(model.parameters())
    return model


def count_params(model: nn.Module) -> int:
    """Learnable scalars, counted as MLX users do (sizes of ``trainable_parameters()``).

    Examples
    --------
    >>> count_params(YatNMN(784, 256))
    200961
    """
    return int(tree_reduce(lambda total, v: total + v.size, model.trainable_parameters(), 0))


def predict(model: YatMLP, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` (NumPy, ``(n, in)``), as a NumPy array.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> predict(build_model(seed_spec(), 0), np.zeros((3, 784), np.float32)).shape
    (3, 10)
    """
    dtype = model.layers[0].weight.dtype
    return np.array(model(mx.array(np.asarray(x), dtype=dtype)))
