"""Our Yat attention against the published ``nmn`` 0.3.5's attention functions, framework by framework.

For every framework (PyTorch, Flax NNX, Flax Linen, MLX, Keras 3, TensorFlow) the core's
:func:`~yat_core.attention.yat_attention` and :func:`~yat_core.attention.yat_attention_weights`
run on the framework's own arrays (``torch.Tensor``, ``jax.Array``, ``mx.array``, and for
Keras and TensorFlow the ``tf.Tensor`` that ``keras.ops.convert_to_tensor`` and
``tf.constant`` give: the core's namespace adapters take them), and nmn's function of the
same name in that framework runs on the same arrays with the same options. A third value
is the float64 definition (DESIGN.md section 1): the core's NumPy ``yat_attention`` on the
same float32 numbers widened to float64.

Cases (:data:`SETUPS`): shapes with ``Tq != Tk`` and ``dv != d``, several heads, a boolean
mask broadcast over heads, causal attention, a fully masked query row, alpha and epsilon
values, large norms (a saturated softmax), a query equal to a key, spherical mode (at
several scales of q and k), and no batch axis or two of them. Inputs are float32, seeded by
the setup's name (the same numbers in every framework). The large norms are q and k times
100: the softmax is saturated. Between saturated and flat (times 30, scores near 1e3) the
float32 rounding of the scores moves the weights by more than 1e-6 of the largest in any
implementation, ours against the reference too (both stay well inside the bound), so
there the 1e-6 criterion asks for more than float32 can resolve and no case is built.

Figures are ``max|a - b| / max|reference|`` over the whole output. Ours must match the
reference within a float32 error bound on every element (:func:`attention_bound`), nmn
must equal ours within :data:`TOLERANCE` wherever it is correct, and every case where it
is not (it computes a value outside that bound, or it cannot run the case and raises) is
named in :data:`NMN_DIFFERENCES`; each named case must really differ, so the list cannot
go stale.

The bound (a running error analysis in the parity suite's style, evaluated with exact
float64 intermediates): each score ``s_ij`` of each head is the dense ⵟ-product of the
query rows against the key rows, so :func:`verification.error_model.yat_bound` (with the
expanded distance ``|q|^2 + |k|^2 - 2 q.k`` every implementation here computes) gives an
interval holding its computed ratio ``dot^2 / (dist + eps)``; ``alpha / sqrt(d)`` adds at
most five roundings (the constant, ``sqrt``, the products). The softmax is monotone in
each score, so the weights a float32 implementation can reach from that box of scores
lie in ``[1 / (1 + sum_{k != j} exp(s_hi_k - s_lo_j)), 1 / (1 + sum_{k != j} exp(s_lo_k -
s_hi_j))]``, the box first widened by the rounding of ``s_j - max s`` (relative ``u``);
``exp`` (relative ``fn_rel``: 4 ulps, MLX's 128), the sum (``gamma_Tk``), the division
(``u``) and underflow (the smallest normal per term) widen it further. A key equal to
the query makes its score's distance cancel, so its interval is wide, but the softmax
it dominates stays saturated and the weights' interval stays narrow: the bound is honest
where the problem is ill conditioned and tight elsewhere. The output ``sum_j a_ij v_j``
adds ``sum_j |a_ij error| |v_j|`` and ``gamma_Tk sum_j a_ij |v_j|``. Masked weights must
be exactly 0 (bound 0). The reference's own float64 error, the same model at float64, is
added. The reference itself is checked against an independent float64 evaluation
(direct differences for the distance, a separate softmax).

What nmn computes (read from its source, used only as a black box here): in every
framework ``yat_attention_weights(q, k, mask, ..., epsilon, alpha, spherical)`` and
``yat_attention(q, k, v, ...)`` with ``q (batch, Tq, heads, d)`` (NNX/Linen: ``(...,
Tq, heads, d)``), the score ``alpha * dot^2 / ((max(|q|^2 + |k|^2 - 2 dot, 0) + eps) *
sqrt(d))``, alpha a plain factor (despite the docstrings' ``(sqrt(d)/log(1+d))**alpha``),
a boolean mask broadcast to ``(batch, heads, Tq, Tk)`` with True = attend, masked
weights zeroed after the softmax and a fully masked row's weights all zero; no causal
option (the cases give nmn the lower-triangular mask, ours ``causal=True``). Spherical
mode divides q and k by ``sqrt(|x|^2 + epsilon)`` (the attention's epsilon), not by
``|x|``; NNX's spherical function is ``yat_attention_normalized`` (no weights function:
those cases are not built for NNX); Linen's normalises that way and then uses the full
distance.

``python -m verification.nmn_attention [FOLDER]`` runs every case and writes
``nmn_attention.json`` and ``nmn_attention.md`` to ``FOLDER`` (default ``results/nmn``);
``verification/test_nmn_attention.py`` asserts the same in the parity suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verification.nmn_conv import (  # the convolution comparison's shared vocabulary
    OK_VERDICTS,
    TOLERANCE,
    NamedDifference,
    _error,
    _figure,
    _fmt,
    _ratio,
    _verdict,
    _versions,
    _worst,
    keras_backend,
)
from yat_core._io import atomic_write_text

__all__ = [
    "TOLERANCE",
    "FRAMEWORKS",
    "FUNCTIONS",
    "Setup",
    "SETUPS",
    "Case",
    "Result",
    "NamedDifference",
    "NMN_DIFFERENCES",
    "cases",
    "listed",
    "nmn_unavailable",
    "keras_backend",
    "make_inputs",
    "attention_bound",
    "reference",
    "run_case",
    "run",
    "summary",
    "render_markdown",
    "write",
    "main",
]

FRAMEWORKS = ("torch", "nnx", "linen", "mlx", "keras", "tf")
FUNCTIONS = ("yat_attention", "yat_attention_weights")

#: nmn's module of attention functions in each framework (imported only when its cases run).
NMN_MODULES = {
    "torch": "nmn.torch.attention",
    "nnx": "nmn.nnx.layers.attention.yat_attention",
    "linen": "nmn.linen.attention",
    "mlx": "nmn.mlx.attention",
    "keras": "nmn.keras.attention",
    "tf": "nmn.tf.attention",
}


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Setup:
    """One set of inputs and options.

    ``mask``: None, ``"random"`` (about a third of the keys masked, every query keeping one)
    or ``"full-row"`` (that, and one query of the first batch entry seeing no key), shaped
    ``(*batch, 1, Tq, Tk)`` (broadcast over heads). ``scale`` multiplies q and k (large
    norms saturate the softmax); ``equal``: one query of each head equals one of its keys.
    """

    name: str
    batch: tuple[int, ...] = (2,)
    tq: int = 5
    tk: int = 5
    heads: int = 2
    d: int = 8
    dv: int = 8
    mask: str | None = None
    causal: bool = False
    alpha: float | None = None
    epsilon: float = 1e-5
    spherical: bool = False
    scale: float = 1.0
    equal: bool = False

    def label(self) -> str:
        parts = [
            "b" + ("x".join(map(str, self.batch)) or "-"),
            f"q{self.tq}",
            f"k{self.tk}",
            f"h{self.heads}",
            f"d{self.d}",
            f"v{self.dv}",
        ]
        if self.mask:
            parts.append(f"mask:{self.mask}")
        if self.causal:
            parts.append("causal")
        if self.alpha is not None:
            parts.append(f"alpha{self.alpha:g}")
        parts.append(f"eps{self.epsilon:g}")
        if self.spherical:
            parts.append("spherical")
        if self.scale != 1.0:
            parts.append(f"x{self.scale:g}")
        if self.equal:
            parts.append("q=k")
        return " ".join(parts)


#: The setups every framework runs, each with both functions.
SETUPS: tuple[Setup, ...] = (
    Setup("plain"),
    Setup("cross", tq=3, tk=7, heads=3, d=4, dv=6, alpha=0.75, epsilon=1e-3),
    Setup("mask", tq=4, tk=6, mask="random"),
    Setup("causal", tq=6, tk=6, heads=3, d=4, dv=5, causal=True),
    Setup("causal-cross", tq=6, tk=4, mask="random", causal=True, alpha=1.5),
    Setup("masked-row", tq=4, tk=5, mask="full-row"),
    Setup("alpha-eps", alpha=2.5, epsilon=0.5),
    Setup("large-norm", scale=100.0),
    Setup("equal-key", equal=True),
    Setup("equal-key-small", equal=True, scale=0.05, epsilon=1e-3),
    Setup("spherical-large", spherical=True, scale=10.0, mask="random"),
    Setup("spherical", spherical=True, scale=0.3),
    Setup("spherical-eps", spherical=True, alpha=2.0, epsilon=0.05),
    Setup("spherical-equal", spherical=True, equal=True, scale=0.3, mask="random"),
    Setup("no-batch", batch=(), tq=4, tk=3),
    Setup("batch-2x3", batch=(2, 3), tq=3, tk=4, heads=1, d=4, dv=3),
)


@dataclass(frozen=True)
class Case:
    framework: str
    function: str  # "yat_attention" or "yat_attention_weights"
    setup: Setup

    @property
    def nmn_function(self) -> str:
        if self.framework == "nnx" and self.setup.spherical:
            return "yat_attention_normalized"  # NNX's spherical attention
        return self.function

    @property
    def id(self) -> str:
        kind = "weights" if self.function == "yat_attention_weights" else "attention"
        return f"{self.framework}-{kind}-{self.setup.name}"


def _built(framework: str, function: str, setup: Setup) -> bool:
    # NNX has spherical attention (yat_attention_normalized) but no spherical weights function.
    return not (framework == "nnx" and setup.spherical and function == "yat_attention_weights")


def cases(frameworks: Iterable[str] = FRAMEWORKS) -> list[Case]:
    """Every case, framework by framework."""
    return [Case(fw, fn, s) for fw in frameworks for s in SETUPS for fn in FUNCTIONS if _built(fw, fn, s)]


# ---------------------------------------------------------------- inputs and the float64 definition


@dataclass(frozen=True)
class Inputs:
    q: np.ndarray  # float32 (*batch, Tq, H, d)
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None  # bool (*batch, 1, Tq, Tk)


def make_inputs(setup: Setup) -> Inputs:
    """The setup's float32 inputs, seeded by its name (the same in every framework)."""
    rng = np.random.default_rng(zlib.crc32(setup.name.encode()))
    b, h = setup.batch, setup.heads
    q = rng.standard_normal((*b, setup.tq, h, setup.d)) * setup.scale
    k = rng.standard_normal((*b, setup.tk, h, setup.d)) * setup.scale
    v = rng.standard_normal((*b, setup.tk, h, setup.dv))
    if setup.equal:  # query 1 equals key 2 (in every batch entry and head)
        q[..., 1, :, :] = k[..., 2, :, :]
    mask = None
    if setup.mask is not None:
        mask = rng.random((*b, 1, setup.tq, setup.tk)) > 1 / 3
        mask[..., 0] |= ~np.any(mask, axis=-1)  # every query keeps a key ...
        if setup.equal:
            mask[..., 1, 2] = True  # ... and the equal pair stays visible
        if setup.mask == "full-row":
            mask[(0,) * len(b) + (0, 2)] = False  # ... but this one
    return Inputs(*(a.astype(np.float32) for a in (q, k, v)), mask)


