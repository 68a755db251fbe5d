"""PyTorch backend: autograd gradients, tensors on the chosen device."""

from __future__ import annotations

from typing import Any, Callable

import array_api_compat.torch as torch_xp
import numpy as np
import torch

from yat_core.backends._base import Backend, Params
from yat_core.errors import BackendUnavailableError


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise BackendUnavailableError(f"torch does not know device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
    return resolved


class TorchBackend(Backend):
    """PyTorch through array-api-compat; gradients by ``torch.autograd.grad``."""

    name = "torch"
    framework = "torch"
    xp = torch_xp

    def __init__(self, device: str | None = None) -> None:
        self.torch_device = _resolve_device(device)
        super().__init__(str(self.torch_device))

    def device_name(self) -> str:
        if self.torch_device.type == "cuda":
            return f"{self.torch_device} ({torch.cuda.get_device_name(self.torch_device)})"
        return str(self.torch_device)

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.torch_device)

    def to_numpy(self, a: Any) -> np.ndarray:
        return a.detach().cpu().numpy()

    def synchronize(self, tree: Any = None) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def value_and_grad(self, fn: Callable[..., Any]) -> Callable[..., tuple[Any, Params]]:
        def value_and_grad_fn(params: Params, *args: Any) -> tuple[Any, Params]:
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            with torch.enable_grad():
                value = fn(leaves, *args)
                grads = torch.autograd.grad(value, list(leaves.values()))
            return value.detach(), dict(zip(leaves, grads))

        return value_and_grad_fn

    def compile(self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = ()) -> Callable[..., Any]:
        def no_grad_fn(*args: Any) -> Any:
            # Autograd is entered explicitly inside value_and_grad; elsewhere no graph is kept.
            with torch.no_grad():
                return fn(*args)

        return no_grad_fn


BACKEND_CLASS = TorchBackend
