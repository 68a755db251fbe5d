"""Which backends and devices this machine can time.

Every installed backend is timed on the CPU; PyTorch and JAX also on a CUDA GPU
and MLX on its GPU (Metal, or CUDA builds) when one is present. Frameworks are
imported here only to ask for their devices.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "Target",
    "BACKEND_ORDER",
    "DEVICE_KINDS",
    "installed_backends",
    "backend_devices",
    "parse_devices",
    "discover",
]

#: Rows of every table, in this order.
BACKEND_ORDER = ("numpy", "torch", "jax", "mlx")


class Target(NamedTuple):
    """One backend on one device: a row of the results."""

    backend: str
    device: str

    @property
    def label(self) -> str:
        """``"jax/cpu"``: the row label and the pytest id."""
        return f"{self.backend}/{self.device}"


def installed_backends(wanted: tuple[str, ...] | None = None) -> list[str]:
    """Backends of :data:`BACKEND_ORDER` (or ``wanted``) that yat-core can instantiate here.

    Each framework is imported through :func:`yat_core.backends.get_backend`, never
    directly: the backend may have to prepare the import (e.g. an opt-in BLAS
    loaded before MLX), and this process later measures the same framework.
    """
    from yat_core.backends import BACKENDS, get_backend
    from yat_core.errors import BackendUnavailableError

    names = []
    for name in wanted or BACKEND_ORDER:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_ORDER)}")
        try:
            get_backend(name, "cpu")
        except (BackendUnavailableError, ImportError):
            continue
        names.append(name)
    return names


def _torch_gpus() -> list[str]:
    import torch

    return ["cuda"] if torch.cuda.is_available() else []


def _jax_gpus() -> list[str]:
    import jax

    try:
        return ["cuda"] if jax.devices("gpu") else []
    except RuntimeError:  # no GPU platform in this jaxlib
        return []


def _mlx_gpus() -> list[str]:
    import mlx.core as mx

    return ["gpu"] if mx.is_available(mx.gpu) else []


_GPU_PROBES = {"torch": _torch_gpus, "jax": _jax_gpus, "mlx": _mlx_gpus}


def backend_devices(backend: str) -> list[str]:
    """Devices to time ``backend`` on: ``"cpu"`` first, then any GPU it can use."""
    probe = _GPU_PROBES.get(backend)
    return ["cpu"] + (probe() if probe else [])


#: Device kinds a run can be limited to (``--bench-devices``, ``--devices``).
DEVICE_KINDS = ("cpu", "cuda", "gpu")


def parse_devices(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated list of device kinds (``"cuda"``, ``"cpu,cuda"``), checked; None for no limit.

    Examples
    --------
    >>> parse_devices("cpu, cuda"), parse_devices(None)
    (('cpu', 'cuda'), None)
    >>> parse_devices("tpu")
    Traceback (most recent call last):
    ...
    ValueError: unknown device kind 'tpu'; choose from cpu, cuda, gpu
    """
    if not text:
        return None
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    for kind in kinds:
        if kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device kind {kind!r}; choose from {', '.join(DEVICE_KINDS)}")
    return kinds or None


def discover(wanted: tuple[str, ...] | None = None, devices: tuple[str, ...] | None = None) -> list[Target]:
    """Every (backend, device) pair to time, in table order; only ``devices`` kinds when given."""
    return [
        Target(b, d) for b in installed_backends(wanted) for d in backend_devices(b) if devices is None or d in devices
    ]
