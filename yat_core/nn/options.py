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

import contextvars
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, cast

import numpy as np

from yat_core.mlp import LEARNABLE, LayerSpec, ModelSpec, Option, forward_options
from yat_core.product import DEFAULT_EPSILON
from yat_core.spec import CONV_KINDS, TOKEN_KINDS

__all__ = [
    "NATIVE_KINDS",
    "check_native_kinds",
    "attention_spec_options",
    "conv_class",
    "layer_option",
    "native_option",
    "yat_layer_spec",
    "linear_layer_spec",
    "spec_options",
    "forward_options",
    "check_size",
    "check_epsilon",
    "check_flag",
    "score_options",
    "attention_layer_spec",
    "names_layer",
]


_Init = TypeVar("_Init", bound=Callable[..., None])
#: The layer whose constructor is running (the outermost one: the layer the caller built).
_BUILDING: contextvars.ContextVar[str | None] = contextvars.ContextVar("yat_core_building_layer", default=None)


def names_layer(init: _Init) -> _Init:
    """Decorate a layer's ``__init__`` (or Linen's ``__post_init__``) so its refusals name the layer.

    A ``TypeError`` or ``ValueError`` raised while the layer checks its arguments
    (:func:`check_size`, :func:`check_epsilon`, the core's :class:`~yat_core.spec.LayerSpec`
    checks, the framework's own) gets the framework and class as a prefix, e.g.
    ``"torch YatNMN: in_features must be a positive integer, got 4.9"``. A layer
    built inside another layer's constructor reports as the outer one, the layer its
    caller named.

    Examples
    --------
    >>> class Dense:
    ...     @names_layer
    ...     def __init__(self, units):
    ...         self.units = check_size(units, "units")
    >>> Dense(4.9)
    Traceback (most recent call last):
    ...
    TypeError: options Dense: units must be a positive integer, got 4.9
    """
    framework = init.__module__.rsplit(".", 1)[-1]

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        if _BUILDING.get() is not None:
            init(self, *args, **kwargs)
            return
        layer = f"{framework} {type(self).__name__}"
        token = _BUILDING.set(layer)
        try:
            init(self, *args, **kwargs)
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):  # the project's own errors keep their class
                raise
            raise type(exc)(f"{layer}: {exc}").with_traceback(exc.__traceback__) from None
        finally:
            _BUILDING.reset(token)

    # Keras reads a layer's arguments with getfullargspec, which does not follow __wrapped__.
    checked.__signature__ = inspect.signature(init)  # type: ignore[attr-defined]
    return cast(_Init, checked)


