"""MLX: the Yat layer as an ``mlx.nn.Module``, the seed model, and its training run.

Layout and names follow MLX: a layer's kernel is ``weight`` of shape
``(output_dims, input_dims)`` (the core's layout, so interchange copies it as is),
sizes are ``input_dims`` / ``output_dims``, and the model keeps its layers in the
list ``model.layers``, so ``tree_flatten(model.parameters())`` names read
``"layers.0.weight"``, ``"layers.0.alpha"``. The interchange names drop the
``layers.`` prefix and replace ``weight`` with ``kernel``.

Training uses ``mlx.optimizers.AdamW`` with ``bias_correction=True`` (MLX's
default is False) and the step under ``mx.compile``, with the model and optimizer
state declared as its inputs and outputs.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from yat_core.backends.mlx import MLXBackend, mlx_namespace
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
    "MLXRunner",
]

#: Distributions whose versions a receipt of this framework records.
DISTRIBUTIONS = ("mlx",)


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
    >>> layer = YatNMN(4, 3)
    >>> sorted(k for k, _ in tree_flatten(layer.trainable_parameters()))
    ['alpha', 'bias', 'weight']
    >>> layer(mx.zeros((2, 4))).shape
    (2, 3)
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
        self.spec = yat_layer_spec(input_dims, output_dims, bias=bias, alpha=alpha, epsilon=epsilon,
                                   learnable_epsilon=learnable_epsilon, spherical=spherical)
        std = math.sqrt(2.0 / (input_dims + output_dims))
        self.weight = mx.random.normal((output_dims, input_dims)) * std
        if self.spec.bias == LEARNABLE:
            bound = 1.0 / math.sqrt(input_dims)
            self.bias = mx.random.uniform(-bound, bound, (output_dims,))
        if self.spec.alpha == LEARNABLE:
            self.alpha = mx.array(1.0)
        if self.spec.learnable_epsilon:
            self.epsilon_raw = mx.array(softplus_inverse(self.spec.epsilon))

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> "YatNMN":
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.in_features, spec.out_features, bias=native_option(spec.bias),
                   alpha=native_option(spec.alpha), epsilon=spec.epsilon,
                   learnable_epsilon=spec.learnable_epsilon, spherical=spec.spherical)

    def __call__(self, x: mx.array) -> mx.array:
        spec, xp = self.spec, mlx_namespace()
        return yat_product(
            x,
            self.weight,
            bias=self.bias if spec.bias == LEARNABLE else spec.bias,
            alpha=self.alpha if spec.alpha == LEARNABLE else spec.alpha,
            epsilon=softplus(self.epsilon_raw, xp=xp) if spec.learnable_epsilon else spec.epsilon,
            spherical=spec.spherical,
            xp=xp,
        )

    def _extra_repr(self) -> str:
        s = self.spec
        return (f"input_dims={s.in_features}, output_dims={s.out_features}, bias={native_option(s.bias)}, "
                f"alpha={native_option(s.alpha)}, epsilon={s.epsilon}, learnable_epsilon={s.learnable_epsilon}, "
                f"spherical={s.spherical}")


class _Linear(nn.Linear):
    """``nn.Linear`` plus what a core linear layer may add: a constant bias and a ReLU."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec.in_features, spec.out_features, bias=spec.bias == LEARNABLE)
        self.spec = spec

    def __call__(self, x: mx.array) -> mx.array:
        out = super().__call__(x)
        if self.spec.bias not in (LEARNABLE, None):
            out = out + self.spec.bias
        return nn.relu(out) if self.spec.activation == "relu" else out


