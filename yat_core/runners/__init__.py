"""Runners: what the training loop drives, and the one factory that builds them.

A runner owns a model, its optimizer and its device; the loop
(:func:`yat_core.train.train`) owns everything that must be identical across
frameworks (initial weights, batch order, evaluation, receipt). Two kinds:

- :class:`~yat_core.runners.core.CoreRunner`: the core's functional model and AdamW,
  compiled by a backend of :mod:`yat_core.backends` (``--backend``);
- a framework's native model of :mod:`yat_core.nn` with that framework's own
  optimizer (``--framework``), one module per framework in this package.

:func:`make_runner` picks one from a :class:`~yat_core.train.TrainConfig`; framework
modules load lazily, and an absent framework is a one-line error naming the extra.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from yat_core._lazy import LazyEntry, load_entry
from yat_core.errors import BackendUnavailableError
from yat_core.nn import FRAMEWORKS
from yat_core.runners._base import BaseRunner, Runner

if TYPE_CHECKING:
    from yat_core.config import TrainConfig
    from yat_core.mlp import MLPSpec

__all__ = [
    "Runner",
    "BaseRunner",
    "FRAMEWORK_RUNNERS",
    "KERAS_BACKENDS",
    "DEFAULT_KERAS_BACKEND",
    "make_runner",
    "select_keras_backend",
]


#: ``--framework`` choices: each framework of :mod:`yat_core.nn` has its runner module here.
FRAMEWORK_RUNNERS: dict[str, LazyEntry] = {
    name: entry._replace(module=f"yat_core.runners.{name}") for name, entry in FRAMEWORKS.items()
}
KERAS_BACKENDS = ("jax", "torch", "tensorflow")
DEFAULT_KERAS_BACKEND = "jax"


def select_keras_backend(name: str) -> None:
    """Make Keras start on backend ``name``; call before anything imports Keras.

    Keras reads ``KERAS_BACKEND`` once, when it is first imported, so a process that
    already imported it with another backend cannot switch.

    Raises
    ------
    BackendUnavailableError
        For an unknown backend, or Keras already imported with a different one.

    Examples
    --------
    >>> select_keras_backend("theano")
    Traceback (most recent call last):
    ...
    yat_core.errors.BackendUnavailableError: unknown Keras backend 'theano'; choose one of: jax, torch, tensorflow
    """
    if name not in KERAS_BACKENDS:
        raise BackendUnavailableError(f"unknown Keras backend {name!r}; choose one of: {', '.join(KERAS_BACKENDS)}")
    keras = sys.modules.get("keras")
    if keras is not None:
        active = keras.config.backend()
        if active != name:
            raise BackendUnavailableError(
                f"Keras was already imported in this process with backend {active!r}; it cannot switch to "
                f"{name!r}. Run in a fresh process (e.g. KERAS_BACKEND={name} yat-core train ...)"
            )
    os.environ["KERAS_BACKEND"] = name


def make_runner(spec: MLPSpec, config: TrainConfig) -> Runner:
    """The runner ``config`` asks for: a framework's native model, else the core on a backend.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.config import TrainConfig
    >>> make_runner(seed_spec(), TrainConfig(backend="numpy")).name
    'numpy'
    >>> make_runner(seed_spec(), TrainConfig(framework="caffe"))
    Traceback (most recent call last):
    ...
    yat_core.errors.BackendUnavailableError: unknown framework 'caffe'; choose one of: torch, nnx, linen, mlx, keras, tf
    """
    if config.framework is None:
        from yat_core.backends import get_backend
        from yat_core.runners.core import CoreRunner

        if config.resolved_backend() in ("mlx", "jax"):
            # Checked before the backend starts, naming the flag, as the MLX and Flax runners do.
            import importlib

            importlib.import_module(f"yat_core.backends.{config.resolved_backend()}").check_dtype(
                config.dtype, "--dtype"
            )
        return CoreRunner(get_backend(config.resolved_backend(), config.device, config.gradients, spec), spec, config)
    if config.framework == "keras":
        select_keras_backend(config.keras_backend or DEFAULT_KERAS_BACKEND)
    runner: Runner = load_entry(FRAMEWORK_RUNNERS, config.framework, "framework").RUNNER_CLASS(spec, config)
    return runner