def check_size(value: Any, name: str) -> int:
    """A layer size: a positive integer (``True`` or ``4.9`` are refused, not truncated).

    Python and NumPy integers pass; ``bool`` and every float are refused, an integral
    one (``4.0``) too: a size computed in floating point is a mistake to show, not to
    round.

    Examples
    --------
    >>> check_size(4, "units"), check_size(np.int64(4), "units")
    (4, 4)
    >>> check_size(4.9, "units")
    Traceback (most recent call last):
    ...
    TypeError: units must be a positive integer, got 4.9
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_epsilon(value: Any, name: str = "epsilon") -> float:
    """A layer's epsilon: a finite real number > 0 (the initial value when it is learnable).

    Python and NumPy numbers pass; ``True``, strings and arrays are refused (a
    learnable epsilon is the layer's own parameter, made from this number).

    Examples
    --------
    >>> check_epsilon(1e-5), check_epsilon(np.float32(0.5))
    (1e-05, 0.5)
    >>> check_epsilon(True)
    Traceback (most recent call last):
    ...
    TypeError: epsilon must be a finite number > 0, got True
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number > 0, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_flag(value: Any, name: str) -> bool:
    """A switch (``learnable_epsilon``, ``spherical``): ``True`` or ``False``, not a truthy value.

    Examples
    --------
    >>> check_flag(np.True_, "spherical")
    True
    >>> check_flag("no", "spherical")
    Traceback (most recent call last):
    ...
    TypeError: spherical must be a bool (True or False), got 'no'
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
    return bool(value)


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
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite when it is a constant, got {value!r}")
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


def score_options(
    alpha: Any = True,
    epsilon: Any = DEFAULT_EPSILON,
    learnable_epsilon: Any = False,
    spherical: Any = False,
    *,
    alpha_name: str = "alpha",
) -> dict[str, Any]:
    """The Yat score's options of a native layer, checked, as :class:`~yat_core.spec.LayerSpec` arguments.

    ``alpha``: :func:`layer_option`; ``epsilon``: :func:`check_epsilon`; the two
    switches: :func:`check_flag`. ``alpha_name`` is the framework's name of ``alpha``
    (``"use_alpha"`` in Flax, Keras and TF), for the messages.

    Examples
    --------
    >>> score_options(alpha=2, epsilon=1e-3)
    {'alpha': 2.0, 'epsilon': 0.001, 'learnable_epsilon': False, 'spherical': False}
    """
    return {
        "alpha": layer_option(alpha, alpha_name),
        "epsilon": check_epsilon(epsilon),
        "learnable_epsilon": check_flag(learnable_epsilon, "learnable_epsilon"),
        "spherical": check_flag(spherical, "spherical"),
    }


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
    option_names: tuple[str, str] = ("bias", "alpha"),
) -> LayerSpec:
    """The core's description of a native Yat layer built with these arguments.

    The native layers keep it as ``layer.spec`` and hand its options to
    :func:`yat_core.product.yat_product`; building it also runs the core's checks
    (``epsilon > 0``, integer sizes >= 1). ``names`` are the framework's names of the
    two sizes, ``option_names`` of ``bias`` and ``alpha``, for the error messages
    (e.g. ``("input_dims", "output_dims")`` in MLX, ``("use_bias", "use_alpha")`` in Flax).

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
        bias=layer_option(bias, option_names[0]),
        **score_options(alpha, epsilon, learnable_epsilon, spherical, alpha_name=option_names[1]),
    )


def attention_layer_spec(
    features: int,
    heads: int,
    *,
    bias: Any = True,
    alpha: Any = True,
    epsilon: float = DEFAULT_EPSILON,
    learnable_epsilon: bool = False,
    spherical: bool = False,
    names: tuple[str, str] = ("embed_dim", "num_heads"),
    option_names: tuple[str, str] = ("bias", "alpha"),
) -> LayerSpec:
    """The core's description of a native Yat multi-head attention on ``features`` with ``heads`` heads.

    ``bias`` is a bool: the projections have a learnable bias or none. ``names`` are
    the framework's names of the features and the heads, ``option_names`` of ``bias``
    and ``alpha``, for the messages.

    Examples
    --------
    >>> spec = attention_layer_spec(64, 4, learnable_epsilon=True)
    >>> spec.kind, spec.heads, list(spec.param_shapes)[-3:]
    ('yat_attention', 4, ['o_bias', 'alpha', 'epsilon_raw'])
    >>> attention_layer_spec(64, 3)
    Traceback (most recent call last):
    ...
    ValueError: num_heads=3 must divide embed_dim=64
    """
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(
            f"{option_names[0]} must be a bool (True: learnable projection biases, False: none), got {bias!r}"
        )
    n_features, n_heads = check_size(features, names[0]), check_size(heads, names[1])
    if n_features % n_heads:
        raise ValueError(f"{names[1]}={n_heads} must divide {names[0]}={n_features}")
    return LayerSpec(
        "yat_attention",
        n_features,
        n_features,
        heads=n_heads,
        bias=LEARNABLE if bias else None,
        **score_options(alpha, epsilon, learnable_epsilon, spherical, alpha_name=option_names[1]),
    )


