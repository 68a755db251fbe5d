"""Framework-neutral layer options: what every framework's layer accepts, resolved once.

A native layer's ``bias`` / ``alpha`` arguments take ``True`` (learnable), ``False``
(absent) or a number (constant) in every framework; :func:`yat_layer_spec` turns
them, with epsilon and the spherical flag, into the core's
:class:`~yat_core.mlp.LayerSpec` (running the core's checks), which the layer keeps
and hands to :func:`yat_core.yat_product`. :func:`spec_options` goes back the other
way for ``from_spec``; :func:`forward_options` picks each option's value (the
learnable parameter or the constant) for the forward pass.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from yat_core.mlp import LEARNABLE, LayerSpec, Option
from yat_core.product import DEFAULT_EPSILON, softplus

__all__ = [
    "layer_option",
    "native_option",
    "yat_layer_spec",
    "linear_layer_spec",
    "spec_options",
    "forward_options",
    "check_size",
]


def check_size(value: Any, name: str) -> int:
    """A layer size: a positive integer (``True`` or ``4.9`` are refused, not truncated).

    Examples
    --------
    >>> check_size(4, "units")
    4
    >>> check_size(4.9, "units")
    Traceback (most recent call last):
    ...
    TypeError: units must be a positive integer, got 4.9
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def layer_option(value: Any, name: str) -> Option:
    """A native layer's ``bias`` / ``alpha`` argument as the core's option.

    ``True`` or ``"learnable"``: a learnable parameter; ``False`` or ``None``:
    absent; a number: a constant.

    Examples
    --------
    >>> layer_option(True, "bias"), layer_option(False, "bias"), layer_option(2, "alpha")
    ('learnable', None, 2.0)
    """
    if value is True or (isinstance(value, str) and value == LEARNABLE):
        return LEARNABLE
    if value is False or value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise ValueError(f"{name} must be True (learnable), False/None (absent) or a number (constant), got {value!r}")


def native_option(option: Option) -> bool | float:
    """The inverse of :func:`layer_option`: ``True``, ``False`` or the constant.

    Examples
    --------
    >>> native_option("learnable"), native_option(None), native_option(0.5)
    (True, False, 0.5)
    """
    if option == LEARNABLE:
        return True
    return False if option is None else float(option)


def yat_layer_spec(
    in_features: int,
    out_features: int,
    *,
    bias: Any = True,
    alpha: Any = True,
    epsilon: float = DEFAULT_EPSILON,
    learnable_epsilon: bool = False,
    spherical: bool = False,
    names: tuple[str, str] = ("in_features", "out_features"),
) -> LayerSpec:
    """The core's description of a native Yat layer built with these arguments.

    The native layers keep it as ``layer.spec`` and hand its options to
    :func:`yat_core.product.yat_product`; building it also runs the core's checks
    (``epsilon > 0``, integer sizes >= 1). ``names`` are the framework's names of the
    two sizes, for the error messages (e.g. ``("input_dims", "output_dims")`` in MLX).

    Examples
    --------
    >>> yat_layer_spec(4, 3, bias=False, alpha=2.0)
    LayerSpec(kind='yat', in_features=4, out_features=3, bias=None, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False, activation=None)
    """
    return LayerSpec(
        "yat",
        check_size(in_features, names[0]),
        check_size(out_features, names[1]),
        bias=layer_option(bias, "bias"),
        alpha=layer_option(alpha, "alpha"),
        epsilon=float(epsilon),
        learnable_epsilon=bool(learnable_epsilon),
        spherical=bool(spherical),
    )


def linear_layer_spec(
    in_features: int,
    out_features: int,
    *,
    bias: Any = True,
    activation: Literal["relu"] | None = None,
    names: tuple[str, str] = ("in_features", "out_features"),
) -> LayerSpec:
    """The core's description of a linear layer (``x @ kernel.T + bias``, optional ReLU).

    Examples
    --------
    >>> linear_layer_spec(128, 10).param_shapes
    {'kernel': (10, 128), 'bias': (10,)}
    """
    return LayerSpec(
        "linear",
        check_size(in_features, names[0]),
        check_size(out_features, names[1]),
        bias=layer_option(bias, "bias"),
        activation=activation,
    )


def spec_options(spec: LayerSpec) -> dict[str, Any]:
    """A Yat layer spec's options as native arguments (for ``from_spec``).

    Examples
    --------
    >>> spec_options(yat_layer_spec(4, 3, alpha=2.0))
    {'bias': True, 'alpha': 2.0, 'epsilon': 1e-05, 'learnable_epsilon': False, 'spherical': False}
    """
    if spec.kind != "yat":
        raise ValueError(f"a Yat layer is built from a spec of kind 'yat', not {spec.kind!r}")
    return {
        "bias": native_option(spec.bias),
        "alpha": native_option(spec.alpha),
        "epsilon": spec.epsilon,
        "learnable_epsilon": spec.learnable_epsilon,
        "spherical": spec.spherical,
    }


def forward_options(spec: LayerSpec, param: Callable[[str], Any], xp: Any) -> dict[str, Any]:
    """``yat_product``'s keyword options for a layer: learnable values from ``param(name)``, else the spec's.

    Examples
    --------
    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> spec = yat_layer_spec(4, 3, bias=0.5, learnable_epsilon=True)
    >>> opts = forward_options(spec, lambda name: np.float64(1.0), xp)
    >>> opts["bias"], opts["alpha"], round(float(opts["epsilon"]), 4)
    (0.5, np.float64(1.0), 1.3133)
    """
    return {
        "bias": param("bias") if spec.bias == LEARNABLE else spec.bias,
        "alpha": param("alpha") if spec.alpha == LEARNABLE else spec.alpha,
        "epsilon": softplus(param("epsilon_raw"), xp=xp) if spec.learnable_epsilon else spec.epsilon,
        "spherical": spec.spherical,
    }
