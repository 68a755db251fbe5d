"""The NumPy reference backend: float64-capable, analytic gradients, no compiler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat.numpy as np_xp

from yat_core.backends._base import Backend
from yat_core.errors import BackendUnavailableError


class NumpyBackend(Backend):
    """Reference backend; gradients come from :func:`yat_core.mlp.mlp_value_and_grad`."""

    name = "numpy"
    framework = "numpy"
    xp = np_xp

    default_gradients = "analytic"

    def __init__(self, device: str | None = None, gradients: str | None = None, spec: Any = None) -> None:
        if device not in (None, "cpu"):
            raise BackendUnavailableError(f"the numpy backend runs on the cpu only, not {device!r}")
        if gradients == "autodiff":
            raise BackendUnavailableError("NumPy has no autodiff: the numpy backend's gradients are analytic")
        super().__init__("cpu", gradients, spec)

    def value_and_grad(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        raise BackendUnavailableError(
            "NumPy has no autodiff; the numpy backend differentiates the model analytically (loss_and_grad)"
        )


BACKEND_CLASS = NumpyBackend
