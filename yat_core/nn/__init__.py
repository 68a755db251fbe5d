"""Framework-native Yat layers: thin shells over the core's functions.

One module per framework, each importing only its framework, each offering the
same contract (and nothing else: training lives in :mod:`yat_core.runners`):

``YatNMN``
    the dense Yat layer as a native module / layer, with the framework's own
    argument names and kernel layout, and the core's options and defaults
    (learnable alpha = 1.0, epsilon = 1e-5, learnable bias).
``build_model(spec, seed)``
    the native model of an :class:`~yat_core.mlp.MLPSpec`, with the weights of
    :func:`~yat_core.mlp.init_mlp_numpy` (the same seed gives the same weights in
    every framework).
``export_params(model)`` / ``import_params(model, params)``
    the weights as a plain ``{name: numpy array}`` mapping in the core's names and
    layouts (``"0.kernel"`` is ``(out, in)``), the interchange format.
``count_params(model)``, ``predict(model, x)``
    learnable scalars counted the framework's own way; logits as NumPy.

What every framework shares is written once: option handling in
:mod:`yat_core.nn.options`, names, layouts and files in :mod:`yat_core.nn.interchange`.
Modules load lazily: :func:`get_framework` imports one on demand and an absent
framework is a one-line error naming the extra to install.
"""

from __future__ import annotations

from types import ModuleType

from yat_core._lazy import LazyEntry, load_entry

__all__ = ["FRAMEWORKS", "get_framework"]

#: Framework name -> its layer module, the import it needs and the extra that installs it.
FRAMEWORKS: dict[str, LazyEntry] = {
    "torch": LazyEntry("yat_core.nn.torch", "torch", "torch"),
    "nnx": LazyEntry("yat_core.nn.nnx", "flax.nnx", "nnx"),
    "linen": LazyEntry("yat_core.nn.linen", "flax.linen", "linen"),
    "mlx": LazyEntry("yat_core.nn.mlx", "mlx.nn", "mlx"),
    "keras": LazyEntry("yat_core.nn.keras", "keras", "keras"),
    "tf": LazyEntry("yat_core.nn.tf", "tensorflow", "tf"),
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
    return load_entry(FRAMEWORKS, name, "framework")
