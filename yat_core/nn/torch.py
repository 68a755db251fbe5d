"""PyTorch: the Yat layer as a ``torch.nn.Module``, the seed model, and its training run.

Layout and names follow PyTorch: a layer's kernel is ``weight`` of shape
``(out_features, in_features)`` (the core's layout, so interchange copies it
as is), and the model is a ``torch.nn.Sequential`` whose children are named
``"0"``, ``"1"``, ... after the spec's layers, so ``state_dict()`` keys read
``"0.weight"``, ``"0.alpha"``, ``"2.bias"``. The interchange names replace
``weight`` with ``kernel``.

Training uses ``torch.optim.AdamW`` and ``torch.nn.functional.cross_entropy`` in
eager mode, PyTorch's default idiom.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import array_api_compat.torch as torch_xp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from yat_core.backends.torch import TorchBackend
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
    "TorchRunner",
]

#: Distributions whose versions a receipt of this framework records.
DISTRIBUTIONS = ("torch",)


class YatNMN(nn.Module):
    """Dense Yat layer: ``alpha * (x @ weight.T + bias)**2 / (|x - weight_j|**2 + epsilon)``.

    A thin shell over :func:`yat_core.product.yat_product`.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output sample.
    bias : bool or float
        ``True``: a learnable bias (initialised uniform ``±1/sqrt(in_features)``);
        ``False``: none; a number: that constant added to every unit.
    alpha : bool or float
        ``True``: a learnable scale initialised to 1.0; ``False``: none; a number:
        that constant scale (e.g. ``math.sqrt(2)``).
    epsilon : float
        Added to the squared distance (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Learn epsilon as ``softplus(epsilon_raw)``.
    spherical : bool
        Normalise inputs and kernel rows first.
    device, dtype
        As for :class:`torch.nn.Linear`.

    Notes
    -----
    A fresh layer draws its kernel with :func:`torch.nn.init.xavier_normal_` (the
    core's distribution) from PyTorch's global generator. :func:`build_model`
    instead loads :func:`yat_core.mlp.init_mlp_numpy`, identical in every framework.

    Examples
    --------
    >>> layer = YatNMN(4, 3)
    >>> sorted(name for name, _ in layer.named_parameters())
    ['alpha', 'bias', 'weight']
    >>> layer(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool | float = True,
        alpha: bool | float = True,
        epsilon: float = DEFAULT_EPSILON,
        learnable_epsilon: bool = False,
        spherical: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.spec = yat_layer_spec(in_features, out_features, bias=bias, alpha=alpha, epsilon=epsilon,
                                   learnable_epsilon=learnable_epsilon, spherical=spherical)
        self.in_features, self.out_features = self.spec.in_features, self.spec.out_features
        factory = {"device": device, "dtype": dtype}
        shapes = self.spec.param_shapes  # the learnable ones only, in the core's order
        for core_name, native in (("kernel", "weight"), ("bias", "bias"), ("alpha", "alpha"),
                                  ("epsilon_raw", "epsilon_raw")):
            shape = shapes.get(core_name)
            # Absent parameters are registered as None, as nn.Linear(bias=False) does.
            self.register_parameter(native, None if shape is None else nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    @classmethod
    def from_spec(cls, spec: LayerSpec, **factory: Any) -> "YatNMN":
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.in_features, spec.out_features, bias=native_option(spec.bias),
                   alpha=native_option(spec.alpha), epsilon=spec.epsilon,
                   learnable_epsilon=spec.learnable_epsilon, spherical=spec.spherical, **factory)

    def reset_parameters(self) -> None:
        """Draw fresh initial values (the core's distributions, PyTorch's generator)."""
        nn.init.xavier_normal_(self.weight)
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)
            if self.alpha is not None:
                self.alpha.fill_(1.0)
            if self.epsilon_raw is not None:
                self.epsilon_raw.fill_(softplus_inverse(self.spec.epsilon))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        bias = self.bias if spec.bias == LEARNABLE else spec.bias
        alpha = self.alpha if spec.alpha == LEARNABLE else spec.alpha
        epsilon = softplus(self.epsilon_raw, xp=torch_xp) if spec.learnable_epsilon else spec.epsilon
        return yat_product(x, self.weight, bias=bias, alpha=alpha, epsilon=epsilon,
                           spherical=spec.spherical, xp=torch_xp)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"in_features={s.in_features}, out_features={s.out_features}, bias={native_option(s.bias)}, "
                f"alpha={native_option(s.alpha)}, epsilon={s.epsilon}, learnable_epsilon={s.learnable_epsilon}, "
                f"spherical={s.spherical}")


class _Linear(nn.Linear):
    """``nn.Linear`` plus what a core linear layer may add: a constant bias and a ReLU."""

    def __init__(self, spec: LayerSpec, **factory: Any) -> None:
        super().__init__(spec.in_features, spec.out_features, bias=spec.bias == LEARNABLE, **factory)
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.spec.bias not in (LEARNABLE, None):
            out = out + self.spec.bias
        return F.relu(out) if self.spec.activation == "relu" else out


class YatMLP(nn.Sequential):
    """The MLP of an :class:`~yat_core.mlp.MLPSpec`: flatten, then one child per layer.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> model = YatMLP(seed_spec())
    >>> list(model.state_dict())[:3]
    ['0.weight', '0.bias', '0.alpha']
    >>> model(torch.zeros(2, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, spec: MLPSpec, **factory: Any) -> None:
        super().__init__(*(
            YatNMN.from_spec(layer, **factory) if layer.kind == "yat" else _Linear(layer, **factory)
            for layer in spec.layers
        ))
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.flatten(x, 1))


def _core_name(native: str) -> str:
    index, attr = native.split(".", 1)
    return f"{index}.{'kernel' if attr == 'weight' else attr}"


def build_model(spec: MLPSpec, seed: int, *, device: Any = None, dtype: Any = torch.float32) -> YatMLP:
    """The native model of ``spec`` with the weights of :func:`~yat_core.mlp.init_mlp_numpy`.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> count_params(build_model(seed_spec(), seed=0))
    235148
    """
    model = YatMLP(spec, device=device, dtype=dtype)
    # Drawn in the model's dtype, as the core draws them (float32 values are not float64 ones).
    return import_params(model, init_mlp_numpy(spec, seed, np.dtype(str(dtype).removeprefix("torch."))))


def export_params(model: YatMLP) -> dict[str, np.ndarray]:
    """The model's parameters as ``{core name: numpy array}`` (``"0.kernel"`` is ``(out, in)``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> params = export_params(build_model(seed_spec(), 0))
    >>> params["0.kernel"].shape, params["0.alpha"].shape
    ((256, 784), ())
    """
    return {_core_name(name): p.detach().cpu().numpy().copy() for name, p in model.named_parameters()}


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
    """Copy ``params`` (core names and layouts) into ``model`` in place and return it.

    Values are cast to each parameter's dtype and device; names and shapes are
    checked first by :func:`yat_core.nn.interchange.check_params`.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatMLP(seed_spec()), init_mlp_numpy(seed_spec(), 1))
    >>> model[0].alpha.item()
    1.0
    """
    arrays = check_params(params, model.spec)
    native = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in native.items():
            p.copy_(torch.from_numpy(np.asarray(arrays[_core_name(name)], order="C")))
    return model


def count_params(model: nn.Module) -> int:
    """Learnable scalars, counted as PyTorch users do (``numel`` of each trainable parameter).

    Examples
    --------
    >>> count_params(YatNMN(784, 256))
    200961
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def predict(model: YatMLP, x: np.ndarray) -> np.ndarray:
    """Logits for float inputs ``x`` (NumPy, ``(n, in)``), as a NumPy array.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> predict(build_model(seed_spec(), 0), np.zeros((3, 784), np.float32)).shape
    (3, 10)
    """
    p = next(model.parameters())
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(x)).to(p.device, p.dtype)).cpu().numpy()


