"""Our native Yat convolutions against the published ``nmn`` 0.3.5's, framework by framework.

For every framework (PyTorch, Flax NNX, Flax Linen, MLX, Keras 3, TensorFlow) and every
convolution ``nmn`` publishes there (1-, 2- and 3-D, direct and transposed), a few
geometries (stride, padding, dilation, groups, bias, Keras/TF ``channels_first``) are
built twice from the same float32 weights: once with ``nmn``'s layer, once with ours
(``yat_core.nn.<framework>``, weights set through its ``import_params`` in the core's
layout). Both run on the same input; a third value is the float64 definition (DESIGN.md
section 1), the core's NumPy :func:`~yat_core.conv.yat_conv` /
:func:`~yat_core.conv.yat_conv_transpose` on the same float32 numbers widened to float64,
with the padding each framework's vocabulary means (``"same"``: TensorFlow's rule,
``ceil(size / stride)`` outputs, the odd unit on the high side; transposed
``"same"``/``"valid"``: ``jax.lax.conv_transpose``'s placement, which Keras and
TensorFlow share).

Figures are ``max|a - b| / max|reference|`` over the whole output. Ours must match the
reference in every case, within the parity suite's float32 error model (every output's
error under its bound, :func:`verification.error_model.yat_bound`); ours and ``nmn`` must
agree within :data:`TOLERANCE` wherever ``nmn`` is correct; every case where ``nmn`` is
not (it computes a value outside the error model) or cannot run the geometry (it raises)
is named in :data:`NMN_DIFFERENCES`, and must really differ, so the list cannot go stale.
In nmn 0.3.5 every named difference is of the second kind. ``--explore N`` also runs N
random geometries per framework (not part of the test).

What ``nmn`` computes (read from its source, used only as a black box here): every
convolution is ``alpha * (conv(x, W) + b)**2 / (max(|patch|^2 + |W_o|^2 - 2 conv(x, W), 0)
+ epsilon)``, epsilon 1e-5 by default (ours too), the bias in the numerator only and
``alpha`` a plain learnable factor (initial 1.0, shape ``(1,)``; no
``(sqrt(out)/log(1+out))**alpha`` scaling in the convolutions), the same product as ours.
Layouts: torch ``(out, in/g, *k)`` / transposed ``(in, out/g, *k)`` (the core's); NNX and
Linen ``(*k, in/g, out)``, NNX transposed with ``transpose_kernel=True`` ``(*k, out, in)``,
Linen transposed ``(*k, in, out)`` *unflipped* (Flax's ``transpose_kernel=False``
convention: the core's kernel flipped in space, a layout difference, not an error); MLX
``(out, *k, in/g)``, transposed ``(out, *k, in)``; Keras/TF ``(*k, in/g, out)``, transposed
``(*k, out, in)``.

``python -m verification.nmn_conv [FOLDER]`` runs every case and writes ``nmn_conv.json``
and ``nmn_conv.md`` to ``FOLDER`` (default ``results/nmn``); ``verification/test_nmn_conv.py``
asserts the same in the parity suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata as md
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yat_core._io import atomic_write_text

__all__ = [
    "TOLERANCE",
    "FRAMEWORKS",
    "Geometry",
    "Case",
    "Result",
    "NamedDifference",
    "NMN_DIFFERENCES",
    "cases",
    "random_cases",
    "listed",
    "nmn_unavailable",
    "keras_backend",
    "reference",
    "run_case",
    "run",
    "summary",
    "render_markdown",
    "write",
    "main",
]

#: Relative agreement demanded: ``max|a - b| / max|reference|``.
TOLERANCE = 1e-6

FRAMEWORKS = ("torch", "nnx", "linen", "mlx", "keras", "tf")

#: nmn's module of convolutions in each framework (imported only when its cases run).
NMN_MODULES = {
    "torch": "nmn.torch.layers",
    "nnx": "nmn.nnx.layers.conv",
    "linen": "nmn.linen.conv",
    "mlx": "nmn.mlx.conv",
    "keras": "nmn.keras.conv",
    "tf": "nmn.tf.conv",
}

BATCH, CIN, COUT = 2, 4, 6
EPSILON = 1e-5  # nmn's default and ours; neither layer is given one
#: Kernel and input sizes by spatial rank: uneven, with even kernel sizes (one-sided "same" padding).
KERNELS = {1: (3,), 2: (3, 2), 3: (3, 2, 2)}
SIZES = {1: (9,), 2: (7, 6), 3: (6, 5, 6)}
T_SIZES = {1: (5,), 2: (4, 3), 3: (3, 3, 2)}


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Geometry:
    """One layer geometry; ``padding`` in the framework's own vocabulary ("valid", "same" or an int)."""

    n: int
    transposed: bool
    stride: int = 1
    padding: str | int = "valid"
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    output_padding: int = 0
    channels_first: bool = False
    kernel_size: tuple[int, ...] | None = None  # default KERNELS[n]
    input_size: tuple[int, ...] | None = None  # default SIZES[n] (T_SIZES[n] transposed)

    @property
    def kernel(self) -> tuple[int, ...]:
        return self.kernel_size or KERNELS[self.n]

    @property
    def size(self) -> tuple[int, ...]:
        return self.input_size or (T_SIZES if self.transposed else SIZES)[self.n]

    def label(self) -> str:
        parts = [f"s{self.stride}", f"p{self.padding}"]
        if self.kernel_size or self.input_size:
            parts = ["k" + "x".join(map(str, self.kernel)), "i" + "x".join(map(str, self.size)), *parts]
        if self.output_padding:
            parts.append(f"op{self.output_padding}")
        parts += [f"d{self.dilation}", f"g{self.groups}", "bias" if self.bias else "nobias"]
        if self.channels_first:
            parts.append("cf")
        return "-".join(parts)


@dataclass(frozen=True)
class Case:
    framework: str
    geometry: Geometry

    @property
    def nmn_layer(self) -> str:
        g = self.geometry
        return f"YatConv{'Transpose' if g.transposed else ''}{g.n}D"

    @property
    def our_layer(self) -> str:
        g = self.geometry
        if self.framework in ("nnx", "linen"):
            return "YatConvTranspose" if g.transposed else "YatConv"
        if self.framework in ("keras", "tf"):
            return f"YatConv{g.n}D{'Transpose' if g.transposed else ''}"
        return f"YatConv{'Transpose' if g.transposed else ''}{g.n}d"

    @property
    def id(self) -> str:
        return f"{self.framework}-{self.nmn_layer}-{self.geometry.label()}"