def _allowed(setup: Setup, mask: np.ndarray | None) -> np.ndarray:
    """Which keys each query sees, ``(*batch, H, Tq, Tk)``."""
    shape = (*setup.batch, setup.heads, setup.tq, setup.tk)
    allowed = np.ones(shape, bool) if mask is None else np.broadcast_to(mask, shape).copy()
    if setup.causal:
        allowed &= np.tri(setup.tq, setup.tk, dtype=bool)
    return allowed


def _options(setup: Setup) -> dict[str, Any]:
    return {"causal": setup.causal, "alpha": setup.alpha, "epsilon": setup.epsilon, "spherical": setup.spherical}


@dataclass
class Bounds:
    weights: np.ndarray  # (*batch, H, Tq, Tk): |computed - exact| bound
    output: np.ndarray  # (*batch, Tq, H, dv)
    weights64: np.ndarray  # the independent float64 evaluation
    output64: np.ndarray


def _lse(x: np.ndarray, axis: int = -1) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(top, axis) + np.log(np.sum(np.exp(x - top), axis=axis))


def attention_bound(setup: Setup, inputs: Inputs, prec: Any) -> Bounds:
    """Per-element bounds of a ``prec`` implementation's weights and output (see the module docstring)."""
    from verification.error_model import gamma, yat_bound
    from verification.oracle import yat_forward64

    u, tiny, fn = prec.u, prec.tiny, prec.fn_rel
    q, k, v = (a.astype(np.float64) for a in (inputs.q, inputs.k, inputs.v))
    allowed = _allowed(setup, inputs.mask)
    tk, heads = setup.tk, setup.heads
    qf = q.reshape(-1, setup.tq, heads, setup.d)
    kf = k.reshape(-1, tk, heads, setup.d)
    af = allowed.reshape(-1, heads, setup.tq, tk)
    s = np.empty(af.shape)
    s_lo, s_hi = np.empty(af.shape), np.empty(af.shape)
    c = (1.0 if setup.alpha is None else setup.alpha) / math.sqrt(setup.d)
    for b in range(qf.shape[0]):
        for h in range(heads):
            o = yat_forward64(qf[b, :, h], kf[b, :, h], epsilon=setup.epsilon, spherical=setup.spherical)
            yb = yat_bound(o, prec)
            s[b, h] = c * o.ratio
            s_lo[b, h] = np.maximum(c * yb.y_lo * (1.0 - u) ** 5 - tiny, 0.0)
            s_hi[b, h] = c * yb.y_hi * (1.0 + u) ** 5 + tiny
    # The computed exponent s_j - max s carries a rounding of relative u.
    top_hi = np.max(np.where(af, s_hi, -np.inf), axis=-1, keepdims=True)
    shift = u * np.where(af, top_hi - s_lo, 0.0)
    s_lo, s_hi = s_lo - shift, s_hi + shift
    neg = -np.inf
    # A fully masked row gives -inf - -inf below; `where` discards it (its weights are exactly 0).
    with np.errstate(invalid="ignore", over="ignore"):
        exact = np.where(af, np.exp(np.where(af, s, neg) - _lse(np.where(af, s, neg))[..., None]), 0.0)
        # Extremes over the box: the weight of j is smallest with its score low and every other high.
        eye = np.eye(tk, dtype=bool)
        others_hi = np.where(eye, s_lo[..., :, None], s_hi[..., None, :])  # (..., Tq, j, k)
        others_lo = np.where(eye, s_hi[..., :, None], s_lo[..., None, :])
        keep = af[..., None, :]
        lo = np.exp(s_lo - _lse(np.where(keep, others_hi, neg)))
        hi = np.exp(s_hi - _lse(np.where(keep, others_lo, neg)))
        g = gamma(tk, u)
        lo = np.maximum(lo * (1.0 - fn) * (1.0 - u) / ((1.0 + fn) * (1.0 + g)) - (tk + 1) * tiny, 0.0)
        hi = np.minimum(hi * (1.0 + fn) * (1.0 + u) / ((1.0 - fn) * (1.0 - g)) + (tk + 1) * tiny, 1.0 + 4 * u)
        lo, hi = np.where(af, lo, 0.0), np.where(af, hi, 0.0)
    w_bound = np.maximum(hi - exact, exact - lo)
    vf = np.abs(v.reshape(-1, tk, heads, setup.dv))
    w_abs = np.einsum("bhqk,bkhd->bqhd", w_bound, vf)
    a_abs = np.einsum("bhqk,bkhd->bqhd", hi, vf)
    out_bound = w_abs + g * a_abs + tk * tiny * np.any(af, axis=-1).transpose(0, 2, 1)[..., None]
    out64 = np.einsum("bhqk,bkhd->bqhd", exact, v.reshape(-1, tk, heads, setup.dv))
    lead = setup.batch
    return Bounds(
        w_bound.reshape(*lead, heads, setup.tq, tk),
        out_bound.reshape(*lead, setup.tq, heads, setup.dv),
        exact.reshape(*lead, heads, setup.tq, tk),
        out64.reshape(*lead, setup.tq, heads, setup.dv),
    )


