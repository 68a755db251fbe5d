"""What the Flax NNX and Linen layers share: the core's initialisers, argument names and the Yat forward.

Both APIs keep dense kernels ``(in, out)`` and take the arguments ``nnx.Linear`` /
``linen.Dense`` take, and keep convolution kernels ``(*kernel_size, in/groups,
out)`` and take the arguments ``nnx.Conv`` / ``linen.Conv`` take; only how a
parameter is created differs between them, so everything else about the layers is
here, once: the options, the initialisers, the kernel layout, Flax's padding in the
core's terms, the forward passes and the interchange checks, and the model of any
:class:`~yat_core.spec.ModelSpec` (its input layout, pooling, flatten order, token
layers and parameter layouts: :func:`run_model`, :func:`to_flax_param`).

Multi-head attention is laid out as Flax's own (``nnx.MultiHeadAttention`` /
``linen.MultiHeadDotProductAttention``): submodules ``query``, ``key``, ``value``
(kernel ``(in, heads, head_dim)``, bias ``(heads, head_dim)``) and ``out`` (kernel
``(heads, head_dim, out)``, bias ``(out,)``), the core's ``(out, in)`` projections
transposed and split into heads by reshape (:func:`to_flax_param`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.pooling import avg_pool, max_pool
from flax.nnx.nn.dtypes import promote_dtype
from flax.nnx.nn.linear import canonicalize_padding

from yat_core.attention import yat_attention, yat_embed, yat_embed_attend
from yat_core.conv import yat_conv, yat_conv_transpose
from yat_core.mlp import LEARNABLE, LayerSpec, ModelSpec
from yat_core.namespaces.native import register_native_conv
from yat_core.nn.options import (
    attention_layer_spec,
    attention_spec_options,
    check_size,
    conv_layer_spec,
    conv_spec_options,
    forward_options,
    per_dim,
    spec_options,
    yat_layer_spec,
)
from yat_core.product import DEFAULT_EPSILON, softplus_inverse, yat_product
from yat_core.spec import ATTENTION_KINDS

__all__ = [
    "Initializer",
    "xavier_normal",
    "fan_in_uniform",
    "core_kernel_init",
    "flax_options",
    "flax_conv_options",
    "flax_conv_spec",
    "flax_kernel_shape",
    "to_flax_kernel",
    "to_core_kernel",
    "yat_initializers",
    "matmul_precision",
    "yat_dense",
    "yat_conv_forward",
    "conv_input_pads",
    "conv_kernel_size",
    "check_conv_input",
    "transpose_padding",
    "check_layer_params",
    "export_layer",
    "import_layer",
    "linear_tail",
    "CONV_KINDS",
    "PROJECTION_MODULES",
    "attention_spec",
    "flax_attention_options",
    "attention_initializers",
    "attention_mask",
    "yat_attention_forward",
    "softmax_attention_options",
    "position_init",
    "patches",
    "flax_param_path",
    "embed_spec",
    "embed_lookup",
    "embed_attend",
    "plain_layer_options",
    "to_flax_param",
    "to_core_param",
    "input_layout",
    "channels_last",
    "model_input",
    "run_model",
]

Initializer = Callable[..., jax.Array]
#: The core's Yat kernel distribution: normal, std ``sqrt(2 / (fan_in + fan_out))`` (not truncated).
xavier_normal: Initializer = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def fan_in_uniform(fan_in: int) -> Initializer:
    """Uniform on ``±1/sqrt(fan_in)``: the core's bias (and linear kernel) distribution.

    Examples
    --------
    >>> w = fan_in_uniform(4)(jax.random.key(0), (1000,))
    >>> bool(jnp.all(jnp.abs(w) <= 0.5))
    True
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def flax_options(spec: LayerSpec) -> dict[str, Any]:
    """A Yat layer spec's options in Flax's spelling (``use_bias``, ``use_alpha``), for ``from_spec``.

    Examples
    --------
    >>> from yat_core.nn.options import yat_layer_spec
    >>> flax_options(yat_layer_spec(4, 3, bias=False))["use_bias"]
    False
    """
    options = spec_options(spec)
    return {"use_bias": options.pop("bias"), "use_alpha": options.pop("alpha"), **options}


def core_kernel_init(spec: LayerSpec) -> Initializer:
    """The core's Yat kernel distribution for ``spec``: normal, std ``sqrt(2 / (fan_in + fan_out))``.

    The fans are the core's (:attr:`~yat_core.spec.LayerSpec.fans`: a convolution's
    count the receptive field and the group's channels), so grouped convolutions draw
    what :func:`yat_core.mlp.init_layer_numpy` draws, where Flax's ``variance_scaling``
    would count every output channel.

    Examples
    --------
    >>> from yat_core.nn.options import conv_layer_spec
    >>> w = core_kernel_init(conv_layer_spec(64, 64, 3, n_spatial=2, groups=4))(jax.random.key(0), (3, 3, 16, 64))
    >>> round(float(jnp.std(w)) / math.sqrt(2 / (144 + 144)), 1)
    1.0
    """
    fan_in, fan_out = spec.fans
    return jax.nn.initializers.normal(math.sqrt(2.0 / (fan_in + fan_out)))


def flax_kernel_shape(spec: LayerSpec) -> tuple[int, ...]:
    """The kernel's shape in Flax's layout: the core's ``(A, B, *k)`` as ``(*k, B, A)``.

    Dense ``(out, in)`` -> ``(in, out)``; convolution ``(out, in/groups, *k)`` ->
    ``(*k, in/groups, out)`` (``nnx.Conv``'s); transposed convolution ``(in,
    out/groups, *k)`` -> ``(*k, out/groups, in)`` (``nnx.ConvTranspose``'s with
    ``transpose_kernel=True``).

    Examples
    --------
    >>> from yat_core.nn.options import conv_layer_spec, yat_layer_spec
    >>> flax_kernel_shape(yat_layer_spec(4, 3)), flax_kernel_shape(conv_layer_spec(4, 6, (3, 2), n_spatial=2, groups=2))
    ((4, 3), (3, 2, 2, 6))
    """
    a, b, *k = spec.param_shapes["kernel"]
    return (*k, b, a)


def to_flax_kernel(kernel: Any) -> Any:
    """A kernel in the core's layout ``(A, B, *k)`` as Flax keeps it, ``(*k, B, A)`` (NumPy or JAX).

    Examples
    --------
    >>> import numpy as np
    >>> to_flax_kernel(np.zeros((8, 3, 5, 4))).shape
    (5, 4, 3, 8)
    """
    return kernel.transpose((*range(2, kernel.ndim), 1, 0))


def to_core_kernel(kernel: Any) -> Any:
    """The inverse of :func:`to_flax_kernel`: ``(*k, B, A)`` -> ``(A, B, *k)``.

    Examples
    --------
    >>> import numpy as np
    >>> to_core_kernel(np.zeros((5, 4, 3, 8))).shape
    (8, 3, 5, 4)
    """
    n = kernel.ndim
    return kernel.transpose((n - 1, n - 2, *range(n - 2)))


