"""Framework-native Yat layers: thin shells over :func:`yat_core.yat_product`.

One module per framework, each importing only its framework, each offering the
same contract:

``YatNMN``
    the dense Yat layer as a native module / layer (same options and defaults as
    the core: learnable alpha = 1.0, epsilon = 1e-5, learnable bias).
``build_model(spec, seed)``
    the native model of an :class:`~yat_core.mlp.MLPSpec`, with the weights of
    :func:`~yat_core.mlp.init_mlp_numpy` (the same seed gives the same weights in
    every framework).
``export_params(model)`` / ``import_params(model, params)``
    the weights as a plain ``{name: numpy array}`` mapping in the core's names and
    layouts (``"0.kernel"`` is ``(out, in)``), the interchange format.
``count_params(model)``
    learnable scalars, counted the framework's own way.
``make_runner(spec, config)``
    a :class:`yat_core.train.Runner` that trains the native model with the
    framework's own optimizer (AdamW with the recipe's hyperparameters), for
    ``yat-core train --framework NAME``.

Modules load lazily: :func:`get_framework` imports one on demand and an absent
framework is a one-line error naming the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import NamedTuple

from yat_core._lazy import require
from yat_core.errors import BackendUnavailableError

__all__ = ["FRAMEWORKS", "get_framework"]


class _Entry(NamedTuple):
    module: str
    requires: str  # the import the module needs
    extra: str


FRAMEWORKS: dict[str, _Entry] = {
    "torch": _Entry("yat_core.nn.torch", "torch", "torch"),
    "nnx": _Entry("yat_core.nn.nnx", "flax.nnx", "nnx"),
    "linen": _Entry("yat_core.nn.linen", "flax.linen", "linen"),
    "mlx": _Entry("yat_core.nn.mlx", "mlx.nn", "mlx"),
    "keras": _Entry("yat_core.nn.keras", "keras", "keras"),
    "tf": _Entry("yat_core.nn.tf", "tensorflow", "tf"),
}


def get_framework(name: str) -> ModuleType:
    """The ``yat_core.nn`` module for framework ``name``, imported on demand.

    Examples
    --------
    >>> get_framework("caffe")
    Traceback (most recent call last):
    ...
    yat_core.errors.BackendUnavailableError: unknown framework 'caffe'; choose one of: torch, nnx, linen, mlx, keras, tf
    """
    entry = FRAMEWORKS.get(name)
    if entry is None:
        raise BackendUnavailableError(f"unknown framework {name!r}; choose one of: {', '.join(FRAMEWORKS)}")
    if name == "mlx":  # must precede MLX's import
        from yat_core.backends._mlx_blas import preload_blas

        preload_blas()
    require(entry.requires, entry.extra, f"framework {name!r}")
    return importlib.import_module(entry.module)