class YatMLP(nn.Module):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec`: flatten, then ``model.layers`` in turn.

    Examples
    --------
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


def _native_name(core_name: str) -> str:
    index, attr = core_name.split(".", 1)
    return f"layers.{index}.{'weight' if attr == 'kernel' else attr}"


def build_model(spec: MLPSpec, seed: int, *, dtype: Any = mx.float32) -> YatMLP:
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
    native = dict(tree_flatten(model.trainable_parameters()))
    return {name: np.array(native[_native_name(name)]) for name in model.spec.param_shapes}


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
    """Set ``model``'s parameters from ``params`` (core names and layouts) in place; return it.

    Values are cast to each parameter's dtype; names and shapes are checked first
    by :func:`yat_core.nn.interchange.check_params`.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatMLP(seed_spec()), init_mlp_numpy(seed_spec(), 0))
    >>> model.layers[0].alpha.item()
    1.0
    """
    arrays = check_params(params, model.spec)
    current = dict(tree_flatten(model.trainable_parameters()))
    updates = []
    for name, value in arrays.items():
        native = _native_name(name)
        updates.append((native, mx.array(np.asarray(value), dtype=current[native].dtype)))
    model.update(tree_unflatten(updates))
    mx.eval(model.parameters())
    return model


def count_params(model: nn.Module) -> int:
    """Learnable scalars, counted as MLX users do (sizes of ``trainable_parameters()``).

    Examples
    --------
    >>> count_params(YatNMN(784, 256))
    200961
    """
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))


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


class MLXRunner:
    """Trains a :class:`YatMLP` with ``mlx.optimizers.AdamW`` (bias correction on), step under ``mx.compile``."""

    name = "mlx"
    framework = "mlx"

    def __init__(self, spec: MLPSpec, config: Any) -> None:
        self.spec = spec
        self.backend = MLXBackend(config.device)  # also makes its device MLX's default
        self.dtype = getattr(mx, config.dtype)
        self.model = build_model(spec, config.seed, dtype=self.dtype)
        opt = config.optimizer()
        # MLX's AdamW decays every parameter it updates: all of them, as the core does.
        self.optimizer = optim.AdamW(learning_rate=opt.lr, betas=[opt.b1, opt.b2], eps=opt.eps,
                                     weight_decay=opt.weight_decay, bias_correction=True)
        # Create the moments now so the compiled step sees the full state from its first call.
        self.optimizer.init(self.model.trainable_parameters())
        self.state = [self.model.state, self.optimizer.state]
        mx.eval(self.state)
        self._step = mx.compile(self._train_step, inputs=self.state, outputs=self.state)
        self._eval = mx.compile(self._eval_step, inputs=self.state)

    def _loss(self, model: YatMLP, x: mx.array, y: mx.array) -> mx.array:
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    def _train_step(self, images: mx.array, labels: mx.array, idx: mx.array) -> mx.array:
        x = flatten_images(mx.take(images, idx, axis=0), self.dtype, xp=mlx_namespace())
        y = mx.take(labels, idx, axis=0)
        loss, grads = nn.value_and_grad(self.model, self._loss)(self.model, x, y)
        self.optimizer.update(self.model, grads)
        return loss

    def _eval_step(self, images: mx.array, labels: mx.array) -> tuple[mx.array, mx.array]:
        logits = self.model(flatten_images(images, self.dtype, xp=mlx_namespace()))
        loss_sum = nn.losses.cross_entropy(logits, labels, reduction="sum")
        return loss_sum, mx.sum(mx.argmax(logits, axis=-1) == labels)

    def device_name(self) -> str:
        return self.backend.device_name()

    def n_params(self) -> int:
        return count_params(self.model)

    def put(self, a: np.ndarray) -> mx.array:
        return self.backend.asarray(a)

    def step(self, images: mx.array, labels: mx.array, idx: mx.array) -> mx.array:
        return self._step(images, labels, idx)

    def evaluate(self, images: mx.array, labels: mx.array) -> tuple[mx.array, mx.array]:
        return self._eval(images, labels)

    def settle(self, loss: Any) -> None:
        # MLX is lazy: run the step now, or one graph would grow across the epoch.
        mx.eval(loss, self.state)

    def synchronize(self, tree: Any) -> None:
        mx.eval(tree)

    def to_float(self, value: Any) -> float:
        return value.item()

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


def make_runner(spec: MLPSpec, config: Any) -> MLXRunner:
    """An :class:`MLXRunner` for ``yat-core train --framework mlx``.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.train import TrainConfig
    >>> make_runner(seed_spec(), TrainConfig()).n_params()
    235148
    """
    return MLXRunner(spec, config)