def yat_initializers(
    spec: LayerSpec, kernel_init: Initializer | None, bias_init: Initializer | None
) -> dict[str, tuple[Initializer, tuple[int, ...]]]:
    """Each learnable parameter of a Yat layer: its initialiser and its Flax shape, in creation order.

    For the dense layer and the convolutions alike: ``kernel_init=None`` is the core's
    :func:`core_kernel_init`, ``bias_init=None`` the core's :func:`fan_in_uniform` of the
    kernel's fan-in; alpha starts at 1 and ``epsilon_raw`` at
    ``softplus_inverse(epsilon)``. The kernel's shape is :func:`flax_kernel_shape`.

    Examples
    --------
    >>> from yat_core.nn.options import yat_layer_spec
    >>> {k: shape for k, (_, shape) in yat_initializers(yat_layer_spec(4, 3), xavier_normal, None).items()}
    {'kernel': (4, 3), 'bias': (3,), 'alpha': ()}
    """
    inits = {
        "kernel": core_kernel_init(spec) if kernel_init is None else kernel_init,
        "bias": fan_in_uniform(spec.fans[0]) if bias_init is None else bias_init,
        "alpha": jax.nn.initializers.ones,
        "epsilon_raw": jax.nn.initializers.constant(softplus_inverse(spec.epsilon)),
    }
    shapes = {**spec.param_shapes, "kernel": flax_kernel_shape(spec)}
    return {name: (inits[name], shapes[name]) for name in spec.param_shapes}


def _precision_name(p: Any) -> str:
    if isinstance(p, jax.lax.Precision):
        return p.name.lower()
    if isinstance(p, jax.lax.DotAlgorithmPreset):
        return p.name
    if isinstance(p, str):
        with contextlib.suppress(ValueError):
            return jax.lax.Precision(p).name.lower()  # "float32", "fastest", ... as the enum reads them
        if p in jax.lax.DotAlgorithmPreset.__members__:
            return p
    raise ValueError(
        f"precision must be None, a jax.lax.Precision, its name, or a jax.lax.DotAlgorithmPreset "
        f"(or its name), got {p!r}"
    )


def matmul_precision(precision: Any) -> str | None:
    """``precision`` (what ``nnx.Linear`` accepts) as a ``jax.default_matmul_precision`` name.

    The core writes its product as ``x @ w.T``, so the precision reaches it through
    JAX's matmul default for the duration of the call; the traced ``dot_general``
    then carries it as ``nnx.Linear``'s would. A pair applies to both operands, so its
    two halves must agree; a custom ``jax.lax.DotAlgorithm`` cannot be named there.

    Examples
    --------
    >>> matmul_precision(jax.lax.Precision.HIGHEST), matmul_precision(("high", "high")), matmul_precision(None)
    ('highest', 'high', None)
    >>> matmul_precision(("highest", "default"))
    Traceback (most recent call last):
    ...
    ValueError: precision pairs must name one precision for both operands, got ('highest', 'default')
    """
    if precision is None:
        return None
    if isinstance(precision, (tuple, list)) and len(precision) == 2:
        lhs, rhs = (_precision_name(p) for p in precision)
        if lhs != rhs:
            raise ValueError(f"precision pairs must name one precision for both operands, got {precision!r}")
        return lhs
    return _precision_name(precision)


def yat_dense(
    spec: LayerSpec, inputs: jax.Array, params: Mapping[str, jax.Array], *, dtype: Any, precision: Any
) -> jax.Array:
    """The Yat layer's forward: ``params`` are its learnable values (kernel ``(in, out)``).

    Inputs and parameters are promoted as ``nnx.Linear`` promotes them (to ``dtype``,
    else to their common type) and the product runs under ``precision``.

    Examples
    --------
    >>> from yat_core.nn.options import yat_layer_spec
    >>> params = {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3), "alpha": jnp.ones(())}
    >>> yat_dense(yat_layer_spec(2, 3), jnp.ones((1, 2)), params, dtype=jnp.bfloat16, precision=None).dtype
    dtype(bfloat16)
    """
    names = tuple(params)
    inputs, *values = promote_dtype((inputs, *params.values()), dtype=dtype)
    promoted = dict(zip(names, values))
    name = matmul_precision(precision)
    # None inherits the caller's default, as nnx.Linear's precision=None does.
    with jax.default_matmul_precision(name) if name else contextlib.nullcontext():
        # Flax's (in, out) kernel is the core's (out, in) transposed (free under jit).
        return yat_product(inputs, promoted["kernel"].T, **forward_options(spec, promoted.__getitem__, jnp), xp=jnp)


def linear_tail(h: jax.Array, spec: LayerSpec) -> jax.Array:
    """What a core ``"linear"`` / ``"conv"`` layer adds to Flax's ``Linear`` / ``Dense`` / ``Conv``: a constant bias, a ReLU.

    Examples
    --------
    >>> from yat_core.nn.options import linear_layer_spec
    >>> linear_tail(jnp.array([-1.0, 1.0]), linear_layer_spec(2, 2, bias=0.5, activation="relu"))
    Array([0. , 1.5], dtype=float32)
    """
    if spec.bias not in (LEARNABLE, None):
        h = h + spec.bias
    return jax.nn.relu(h) if spec.activation == "relu" else h


# ---------------------------------------------------------------- convolutions
#
# Flax's convolutions are channels last, ``(*batch, *spatial, features)`` with kernels
# ``(*kernel_size, in/groups, out)``; the core's are channels first with kernels
# ``(out, in/groups, *kernel_size)``. The layers transpose on the way in and out (under
# jit XLA may fold the transposes into the convolution's layout) and call the core.

_CONV_PADDINGS = ("SAME", "SAME_LOWER", "VALID", "CIRCULAR", "REFLECT", "CAUSAL")
_WRAP_MODES = {"CIRCULAR": "wrap", "REFLECT": "reflect"}


class _FlaxNamespace(types.ModuleType):
    """``jax.numpy`` under a library name of its own, so the core's ``native=True`` path
    takes :func:`_conv_at_default_precision` (the layer's precision) instead of the JAX
    backend's convolution, which always runs at ``Precision.HIGHEST``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(jnp, name)


_LIBRARY = "yat_core_flax"
_XP = _FlaxNamespace(_LIBRARY)


def _conv_at_default_precision(x: Any, w: Any, *, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    # precision=None: JAX's default matmul/conv precision at trace time, which the layer
    # sets from its ``precision`` (as yat_dense does for the dense product).
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=tuple(stride),
        padding=tuple(padding),
        rhs_dilation=tuple(dilation),
        feature_group_count=groups,
    )


register_native_conv(_LIBRARY, _conv_at_default_precision)


def _kernel_size(kernel_size: Any) -> tuple[int, ...]:
    """Flax's reading: an int is a 1-D kernel; 1 to 3 spatial dimensions."""
    n = 1 if isinstance(kernel_size, numbers.Integral) else len(kernel_size) if isinstance(kernel_size, Sequence) else 0
    if n not in (1, 2, 3):
        raise ValueError(
            f"kernel_size must be an int (1-D) or a sequence of 1, 2 or 3 ints (its length is the number of "
            f"spatial dimensions), got {kernel_size!r}"
        )
    return per_dim(kernel_size, n, "kernel_size", 1)