def linear_layer_spec(
    in_features: int,
    out_features: int,
    *,
    bias: Any = True,
    activation: Literal["relu"] | None = None,
    names: tuple[str, str] = ("in_features", "out_features"),
    bias_name: str = "bias",
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
        bias=layer_option(bias, bias_name),
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


def attention_spec_options(spec: LayerSpec) -> dict[str, Any]:
    """A Yat attention spec's options as native arguments (for ``from_spec``).

    ``bias`` is the projections' (learnable or none: the spec refuses a constant), the
    rest are the score's.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> attention_spec_options(LayerSpec("yat_attention", 8, 8, heads=2, alpha=2.0))
    {'bias': True, 'alpha': 2.0, 'epsilon': 1e-05, 'learnable_epsilon': False, 'spherical': False}
    """
    if spec.kind != "yat_attention":
        raise ValueError(f"a Yat attention layer is built from a spec of kind 'yat_attention', not {spec.kind!r}")
    return {**_yat_options(spec), "bias": spec.bias == LEARNABLE}


def _yat_options(spec: LayerSpec) -> dict[str, Any]:
    return {
        "bias": native_option(spec.bias),
        "alpha": native_option(spec.alpha),
        "epsilon": spec.epsilon,
        "learnable_epsilon": spec.learnable_epsilon,
        "spherical": spec.spherical,
    }


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
    option_names: tuple[str, str] = ("bias", "alpha"),
    transposed: bool | None = None,
) -> LayerSpec:
    """The core's description of a native Yat convolution (``output_padding`` given: a transposed one).

    Ints expand to one per spatial dimension (``n_spatial`` of them); ``padding`` may
    also be ``"valid"`` or ``"same"`` (convolutions only). The core's checks run here,
    so every framework refuses the same arguments with the same message; ``names`` and
    ``option_names`` are the framework's names of the channels and of ``bias`` / ``alpha``.
    ``transposed=True`` (a transposed layer's constructor) makes ``output_padding``
    required: ``None`` is refused there, not read as "a direct convolution".

    Examples
    --------
    >>> spec = conv_layer_spec(1, 32, 3, n_spatial=2)
    >>> spec.kind, spec.kernel_size, spec.param_shapes["kernel"]
    ('yat_conv', (3, 3), (32, 1, 3, 3))
    >>> conv_layer_spec(8, 4, 2, n_spatial=1, stride=2, output_padding=1).param_shapes["kernel"]
    (8, 4, 2)
    """
    transpose = output_padding is not None if transposed is None else transposed
    # The sizes first, in argument order; the core's spec checks that groups divides both.
    n_in, n_out = check_size(in_channels, names[0]), check_size(out_channels, names[1])
    n_groups = check_size(groups, "groups")
    if isinstance(padding, str):
        if transpose or padding not in ("valid", "same"):
            raise ValueError(f"padding must be an int, a tuple of ints, 'valid' or 'same', got {padding!r}")
        pads: tuple[int, ...] | str = padding
    else:
        pads = per_dim(padding, n_spatial, "padding", 0)
    return LayerSpec(
        "yat_conv_transpose" if transpose else "yat_conv",
        n_in,
        n_out,
        bias=layer_option(bias, option_names[0]),
        **score_options(alpha, epsilon, learnable_epsilon, spherical, alpha_name=option_names[1]),
        kernel_size=per_dim(kernel_size, n_spatial, "kernel_size", 1),
        stride=per_dim(stride, n_spatial, "stride", 1),
        padding=pads,
        dilation=per_dim(dilation, n_spatial, "dilation", 1),
        groups=n_groups,
        output_padding=per_dim(output_padding, n_spatial, "output_padding", 0) if transpose else (),
    )


_Cls = TypeVar("_Cls")


def conv_class(spec: LayerSpec, classes: Mapping[tuple[bool, int], _Cls]) -> _Cls:
    """The framework's Yat convolution class for ``spec``, from ``classes`` keyed by ``(transposed, spatial dims)``.

    Examples
    --------
    >>> conv_class(conv_layer_spec(2, 4, 3, n_spatial=1), {(False, 1): "Conv1d", (True, 1): "ConvTranspose1d"})
    'Conv1d'
    >>> conv_class(LayerSpec("yat", 2, 4), {})
    Traceback (most recent call last):
    ...
    ValueError: a Yat convolution is built from a 'yat_conv' or 'yat_conv_transpose' spec, not 'yat'
    """
    if spec.kind not in ("yat_conv", "yat_conv_transpose"):
        raise ValueError(
            f"a Yat convolution is built from a 'yat_conv' or 'yat_conv_transpose' spec, not {spec.kind!r}"
        )
    return classes[(spec.kind == "yat_conv_transpose", len(spec.kernel_size))]


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


