"""The NumPy reference backend: float64-capable, analytic gradients, no compiler."""

from __future__ import annotations

import functools
from typing import Any, Callable

import array_api_compat.numpy as np_xp

from yat_core.backends._base import Backend, Params
from yat_core.errors import BackendUnavailableError
from yat_core.mlp import MLPSpec, mlp_value_and_grad


class NumpyBackend(Backend):
    """Reference backend; gradients come from :func:`yat_core.mlp.mlp_value_and_grad`."""

    name = "numpy"
    framework = "numpy"
    xp = np_xp

    def __init__(self, device: str | None = None) -> None:
        if device not in (None, "cpu"):
            raise BackendUnavailableError(f"the numpy backend runs on the cpu only, not {device!r}")
        super().__init__("cpu")

    def value_and_grad(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError(
            "NumPy has no autodiff; the numpy backend differentiates the model analytically "
            "(loss_and_grad)"
        )

    def loss_and_grad(self, spec: MLPSpec) -> Callable[[Params, Any, Any], tuple[Any, Params]]:
        return functools.partial(_analytic, spec=spec)


def _analytic(params: Params, images: Any, labels: Any, *, spec: MLPSpec) -> tuple[Any, Params]:
    return mlp_value_and_grad(params, images, labels, spec, xp=np_xp)


BACKEND_CLASS = NumpyBackend