def check_conv_input(inputs: Any, n: int) -> None:
    """Refuse an input of too low a rank for an ``n``-D convolution (channels last; the batch axes optional).

    Examples
    --------
    >>> check_conv_input(jnp.zeros((5, 3)), 2)
    Traceback (most recent call last):
    ...
    ValueError: a 2-D Yat convolution takes inputs (*batch, 2 spatial dims, features), channels last, of rank >= 3; got shape (5, 3)
    """
    if not hasattr(inputs, "ndim") or inputs.ndim < n + 1:
        raise ValueError(
            f"a {n}-D Yat convolution takes inputs (*batch, {n} spatial dims, features), channels last, of rank >= "
            f"{n + 1}; got shape {tuple(getattr(inputs, 'shape', ()))}"
        )


def conv_kernel_size(kernel_size: Any) -> tuple[int, ...]:
    """``kernel_size`` as Flax reads it (an int is a 1-D kernel), 1 to 3 spatial dimensions.

    Examples
    --------
    >>> conv_kernel_size(3), conv_kernel_size([3, 2])
    ((3,), (3, 2))
    """
    return _kernel_size(kernel_size)


def _dilated(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))


def _conv_padding(padding: Any, n: int) -> str | tuple[tuple[int, int], ...]:
    """A convolution's ``padding`` as Flax accepts it: a mode (upper case) or one ``(lo, hi)`` pair per dimension."""
    try:
        canonical = canonicalize_padding(padding, n)
    except ValueError:
        canonical = None
    if isinstance(canonical, str):
        mode = canonical.upper()
        if mode not in _CONV_PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(_CONV_PADDINGS)}, an int or pairs, got {padding!r}")
        if mode == "CAUSAL" and n != 1:
            raise ValueError(f"padding='CAUSAL' applies to 1-D convolutions only (as in Flax), not {n}-D")
        return mode
    pairs = tuple(tuple(p) for p in canonical or ())
    if not pairs or not all(
        len(p) == 2 and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0 for v in p)
        for p in pairs
    ):
        raise ValueError(
            f"padding must be 'SAME', 'VALID', 'CIRCULAR', 'REFLECT', 'CAUSAL', an int >= 0, or a sequence of {n} "
            f"ints >= 0 or (low, high) pairs of them (one per spatial dimension), got {padding!r}"
        )
    return tuple((int(lo), int(hi)) for lo, hi in pairs)


