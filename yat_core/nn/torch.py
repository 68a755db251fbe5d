"""PyTorch: the Yat layer as a ``torch.nn.Module`` and the model of an :class:`~yat_core.mlp.MLPSpec`.

Layout and names follow PyTorch: a layer's kernel is ``weight`` of shape
``(out_features, in_features)`` (the core's layout, so interchange copies it
as is), absent parameters are registered as ``None`` (as ``nn.Linear(bias=False)``
does), and the model is a ``torch.nn.Sequential`` whose children are named
``"0"``, ``"1"``, ... after the spec's layers, so ``state_dict()`` keys read
``"0.weight"``, ``"0.alpha"``, ``"2.bias"``. The interchange names replace
``weight`` with ``kernel``.

The layer is plain tensor code over :func:`yat_core.product.yat_product`, so it
works with ``state_dict``, ``torch.export``, ``torch.compile``, ``torch.func``
(``vmap``, ``grad``, ``functional_call``) and ``torch.autograd.gradcheck``.
Training lives in :mod:`yat_core.runners.torch`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import array_api_compat.torch as torch_xp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from yat_core.mlp import LEARNABLE, LayerSpec, MLPSpec, init_mlp_numpy
from yat_core.nn.interchange import export_arrays, import_arrays
from yat_core.nn.options import forward_options, spec_options, yat_layer_spec
from yat_core.product import DEFAULT_EPSILON, softplus_inverse, yat_product

__all__ = ["YatNMN", "YatMLP", "build_model", "export_params", "import_params", "count_params", "predict"]

#: Core parameter name -> PyTorch attribute, where they differ (``nn.Linear`` calls the kernel ``weight``).
_ATTR = {"kernel": "weight"}


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
    >>> YatNMN(4, 3, bias=False, alpha=2.0)
    YatNMN(in_features=4, out_features=3, bias=False, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False)
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    alpha: nn.Parameter | None
    epsilon_raw: nn.Parameter | None

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
        self.spec = yat_layer_spec(
            in_features,
            out_features,
            bias=bias,
            alpha=alpha,
            epsilon=epsilon,
            learnable_epsilon=learnable_epsilon,
            spherical=spherical,
        )
        self.in_features, self.out_features = self.spec.in_features, self.spec.out_features
        shapes = self.spec.param_shapes  # the learnable ones only
        for name in ("kernel", "bias", "alpha", "epsilon_raw"):
            shape = shapes.get(name)
            param = None if shape is None else nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
            self.register_parameter(_ATTR.get(name, name), param)
        self.reset_parameters()

    @classmethod
    def from_spec(cls, spec: LayerSpec, **factory: Any) -> YatNMN:
        """The layer described by a core :class:`~yat_core.mlp.LayerSpec` (kind ``"yat"``)."""
        return cls(spec.in_features, spec.out_features, **spec_options(spec), **factory)

    def reset_parameters(self) -> None:
        """Draw fresh initial values (the core's distributions, PyTorch's generator)."""
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)
        if self.alpha is not None:
            nn.init.ones_(self.alpha)
        if self.epsilon_raw is not None:
            nn.init.constant_(self.epsilon_raw, softplus_inverse(self.spec.epsilon))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        options = forward_options(self.spec, lambda name: getattr(self, name), torch_xp)
        return yat_product(x, self.weight, **options, xp=torch_xp)

    def extra_repr(self) -> str:
        options = spec_options(self.spec)
        return ", ".join(
            f"{k}={v}"
            for k, v in {"in_features": self.in_features, "out_features": self.out_features, **options}.items()
        )


class _Linear(nn.Linear):
    """``nn.Linear`` plus what a core linear layer may add: a constant bias and a ReLU."""

    def __init__(self, spec: LayerSpec, **factory: Any) -> None:
        super().__init__(spec.in_features, spec.out_features, bias=spec.bias == LEARNABLE, **factory)
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if isinstance(self.spec.bias, float):  # a constant; a learnable one is nn.Linear's
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
        super().__init__(
            *(
                YatNMN.from_spec(layer, **factory) if layer.kind == "yat" else _Linear(layer, **factory)
                for layer in spec.layers
            )
        )
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.flatten(x, 1))


def build_model(spec: MLPSpec, seed: int, *, device: Any = None, dtype: torch.dtype = torch.float32) -> YatMLP:
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


def _param(model: YatMLP, index: int, name: str) -> torch.Tensor:
    return model[index].get_parameter(_ATTR.get(name, name))


def export_params(model: YatMLP) -> dict[str, np.ndarray]:
    """The model's parameters as ``{core name: numpy array}`` (``"0.kernel"`` is ``(out, in)``).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> params = export_params(build_model(seed_spec(), 0))
    >>> params["0.kernel"].shape, params["0.alpha"].shape
    ((256, 784), ())
    """
    return export_arrays(model.spec, lambda i, name: _param(model, i, name).detach().cpu().numpy())


def import_params(model: YatMLP, params: Mapping[str, Any]) -> YatMLP:
    """Copy ``params`` (core names and layouts) into ``model`` in place and return it.

    Values are cast to each parameter's dtype and device; names, shapes and dtypes
    are checked first (:func:`yat_core.nn.interchange.check_params`), so a bad
    mapping leaves the model as it was.

    Examples
    --------
    >>> from yat_core.mlp import init_mlp_numpy, seed_spec
    >>> model = import_params(YatMLP(seed_spec()), init_mlp_numpy(seed_spec(), 1))
    >>> model[0].alpha.item()
    1.0
    """

    def write(index: int, name: str, value: np.ndarray) -> None:
        # torch.tensor copies: the source may be read-only or strided, which from_numpy cannot share.
        _param(model, index, name).copy_(torch.tensor(value))

    with torch.no_grad():
        import_arrays(model.spec, params, write)
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
