"""Convolution parity: every backend's float32 ``yat_conv`` and ``yat_conv_transpose`` (the
array-API unfold, and the library's own convolution where it has one) against the float64
oracle, under the dense product's error model applied per output element.

The oracle (:func:`verification.oracle.unfold64`) unfolds the input independently of
:mod:`yat_core.conv` (a loop over kernel offsets on the padded input), and runs each
group's patches through the float64 product of :mod:`verification.oracle`; the error
model of that dense product, whose dot products have length ``in/groups * prod(kernel)``,
bounds every output element. The transposed convolution is checked as the convolution of
the zero-inserted input with the flipped, regrouped kernel
(:func:`verification.oracle.transpose_as_direct64`), which is how DESIGN.md defines it;
``tests/test_conv.py`` checks that equivalence against PyTorch's own ``conv_transpose``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import assume, given, target
from hypothesis import strategies as st

from verification import backends
from verification.checks import compare
from verification.error_model import precision_for, total_bound, yat_bound
from verification.oracle import transpose_as_direct64, unfold64, yat_forward64
from verification.profiles import examples
from yat_core.conv import conv_output_shape, conv_transpose_output_shape, yat_conv, yat_conv_transpose

CORE = [b for b in backends.provider_ids("yat") if not b.startswith("nn-")]
NATIVE = {"torch", "jax", "mlx"}


class ConvCase(NamedTuple):
    """One drawn convolution: geometry, options and the seed of its values."""

    transpose: bool
    batch: int
    in_channels: int
    out_channels: int
    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    bias: bool
    alpha: bool
    spherical: bool
    epsilon: float
    seed: int

    @property
    def shape(self) -> str:
        kind = "conv_transpose" if self.transpose else "conv"
        return f"{kind} x{(self.batch, self.in_channels, *self.spatial)} k{self.kernel} groups {self.groups}"


@st.composite
def conv_cases(draw: st.DrawFn) -> ConvCase:
    n = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(n))
    padding = tuple(draw(st.integers(0, 1)) for _ in range(n))
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    spatial = tuple(draw(st.integers(max(r - 2 * p, 1), max(r - 2 * p, 1) + 4)) for r, p in zip(reach, padding))
    return ConvCase(
        transpose=draw(st.booleans()),
        batch=draw(st.integers(1, 2)),
        in_channels=groups * draw(st.integers(1, 3)),
        out_channels=groups * draw(st.integers(1, 3)),
        spatial=spatial,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=draw(st.booleans()),
        alpha=draw(st.booleans()),
        spherical=draw(st.booleans()),
        epsilon=draw(st.sampled_from([1e-5, 1e-3, 1.0])),
        seed=draw(st.integers(0, 2**16)),
    )


def _values(case: ConvCase) -> dict[str, Any]:
    rng = np.random.default_rng(case.seed)
    cin, cout, g = case.in_channels, case.out_channels, case.groups
    w_shape = (cin, cout // g, *case.kernel) if case.transpose else (cout, cin // g, *case.kernel)
    x = rng.normal(size=(case.batch, cin, *case.spatial))
    w = rng.normal(size=w_shape) * 0.5
    if case.batch * np.prod(case.spatial) > 1:  # a patch equal to a filter somewhere: distance 0
        x.reshape(-1)[: w.size // max(w.shape[0], 1)] = w.reshape(w.shape[0], -1)[0][: x.size]
    return {
        "x": x.astype(np.float32),
        "w": w.astype(np.float32),
        "bias": rng.normal(size=cout).astype(np.float32) if case.bias else None,
        "alpha": np.float32(rng.uniform(0.5, 2.0)) if case.alpha else None,
    }


def oracle_and_bound(case: ConvCase, values: dict[str, Any], backend: str) -> tuple[np.ndarray, np.ndarray]:
    x64, w64 = (np.asarray(values[k], np.float64) for k in ("x", "w"))
    if case.transpose:
        zeros = (0,) * len(case.kernel)
        x64, w64, pads = transpose_as_direct64(x64, w64, case.stride, case.padding, zeros, case.dilation, case.groups)
    else:
        pads = [(p, p) for p in case.padding]
    stride = (1,) * len(case.kernel) if case.transpose else case.stride
    cols = unfold64(x64, case.kernel, stride, case.dilation, pads)
    g, cout = case.groups, w64.shape[0]
    prec = precision_for(backend, np.float32)
    outs, bounds = [], []
    for j in range(g):
        patches = cols[..., j * (cols.shape[-2] // g) : (j + 1) * (cols.shape[-2] // g), :]
        lead = cols.shape[:-2]
        patches = patches.reshape(int(np.prod(lead)), -1)
        rows = w64[j * (cout // g) : (j + 1) * (cout // g)].reshape(cout // g, -1)
        bias = values["bias"]
        o = yat_forward64(
            patches,
            rows,
            bias=None if bias is None else np.asarray(bias, np.float64)[j * (cout // g) : (j + 1) * (cout // g)],
            alpha=None if values["alpha"] is None else float(values["alpha"]),
            epsilon=case.epsilon,
            spherical=case.spherical,
        )
        outs.append(o.y.reshape(*lead, -1))
        bounds.append(total_bound(lambda p, o=o: yat_bound(o, p).y, prec).reshape(*lead, -1))
    ref, bound = np.concatenate(outs, axis=-1), np.concatenate(bounds, axis=-1)
    return np.moveaxis(ref, -1, 1), np.moveaxis(bound, -1, 1)


def _run(backend: str, case: ConvCase, native: bool) -> np.ndarray:
    impl = backends.load(backend)
    values = _values(case)
    put = {k: impl.put(v, np.float32) if isinstance(v, np.ndarray) else v for k, v in values.items()}
    alpha = None if values["alpha"] is None else float(values["alpha"])
    common = {
        "stride": case.stride,
        "padding": case.padding,
        "dilation": case.dilation,
        "groups": case.groups,
        "bias": put["bias"],
        "alpha": alpha,
        "epsilon": case.epsilon,
        "spherical": case.spherical,
        "native": native,
        "xp": impl.xp,
    }
    fn: Callable[..., Any] = yat_conv_transpose if case.transpose else yat_conv
    return impl.host(fn(put["x"], put["w"], **common))


def _valid(case: ConvCase) -> bool:
    w_shape = _values(case)["w"].shape
    x_shape = (case.batch, case.in_channels, *case.spatial)
    options = {"stride": case.stride, "padding": case.padding, "dilation": case.dilation, "groups": case.groups}
    try:
        if case.transpose:
            out = conv_transpose_output_shape(x_shape, w_shape, **options)
        else:
            out = conv_output_shape(x_shape, w_shape, **options)
    except ValueError:
        return False
    return min(out[2:]) >= 1


#: Every backend through the unfold, and those with their own convolution through it too.
PATHS = [(b, False) for b in CORE] + [(b, True) for b in CORE if b in NATIVE]


@pytest.mark.parametrize(("backend", "native"), PATHS, ids=[f"{b}-{'native' if n else 'unfold'}" for b, n in PATHS])
@examples(15)
@given(case=conv_cases())
def test_yat_conv_within_error_model(
    backend: str, native: bool, case: ConvCase, require_backend: Callable[[str], Any]
) -> None:
    require_backend(backend)
    assume(_valid(case))
    ref, bound = oracle_and_bound(case, _values(case), backend)
    got = _run(backend, case, native)
    what = ("yat_conv_transpose" if case.transpose else "yat_conv") + (" (native)" if native else "")
    result = compare("conv", backend, case, got, ref, bound, what=what, dtype=np.float32)
    target(min(result.max_ratio, 1e6), label="error / bound")
