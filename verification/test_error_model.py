"""The error model itself: its assumptions hold on every backend, it is tight where
the problem is well conditioned, and honest (large because the error is large) where
it is not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from verification import backends
from verification.cases import YatCase, yat_inputs
from verification.checks import check_yat, yat_reference
from verification.error_model import FLOAT32, precision_for, total_bound, yat_bound
from verification.oracle import yat_oracle
from verification.results import STORE

FORWARD = backends.provider_ids("yat")
#: Well-conditioned inputs (normal entries, no hard case) over the range of k.
WELL_CONDITIONED = [YatCase(32, k, 16, seed=k, data="normal") for k in (4, 32, 256, 1024)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", FORWARD)
def test_elementary_functions_meet_the_assumed_accuracy(
    backend: str, dtype: str, require_backend: Callable[[str], Any]
) -> None:
    """``exp`` and ``log1p`` (softplus, softmax) within ``fn_rel``; ``sqrt`` (spherical
    norms) within 2u; measured on the ranges the product uses them on."""
    impl = require_backend(backend)
    prec = precision_for(backend, dtype)
    grid = {
        "exp": np.linspace(-87.0, 0.0, 200_001),  # exp(-|raw|), exp(shifted logits)
        "log1p": np.linspace(0.0, 1.0, 200_001),
        "sqrt": np.geomspace(1e-30, 1e30, 200_001),
    }
    with impl.precision(dtype):
        for name, values in grid.items():
            values = values.astype(dtype)
            got = impl.host(getattr(impl.xp, name)(impl.put(values, dtype))).astype(np.longdouble)
            exact = getattr(np, name)(values.astype(np.longdouble))  # 64-bit significand on x86
            rel = (np.abs(got - exact) / np.where(exact == 0, 1.0, np.abs(exact))).astype(np.float64)
            allowed = 2 * prec.u if name == "sqrt" else prec.fn_rel
            STORE.meta.setdefault("elementary_functions", {})[f"{backend}-{dtype}-{name}"] = float(rel.max() / prec.u)
            assert rel.max() <= allowed, (
                f"{backend} {dtype} {name}: relative error {rel.max():.3e} = {rel.max() / prec.u:.1f} u > the "
                f"model's {allowed / prec.u:.0f} u (verification/error_model.py, Precision.fn_rel)"
            )


@pytest.mark.parametrize("backend", FORWARD)
def test_bound_is_tight_on_well_conditioned_inputs(backend: str, require_backend: Callable[[str], Any]) -> None:
    """The rigorous bound grows like k (gamma_k = k u); real dot-product errors like a
    random walk. The worst element of a batch sits at about 1/k of the bound or
    closer: asserting ratio * k >= 0.05 catches a model that turned uselessly loose."""
    require_backend(backend)
    tightness = {}
    for case in WELL_CONDITIONED:
        ref = yat_reference(case)
        example = check_yat(backend, case)
        tightness[case.n_in] = example.max_ratio
        assert example.max_ratio * case.n_in >= 0.05, (
            f"{backend}: observed/bound {example.max_ratio:.2e} at k = {case.n_in}, looser than 1/(20 k); "
            f"bound {float(np.max(ref.bound)):.3e}"
        )
    STORE.meta.setdefault("tightness_by_k", {})[backend] = tightness


@pytest.mark.parametrize("backend", FORWARD)
def test_cancellation_is_real_and_bounded(backend: str, require_backend: Callable[[str], Any]) -> None:
    """Where x is within a relative 1e-6 of a kernel row the expansion cancels: the
    float32 result is off by a large relative amount (so a small bound there would be
    dishonest), and still within the bound."""
    impl = require_backend(backend)
    inp = yat_inputs(YatCase(16, 256, 8, seed=7, data="normal"))
    rng = np.random.default_rng(7)
    rows = rng.integers(0, inp.w.shape[0], size=inp.x.shape[0])
    w_rows = inp.w[rows].astype(np.float64)
    x = (w_rows * (1.0 + 1e-6 * rng.standard_normal(w_rows.shape))).astype(np.float32)
    near = inp._replace(x=x)
    o = yat_oracle(near)
    bound = total_bound(lambda p: yat_bound(o, p).y, precision_for(backend, np.float32))
    got = impl.yat(near).astype(np.float64)
    err = np.abs(got - o.y)
    pairs = (np.arange(len(rows)), rows)
    rel = err[pairs] / np.abs(o.y[pairs])
    STORE.meta.setdefault("cancellation_relative_error", {})[backend] = float(rel.max())
    assert np.all(err <= bound), f"{backend}: outside the bound near x == w ({float(np.max(err / bound)):.3g})"
    assert rel.max() > 100 * FLOAT32.u, f"{backend}: no visible cancellation near x == w (rel. error {rel.max():.2e})"