class TorchRunner:
    """Trains a :class:`YatMLP` with ``torch.optim.AdamW``, eagerly, for :func:`yat_core.train.train`."""

    name = "torch"
    framework = "torch"

    def __init__(self, spec: MLPSpec, config: Any) -> None:
        self.spec = spec
        self.backend = TorchBackend(config.device)
        self.dtype = getattr(torch, config.dtype)
        self.model = build_model(spec, config.seed, device=self.backend.torch_device, dtype=self.dtype)
        opt = config.optimizer()
        # AdamW decays every parameter passed to it: all of them, as the core does.
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2),
                                           eps=opt.eps, weight_decay=opt.weight_decay)

    def device_name(self) -> str:
        return self.backend.device_name()

    def n_params(self) -> int:
        return count_params(self.model)

    def put(self, a: np.ndarray) -> torch.Tensor:
        return self.backend.asarray(a)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return flatten_images(images, self.dtype, xp=torch_xp)

    def step(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        self.model.train()
        x = self._inputs(torch.index_select(images, 0, idx))
        y = torch.index_select(labels, 0, idx).long()
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        with torch.no_grad():
            logits = self.model(self._inputs(images))
            loss_sum = F.cross_entropy(logits, labels.long(), reduction="sum")
            correct = (logits.argmax(dim=-1) == labels.long()).sum()
        return loss_sum, correct

    def settle(self, loss: Any) -> None:
        """Nothing to do: PyTorch runs eagerly."""

    def synchronize(self, tree: Any) -> None:
        self.backend.synchronize(tree)

    def to_float(self, value: Any) -> float:
        return float(value)

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


def make_runner(spec: MLPSpec, config: Any) -> TorchRunner:
    """A :class:`TorchRunner` for ``yat-core train --framework torch``.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.train import TrainConfig
    >>> make_runner(seed_spec(), TrainConfig()).n_params()
    235148
    """
    return TorchRunner(spec, config)