def _geometries(framework: str) -> list[Geometry]:
    """The geometries tried in ``framework``, in its padding vocabulary."""
    keras_like = framework in ("keras", "tf")  # nmn's Keras/TF layers take "valid"/"same" only
    flax = framework in ("nnx", "linen")
    torch_like = framework in ("torch", "mlx")  # transposed padding as torch's ints
    strided: str | int = 1 if framework == "torch" else "same"  # torch's "same" needs stride 1
    t_valid: str | int = 0 if torch_like else "valid"
    out: list[Geometry] = []
    for n in (1, 2, 3):
        out += [
            Geometry(n, False, padding="valid"),
            Geometry(n, False, stride=2, padding=strided, groups=2, bias=False),
            Geometry(n, False, padding="same", dilation=2),
        ]
        if n == 2:  # stride, dilation and groups together
            out.append(Geometry(n, False, stride=2, padding="valid" if keras_like else 1, dilation=2, groups=2))
        out += [
            Geometry(n, True, padding=t_valid),
            Geometry(n, True, stride=2, padding=1, output_padding=1)
            if torch_like
            else Geometry(n, True, stride=2, padding="same"),
            Geometry(n, True, stride=2, padding=t_valid, dilation=2, bias=False),
            Geometry(n, True, padding=t_valid, groups=2),
        ]
        if n == 2:
            # stride larger than a kernel side (kernel (3, 2), stride 3)
            out.append(
                Geometry(n, True, stride=3, padding=0, output_padding=2)
                if framework == "torch"
                else Geometry(n, True, stride=3, padding="same")
            )
            if keras_like:
                out.append(Geometry(n, True, stride=3, padding="valid"))
            if flax:  # torch-style int padding (ours); nmn takes it as lax (low, high) pairs
                out.append(Geometry(n, True, stride=2, padding=1, output_padding=1))
            if framework == "mlx":
                out.append(Geometry(n, True, stride=2, padding="same"))
    if keras_like:
        out += [
            Geometry(2, False, stride=2, padding="same", groups=2, channels_first=True),
            Geometry(2, True, stride=2, padding="same", channels_first=True),
        ]
        if framework == "keras":
            out += [
                Geometry(1, False, padding="same", dilation=2, channels_first=True),
                Geometry(3, False, stride=2, padding="same", groups=2, channels_first=True),
                Geometry(3, True, stride=2, padding="same", channels_first=True),
            ]
    return out


def cases(frameworks: Iterable[str] = FRAMEWORKS) -> list[Case]:
    """Every case, framework by framework."""
    return [Case(fw, g) for fw in frameworks for g in _geometries(fw)]


def random_cases(framework: str, count: int, seed: int = 0) -> list[Case]:
    """``count`` random geometries nmn's ``framework`` layers take (kernels 1-4, strides 1-3, dilation 1-2).

    Not part of the test: ``python -m verification.nmn_conv --explore N`` runs them, to look
    for differences beyond the fixed cases.
    """
    rng = np.random.default_rng([seed, FRAMEWORKS.index(framework)])
    out: list[Case] = []
    while len(out) < count:
        n = int(rng.integers(1, 3))
        kernel = tuple(int(k) for k in rng.integers(1, 5, n))
        transposed = bool(rng.random() < 0.5)
        s, d = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        groups = int(rng.choice([1, 2])) if not transposed or framework == "torch" else 1
        op, pad = 0, None
        if transposed:
            if framework in ("linen", "tf"):
                d = 1  # no dilation there
            choices: list[Any] = {"torch": [0, 1], "mlx": ["same", "valid", 0, 1]}.get(framework, ["same", "valid"])
            pad = choices[int(rng.integers(len(choices)))]
            if isinstance(pad, int):
                op = int(rng.integers(0, max(s, d)))
                if any(d * (k - 1) < pad for k in kernel):
                    continue
            size = tuple(int(v) for v in rng.integers(2, 6, n))
        else:
            choices = ["same", "valid"] + ([] if framework in ("keras", "tf") else [0, 1, 2])
            pad = choices[int(rng.integers(len(choices)))]
            if framework == "torch" and pad == "same":
                s = 1  # torch's "same" needs stride 1
            if framework == "keras" and s > 1:
                d = 1  # the named Keras/TensorFlow limitation
            size = tuple(int(rng.integers(d * (k - 1) + 1, 10)) for k in kernel)
        geometry = Geometry(
            n,
            transposed,
            stride=s,
            padding=pad,
            dilation=d,
            groups=groups,
            bias=bool(rng.random() < 0.5),
            output_padding=op,
            channels_first=framework == "keras" and bool(rng.random() < 0.3),
            kernel_size=kernel,
            input_size=size,
        )
        out.append(Case(framework, geometry))
    return out


# ---------------------------------------------------------------- the float64 definition


def _dilated(k: int, d: int) -> int:
    return d * (k - 1) + 1