def reference(case: Case, inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """The float64 definition of ``case`` (the core's NumPy function) and the bound on a float32 implementation.

    The bound is :func:`attention_bound` at the framework's float32 precision plus the
    same at float64 (the reference's own error). The independent float64 evaluation
    the bound computes must equal the core's value: that checks the reference.
    """
    from verification.error_model import FLOAT64, precision_for
    from yat_core.attention import yat_attention, yat_attention_weights

    s = case.setup
    q, k, v = (a.astype(np.float64) for a in (inputs.q, inputs.k, inputs.v))
    opts = {"mask": inputs.mask, **_options(s)}
    weights = case.function == "yat_attention_weights"
    ref = np.asarray(yat_attention_weights(q, k, **opts) if weights else yat_attention(q, k, v, **opts))
    b32 = attention_bound(s, inputs, precision_for(case.framework, np.float32))  # "mlx": MLX's exp
    b64 = attention_bound(s, inputs, FLOAT64)
    independent = b32.weights64 if weights else b32.output64
    scale = float(np.max(np.abs(ref))) or 1.0
    if independent.shape != ref.shape or not np.allclose(independent, ref, rtol=1e-9, atol=1e-9 * scale):
        raise AssertionError(f"{case.id}: the independent float64 evaluation and the core's disagree")
    bound = (b32.weights + b64.weights) if weights else (b32.output + b64.output)
    return ref, bound


# ---------------------------------------------------------------- the frameworks


def _nmn_call(module: Any, case: Case, arrays: list[Any], mask: Any, extra: dict[str, Any]) -> Any:
    """nmn's function of ``case`` on the framework's ``arrays`` (q, k[, v]); the causal rule becomes a mask."""
    s = case.setup
    fn = getattr(module, case.nmn_function)
    kw: dict[str, Any] = {"mask": mask, "epsilon": s.epsilon, "alpha": s.alpha, **extra}
    if s.spherical and case.nmn_function != "yat_attention_normalized":
        kw["spherical"] = True
    return fn(*arrays, **kw)


def _nmn_mask(case: Case, mask: np.ndarray | None) -> np.ndarray | None:
    s = case.setup
    if not s.causal:
        return mask
    lower = np.tri(s.tq, s.tk, dtype=bool)
    return lower if mask is None else mask & lower


def _arrays(case: Case, inputs: Inputs) -> list[np.ndarray]:
    return [inputs.q, inputs.k] + ([inputs.v] if case.function == "yat_attention" else [])


def _ours(case: Case, arrays: list[Any], mask: Any) -> Any:
    from yat_core import attention

    return getattr(attention, case.function)(*arrays, mask=mask, **_options(case.setup))


def _run_torch(case: Case, inputs: Inputs, nmn: bool) -> np.ndarray:
    import torch

    arrays = [torch.from_numpy(a) for a in _arrays(case, inputs)]
    with torch.no_grad():
        if nmn:
            mask = _nmn_mask(case, inputs.mask)
            tm = None if mask is None else torch.from_numpy(mask)
            out = _nmn_call(importlib.import_module(NMN_MODULES["torch"]), case, arrays, tm, {"training": False})
        else:
            out = _ours(case, arrays, None if inputs.mask is None else torch.from_numpy(inputs.mask))
    return out.numpy()


def _run_jax(case: Case, inputs: Inputs, nmn: bool) -> np.ndarray:
    import jax.numpy as jnp

    arrays = [jnp.asarray(a) for a in _arrays(case, inputs)]
    if nmn:
        mask = _nmn_mask(case, inputs.mask)
        jm = None if mask is None else jnp.asarray(mask)
        out = _nmn_call(importlib.import_module(NMN_MODULES[case.framework]), case, arrays, jm, {"deterministic": True})
    else:
        out = _ours(case, arrays, None if inputs.mask is None else jnp.asarray(inputs.mask))
    return np.asarray(out)


def _run_mlx(case: Case, inputs: Inputs, nmn: bool) -> np.ndarray:
    import mlx.core as mx

    arrays = [mx.array(a) for a in _arrays(case, inputs)]
    if nmn:
        mask = _nmn_mask(case, inputs.mask)
        mm = None if mask is None else mx.array(mask)
        out = _nmn_call(importlib.import_module(NMN_MODULES["mlx"]), case, arrays, mm, {"training": False})
    else:
        out = _ours(case, arrays, None if inputs.mask is None else mx.array(inputs.mask))
    mx.eval(out)
    return np.array(out)


def _run_keras(case: Case, inputs: Inputs, nmn: bool) -> np.ndarray:
    import keras

    def convert(a: np.ndarray) -> Any:
        return keras.ops.convert_to_tensor(a)

    arrays = [convert(a) for a in _arrays(case, inputs)]
    if nmn:
        mask = _nmn_mask(case, inputs.mask)
        km = None if mask is None else convert(mask)
        out = _nmn_call(importlib.import_module(NMN_MODULES["keras"]), case, arrays, km, {"training": False})
    else:
        out = _ours(case, arrays, None if inputs.mask is None else convert(inputs.mask))
    return np.asarray(keras.ops.convert_to_numpy(out))


def _run_tf(case: Case, inputs: Inputs, nmn: bool) -> np.ndarray:
    import tensorflow as tf

    arrays = [tf.constant(a) for a in _arrays(case, inputs)]
    if nmn:
        mask = _nmn_mask(case, inputs.mask)
        tm = None if mask is None else tf.constant(mask)
        out = _nmn_call(importlib.import_module(NMN_MODULES["tf"]), case, arrays, tm, {"training": False})
    else:
        out = _ours(case, arrays, None if inputs.mask is None else tf.constant(inputs.mask))
    return out.numpy()


Runner = Callable[[Case, Inputs, bool], np.ndarray]
RUNNERS: dict[str, Runner] = {
    "torch": _run_torch,
    "nnx": _run_jax,
    "linen": _run_jax,
    "mlx": _run_mlx,
    "keras": _run_keras,
    "tf": _run_tf,
}

#: What ours runs on, per framework (for the report).
OUR_ARRAYS = {
    "torch": "torch.Tensor",
    "nnx": "jax.Array",
    "linen": "jax.Array",
    "mlx": "mx.array",
    "keras": "tf.Tensor (keras.ops.convert_to_tensor, TensorFlow backend)",
    "tf": "tf.Tensor",
}


# ---------------------------------------------------------------- where nmn differs


def _ids(
    frameworks: Iterable[str], setups: Iterable[str], kinds: Iterable[str] = ("attention", "weights")
) -> tuple[str, ...]:
    """The ids of the built cases among ``frameworks`` x ``kinds`` x ``setups``."""
    built = {c.id for c in cases()}
    wanted = (f"{fw}-{kind}-{s}" for fw in frameworks for s in setups for kind in kinds)
    return tuple(i for i in wanted if i in built)


_BATCH_AXES = ("no-batch", "batch-2x3")
_SPHERICAL = ("spherical", "spherical-eps", "spherical-equal")


def _one_batch_axis(framework: str, exception: str, how: str) -> NamedDifference:
    return NamedDifference(
        f"{framework}: exactly one batch axis",
        f"nmn.{framework}'s attention functions take q, k, v of shape (batch, T, heads, d) only ({how}); "
        "ours take any number of leading batch axes, none included, as nmn's NNX and Linen functions do.",
        _ids((framework,), _BATCH_AXES),
        exception=exception,
    )


#: Every case where nmn 0.3.5 differs from the definition or cannot run it, measured.
#: Where nmn runs, the plain score, alpha, epsilon, masks (broadcast over heads, causal as a
#: mask, a fully masked row), Tq != Tk, dv != d, saturated softmax and q == k all agree
#: with ours; what differs is spherical mode's normalisation and, outside Flax, the layout.
NMN_DIFFERENCES: tuple[NamedDifference, ...] = (
    NamedDifference(
        "spherical: q and k not normalised to unit length",
        "nmn's spherical mode (spherical=True; NNX's yat_attention_normalized) divides q and k by "
        "sqrt(|x|^2 + epsilon), with the attention's epsilon, not by |x| (DESIGN.md section 1: spherical mode "
        "normalises q and k): the rows fall short of the unit sphere by a relative epsilon / (2 |x|^2), the "
        "distance of a query to an equal key is 2 epsilon / (|x|^2 + epsilon) instead of 0, and the scores "
        "depend on the scale of q and k. Visible when |x|^2 is not large against epsilon (q, k scaled by 0.3, "
        "or epsilon 0.05); at |x|^2 ~ 800 (spherical-large) it is below float32's resolution and nmn equals "
        "ours.",
        _ids(FRAMEWORKS, _SPHERICAL),
    ),
    _one_batch_axis("torch", "AssertionError", "it asserts 4-D inputs"),
    _one_batch_axis("mlx", "ValueError", "mx.einsum('bqhd,bkhd->bhqk') refuses other ranks"),
    _one_batch_axis("keras", "InvalidArgumentError", "a 4-D transpose of the squared norms"),
    _one_batch_axis("tf", "InvalidArgumentError", "tf.einsum('bqhd,bkhd->bhqk') refuses other ranks"),
)


def listed() -> dict[str, NamedDifference]:
    """Case id -> the named difference that lists it (on this Keras backend)."""
    return {
        case_id: diff
        for diff in NMN_DIFFERENCES
        if diff.keras_backend in (None, keras_backend())
        for case_id in diff.cases
    }


def nmn_unavailable(framework: str) -> str | None:
    """Why nmn's attention of ``framework`` cannot be imported here (a named limitation), or None."""
    try:
        importlib.import_module(NMN_MODULES[framework])
    except Exception as exc:  # noqa: BLE001 - a missing optional dependency, or a broken nmn: recorded
        return f"nmn unavailable: {_error(exc)}"
    return None


# ---------------------------------------------------------------- running


@dataclass
class Result:
    id: str
    framework: str
    function: str
    nmn_function: str
    setup: str
    options: str
    max_ref: float
    ours_vs_ref: float | None  # max|ours - ref| / max|ref|
    ours_bound_ratio: float | None  # max |ours - ref| / bound, per element: <= 1 required
    nmn_vs_ref: float | None
    nmn_bound_ratio: float | None
    ours_vs_nmn: float | None  # max|ours - nmn| / max|ref|: < TOLERANCE where nmn is correct
    ours_error: str | None
    nmn_error: str | None
    listed_as: str | None
    verdict: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.verdict in OK_VERDICTS


def run_case(case: Case, unavailable: str | None = None) -> Result:
    """Run one case: the reference, ours and nmn's (unless ``unavailable`` says why not), compared."""
    t0 = time.perf_counter()
    inputs = make_inputs(case.setup)
    ref, bound = reference(case, inputs)
    scale = float(np.max(np.abs(ref))) or 1.0
    runner = RUNNERS[case.framework]
    ours = nmn = None
    ours_error = nmn_error = None
    try:
        ours = runner(case, inputs, False)
    except Exception as exc:  # noqa: BLE001 - recorded; the test fails on it
        ours_error = _error(exc)
    if unavailable is not None:
        nmn_error = unavailable
    else:
        try:
            nmn = runner(case, inputs, True)
        except Exception as exc:  # noqa: BLE001 - an nmn function that cannot run a case is recorded, not raised
            nmn_error = _error(exc)
    if nmn is not None and nmn.shape != ref.shape:
        nmn_error, nmn = f"output shape {nmn.shape}, the definition's {ref.shape}", None
    diff = listed().get(case.id)
    result = Result(
        id=case.id,
        framework=case.framework,
        function=case.function,
        nmn_function=case.nmn_function,
        setup=case.setup.name,
        options=case.setup.label(),
        max_ref=scale,
        ours_vs_ref=None if ours is None else _figure(ours, ref, scale),
        ours_bound_ratio=None if ours is None else _ratio(ours, ref, bound),
        nmn_vs_ref=None if nmn is None else _figure(nmn, ref, scale),
        nmn_bound_ratio=None if nmn is None else _ratio(nmn, ref, bound),
        ours_vs_nmn=None if ours is None or nmn is None else _figure(ours, nmn, scale),
        ours_error=ours_error,
        nmn_error=nmn_error,
        listed_as=None if diff is None else diff.name,
        verdict="",
        seconds=0.0,
    )
    result.verdict = _verdict(result, diff)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def run(frameworks: Iterable[str] = FRAMEWORKS) -> list[Result]:
    """Every case of ``frameworks``; an nmn framework module that does not import is recorded per case."""
    results = []
    for framework in frameworks:
        unavailable = nmn_unavailable(framework)
        results += [run_case(case, unavailable) for case in cases([framework])]
    return results


# ---------------------------------------------------------------- report


def summary(results: list[Result]) -> dict[str, Any]:
    """The JSON document: meta, the named differences (with what nmn raised), every result."""
    by_id = {r.id: r for r in results}
    active = set(listed().values())
    named = []
    for diff in NMN_DIFFERENCES:
        if diff not in active:
            continue
        rows = [by_id[c] for c in diff.cases if c in by_id]
        named.append(
            {
                "name": diff.name,
                "what": diff.what,
                "exception": diff.exception,
                "cases": list(diff.cases),
                "verdicts": sorted({r.verdict for r in rows}),
                "worst_nmn_vs_ref": _worst(r.nmn_vs_ref for r in rows),
                "worst_nmn_bound_ratio": _worst(r.nmn_bound_ratio for r in rows),
                "nmn_raised": sorted({r.nmn_error for r in rows if r.nmn_error}),
            }
        )
    equal = [r for r in results if r.verdict == "equal"]
    unavailable = sorted({f"{r.framework}: {r.nmn_error}" for r in results if r.verdict == "nmn unavailable (named)"})
    frameworks = sorted({r.framework for r in results}, key=FRAMEWORKS.index)
    per_framework = {
        fw: {
            "ours_runs_on": OUR_ARRAYS[fw],
            "cases": sum(r.framework == fw for r in results),
            "equal": sum(r.framework == fw for r in equal),
            "worst_ours_vs_nmn_where_equal": _worst(r.ours_vs_nmn for r in equal if r.framework == fw),
            "worst_ours_vs_ref": _worst(r.ours_vs_ref for r in results if r.framework == fw),
            "worst_ours_bound_ratio": _worst(r.ours_bound_ratio for r in results if r.framework == fw),
            "nmn_wrong": sum(r.framework == fw and r.verdict == "nmn wrong (named)" for r in results),
            "nmn_cannot_run": sum(r.framework == fw and r.verdict == "nmn cannot run (named)" for r in results),
            "ours_wrong": sum(r.framework == fw and r.verdict == "OURS WRONG" for r in results),
        }
        for fw in frameworks
    }
    doc: dict[str, Any] = {
        "meta": {
            "tolerance": TOLERANCE,
            "figure": "max|a - b| / max|float64 reference| over the whole output",
            "bound_ratio": "max |a - reference| / the float32 attention error bound, per element (<= 1)",
            "keras_backend": keras_backend(),
            "versions": _versions(),
            "cases": len(results),
            "equal": len(equal),
            "nmn_cannot_run": sum(r.verdict == "nmn cannot run (named)" for r in results),
            "nmn_wrong": sum(r.verdict == "nmn wrong (named)" for r in results),
            "nmn_unavailable": unavailable,
            "worst_ours_vs_nmn_where_equal": _worst(r.ours_vs_nmn for r in equal),
            "worst_ours_vs_ref": _worst(r.ours_vs_ref for r in results),
            "worst_ours_bound_ratio": _worst(r.ours_bound_ratio for r in results),
            "ours_wrong": [
                f"{r.id}: {r.ours_error or 'outside the bound'}" for r in results if r.verdict == "OURS WRONG"
            ],
            "per_framework": per_framework,
            "failures": [f"{r.id}: {r.verdict}" for r in results if not r.ok],
            "ok": all(r.ok for r in results),
        },
        "named_differences": named,
        "results": [dataclasses.asdict(r) for r in results],
    }
    return doc


_NOTES = """\
What nmn 0.3.5's attention functions compute (read from its source; run here as a black box): in every
framework `yat_attention_weights(q, k, mask, ..., epsilon, alpha, spherical)` and `yat_attention(q, k, v, ...)`
score `alpha * (q.k)**2 / ((max(|q|^2 + |k|^2 - 2 q.k, 0) + epsilon) * sqrt(d))` (alpha a plain factor, whatever
the docstrings say about `(sqrt(d)/log(1+d))**alpha`; epsilon 1e-5 by default, as ours), softmax over the keys,
a boolean mask broadcast to `(batch, heads, Tq, Tk)` with True = attend, masked weights zeroed after the softmax
(a fully masked row: all zero, as ours). Layout `(batch, T, heads, d)`, exactly one batch axis in PyTorch, MLX,
Keras and TensorFlow (`einsum("bqhd,...")`), any in NNX/Linen. nmn has no causal option: it gets the
lower-triangular mask (key j visible from query i iff j <= i), ours `causal=True`. Spherical mode: nmn divides q
and k by `sqrt(|x|^2 + epsilon)` with the attention's epsilon (ours by `|x|`); NNX's spherical function is
`yat_attention_normalized` (no spherical weights function there, so those cases are not built); Linen normalises
so and then takes the full distance. Ours runs on each framework's own arrays (Keras: the `tf.Tensor`s of its
TensorFlow backend).
"""


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown report of a :func:`summary` document."""
    meta = doc["meta"]
    lines = [
        "# Our Yat attention vs nmn 0.3.5, framework by framework",
        "",
        f"Same float32 inputs and options for both functions; figures are {meta['figure']}, the reference being "
        "the core's float64 NumPy `yat_attention` / `yat_attention_weights` (DESIGN.md section 1); *ratio* is "
        f"{meta['bound_ratio']} (`verification/nmn_attention.py` derives it). Ours and nmn must agree within "
        f"{meta['tolerance']:g} wherever nmn is correct. Keras backend: {meta['keras_backend']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".",
        "",
        f"**{meta['cases']} cases: {meta['equal']} equal** (worst ours vs nmn there "
        f"{_fmt(meta['worst_ours_vs_nmn_where_equal'])}), {meta['nmn_wrong']} where nmn computes a wrong value, "
        f"{meta['nmn_cannot_run']} that nmn cannot run (named below); ours within the error bound "
        + ("everywhere " if not meta["ours_wrong"] else f"wherever it ran, but WRONG in {len(meta['ours_wrong'])} ")
        + f"(worst ratio {_fmt(meta['worst_ours_bound_ratio'])}, worst figure {_fmt(meta['worst_ours_vs_ref'])}). "
        f"All checks {'pass' if meta['ok'] else 'DO NOT pass: ' + '; '.join(meta['failures'])}.",
        "",
    ]
    if meta["nmn_unavailable"]:
        lines += ["Named limitation, nmn not importable here: " + "; ".join(meta["nmn_unavailable"]) + ".", ""]
    if meta["ours_wrong"]:
        errors = sorted({w.split(": ", 1)[1] for w in meta["ours_wrong"]})
        lines += ["Ours fails: " + "; ".join(f"`{e}`" for e in errors) + ".", ""]
    lines += [
        "| framework | ours runs on | cases | equal | worst ours vs nmn (equal) | worst ours vs ref | "
        "worst ours ratio | nmn wrong | nmn cannot run | ours wrong |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fw, p in meta["per_framework"].items():
        cells = (
            fw,
            p["ours_runs_on"],
            p["cases"],
            p["equal"],
            p["worst_ours_vs_nmn_where_equal"],
            p["worst_ours_vs_ref"],
            p["worst_ours_bound_ratio"],
            p["nmn_wrong"],
            p["nmn_cannot_run"],
            p["ours_wrong"],
        )
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    lines += ["", _NOTES, "## Named differences", ""]
    if not doc["named_differences"]:
        lines += ["None.", ""]
    for d in doc["named_differences"]:
        if d["exception"]:
            how = f"raises `{d['exception']}`"
        else:
            how = f"worst nmn vs reference {_fmt(d['worst_nmn_vs_ref'])}, ratio {_fmt(d['worst_nmn_bound_ratio'])}"
        raised = "; ".join(f"`{e.replace('`', chr(39))}`" for e in d["nmn_raised"][:2])
        count = f"{len(d['cases'])} case{'s' if len(d['cases']) != 1 else ''}"
        lines.append(f"- **{d['name']}** ({how}, {count}): {d['what']}" + (f" nmn: {raised}." if raised else ""))
    lines += [
        "",
        "## Every case",
        "",
        "Options: `b` batch axes, `q`/`k` query/key tokens, `h` heads, `d` head size, `v` value size, "
        "`mask:random` about a third of the keys masked (broadcast over heads), `mask:full-row` one query "
        "seeing no key, `x` the scale of q and k, `q=k` a query equal to a key.",
        "",
        "| framework | function | nmn function | setup | options | ours vs ref | ours ratio | nmn vs ref | "
        "nmn ratio | ours vs nmn | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        verdict = r["verdict"] + (f": {r['listed_as']}" if r["listed_as"] else "")
        if r["ours_error"]:
            verdict += f" (ours: `{r['ours_error']}`)"
        cells = (
            r["framework"],
            r["function"],
            r["nmn_function"],
            r["setup"],
            r["options"],
            r["ours_vs_ref"],
            r["ours_bound_ratio"],
            r["nmn_vs_ref"],
            r["nmn_bound_ratio"],
            r["ours_vs_nmn"],
            verdict,
        )
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)


def write(doc: dict[str, Any], folder: Path) -> list[Path]:
    """``nmn_attention.json`` and ``nmn_attention.md`` in ``folder``, written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "nmn_attention.json", folder / "nmn_attention.md"]
    atomic_write_text(paths[0], json.dumps(doc, indent=1, allow_nan=True) + "\n")
    atomic_write_text(paths[1], render_markdown(doc))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[1] / "results" / "nmn"))
    parser.add_argument("--framework", action="append", choices=FRAMEWORKS, help="only these (repeatable)")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # as the parity suite sets it
    frameworks = args.framework or list(FRAMEWORKS)
    t0 = time.perf_counter()
    results = run(frameworks)
    doc = summary(results)
    doc["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    for r in results:
        print(
            f"{r.id:36s} ours/ref {_fmt(r.ours_vs_ref):>8s} ratio {_fmt(r.ours_bound_ratio):>8s} "
            f"nmn/ref {_fmt(r.nmn_vs_ref):>8s} ratio {_fmt(r.nmn_bound_ratio):>8s} "
            f"ours/nmn {_fmt(r.ours_vs_nmn):>8s}  {r.verdict}" + (f"  [{r.nmn_error}]" if r.nmn_error else "")
        )
    for path in write(doc, Path(args.folder)):
        print(f"wrote {path}")
    return 0 if doc["meta"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