def conv_input_pads(
    padding: Any, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[tuple[int, int], ...], str]:
    """The ``(lo, hi)`` padding of each spatial dimension of the input, and its ``jnp.pad`` mode, as Flax's Conv pads.

    ``"SAME"`` / ``"SAME_LOWER"`` / ``"VALID"`` are ``jax.lax.padtype_to_pads`` of the
    dilated kernel (``"SAME"`` keeps ``ceil(size / stride)`` outputs at any stride, the
    odd unit on the high side); ``"CIRCULAR"`` / ``"REFLECT"`` wrap or reflect
    ``((K-1)//2, K//2)``; ``"CAUSAL"`` pads ``K-1`` zeros on the left (``K`` the dilated
    kernel size); ints and pairs are zeros.

    Examples
    --------
    >>> conv_input_pads("SAME", (7,), (3,), (2,), (1,)), conv_input_pads("CIRCULAR", (7,), (4,), (1,), (1,))
    ((((1, 1),), 'constant'), (((1, 2),), 'wrap'))
    """
    n = len(kernel)
    mode = _conv_padding(padding, n)
    dilated = _dilated(tuple(kernel), tuple(dilation))
    if mode in _WRAP_MODES:
        return tuple(((k - 1) // 2, k // 2) for k in dilated), _WRAP_MODES[str(mode)]
    if mode == "CAUSAL":
        return ((dilated[0] - 1, 0),), "constant"
    if isinstance(mode, str):
        pads = jax.lax.padtype_to_pads(tuple(spatial), dilated, tuple(strides), mode)
        return tuple((int(lo), int(hi)) for lo, hi in pads), "constant"
    return mode, "constant"


def _core_conv_padding(padding: Any, n: int, strides: tuple[int, ...]) -> tuple[int, ...] | str:
    """What the core's ``yat_conv`` pads, for the spec: all of Flax's padding where the core has it."""
    mode = _conv_padding(padding, n)
    if mode == "VALID":
        return "valid"
    if mode == "SAME" and all(s == 1 for s in strides):
        return "same"  # at stride 1 torch's rule and Flax's agree: the odd unit on the high side
    if not isinstance(mode, str) and all(lo == hi for lo, hi in mode):
        return tuple(lo for lo, _ in mode)
    return (0,) * n  # SAME at stride > 1, asymmetric pairs, CIRCULAR, REFLECT, CAUSAL: the layer pads the input


def _same_transpose(k: int, s: int) -> tuple[int, int, int]:
    """Flax's ``"SAME"`` transposed padding of a dilated kernel ``k``, stride ``s`` as torch's ``(padding, output_padding)``
    and the outputs to cut on the high side (``jax.lax.conv_transpose``'s rule: the zero-inserted input is padded
    ``lo = k-1`` when ``s > k-1``, else ``ceil((k+s-2)/2)``, and ``hi = k+s-2-lo``)."""
    total = k + s - 2
    lo = k - 1 if s > k - 1 else -(-total // 2)
    hi = total - lo
    # torch pads k-1-p on the low side and k-1-p+output_padding on the high side
    if hi >= lo:
        return k - 1 - lo, hi - lo, 0
    return k - 1 - lo, 0, lo - hi  # the high side one short: compute one more, cut it


def transpose_padding(
    padding: Any, output_padding: Any, kernel: Sequence[int], strides: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A transposed layer's ``padding`` / ``output_padding`` as the core's (torch's) pair, and the outputs to cut.

    Returns ``(padding, output_padding, cut)``, one entry per spatial dimension:

    - an int or one int per dimension is torch's ``padding`` (each side of the output
      shrinks by it), ``output_padding`` torch's (extra size on the high side);
    - ``"VALID"``: padding 0, output_padding ``max(s - K, 0)`` (``K = d*(k-1) + 1``):
      ``size*s + max(K - s, 0)`` outputs, Flax's ``ConvTranspose(padding="VALID")``;
    - ``"SAME"``: ``size*s`` outputs placed as Flax's ``ConvTranspose(padding="SAME",
      transpose_kernel=True)`` and TensorFlow's ``conv_transpose`` place them. Where that
      padding is one short on the high side (``s < K`` and ``K + s`` odd, e.g. a 3x3
      kernel at stride 2) torch's pair cannot say it: the core computes one more output
      there and ``cut`` says to drop it.

    Flax's ``(lo, hi)`` pairs (padding of the zero-inserted input) are not taken.

    Examples
    --------
    >>> transpose_padding(1, 1, (3,), (2,), (1,)), transpose_padding("VALID", 0, (2,), (3,), (1,))
    (((1,), (1,), (0,)), ((0,), (1,), (0,)))
    >>> transpose_padding("SAME", 0, (3, 4), (2, 2), (1, 1))
    ((0, 1), (0, 0), (1, 0))
    """
    n = len(kernel)
    dilated = _dilated(tuple(kernel), tuple(dilation))
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in ("SAME", "VALID"):
            raise ValueError(
                f"padding of a transposed convolution must be 'SAME', 'VALID', an int or one int per spatial "
                f"dimension (torch's), got {padding!r}"
            )
        if any(per_dim(output_padding, n, "output_padding", 0)):
            raise ValueError(f"output_padding applies to int padding (torch's) only, not padding={padding!r}")
        if mode == "VALID":
            return (0,) * n, tuple(max(s - k, 0) for k, s in zip(dilated, strides)), (0,) * n
        p, op, cut = zip(*(_same_transpose(k, s) for k, s in zip(dilated, strides)))
        return tuple(p), tuple(op), tuple(cut)
    if isinstance(padding, Sequence) and any(isinstance(p, Sequence) for p in padding):
        raise ValueError(
            f"padding of a transposed convolution is torch's (an int or one int per spatial dimension: each side "
            f"of the output shrinks by it), 'SAME' or 'VALID'; Flax's (low, high) pairs are not taken, got {padding!r}"
        )
    return per_dim(padding, n, "padding", 0), per_dim(output_padding, n, "output_padding", 0), (0,) * n


def flax_conv_spec(
    in_features: Any,
    out_features: Any,
    kernel_size: Any,
    *,
    transpose: bool,
    strides: Any = 1,
    padding: Any = "SAME",
    output_padding: Any = 0,
    kernel_dilation: Any = 1,
    feature_group_count: Any = 1,
    use_bias: Any = True,
    use_alpha: Any = True,
    epsilon: float = 1e-5,
    learnable_epsilon: bool = False,
    spherical: bool = False,
    names: tuple[str, str] = ("in_features", "out_features"),
) -> LayerSpec:
    """The core's description of a Flax Yat convolution built with these arguments (all checks run here).

    The number of spatial dimensions is ``len(kernel_size)`` (an int: 1-D, as Flax
    reads it); ``strides`` / ``kernel_dilation`` of ``None`` are 1. ``spec.padding`` is
    the core's share of the padding: all of it where the core can say it (``"VALID"``,
    ``"SAME"`` at stride 1, ints, equal pairs; transposed: see
    :func:`transpose_padding`), else 0 and the layer pads the input itself
    (:func:`conv_input_pads`).

    Examples
    --------
    >>> spec = flax_conv_spec(4, 6, (3, 3), transpose=False, feature_group_count=2, padding=1)
    >>> spec.kind, spec.padding, spec.param_shapes["kernel"]
    ('yat_conv', (1, 1), (6, 2, 3, 3))
    >>> flax_conv_spec(4, 6, 3, transpose=False, feature_group_count=4)
    Traceback (most recent call last):
    ...
    ValueError: feature_group_count=4 must divide in_features=4 and out_features=6
    """
    kernel = _kernel_size(kernel_size)
    n = len(kernel)
    n_in, n_out = check_size(in_features, names[0]), check_size(out_features, names[1])
    groups = check_size(feature_group_count, "feature_group_count")
    if n_in % groups or n_out % groups:
        raise ValueError(f"feature_group_count={groups} must divide {names[0]}={n_in} and {names[1]}={n_out}")
    # None is 1, as Flax reads it
    stride = per_dim(1 if strides is None else strides, n, "strides", 1)
    dilation = per_dim(1 if kernel_dilation is None else kernel_dilation, n, "kernel_dilation", 1)
    if transpose:
        pads, out_pads, _ = transpose_padding(padding, output_padding, kernel, stride, dilation)
        core_padding: tuple[int, ...] | str = pads
    else:
        core_padding, out_pads = _core_conv_padding(padding, n, stride), None
    return conv_layer_spec(
        n_in,
        n_out,
        kernel,
        n_spatial=n,
        stride=stride,
        padding=core_padding,
        dilation=dilation,
        groups=groups,
        output_padding=out_pads,
        bias=use_bias,
        alpha=use_alpha,
        epsilon=epsilon,
        learnable_epsilon=learnable_epsilon,
        spherical=spherical,
        names=names,
        option_names=("use_bias", "use_alpha"),
    )


def flax_conv_options(spec: LayerSpec) -> dict[str, Any]:
    """A Yat convolution spec's options in Flax's spelling (``strides``, ``feature_group_count``, ...), for ``from_spec``.

    Examples
    --------
    >>> from yat_core.nn.options import conv_layer_spec
    >>> options = flax_conv_options(conv_layer_spec(4, 6, 3, n_spatial=2, stride=2, groups=2))
    >>> options["strides"], options["feature_group_count"], options["padding"], options["use_bias"]
    ((2, 2), 2, (0, 0), True)
    """
    renamed = {
        "bias": "use_bias",
        "alpha": "use_alpha",
        "stride": "strides",
        "dilation": "kernel_dilation",
        "groups": "feature_group_count",
    }
    return {renamed.get(name, name): value for name, value in conv_spec_options(spec).items()}


def yat_conv_forward(
    spec: LayerSpec,
    inputs: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    padding: Any,
    dtype: Any,
    precision: Any,
) -> jax.Array:
    """A Yat convolution layer's forward: channels-last ``inputs``, Flax-layout ``params``.

    Batch dimensions are handled as ``nnx.Conv`` handles them (none: one is added and
    removed; several: flattened and restored); inputs and parameters are promoted as
    there (to ``dtype``, else to their common type). ``padding`` is the layer's own
    argument: the input is padded where the core cannot (:func:`conv_input_pads`), a
    transposed output cut where :func:`transpose_padding` says. The core's
    :func:`~yat_core.conv.yat_conv` / :func:`~yat_core.conv.yat_conv_transpose` run with
    ``native=True`` on JAX's convolution at ``precision``.

    Examples
    --------
    >>> spec = flax_conv_spec(2, 3, (3, 3), transpose=False)
    >>> params = {"kernel": jnp.ones((3, 3, 2, 3)), "bias": jnp.zeros(3), "alpha": jnp.ones(())}
    >>> yat_conv_forward(spec, jnp.ones((1, 5, 5, 2)), params, padding="SAME", dtype=None, precision=None).shape
    (1, 5, 5, 3)
    """
    n = len(spec.kernel_size)
    check_conv_input(inputs, n)
    if inputs.shape[-1] != spec.in_features:
        raise ValueError(
            f"the layer takes inputs with {spec.in_features} features (channels last), got shape {tuple(inputs.shape)}"
        )
    n_batch = inputs.ndim - (n + 1)
    batch_shape = inputs.shape[:n_batch]
    if n_batch != 1:  # as nnx.Conv: no batch axis, or several flattened into one
        inputs = jnp.reshape(inputs, (-1, *inputs.shape[n_batch:]))
    names = tuple(params)
    inputs, *values = promote_dtype((inputs, *params.values()), dtype=dtype)
    promoted = dict(zip(names, values))
    x = jnp.moveaxis(inputs, -1, 1)  # the core's (N, C, *spatial)
    w = to_core_kernel(promoted["kernel"])
    options = forward_options(spec, promoted.__getitem__, jnp)
    name = matmul_precision(precision)
    # None inherits the caller's default, as nnx.Conv's precision=None does.
    with jax.default_matmul_precision(name) if name else contextlib.nullcontext():
        if spec.kind == "yat_conv_transpose":
            y = yat_conv_transpose(x, w, **spec.conv_options, native=True, xp=_XP, **options)
            cut = _transpose_cut(padding, spec)
            if any(cut):
                y = y[(slice(None), slice(None), *(slice(0, int(s) - c) for s, c in zip(y.shape[2:], cut)))]
        else:
            pads, mode = conv_input_pads(padding, x.shape[2:], spec.kernel_size, spec.stride, spec.dilation)
            core = tuple(min(lo, hi) for lo, hi in pads) if mode == "constant" else (0,) * n
            extra = tuple((lo - c, hi - c) for (lo, hi), c in zip(pads, core))
            if any(lo or hi for lo, hi in extra):
                x = jnp.pad(x, ((0, 0), (0, 0), *extra), mode=mode)
            geometry: dict[str, Any] = {
                "stride": spec.stride,
                "padding": core,
                "dilation": spec.dilation,
                "groups": spec.groups,
            }
            y = yat_conv(x, w, **geometry, native=True, xp=_XP, **options)
    y = jnp.moveaxis(y, 1, -1)
    return y if n_batch == 1 else jnp.reshape(y, (*batch_shape, *y.shape[1:]))


def _transpose_cut(padding: Any, spec: LayerSpec) -> tuple[int, ...]:
    """Outputs to drop on the high side of a transposed layer (``"SAME"`` only; see :func:`transpose_padding`)."""
    if not (isinstance(padding, str) and padding.upper() == "SAME"):
        return (0,) * len(spec.kernel_size)
    return tuple(_same_transpose(k, s)[2] for k, s in zip(_dilated(spec.kernel_size, spec.dilation), spec.stride))


def check_layer_params(spec: LayerSpec, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate one layer's ``{core name: array}`` against ``spec``; return NumPy arrays in spec order.

    The messages are :func:`yat_core.nn.interchange.check_params`'s, for a layer.

    Examples
    --------
    >>> spec = flax_conv_spec(2, 3, 3, transpose=False, use_bias=False)
    >>> check_layer_params(spec, {"kernel": np.zeros((3, 2, 2)), "alpha": np.ones(())})
    Traceback (most recent call last):
    ...
    ValueError: parameters do not fit the layer: kernel has shape (3, 2, 2), expected (3, 2, 3)
    """
    expected = spec.param_shapes
    arrays = {name: np.asarray(value) for name, value in params.items()}
    problems = [f"missing {n} (shape {s})" for n, s in expected.items() if n not in arrays]
    problems += [f"unexpected {n}" for n in arrays if n not in expected]
    problems += [
        f"{n} has shape {arrays[n].shape}, expected {s}"
        for n, s in expected.items()
        if n in arrays and arrays[n].shape != s
    ]
    if problems:
        raise ValueError("parameters do not fit the layer: " + "; ".join(problems))
    bad = [f"{n} ({a.dtype})" for n, a in arrays.items() if a.dtype.kind != "f"]
    if bad:
        raise TypeError(f"parameters must be real floating arrays; not so: {', '.join(bad)}")
    return {name: arrays[name] for name in expected}


def export_layer(spec: LayerSpec, read: Callable[[str], Any]) -> dict[str, np.ndarray]:
    """A layer's parameters in the core's names and layouts; ``read(name)`` gives one in Flax's.

    Examples
    --------
    >>> spec = flax_conv_spec(2, 3, (5, 4), transpose=False, use_bias=False)
    >>> {k: v.shape for k, v in export_layer(spec, lambda name: np.zeros((5, 4, 2, 3)) if name == "kernel" else 1.0).items()}
    {'kernel': (3, 2, 5, 4), 'alpha': ()}
    """
    out = {}
    for name in spec.param_shapes:
        value = np.asarray(read(name))
        out[name] = np.array(to_core_kernel(value) if name == "kernel" else value, order="C")
    return out


def import_layer(spec: LayerSpec, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``params`` (core names and layouts) checked against ``spec``, in Flax's layout (kernel ``(*k, B, A)``).

    Examples
    --------
    >>> spec = flax_conv_spec(2, 3, (5, 4), transpose=False, use_bias=False)
    >>> import_layer(spec, {"kernel": np.zeros((3, 2, 5, 4)), "alpha": np.ones(())})["kernel"].shape
    (5, 4, 2, 3)
    """
    return {
        name: np.array(to_flax_kernel(value), order="C") if name == "kernel" else value
        for name, value in check_layer_params(spec, params).items()
    }


# ---------------------------------------------------------------- attention
#
# The core projects with ``(out, in)`` matrices and splits the heads by reshape (head j
# is features ``j*d .. (j+1)*d``); Flax's LinearGeneral / DenseGeneral keep the same
# numbers as ``(in, heads, head_dim)`` and ``(heads, head_dim, out)``. The Yat layer and
# Flax's own multi-head attention share that layout, so both load the core's weights.

#: The core's projection prefix (``"q_kernel"`` ...) -> the Flax submodule that holds it.
PROJECTION_MODULES = {"q": "query", "k": "key", "v": "value", "o": "out"}

#: The position table's distribution (the core's): normal, std 0.02.
position_init: Initializer = jax.nn.initializers.normal(0.02)


def attention_spec(
    num_heads: int,
    qkv_features: int,
    *,
    use_bias: bool = True,
    use_alpha: bool | float = True,
    epsilon: float = DEFAULT_EPSILON,
    learnable_epsilon: bool = False,
    spherical: bool = False,
) -> LayerSpec:
    """The core's description of a Yat multi-head attention on ``qkv_features`` (runs the core's checks).

    ``use_bias`` is a bool, as in Flax's attention (the core's projections have a
    learnable bias or none); ``use_alpha`` is ``True`` (learnable), ``False`` (none) or
    a constant.

    Examples
    --------
    >>> spec = attention_spec(4, 64, learnable_epsilon=True)
    >>> spec.kind, spec.heads, list(spec.param_shapes)[-3:]
    ('yat_attention', 4, ['o_bias', 'alpha', 'epsilon_raw'])
    >>> attention_spec(3, 64)
    Traceback (most recent call last):
    ...
    ValueError: num_heads=3 must divide qkv_features=64
    """
    return attention_layer_spec(
        qkv_features,
        num_heads,
        bias=use_bias,
        alpha=use_alpha,
        epsilon=epsilon,
        learnable_epsilon=learnable_epsilon,
        spherical=spherical,
        names=("qkv_features", "num_heads"),
        option_names=("use_bias", "use_alpha"),
    )


def flax_attention_options(spec: LayerSpec) -> dict[str, Any]:
    """An attention spec's options as the Yat attention's arguments, for ``from_spec``.

    A constant bias is no parameter of the core's projections (it is not added), so it
    reads ``use_bias=False``.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> flax_attention_options(LayerSpec("yat_attention", 8, 8, heads=2, alpha=2.0))
    {'num_heads': 2, 'use_bias': True, 'use_alpha': 2.0, 'epsilon': 1e-05, 'learnable_epsilon': False, 'spherical': False}
    """
    options = attention_spec_options(spec)
    return {"num_heads": spec.heads, "use_bias": options.pop("bias"), "use_alpha": options.pop("alpha"), **options}


def softmax_attention_options(spec: LayerSpec) -> dict[str, Any]:
    """An ``"attention"`` spec as the arguments of Flax's own multi-head attention.

    No dropout, no query/key normalisation; kernels and biases uniform on
    ``±1/sqrt(features)``, the core's distribution (:func:`build_model` replaces them
    by the core's values anyway).

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> {k: v for k, v in softmax_attention_options(LayerSpec("attention", 8, 8, heads=2)).items() if "init" not in k}
    {'num_heads': 2, 'use_bias': True, 'dropout_rate': 0.0, 'normalize_qk': False}
    """
    if spec.kind != "attention":
        raise ValueError(f"Flax's multi-head attention is built from an 'attention' spec, not {spec.kind!r}")
    init = fan_in_uniform(spec.in_features)
    return {
        "num_heads": spec.heads,
        "use_bias": spec.bias == LEARNABLE,
        "dropout_rate": 0.0,
        "normalize_qk": False,
        "kernel_init": init,
        "bias_init": init,
    }


def attention_initializers(
    in_features: int,
    qkv_features: int,
    kernel_init: Initializer | None,
    out_kernel_init: Initializer | None,
    bias_init: Initializer | None,
    out_bias_init: Initializer | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``kernel_init`` / ``bias_init`` of the query/key/value projections and of the output projection.

    None is the core's distribution, uniform on ``±1/sqrt(fan_in)`` (``in_features``
    for query, key and value, ``qkv_features`` for the output); ``out_*_init`` default
    to the given ``*_init``, as in Flax's attention.

    Examples
    --------
    >>> qkv, out = attention_initializers(16, 64, None, None, None, None)
    >>> float(jnp.max(jnp.abs(qkv["kernel_init"](jax.random.key(0), (1000,))))) <= 0.25
    True
    """
    qkv_kernel = fan_in_uniform(in_features) if kernel_init is None else kernel_init
    qkv_bias = fan_in_uniform(in_features) if bias_init is None else bias_init
    out_kernel = out_kernel_init or (fan_in_uniform(qkv_features) if kernel_init is None else kernel_init)
    out_bias = out_bias_init or (fan_in_uniform(qkv_features) if bias_init is None else bias_init)
    return {"kernel_init": qkv_kernel, "bias_init": qkv_bias}, {"kernel_init": out_kernel, "bias_init": out_bias}


def attention_mask(mask: Any) -> jax.Array | None:
    """A Flax attention mask (nonzero or True: may attend) as the core's boolean mask.

    ``nnx.make_causal_mask`` / ``make_attention_mask`` build float masks by default;
    Flax's attention reads any nonzero entry as "attend", and so does this.

    Examples
    --------
    >>> attention_mask(jnp.array([1.0, 0.0]))
    Array([ True, False], dtype=bool)
    """
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    return mask if mask.dtype == jnp.bool_ else mask != 0


def yat_attention_forward(
    spec: LayerSpec,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    params: Mapping[str, jax.Array],
    *,
    mask: Any,
    is_causal: bool,
    precision: Any,
) -> jax.Array:
    """Projected ``query (..., Tq, H, d)``, ``key``, ``value`` through :func:`yat_core.attention.yat_attention`.

    ``params`` holds the learnable scalars (``alpha``, ``epsilon_raw``) the spec has,
    cast to the queries' dtype; the mask is Flax's (:func:`attention_mask`);
    ``is_causal`` is the core's ``causal``. The products run under ``precision``.

    Examples
    --------
    >>> q = jnp.ones((2, 5, 2, 4))
    >>> yat_attention_forward(attention_spec(2, 8), q, q, q, {"alpha": jnp.ones(())}, mask=None, is_causal=True,
    ...                       precision=None).shape
    (2, 5, 2, 4)
    """
    scalars = {name: jnp.asarray(v, dtype=query.dtype) for name, v in params.items()}
    options = forward_options(dataclasses.replace(spec, bias=None), scalars.__getitem__, jnp)
    del options["bias"]  # the projections own the bias
    name = matmul_precision(precision)
    with jax.default_matmul_precision(name) if name else contextlib.nullcontext():
        return yat_attention(query, key, value, mask=attention_mask(mask), causal=bool(is_causal), xp=jnp, **options)


def patches(h: jax.Array, kernel_size: Sequence[int]) -> jax.Array:
    """Channels-last images ``(N, H, W, C)`` as the core's tokens ``(N, T, C * ph * pw)``.

    Patches in row-major order, each flattened channels first, as :mod:`yat_core.mlp`
    cuts them from ``(N, C, H, W)``: the dense layer after them is the core's array.

    Examples
    --------
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> patches(x, (2, 2))[0, 1]  # the second patch: rows 0-1, columns 2-3
    Array([2., 3., 6., 7.], dtype=float32)
    """
    ph, pw = kernel_size
    n, height, width, c = h.shape
    h = h.reshape(n, height // ph, ph, width // pw, pw, c).transpose(0, 1, 3, 5, 2, 4)
    return h.reshape(n, (height // ph) * (width // pw), c * ph * pw)


def flax_param_path(layer: LayerSpec, name: str) -> tuple[str, ...]:
    """Where a core parameter lives in the Flax layer of ``layer``: its attribute (or submodule) path.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> flax_param_path(LayerSpec("attention", 8, 8, heads=2), "q_kernel"), flax_param_path(LayerSpec("yat", 2, 3), "kernel")
    (('query', 'kernel'), ('kernel',))
    """
    prefix, _, rest = name.partition("_")
    if layer.kind in ATTENTION_KINDS and prefix in PROJECTION_MODULES:
        return (PROJECTION_MODULES[prefix], rest)
    return (name,)


def _to_flax_projection(layer: LayerSpec, name: str, value: Any) -> Any:
    prefix, _, what = name.partition("_")
    heads = (layer.heads, layer.in_features // layer.heads)
    if what == "kernel":  # the core's (out, in) -> (in, H, d), or (H, d, out) for the output
        return value.T.reshape((value.shape[1], *heads) if prefix != "o" else (*heads, value.shape[0]))
    return value if prefix == "o" else value.reshape(heads)


def _to_core_projection(layer: LayerSpec, name: str, value: np.ndarray) -> np.ndarray:
    prefix, _, what = name.partition("_")
    d = layer.in_features
    if what == "kernel":
        return np.ascontiguousarray(value.reshape((value.shape[0], d) if prefix != "o" else (d, value.shape[-1])).T)
    return value.reshape(-1)


# ---------------------------------------------------------------- embedding


def embed_spec(
    num_embeddings: int,
    features: int,
    *,
    use_alpha: bool | float = True,
    epsilon: float = DEFAULT_EPSILON,
    learnable_epsilon: bool = False,
    spherical: bool = False,
) -> LayerSpec:
    """The core's description of a Yat embedding's ``attend``: a bias-free Yat layer ``features -> num_embeddings``.

    The table ``(num_embeddings, features)`` is that layer's kernel in the core's
    ``(out, in)`` layout, so ``attend`` is :func:`yat_core.attention.yat_embed_attend`.

    Examples
    --------
    >>> spec = embed_spec(10, 4, learnable_epsilon=True)
    >>> spec.param_shapes
    {'kernel': (10, 4), 'alpha': (), 'epsilon_raw': ()}
    """
    return yat_layer_spec(
        features,
        num_embeddings,
        bias=False,
        alpha=use_alpha,
        epsilon=epsilon,
        learnable_epsilon=learnable_epsilon,
        spherical=spherical,
        names=("features", "num_embeddings"),
        option_names=("use_bias", "use_alpha"),
    )


def embed_lookup(table: jax.Array, inputs: Any, *, dtype: Any) -> jax.Array:
    """Rows of ``table`` for integer ``inputs`` (:func:`yat_core.attention.yat_embed`), in ``dtype`` if given.

    Examples
    --------
    >>> embed_lookup(jnp.eye(3), jnp.array([2, 0]), dtype=None)
    Array([[0., 0., 1.],
           [1., 0., 0.]], dtype=float32)
    >>> embed_lookup(jnp.eye(3), jnp.array([2.0]), dtype=None)
    Traceback (most recent call last):
    ...
    TypeError: embedding ids must be an integer array, got float32
    """
    (table,) = promote_dtype((table,), dtype=dtype, inexact=False)
    return yat_embed(table, inputs if isinstance(inputs, (jax.Array, np.ndarray)) else jnp.asarray(inputs), xp=jnp)


def embed_attend(
    spec: LayerSpec, query: jax.Array, table: jax.Array, params: Mapping[str, jax.Array], *, dtype: Any, precision: Any
) -> jax.Array:
    """Yat scores of ``query (..., features)`` against every row of ``table``: ``(..., num_embeddings)``.

    ``params`` holds the learnable scalars (``alpha``, ``epsilon_raw``) ``spec`` has;
    query, table and scalars are promoted as ``nnx.Embed.attend`` promotes them.

    Examples
    --------
    >>> spec = embed_spec(2, 2, epsilon=1.0)
    >>> embed_attend(spec, jnp.array([[1.0, 0.0]]), jnp.eye(2), {"alpha": jnp.ones(())}, dtype=None, precision=None)
    Array([[1., 0.]], dtype=float32)
    """
    names = tuple(params)
    query, table, *values = promote_dtype((query, table, *params.values()), dtype=dtype)
    options = forward_options(spec, dict(zip(names, values)).__getitem__, jnp)
    del options["bias"]
    name = matmul_precision(precision)
    with jax.default_matmul_precision(name) if name else contextlib.nullcontext():
        return yat_embed_attend(query, table, xp=jnp, **options)


# ---------------------------------------------------------------- models
#
# A model of a ModelSpec holds one layer per spec layer (None for pooling, flatten, patches
# and the token mean, which have no parameters) and runs them through run_model, so NNX and
# Linen share the input layout, the pooling, the flatten and patch orders and the parameter
# layouts.

#: Kinds whose kernel is a convolution's: ``(A, B, *k)`` in the core, ``(*k, B, A)`` in Flax.
CONV_KINDS = ("yat_conv", "yat_conv_transpose", "conv")


def plain_layer_options(spec: LayerSpec) -> dict[str, Any]:
    """A ``"linear"`` or ``"conv"`` spec as the arguments of ``nnx.Linear`` / ``nnx.Conv`` (``linen.Dense`` / ``Conv``).

    The bias is learnable or absent (a constant one is :func:`linear_tail`'s); both
    initialisers are torch's default, uniform on ``±1/sqrt(fan_in)``, as the core
    draws them. A convolution adds its geometry in Flax's spelling: the core's int
    padding as ``(p, p)`` pairs, ``"valid"`` / ``"same"`` as Flax's ``"VALID"`` /
    ``"SAME"`` (the core's ``"same"`` is stride 1 only, where the two agree).

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> options = plain_layer_options(LayerSpec("conv", 4, 6, kernel_size=(3, 3), padding=(1, 1), groups=2))
    >>> {k: v for k, v in options.items() if not k.endswith("_init")}  # doctest: +NORMALIZE_WHITESPACE
    {'use_bias': True, 'kernel_size': (3, 3), 'strides': (1, 1), 'padding': ((1, 1), (1, 1)),
     'kernel_dilation': (1, 1), 'feature_group_count': 2}
    """
    if spec.kind not in ("linear", "conv"):
        raise ValueError(f"Flax's own layers build 'linear' and 'conv' specs, not {spec.kind!r}")
    init = fan_in_uniform(spec.fans[0])
    options: dict[str, Any] = {"use_bias": spec.bias == LEARNABLE, "kernel_init": init, "bias_init": init}
    if spec.kind == "conv":
        geometry = spec.conv_options
        padding = geometry["padding"]
        options.update(
            kernel_size=spec.kernel_size,
            strides=geometry["stride"],
            padding=padding.upper() if isinstance(padding, str) else tuple((p, p) for p in padding),
            kernel_dilation=geometry["dilation"],
            feature_group_count=geometry["groups"],
        )
    return options


def to_flax_param(layer: LayerSpec, name: str, value: Any) -> Any:
    """One parameter as :func:`~yat_core.nn.interchange.import_arrays` hands it over, in Flax's layout.

    Dense kernels arrive ``(in, out)`` already (``kernel_in_out=True``); convolution
    kernels arrive in the core's layout and go through :func:`to_flax_kernel`, the
    conversion the Yat convolutions use. An attention's projections arrive ``(out,
    in)`` and leave as Flax's attention keeps them: ``"q_kernel"`` ``(in, heads,
    head_dim)``, ``"q_bias"`` ``(heads, head_dim)`` (also key and value),
    ``"o_kernel"`` ``(heads, head_dim, out)`` (the head of feature ``f`` is ``f //
    head_dim``, as the core splits them); the place of each is :func:`flax_param_path`.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> to_flax_param(LayerSpec("conv", 2, 8, kernel_size=(5, 4)), "kernel", np.zeros((8, 2, 5, 4))).shape
    (5, 4, 2, 8)
    >>> attention = LayerSpec("yat_attention", 8, 8, heads=2)
    >>> to_flax_param(attention, "q_kernel", np.zeros((8, 8))).shape, to_flax_param(attention, "o_kernel", np.zeros((8, 8))).shape
    ((8, 2, 4), (2, 4, 8))
    """
    if layer.kind in ATTENTION_KINDS and flax_param_path(layer, name) != (name,):
        return _to_flax_projection(layer, name, value)
    return to_flax_kernel(value) if name == "kernel" and layer.kind in CONV_KINDS else value


def to_core_param(layer: LayerSpec, name: str, value: Any) -> np.ndarray:
    """The inverse of :func:`to_flax_param`, for :func:`~yat_core.nn.interchange.export_arrays`: a NumPy array.

    Examples
    --------
    >>> from yat_core.spec import LayerSpec
    >>> to_core_param(LayerSpec("yat_conv", 2, 8, kernel_size=(5, 4)), "kernel", np.zeros((5, 4, 2, 8))).shape
    (8, 2, 5, 4)
    """
    value = np.asarray(value)
    if layer.kind in ATTENTION_KINDS and flax_param_path(layer, name) != (name,):
        return _to_core_projection(layer, name, value)
    return np.ascontiguousarray(to_core_kernel(value)) if name == "kernel" and layer.kind in CONV_KINDS else value


def input_layout(spec: ModelSpec) -> tuple[int, ...]:
    """One sample's input shape as the Flax model takes it: the core's ``(C, *spatial)`` channels last.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, seed_spec
    >>> input_layout(cnn_spec()), input_layout(seed_spec())
    ((28, 28, 1), (784,))
    """
    shape = spec.input_shape
    return shape if len(shape) == 1 else (*shape[1:], shape[0])


def channels_last(x: Any, spec: ModelSpec) -> Any:
    """Samples in the core's layout (``(n, *spec.input_shape)``, or flat ``(n, prod)``) in Flax's (NumPy or JAX).

    The flat order is the core's (channels first), as :func:`yat_core.mlp.model_input`
    reads it.

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> channels_last(np.zeros((2, 1, 28, 28)), cnn_spec()).shape, channels_last(np.zeros((2, 784)), cnn_spec()).shape
    ((2, 28, 28, 1), (2, 28, 28, 1))
    """
    x = x.reshape((x.shape[0], *spec.input_shape))
    return x if x.ndim <= 2 else x.transpose((0, *range(2, x.ndim), 1))


def model_input(x: jax.Array, spec: ModelSpec) -> jax.Array:
    """``x`` as the model's first layer takes it, ``(n, *input_layout(spec))``.

    Inputs of that shape pass as they are; any other shape of the same size per sample
    (flat ``(n, 784)``, MNIST's ``(n, 28, 28)``) is read in the core's order
    (:func:`channels_last`).

    Examples
    --------
    >>> from yat_core.spec import cnn_spec
    >>> model_input(jnp.zeros((2, 28, 28)), cnn_spec()).shape
    (2, 28, 28, 1)
    >>> model_input(jnp.zeros((2, 27, 28)), cnn_spec())
    Traceback (most recent call last):
    ...
    ValueError: the model takes inputs (n, 28, 28, 1), channels last, or (n, 784) flat; got shape (2, 27, 28)
    """
    layout = input_layout(spec)
    if tuple(x.shape[1:]) == layout:
        return x
    if x.ndim < 2 or math.prod(x.shape[1:]) != spec.in_features:
        dims = ", ".join(map(str, layout))
        where = ", channels last," if len(layout) > 1 else ""
        raise ValueError(
            f"the model takes inputs (n, {dims}){where} or (n, {spec.in_features}) flat; got shape {tuple(x.shape)}"
        )
    return channels_last(x, spec)


def run_model(spec: ModelSpec, layers: Sequence[Callable[[jax.Array], jax.Array] | None], x: jax.Array) -> jax.Array:
    """A model's forward: ``layers[i]`` is spec layer ``i``'s module (None for the kinds without parameters).

    Pooling is Flax's (``max_pool`` / ``avg_pool``, window = stride = ``kernel_size``,
    ``"VALID"``: a remainder is dropped, as in the core). Flatten reads the
    channels-last ``(n, *spatial, C)`` in the core's order ``(C, *spatial)``, so the
    dense kernel after it is the core's array in every framework; so do the patches
    (:func:`patches`). ``"token_mean"`` averages the tokens (axis 1); a ``residual``
    layer adds its input to its output (after a linear layer's ReLU).

    Examples
    --------
    >>> from yat_core.spec import LayerSpec, ModelSpec
    >>> spec = ModelSpec((LayerSpec("avg_pool", 2, 2, kernel_size=(2,)), LayerSpec("flatten", 2, 4)), (2, 4))
    >>> x = jnp.arange(8.0).reshape(1, 2, 4)  # the core's (n, C, L)
    >>> run_model(spec, [None, None], x)  # per channel first: (0+1)/2, (2+3)/2, then (4+5)/2, (6+7)/2
    Array([[0.5, 2.5, 4.5, 6.5]], dtype=float32)
    """
    h = model_input(x, spec)
    for layer, module in zip(spec.layers, layers):
        if layer.kind in ("max_pool", "avg_pool"):
            pool = max_pool if layer.kind == "max_pool" else avg_pool
            h = pool(h, layer.kernel_size, strides=layer.kernel_size, padding="VALID")
        elif layer.kind == "flatten":
            h = jnp.moveaxis(h, -1, 1).reshape(h.shape[0], -1)
        elif layer.kind == "patches":
            h = patches(h, layer.kernel_size)
        elif layer.kind == "token_mean":
            h = jnp.mean(h, axis=1)
        else:
            if module is None:
                raise TypeError(f"a {layer.kind} layer needs its module, got None")
            out = module(h)
            if layer.kind in ("linear", "conv"):
                out = linear_tail(out, layer)
            h = h + out if layer.residual else out
    return h