def _conv_pads(g: Geometry) -> tuple[tuple[int, int], ...]:
    """Zero padding ``(low, high)`` of each spatial dimension of a direct convolution's input."""
    pads = []
    for i, k in zip(g.size, g.kernel):
        span = _dilated(k, g.dilation)
        if g.padding == "valid":
            pads.append((0, 0))
        elif g.padding == "same":  # TensorFlow's rule (torch's at stride 1)
            total = max((-(-i // g.stride) - 1) * g.stride + span - i, 0)
            pads.append((total // 2, total - total // 2))
        else:
            pads.append((int(g.padding), int(g.padding)))
    return tuple(pads)


def _transpose_direct_pads(framework: str, g: Geometry) -> tuple[tuple[int, int], ...]:
    """The transposed convolution as a direct one: padding ``(a, b)`` of the zero-inserted input."""
    out = []
    s = g.stride
    for i, k in zip(g.size, g.kernel):
        span = _dilated(k, g.dilation)
        if isinstance(g.padding, int):  # torch's padding / output_padding
            a = span - 1 - g.padding
            out.append((a, a + g.output_padding))
        elif framework == "mlx":  # nmn's MLX: symmetric native padding, then the high side cropped or zero-filled
            if g.padding == "valid":
                out.append((span - 1, span - 1 + g.output_padding))
            else:
                a = span - 1 - max(span - s, 0) // 2
                target = i * s + g.output_padding
                out.append((a, target - (i - 1) * s - 1 - a + span - 1))
        elif g.padding == "same":  # jax.lax.conv_transpose (Keras and TensorFlow place outputs alike)
            total = span + s - 2
            a = span - 1 if s > span - 1 else -(-total // 2)
            out.append((a, total - a))
        else:
            total = span + s - 2 + max(span - s, 0)
            out.append((span - 1, total - (span - 1)))
    return tuple(out)


def _transpose_torch_form(framework: str, g: Geometry) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The core's (torch's) ``padding``, ``output_padding`` and the outputs to crop on the high side."""
    pads, out_pads, crops = [], [], []
    for (a, b), k in zip(_transpose_direct_pads(framework, g), g.kernel):
        pads.append(_dilated(k, g.dilation) - 1 - a)
        out_pads.append(max(b - a, 0))
        crops.append(max(a - b, 0))
    return tuple(pads), tuple(out_pads), tuple(crops)


def _crop(y: np.ndarray, crops: tuple[int, ...]) -> np.ndarray:
    """Drop ``crops[i]`` outputs on the high side of spatial dimension ``i`` (channels first)."""
    return y[(slice(None), slice(None), *(slice(0, m - c) for m, c in zip(y.shape[2:], crops)))]


def reference(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The float64 definition of ``case`` on ``x`` (channels first), and the error model's bound on float32.

    The value is the core's NumPy convolution in float64 (the transposed one in torch's
    form, cropped where the framework's placement needs it). The bound is the parity
    suite's (:func:`verification.error_model.yat_bound`, a float32 implementation plus
    the oracle's own error) on every output, from the oracle's independent unfold of the
    same geometry written as a direct convolution with explicit ``(low, high)`` padding;
    that oracle's value must equal the core's, which checks the geometry conversions here.
    """
    from verification.error_model import precision_for, total_bound, yat_bound
    from verification.oracle import transpose_as_direct64, yat_conv64
    from yat_core.conv import yat_conv, yat_conv_transpose

    g = case.geometry
    x64 = x.astype(np.float64)
    w64 = params["kernel"].astype(np.float64)
    bias = params["bias"].astype(np.float64) if "bias" in params else None
    alpha = float(params["alpha"])
    options: dict[str, Any] = {
        "dilation": g.dilation,
        "groups": g.groups,
        "bias": bias,
        "alpha": alpha,
        "epsilon": EPSILON,
    }
    ones, nd = _tuple(1, g.n), _tuple(g.dilation, g.n)
    if g.transposed:
        pads, out_pads, crops = _transpose_torch_form(case.framework, g)
        ref = yat_conv_transpose(x64, w64, stride=g.stride, padding=pads, output_padding=out_pads, **options)
        ref = _crop(np.asarray(ref), crops)
        zeros = _tuple(0, g.n)
        xd, wd, _ = transpose_as_direct64(x64, w64, _tuple(g.stride, g.n), zeros, zeros, nd, g.groups)
        direct = list(_transpose_direct_pads(case.framework, g))
        stride = ones
    else:
        direct = list(_conv_pads(g))
        xpad = np.pad(x64, ((0, 0), (0, 0), *direct))
        ref = np.asarray(yat_conv(xpad, w64, stride=g.stride, padding=0, **options))
        xd, wd, stride = x64, w64, _tuple(g.stride, g.n)
    oracle, conv = yat_conv64(
        xd, wd, stride=stride, pads=direct, dilation=nd, groups=g.groups, bias=bias, alpha=alpha, epsilon=EPSILON
    )
    if oracle.shape != ref.shape or not np.allclose(oracle, ref, rtol=1e-12, atol=1e-12 * np.max(np.abs(ref))):
        raise AssertionError(f"{case.id}: the oracle's geometry and the core's disagree (a bug in this module)")
    prec = precision_for(case.framework, np.float32)  # "mlx": MLX's elementary functions
    per_group = [total_bound(lambda p, o=o: yat_bound(o, p).y, prec) for o in conv.groups]
    bound = np.concatenate([b.reshape(*conv.lead, -1) for b in per_group], axis=-1)
    return ref, np.moveaxis(bound, -1, 1)


def make_inputs(case: Case) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The case's float32 input (channels first) and parameters (core names and layout), seeded by its id."""
    g = case.geometry
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    x = rng.standard_normal((BATCH, CIN, *g.size)).astype(np.float32)
    shape = (CIN, COUT // g.groups, *g.kernel) if g.transposed else (COUT, CIN // g.groups, *g.kernel)
    params = {"kernel": (0.5 * rng.standard_normal(shape)).astype(np.float32)}
    if g.bias:
        params["bias"] = (0.5 * rng.standard_normal(COUT)).astype(np.float32)
    params["alpha"] = np.asarray(rng.uniform(0.5, 1.5), dtype=np.float32)  # not 1: a misplaced alpha shows
    return x, params


# ---------------------------------------------------------------- layouts


def _last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _first(y: Any) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(np.asarray(y), -1, 1))


def _spatial_first(kernel: np.ndarray) -> np.ndarray:
    """Core ``(A, B, *k)`` -> ``(*k, B, A)``: Flax/Keras/TF conv kernels, NNX/Keras/TF transposed ones."""
    n = kernel.ndim - 2
    return np.ascontiguousarray(kernel.transpose((*range(2, n + 2), 1, 0)))


def _tuple(v: int, n: int) -> tuple[int, ...]:
    return (v,) * n


def _flax_padding(framework: str, g: Geometry) -> Any:
    """nmn's Flax padding: "SAME"/"VALID", ints as (low, high) pairs (a transposed one's of the zero-inserted input)."""
    if isinstance(g.padding, str):
        return g.padding.upper()
    if g.transposed:
        return tuple(_transpose_direct_pads(framework, g))
    return tuple((g.padding, g.padding) for _ in range(g.n))


def _groups_kw(g: Geometry, name: str) -> dict[str, int]:
    """Pass ``groups`` to an nmn transposed layer only where it is asked for (most have no such argument)."""
    return {name: g.groups} if g.groups != 1 else {}


# ---------------------------------------------------------------- PyTorch


def _torch_kwargs(g: Geometry) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "stride": g.stride,
        "padding": g.padding,
        "dilation": g.dilation,
        "groups": g.groups,
        "bias": g.bias,
    }
    if g.transposed:
        kw["output_padding"] = g.output_padding
    return kw


def _nmn_torch(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    layers = importlib.import_module(NMN_MODULES["torch"])
    layer = getattr(layers, case.nmn_layer)(CIN, COUT, case.geometry.kernel, **_torch_kwargs(case.geometry))
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(params["kernel"]))
        if "bias" in params:
            layer.bias.copy_(torch.from_numpy(params["bias"]))
        layer.alpha.fill_(float(params["alpha"]))
        return layer(torch.from_numpy(x)).numpy()


def _ours_torch(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    from yat_core.nn import torch as ours

    layer = getattr(ours, case.our_layer)(CIN, COUT, case.geometry.kernel, **_torch_kwargs(case.geometry))
    layer.import_params(params)
    with torch.no_grad():
        return layer(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------- Flax NNX
# Both sides run under jit (one compilation per case, not one per operation: far faster).


def _nnx_call(layer: Any, x: Any) -> Any:
    from flax import nnx

    return nnx.jit(lambda module, inputs: module(inputs))(layer, x)


def _ZEROS(key: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:  # noqa: N802 - an initializer
    import jax.numpy as jnp

    return jnp.zeros(shape, dtype)


def _nmn_nnx(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import jax.numpy as jnp
    from flax import nnx

    conv = importlib.import_module(NMN_MODULES["nnx"])
    g = case.geometry
    kw: dict[str, Any] = {
        "strides": g.stride,
        "padding": _flax_padding("nnx", g),
        "kernel_dilation": g.dilation,
        "use_bias": g.bias,
        "kernel_init": _ZEROS,  # overwritten below; a random draw would compile per shape (slow)
    }
    if g.transposed:
        # transpose_kernel=True: the kernel (*k, out, in) of torch's conv_transpose (Flax's default is unflipped)
        layer = conv.YatConvTranspose(
            CIN, COUT, g.kernel, transpose_kernel=True, rngs=nnx.Rngs(0), **kw, **_groups_kw(g, "feature_group_count")
        )
    else:
        layer = conv.YatConv(CIN, COUT, g.kernel, feature_group_count=g.groups, rngs=nnx.Rngs(0), **kw)
    layer.kernel.set_value(jnp.asarray(_spatial_first(params["kernel"])))
    if "bias" in params:
        layer.bias.set_value(jnp.asarray(params["bias"]))
    layer.alpha.set_value(jnp.asarray(params["alpha"]).reshape(1))
    return _first(_nnx_call(layer, jnp.asarray(_last(x))))


def _ours_flax_kwargs(g: Geometry) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "strides": g.stride,
        "padding": g.padding.upper() if isinstance(g.padding, str) else g.padding,
        "kernel_dilation": g.dilation,
        "feature_group_count": g.groups,
        "use_bias": g.bias,
    }
    if g.transposed and isinstance(g.padding, int):
        kw["output_padding"] = g.output_padding
    return kw


def _ours_nnx(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import jax.numpy as jnp
    from flax import nnx

    from yat_core.nn import nnx as ours

    g = case.geometry
    layer = getattr(ours, case.our_layer)(
        CIN, COUT, g.kernel, rngs=nnx.Rngs(0), kernel_init=_ZEROS, bias_init=_ZEROS, **_ours_flax_kwargs(g)
    )
    layer.import_params(params)
    return _first(_nnx_call(layer, jnp.asarray(_last(x))))


# ---------------------------------------------------------------- Flax Linen


def _nmn_linen(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    conv = importlib.import_module(NMN_MODULES["linen"])
    g = case.geometry
    kw: dict[str, Any] = {
        "features": COUT,
        "kernel_size": g.kernel,
        "strides": _tuple(g.stride, g.n),
        "padding": _flax_padding("linen", g),
        "use_bias": g.bias,
    }
    kernel = params["kernel"]
    if g.transposed:
        # Linen's transposed layers have no dilation or groups argument: pass them only when asked for.
        if g.dilation != 1:
            kw["kernel_dilation"] = _tuple(g.dilation, g.n)
        kw.update(_groups_kw(g, "feature_group_count"))
        # lax.conv_transpose(transpose_kernel=False): the core's kernel flipped in space, as (*k, in, out)
        flipped = np.flip(kernel, axis=tuple(range(2, kernel.ndim)))
        flax_kernel = np.ascontiguousarray(flipped.transpose((*range(2, kernel.ndim), 0, 1)))
    else:
        kw.update(kernel_dilation=_tuple(g.dilation, g.n), feature_group_count=g.groups)
        flax_kernel = _spatial_first(kernel)
    layer = getattr(conv, case.nmn_layer)(**kw)
    tree = {"kernel": jnp.asarray(flax_kernel), "alpha": jnp.asarray(params["alpha"]).reshape(1)}
    if "bias" in params:
        tree["bias"] = jnp.asarray(params["bias"])
    return _first(jax.jit(layer.apply)({"params": tree}, jnp.asarray(_last(x))))


def _ours_linen(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    from yat_core.nn import linen as ours

    g = case.geometry
    bound = getattr(ours, case.our_layer)(COUT, g.kernel, **_ours_flax_kwargs(g)).import_params(params)
    module, variables = bound.unbind()
    return _first(jax.jit(module.apply)(variables, jnp.asarray(_last(x))))


# ---------------------------------------------------------------- MLX


def _nmn_mlx(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import mlx.core as mx

    conv = importlib.import_module(NMN_MODULES["mlx"])
    g = case.geometry
    kw: dict[str, Any] = {
        "strides": g.stride,
        "padding": g.padding,
        "dilation_rate": g.dilation,
        "use_bias": g.bias,
    }
    kernel = params["kernel"]
    n = kernel.ndim - 2
    if g.transposed:
        kw.update(output_padding=g.output_padding, **_groups_kw(g, "groups"))
        mlx_kernel = kernel.transpose((1, *range(2, n + 2), 0))  # (in, out, *k) -> (out, *k, in)
    else:
        kw["groups"] = g.groups
        mlx_kernel = kernel.transpose((0, *range(2, n + 2), 1))  # (out, in/g, *k) -> (out, *k, in/g)
    layer = getattr(conv, case.nmn_layer)(COUT, g.kernel, **kw)
    layer.build(CIN)
    layer.kernel = mx.array(np.ascontiguousarray(mlx_kernel))
    if "bias" in params:
        layer.bias = mx.array(params["bias"])
    layer.alpha = mx.array(params["alpha"].reshape(1))
    y = layer(mx.array(_last(x)))
    mx.eval(y)
    return _first(np.array(y))


def _ours_mlx(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import mlx.core as mx

    from yat_core.nn import mlx as ours

    g = case.geometry
    cls = getattr(ours, case.our_layer)
    common = {"stride": g.stride, "dilation": g.dilation, "groups": g.groups, "bias": g.bias}
    crops: tuple[int, ...] = ()
    if g.transposed:
        # Ours takes torch's padding / output_padding; nmn's "same" is that plus a crop (see _transpose_torch_form).
        pads, out_pads, crops = _transpose_torch_form("mlx", g)
        layer = cls(CIN, COUT, g.kernel, padding=pads, output_padding=out_pads, **common)
    elif isinstance(g.padding, int) or g.padding == "valid" or g.stride == 1:
        layer = cls(CIN, COUT, g.kernel, padding=g.padding, **common)
    else:
        # "same" at stride > 1 (TensorFlow's rule, maybe one-sided): its symmetric part, the rest pre-padded.
        pairs = _conv_pads(g)
        sym = tuple(min(lo, hi) for lo, hi in pairs)
        x = np.pad(x, ((0, 0), (0, 0), *((lo - c, hi - c) for (lo, hi), c in zip(pairs, sym))))
        layer = cls(CIN, COUT, g.kernel, padding=sym, **common)
    layer.import_params(params)
    y = layer(mx.array(_last(x)))
    mx.eval(y)
    out = _first(np.array(y))
    return _crop(out, crops) if crops else out


# ---------------------------------------------------------------- Keras 3


def _keras_input(g: Geometry, x: np.ndarray) -> np.ndarray:
    return x if g.channels_first else _last(x)


def _keras_output(g: Geometry, y: Any) -> np.ndarray:
    y = np.asarray(y)
    return np.ascontiguousarray(y) if g.channels_first else _first(y)


def _nmn_keras(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import keras

    conv = importlib.import_module(NMN_MODULES["keras"])
    g = case.geometry
    kw: dict[str, Any] = {
        "strides": _tuple(g.stride, g.n),
        "padding": g.padding,
        "data_format": "channels_first" if g.channels_first else "channels_last",
        "dilation_rate": _tuple(g.dilation, g.n),
        "use_bias": g.bias,
    }
    kw.update(_groups_kw(g, "groups") if g.transposed else {"groups": g.groups})
    layer = getattr(conv, case.nmn_layer)(COUT, g.kernel, **kw)
    xin = _keras_input(g, x)
    layer.build(xin.shape)
    layer.kernel.assign(_spatial_first(params["kernel"]))
    if "bias" in params:
        layer.bias.assign(params["bias"])
    layer.alpha.assign(params["alpha"].reshape(1))
    return _keras_output(g, keras.ops.convert_to_numpy(layer(xin)))


def _ours_keras(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import keras

    from yat_core.nn import keras as ours

    g = case.geometry
    layer = getattr(ours, case.our_layer)(
        COUT,
        g.kernel,
        strides=g.stride,
        padding=g.padding,
        data_format="channels_first" if g.channels_first else "channels_last",
        dilation_rate=g.dilation,
        groups=g.groups,
        use_bias=g.bias,
    )
    xin = _keras_input(g, x)
    layer.build(xin.shape)
    layer.import_params(params)
    return _keras_output(g, keras.ops.convert_to_numpy(layer(xin)))


# ---------------------------------------------------------------- TensorFlow


def _nmn_tf(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf

    conv = importlib.import_module(NMN_MODULES["tf"])
    g = case.geometry

    def size(v: int) -> int | tuple[int, ...]:  # nmn's 1-D modules take ints, the others tuples
        return v if g.n == 1 else _tuple(v, g.n)

    kw: dict[str, Any] = {"strides": size(g.stride), "padding": g.padding, "use_bias": g.bias}
    if g.transposed:
        # nmn's TensorFlow transposed modules have no dilation, groups, output_padding or data_format argument
        if g.dilation != 1:
            kw["dilation_rate"] = size(g.dilation)
        kw.update(_groups_kw(g, "groups"))
    else:
        kw.update(dilation_rate=size(g.dilation), groups=g.groups)
    if g.channels_first:
        kw["data_format"] = "channels_first"
    layer = getattr(conv, case.nmn_layer)(COUT, g.kernel[0] if g.n == 1 else g.kernel, **kw)
    xin = _last(x)
    layer.build(xin.shape)
    layer.kernel.assign(_spatial_first(params["kernel"]))
    if "bias" in params:
        layer.bias.assign(params["bias"])
    layer.alpha.assign(params["alpha"].reshape(1))
    return _first(layer(tf.constant(xin)).numpy())


def _ours_tf(case: Case, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    import tensorflow as tf

    from yat_core.nn import tf as ours

    g = case.geometry
    layer = getattr(ours, case.our_layer)(
        CIN,
        COUT,
        g.kernel,
        strides=g.stride,
        padding=g.padding,
        data_format="channels_first" if g.channels_first else "channels_last",
        dilation_rate=g.dilation,
        groups=g.groups,
        use_bias=g.bias,
    )
    layer.import_params(params)
    xin = _keras_input(g, x)
    return _keras_output(g, layer(tf.constant(xin)).numpy())


Runner = Callable[[Case, np.ndarray, dict[str, np.ndarray]], np.ndarray]
RUNNERS: dict[str, tuple[Runner, Runner]] = {
    "torch": (_nmn_torch, _ours_torch),
    "nnx": (_nmn_nnx, _ours_nnx),
    "linen": (_nmn_linen, _ours_linen),
    "mlx": (_nmn_mlx, _ours_mlx),
    "keras": (_nmn_keras, _ours_keras),
    "tf": (_nmn_tf, _ours_tf),
}


# ---------------------------------------------------------------- where nmn is wrong


@dataclass(frozen=True)
class NamedDifference:
    """A named way in which nmn's layer differs from the definition or cannot run a geometry, and its cases.

    ``exception``: nmn raises that (type name) instead of computing; None: it computes
    a different value. ``keras_backend``: the difference exists on that Keras backend
    only (elsewhere its cases must be equal).
    """

    name: str
    what: str
    cases: tuple[str, ...]
    exception: str | None = None
    keras_backend: str | None = None


def _ids(framework: str, layer: str, labels: Iterable[str], dims: Iterable[int] = (1, 2, 3)) -> tuple[str, ...]:
    return tuple(f"{framework}-{layer.format(n=n)}-{label}" for n in dims for label in labels)


_T_GROUPS = ("s1-pvalid-d1-g2-bias",)
_T_DILATION = ("s2-pvalid-d2-g1-nobias",)

#: Every case where nmn 0.3.5 differs from the definition or cannot run the geometry, measured.
#: Where nmn runs, it computes the definition in every case here (and in random geometries
#: tried beyond them): its historical bugs (bias after the square, wrong normalisation axis,
#: channels_first, transposed convolutions with groups) are gone in 0.3.5. What remains are
#: geometries its layers cannot run at all.
NMN_DIFFERENCES: tuple[NamedDifference, ...] = (
    NamedDifference(
        "nnx transposed: no groups",
        "nmn.nnx YatConvTranspose has no feature_group_count argument (grouped transposed convolution "
        "cannot be built); ours takes feature_group_count.",
        _ids("nnx", "YatConvTranspose{n}D", _T_GROUPS),
        exception="TypeError",
    ),
    NamedDifference(
        "linen transposed: no groups",
        "nmn.linen YatConvTranspose1D/2D/3D have no feature_group_count attribute; ours takes it.",
        _ids("linen", "YatConvTranspose{n}D", ("s1-pvalid-d1-g2-bias",)),
        exception="TypeError",
    ),
    NamedDifference(
        "linen transposed: no dilation",
        "nmn.linen YatConvTranspose1D/2D/3D have no kernel_dilation attribute (dilated transposed "
        "convolution cannot be built); ours takes kernel_dilation.",
        _ids("linen", "YatConvTranspose{n}D", _T_DILATION),
        exception="TypeError",
    ),
    NamedDifference(
        "mlx transposed: no groups",
        "nmn.mlx YatConvTranspose1D/2D/3D take no groups argument (its docstring: groups=1 only); ours "
        "takes groups (mx.conv_transpose has them; the core regroups the kernel).",
        _ids("mlx", "YatConvTranspose{n}D", ("s1-p0-d1-g2-bias",)),
        exception="TypeError",
    ),
    NamedDifference(
        "mlx: no grouped 3-D convolution",
        "nmn.mlx YatConv3D with groups > 1 calls mx.conv_general, which raises '[conv] Can only handle "
        "groups != 1 in 1D or 2D convolutions' (MLX 0.32); ours runs it through the core's unfold.",
        ("mlx-YatConv3D-s2-psame-d1-g2-nobias",),
        exception="ValueError",
    ),
    NamedDifference(
        "keras transposed: no groups",
        "nmn.keras YatConvTranspose1D/2D/3D take no groups argument (Keras refuses the keyword); ours do.",
        _ids("keras", "YatConvTranspose{n}D", _T_GROUPS),
        exception="ValueError",
    ),
    NamedDifference(
        "keras on TensorFlow: no stride with dilation",
        "nmn.keras YatConv2D with strides > 1 and dilation_rate > 1 calls keras.ops.conv, whose TensorFlow "
        "backend raises '`strides > 1` not supported in conjunction with `dilation_rate > 1`'; ours "
        "computes it (the core's convolution).",
        ("keras-YatConv2D-s2-pvalid-d2-g2-bias",),
        exception="ValueError",
        keras_backend="tensorflow",
    ),
    NamedDifference(
        "tf transposed: no groups",
        "nmn.tf YatConvTranspose1D/2D/3D take no groups argument; ours do.",
        _ids("tf", "YatConvTranspose{n}D", _T_GROUPS),
        exception="TypeError",
    ),
    NamedDifference(
        "tf transposed: no dilation",
        "nmn.tf YatConvTranspose1D/2D/3D take no dilation_rate argument (and no output_padding); ours do.",
        _ids("tf", "YatConvTranspose{n}D", _T_DILATION),
        exception="TypeError",
    ),
    NamedDifference(
        "tf: channels last only",
        "nmn.tf's convolutions take no data_format argument (channels last only); ours take "
        "data_format='channels_first' as Keras does.",
        ("tf-YatConv2D-s2-psame-d1-g2-bias-cf", "tf-YatConvTranspose2D-s2-psame-d1-g1-bias-cf"),
        exception="TypeError",
    ),
)


def keras_backend() -> str:
    """The Keras backend these comparisons run on (the parity suite sets TensorFlow)."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def listed() -> dict[str, NamedDifference]:
    """Case id -> the named difference that lists it (on this Keras backend)."""
    return {
        case_id: diff
        for diff in NMN_DIFFERENCES
        if diff.keras_backend in (None, keras_backend())
        for case_id in diff.cases
    }


def nmn_unavailable(framework: str) -> str | None:
    """Why nmn's convolutions of ``framework`` cannot be imported here (a named limitation), or None."""
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
    nmn_layer: str
    our_layer: str
    geometry: str
    max_ref: float
    ours_vs_ref: float | None  # max|ours - ref| / max|ref|
    ours_bound_ratio: float | None  # max |ours - ref| / error-model bound: <= 1 required
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


OK_VERDICTS = ("equal", "nmn wrong (named)", "nmn cannot run (named)", "nmn unavailable (named)")


def _figure(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    if a.shape != b.shape:
        return float("inf")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.max(diff) / scale) if diff.size else 0.0


def _ratio(a: np.ndarray, ref: np.ndarray, bound: np.ndarray) -> float:
    if a.shape != ref.shape:
        return float("inf")
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.abs(a.astype(np.float64) - ref)
        ratio = np.where(err == 0, 0.0, err / bound)
    return float(np.max(ratio)) if ratio.size else 0.0


_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m")


def _error(exc: BaseException) -> str:
    """``Type: message``; for an exception wrapping another's text (Keras's), the wrapped one's line."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    inner = [line for line in lines if re.match(r"^[A-Za-z]+(Error|Exception): ", line)]
    if inner:
        return inner[-1][:240]
    first = next((line for line in lines if line), "")
    return f"{type(exc).__name__}: {first}"[:240]


def _verdict(r: Result, diff: NamedDifference | None) -> str:
    if r.ours_error is not None or r.ours_bound_ratio is None or not r.ours_bound_ratio <= 1.0:
        return "OURS WRONG"
    if r.nmn_error is not None and r.nmn_error.startswith("nmn unavailable"):
        return "nmn unavailable (named)"
    if diff is None:
        if r.nmn_error is not None:
            return "UNNAMED: nmn cannot run"
        if r.ours_vs_nmn is not None and r.ours_vs_nmn < TOLERANCE:
            return "equal"
        if r.nmn_bound_ratio is not None and r.nmn_bound_ratio <= 1.0:
            # both within float32's error model of the definition: rounding at an ill-conditioned output
            return "UNNAMED DIFFERENCE: rounding, both within the error model"
        return "UNNAMED DIFFERENCE: nmn outside the error model"
    if diff.exception is not None:
        raised = r.nmn_error is not None and r.nmn_error.split(":")[0] == diff.exception
        return "nmn cannot run (named)" if raised else "STALE: named nmn failure did not happen"
    # nmn is wrong: it differs from ours and lies outside the error model around the float64 definition
    differs = r.nmn_error is None and not (r.ours_vs_nmn is not None and r.ours_vs_nmn < TOLERANCE)
    wrong = differs and r.nmn_bound_ratio is not None and r.nmn_bound_ratio > 1.0
    return "nmn wrong (named)" if wrong else "STALE: named nmn difference not seen"


def run_case(case: Case, unavailable: str | None = None) -> Result:
    """Run one case: the reference, ours and nmn's (unless ``unavailable`` says why not), compared."""
    t0 = time.perf_counter()
    x, params = make_inputs(case)
    ref, bound = reference(case, x, params)
    scale = float(np.max(np.abs(ref))) or 1.0
    nmn_fn, ours_fn = RUNNERS[case.framework]
    ours = nmn = None
    ours_error = nmn_error = None
    try:
        ours = ours_fn(case, x, params)
    except Exception as exc:  # noqa: BLE001 - recorded; the test fails on it
        ours_error = _error(exc)
    if unavailable is not None:
        nmn_error = unavailable
    else:
        try:
            nmn = nmn_fn(case, x, params)
        except Exception as exc:  # noqa: BLE001 - an nmn layer that cannot run a geometry is recorded, not raised
            nmn_error = _error(exc)
    if nmn is not None and nmn.shape != ref.shape:
        nmn_error, nmn = f"output shape {nmn.shape}, the definition's {ref.shape}", None
    diff = listed().get(case.id)
    result = Result(
        id=case.id,
        framework=case.framework,
        nmn_layer=case.nmn_layer,
        our_layer=case.our_layer,
        geometry=case.geometry.label(),
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


def _versions() -> dict[str, str]:
    out = {}
    for name in ("nmn", "yat-core", "torch", "jax", "flax", "mlx", "keras", "tensorflow"):
        out[name] = "not installed"
        for dist in (name, f"{name}-cpu"):  # tensorflow-cpu installs the tensorflow package
            try:
                out[name] = md.version(dist)
                break
            except md.PackageNotFoundError:
                continue
    return out


def _worst(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return max(kept) if kept else None


def summary(results: list[Result], explored: list[Result] | None = None) -> dict[str, Any]:
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
                "nmn_raised": sorted({r.nmn_error for r in rows if r.nmn_error}),
            }
        )
    equal = [r for r in results if r.verdict == "equal"]
    unavailable = sorted({f"{r.framework}: {r.nmn_error}" for r in results if r.verdict == "nmn unavailable (named)"})
    doc: dict[str, Any] = {
        "meta": {
            "tolerance": TOLERANCE,
            "figure": "max|a - b| / max|float64 reference| over the whole output",
            "bound_ratio": "max |a - reference| / the parity suite's float32 error-model bound, per output (<= 1)",
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
            "failures": [f"{r.id}: {r.verdict}" for r in results if not r.ok],
            "ok": all(r.ok for r in results),
        },
        "named_differences": named,
        "results": [dataclasses.asdict(r) for r in results],
    }
    if explored is not None:
        verdicts: dict[str, int] = {}
        for r in explored:
            verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
        doc["explored"] = {
            "what": "random geometries (not in the test): python -m verification.nmn_conv --explore N",
            "cases": len(explored),
            "verdicts": verdicts,
            "worst_ours_bound_ratio": _worst(r.ours_bound_ratio for r in explored),
            "worst_nmn_bound_ratio": _worst(r.nmn_bound_ratio for r in explored),
            "not_equal": [dataclasses.asdict(r) for r in explored if r.verdict != "equal"],
        }
    return doc


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if v == float("inf") else ("0" if v == 0 else f"{v:.1e}")
    return str(v).replace("|", "/")


_NOTES = """\
What nmn 0.3.5's convolutions compute (read from its source; run here as a black box): every one is
`alpha * (conv(x, W) + b)**2 / (max(|patch|^2 + |W_o|^2 - 2 conv(x, W), 0) + epsilon)`: the bias in
the numerator only (before the square), the distance clamped at 0, epsilon 1e-5 by default (ours
too), `alpha` a plain learnable factor of shape `(1,)` starting at 1.0 (no `(sqrt(out)/log(1+out))**alpha`
scaling in the convolutions). The cases set alpha to a random value in [0.5, 1.5] and a random bias, so a
misplaced alpha or bias would show. Conventions, not errors: nmn's Linen transposed layers use Flax's
default `transpose_kernel=False` (the kernel unflipped, `(*k, in, out)`), so the core's kernel is copied
there flipped in space; nmn's NNX `YatConvTranspose` is built with `transpose_kernel=True`, the layout ours
keeps; Flax integer padding of a transposed layer is lax's `(low, high)` padding of the zero-inserted input
(nmn), torch's `padding`/`output_padding` (ours): the cases give each its own spelling of the same geometry.
Our MLX layers take torch's padding: nmn's MLX `"same"` is given to ours as that padding plus pre-padding
(direct) or a crop (transposed).
"""


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown report of a :func:`summary` document."""
    meta = doc["meta"]
    lines = [
        "# Our Yat convolutions vs nmn 0.3.5, framework by framework",
        "",
        f"Same float32 weights and input for both layers; figures are {meta['figure']}, the reference being "
        "the core's float64 NumPy convolution (DESIGN.md section 1); *ratio* is "
        f"{meta['bound_ratio']}. Ours and nmn must agree within {meta['tolerance']:g} wherever nmn is correct. "
        f"Keras backend: {meta['keras_backend']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + ".",
        "",
        f"**{meta['cases']} cases: {meta['equal']} equal** (worst ours vs nmn there "
        f"{_fmt(meta['worst_ours_vs_nmn_where_equal'])}), {meta['nmn_wrong']} where nmn computes a wrong value, "
        f"{meta['nmn_cannot_run']} that nmn cannot run (named below); ours within the error model everywhere "
        f"(worst ratio {_fmt(meta['worst_ours_bound_ratio'])}, worst figure {_fmt(meta['worst_ours_vs_ref'])}). "
        f"All checks {'pass' if meta['ok'] else 'DO NOT pass: ' + '; '.join(meta['failures'])}.",
        "",
    ]
    if meta["nmn_unavailable"]:
        lines += ["Named limitation, nmn not importable here: " + "; ".join(meta["nmn_unavailable"]) + ".", ""]
    lines += [_NOTES, "## Named differences", ""]
    if not doc["named_differences"]:
        lines += ["None.", ""]
    elif not meta["nmn_wrong"]:
        lines += [
            "Where nmn's layer runs, it computes the definition in every case: each difference below is a "
            "geometry it cannot run (the exception it raises is recorded).",
            "",
        ]
    for d in doc["named_differences"]:
        how = (
            f"raises `{d['exception']}`" if d["exception"] else f"worst nmn vs reference {_fmt(d['worst_nmn_vs_ref'])}"
        )
        raised = "; ".join(f"`{e.replace('`', chr(39))}`" for e in d["nmn_raised"][:2])
        count = f"{len(d['cases'])} case{'s' if len(d['cases']) != 1 else ''}"
        lines.append(f"- **{d['name']}** ({how}, {count}): {d['what']}" + (f" nmn: {raised}." if raised else ""))
    lines += [
        "",
        "## Every case",
        "",
        "Geometry: `s` stride, `p` padding (the framework's own spelling), `op` output padding, `d` dilation, "
        "`g` groups, `cf` channels first; kernels (3,), (3, 2), (3, 2, 2); 2 x 4 channels in, 6 out.",
        "",
        "| framework | nmn layer | ours | geometry | ours vs ref | ours ratio | nmn vs ref | ours vs nmn | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        verdict = r["verdict"] + (f": {r['listed_as']}" if r["listed_as"] else "")
        cells = (
            r["framework"],
            r["nmn_layer"],
            r["our_layer"],
            r["geometry"],
            r["ours_vs_ref"],
            r["ours_bound_ratio"],
            r["nmn_vs_ref"],
            r["ours_vs_nmn"],
            verdict,
        )
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    lines.append("")
    explored = doc.get("explored")
    if explored:
        lines += [
            "## Random geometries (exploration, not in the test)",
            "",
            f"{explored['cases']} random geometries: "
            + ", ".join(f"{v} {k}" for k, v in sorted(explored["verdicts"].items()))
            + f"; worst error-model ratio ours {_fmt(explored['worst_ours_bound_ratio'])}, nmn "
            f"{_fmt(explored['worst_nmn_bound_ratio'])}.",
            "",
        ]
        for r in explored["not_equal"]:
            lines.append(
                f"- `{r['id']}`: {r['verdict']}; ours vs ref {_fmt(r['ours_vs_ref'])} (ratio "
                f"{_fmt(r['ours_bound_ratio'])}), nmn vs ref {_fmt(r['nmn_vs_ref'])} (ratio "
                f"{_fmt(r['nmn_bound_ratio'])}), ours vs nmn {_fmt(r['ours_vs_nmn'])}"
                + (f"; nmn: `{r['nmn_error']}`" if r["nmn_error"] else "")
            )
        lines.append("")
    return "\n".join(lines)


def write(doc: dict[str, Any], folder: Path) -> list[Path]:
    """``nmn_conv.json`` and ``nmn_conv.md`` in ``folder``, written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "nmn_conv.json", folder / "nmn_conv.md"]
    atomic_write_text(paths[0], json.dumps(doc, indent=1, allow_nan=True) + "\n")
    atomic_write_text(paths[1], render_markdown(doc))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[1] / "results" / "nmn"))
    parser.add_argument("--framework", action="append", choices=FRAMEWORKS, help="only these (repeatable)")
    parser.add_argument("--explore", type=int, default=0, metavar="N", help="also N random geometries per framework")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # as the parity suite sets it
    frameworks = args.framework or list(FRAMEWORKS)
    t0 = time.perf_counter()
    results = run(frameworks)
    explored = None
    if args.explore:
        explored = []
        for fw in frameworks:
            unavailable = nmn_unavailable(fw)
            explored += [run_case(case, unavailable) for case in random_cases(fw, args.explore)]
    doc = summary(results, explored)
    doc["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    shown = results + [r for r in explored or [] if r.verdict != "equal"]
    for r in shown:
        print(
            f"{r.id:58s} ours/ref {_fmt(r.ours_vs_ref):>8s} ratio {_fmt(r.ours_bound_ratio):>8s} "
            f"nmn/ref {_fmt(r.nmn_vs_ref):>8s} ours/nmn {_fmt(r.ours_vs_nmn):>8s}  {r.verdict}"
            + (f"  [{r.nmn_error}]" if r.nmn_error else "")
        )
    for path in write(doc, Path(args.folder)):
        print(f"wrote {path}")
    return 0 if doc["meta"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
