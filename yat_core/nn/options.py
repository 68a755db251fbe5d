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
from typing import Any, Literal

import numpy as np

from yat_core.mlp import LEARNABLE, LayerSpec, Option, forward_options
from yat_core.product import DEFAULT_EPSILON

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
    >>> spec = yat_layer_spec(4, 3, bias=False, alpha=2.0)
    >>> spec.kind, spec.in_features, spec.out_features, spec.bias, spec.alpha, spec.epsilon
    ('yat', 4, 3, None, 2.0, 1e-05)
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
    return _yat_options(spec)


def _yat_options(spec: LayerSpec) -> dict[str, Any]:
    return {
        "bias": native_option(spec.bias),
        "alpha": native_option(spec.alpha),
        "epsilon": spec.epsilon,
        "learnable_epsilon": spec.learnable_epsilon,
        "spherical": spec.spherical,
    }


def _per_dim(value: Any, n: int, name: str) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, numbers.Integral) and not isinstance(value, bool) else tuple(value)
    if len(values) != n or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    return tuple(int(v) for v in values)


def conv_layer_spec(
    in_channels: int,
    out_channels: int,
    kernel_size: Any,
    *,
    n_spatial: int,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    output_padding: Any = None,
    bias: Any = True,
    alpha: Any = True,
    epsilon: float = DEFAULT_EPSILON,
    learnable_epsilon: bool = False,
    spherical: bool = False,
    names: tuple[str, str] = ("in_channels", "out_channels"),
) -> LayerSpec:
    """The core's description of a native Yat convolution (``output_padding`` given: a transposed one).

    Ints expand to one per spatial dimension (``n_spatial`` of them); ``padding`` may
    also be ``"valid"`` or ``"same"`` (convolutions only). The core's checks run here,
    so every framework refuses the same arguments with the same message.

    Examples
    --------
    >>> spec = conv_layer_spec(1, 32, 3, n_spatial=2)
    >>> spec.kind, spec.kernel_size, spec.param_shapes["kernel"]
    ('yat_conv', (3, 3), (32, 1, 3, 3))
    >>> conv_layer_spec(8, 4, 2, n_spatial=1, stride=2, output_padding=1).param_shapes["kernel"]
    (8, 4, 2)
    """
    transpose = output_padding is not None
    if isinstance(padding, str):
        if transpose or padding not in ("valid", "same"):
            raise ValueError(f"padding must be an int, a tuple of ints, 'valid' or 'same', got {padding!r}")
        pads: tuple[int, ...] | str = padding
    else:
        pads = _per_dim(padding, n_spatial, "padding")
    return LayerSpec(
        "yat_conv_transpose" if transpose else "yat_conv",
        check_size(in_channels, names[0]),
        check_size(out_channels, names[1]),
        bias=layer_option(bias, "bias"),
        alpha=layer_option(alpha, "alpha"),
        epsilon=float(epsilon),
        learnable_epsilon=bool(learnable_epsilon),
        spherical=bool(spherical),
        kernel_size=_per_dim(kernel_size, n_spatial, "kernel_size"),
        stride=_per_dim(stride, n_spatial, "stride"),
        padding=pads,
        dilation=_per_dim(dilation, n_spatial, "dilation"),
        groups=check_size(groups, "groups"),
        output_padding=_per_dim(output_padding, n_spatial, "output_padding") if transpose else (),
    )


def conv_spec_options(spec: LayerSpec) -> dict[str, Any]:
    """A Yat convolution spec's options as native arguments (for ``from_spec``).

    Examples
    --------
    >>> conv_spec_options(conv_layer_spec(1, 32, 3, n_spatial=2))["kernel_size"]
    (3, 3)
    """
    if spec.kind not in ("yat_conv", "yat_conv_transpose"):
        raise ValueError(f"a Yat convolution is built from a spec of kind 'yat_conv', not {spec.kind!r}")
    return {**_yat_options(spec), "kernel_size": spec.kernel_size, **spec.conv_options}