def per_dim(value: Any, n: int, name: str, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of ``n`` ints (a list from a config, a tuple) as an ``n``-tuple of ints >= ``minimum``.

    Examples
    --------
    >>> per_dim(3, 2, "kernel_size", 1), per_dim([1, 2], 2, "strides", 1)
    ((3, 3), (1, 2))
    """
    values = (value,) * n if isinstance(value, numbers.Integral) else value
    if (
        not isinstance(values, Sequence)
        or isinstance(values, str)
        or len(values) != n
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum} in every dimension, got {value!r}")
    return tuple(int(v) for v in values)


def keras_transpose_padding(k: int, s: int, d: int, padding: str, output_padding: int | None) -> tuple[int, int, int]:
    """Keras's transposed-convolution rule for one dimension as the core's ``(padding, output_padding, crop)``.

    Keras (as its JAX backend writes it) pads the zero-inserted input by ``(left, right)``;
    the core pads it by ``(span-1-padding, span-1-padding+output_padding)``, ``span``
    the dilated kernel. So ``padding = span-1-left`` and ``output_padding = right-left``;
    where that is negative (``"same"`` with an odd total, e.g. kernel 3, stride 2) the core
    computes one more output with ``output_padding=0`` and ``crop`` drops the last ones.

    Examples
    --------
    >>> keras_transpose_padding(3, 2, 1, "same", None), keras_transpose_padding(4, 2, 1, "same", None)
    ((0, 0, 1), (1, 0, 0))
    """
    span = d * (k - 1) + 1
    if padding == "valid":
        extra = max(span, s) - span if output_padding is None else output_padding
        left, right = span - 1, span - 1 + extra
    else:
        total = s + span - 2 if output_padding is None else span + span % 2 - 2 + output_padding
        left = min(total // 2 + total % 2, span - 1)
        right = total - left
    return span - 1 - left, max(right - left, 0), max(left - right, 0)


def same_padding(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """Keras's (TensorFlow's) ``"same"`` padding of one dimension: output ``ceil(size/s)``, the odd unit on the right.

    Examples
    --------
    >>> same_padding(28, 3, 2, 1)
    (0, 1)
    """
    total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def kernel_to_core(kernel: np.ndarray) -> np.ndarray:
    """A spatial-first kernel (Keras, TF: ``(*k, in/groups, filters)``; transposed ``(*k, filters/groups, in)``)
    in the core's channels-first layout (``(filters, in/groups, *k)``; transposed ``(in, filters/groups, *k)``).

    Examples
    --------
    >>> kernel_to_core(np.zeros((3, 3, 2, 8))).shape, kernel_from_core(np.zeros((8, 2, 3, 3))).shape
    ((8, 2, 3, 3), (3, 3, 2, 8))
    """
    d = kernel.ndim - 2
    return np.ascontiguousarray(np.transpose(kernel, (d + 1, d, *range(d))))


def kernel_from_core(kernel: np.ndarray) -> np.ndarray:
    """The inverse of :func:`kernel_to_core`."""
    d = kernel.ndim - 2
    return np.ascontiguousarray(np.transpose(kernel, (*range(2, d + 2), 1, 0)))


#: The layer kinds every framework's native model builds (:func:`check_native_kinds`): all of them.
NATIVE_KINDS = ("yat", "linear", *CONV_KINDS, "max_pool", "avg_pool", "flatten", *TOKEN_KINDS)


def check_native_kinds(spec: ModelSpec, framework: str, supported: Sequence[str] = NATIVE_KINDS) -> None:
    """Refuse, naming them, layer kinds outside ``supported``: those ``framework``'s native models do not build.

    Every framework builds every kind today; a framework that gains a model before it
    has a native layer for each kind states what it supports, and its users are sent to
    the backends, where the core runs every layer kind.

    Examples
    --------
    >>> from yat_core.spec import seed_spec, vit_spec
    >>> check_native_kinds(vit_spec(), "torch")
    >>> check_native_kinds(vit_spec(), "newframework", supported=("yat", "linear"))
    Traceback (most recent call last):
    ...
    ValueError: newframework has no native layers for patches, pos_embed, token_mean, yat_attention yet: train this model with --backend (numpy, torch, jax or mlx), where the core runs every layer kind
    """
    missing = sorted({layer.kind for layer in spec.layers} - set(supported))
    if missing:
        raise ValueError(
            f"{framework} has no native layers for {', '.join(missing)} yet: train this model with --backend "
            "(numpy, torch, jax or mlx), where the core runs every layer kind"
        )
