"""What the Flax NNX and Linen layers share: the core's initialisers, argument names and the Yat forward.

Both APIs keep kernels ``(in, out)`` and take the arguments ``nnx.Linear`` /
``linen.Dense`` take; only how a parameter is created differs between them, so
everything else about the layer is here, once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax.nnx.nn.dtypes import promote_dtype

from yat_core.mlp import LEARNABLE, LayerSpec
from yat_core.nn.options import forward_options, spec_options
from yat_core.product import softplus_inverse, yat_product

__all__ = [
    "Initializer",
    "xavier_normal",
    "fan_in_uniform",
    "flax_options",
    "yat_initializers",
    "matmul_precision",
    "yat_dense",
    "linear_tail",
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


def yat_initializers(
    spec: LayerSpec, kernel_init: Initializer, bias_init: Initializer | None
) -> dict[str, tuple[Initializer, tuple[int, ...]]]:
    """Each learnable parameter of a Yat layer: its initialiser and its Flax shape, in creation order.

    ``bias_init=None`` is the core's :func:`fan_in_uniform`; alpha starts at 1 and
    ``epsilon_raw`` at ``softplus_inverse(epsilon)``.

    Examples
    --------
    >>> from yat_core.nn.options import yat_layer_spec
    >>> {k: shape for k, (_, shape) in yat_initializers(yat_layer_spec(4, 3), xavier_normal, None).items()}
    {'kernel': (4, 3), 'bias': (3,), 'alpha': ()}
    """
    inits = {
        "kernel": kernel_init,
        "bias": fan_in_uniform(spec.in_features) if bias_init is None else bias_init,
        "alpha": jax.nn.initializers.ones,
        "epsilon_raw": jax.nn.initializers.constant(softplus_inverse(spec.epsilon)),
    }
    shapes = {**spec.param_shapes, "kernel": (spec.in_features, spec.out_features)}  # Flax's (in, out)
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
    """What a core linear layer adds to ``nnx.Linear`` / ``linen.Dense``: a constant bias, a ReLU.

    Examples
    --------
    >>> from yat_core.nn.options import linear_layer_spec
    >>> linear_tail(jnp.array([-1.0, 1.0]), linear_layer_spec(2, 2, bias=0.5, activation="relu"))
    Array([0. , 1.5], dtype=float32)
    """
    if spec.bias not in (LEARNABLE, None):
        h = h + spec.bias
    return jax.nn.relu(h) if spec.activation == "relu" else h
