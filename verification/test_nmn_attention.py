"""Our Yat attention against the published nmn 0.3.5's attention functions, on the same inputs.

Per framework, every case of :mod:`verification.nmn_attention` (``yat_attention`` and
``yat_attention_weights``; Tq != Tk, dv != d, heads, masks broadcast over heads, causal,
a fully masked query row, alpha and epsilon, a saturated softmax, a query equal to a key,
spherical mode, no batch axis or two) asserts:

- ours (the core's function on the framework's own arrays) equals the float64 definition
  within its float32 error bound, on every element, in every case;
- ours equals nmn's function within ``TOLERANCE`` (1e-6 of the largest output) in every
  case not named in ``NMN_DIFFERENCES``;
- every named case really differs (nmn raises the named exception, or computes a value
  outside the float32 bound), so the list cannot go stale.

An nmn framework module that does not import here is a named limitation (recorded, not
skipped). The results also go to the parity report (``parity.json``, ``meta.nmn_attention``);
``python -m verification.nmn_attention`` writes the full table to ``results/nmn/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from verification import nmn_attention
from verification.results import STORE

_RESULTS: dict[str, list[nmn_attention.Result]] = {}


def _results(framework: str) -> list[nmn_attention.Result]:
    if framework not in _RESULTS:
        _RESULTS[framework] = nmn_attention.run([framework])
    return _RESULTS[framework]


def _record(framework: str, results: list[nmn_attention.Result]) -> None:
    store: dict[str, Any] = STORE.meta.setdefault(
        "nmn_attention", {"tolerance": nmn_attention.TOLERANCE, "results": {}}
    )
    store["keras_backend"] = nmn_attention.keras_backend()
    store["results"][framework] = [dataclasses.asdict(r) for r in results]
    store["named_differences"] = {d.name: list(d.cases) for d in set(nmn_attention.listed().values())}


def _describe(r: nmn_attention.Result) -> str:
    return (
        f"{r.id}: {r.verdict} (ours vs ref {r.ours_vs_ref}, bound ratio {r.ours_bound_ratio}; "
        f"nmn vs ref {r.nmn_vs_ref}, bound ratio {r.nmn_bound_ratio}; ours vs nmn {r.ours_vs_nmn}; "
        f"ours error {r.ours_error}; nmn error {r.nmn_error})"
    )


def test_named_cases_exist() -> None:
    """Every case a named difference lists is one the suite runs (no typo can hide a case)."""
    ids = {case.id for case in nmn_attention.cases()}
    unknown = [(d.name, c) for d in nmn_attention.NMN_DIFFERENCES for c in d.cases if c not in ids]
    assert not unknown, f"named differences list cases that do not exist: {unknown}"
    assert all(d.cases for d in nmn_attention.NMN_DIFFERENCES), "a named difference lists no case"


def test_bound_catches_a_perturbed_score() -> None:
    """The bound is no blanket: one score moved by 1e-4 (relative) puts the weights outside it."""
    setup = nmn_attention.SETUPS[0]
    inputs = nmn_attention.make_inputs(setup)
    case = nmn_attention.Case("torch", "yat_attention_weights", setup)
    ref, bound = nmn_attention.reference(case, inputs)
    assert np.all(np.abs(ref.astype(np.float32) - ref) <= bound)  # the reference rounded to float32: inside
    q, k = (a.astype(np.float64) for a in (inputs.q, inputs.k))
    from yat_core.attention import yat_attention_weights

    q[0, 0, 0] *= 1 + 1e-4
    moved = np.asarray(yat_attention_weights(q, k, epsilon=setup.epsilon))
    assert np.max(np.abs(moved - ref) / bound) > 1.0


@pytest.mark.parametrize("framework", nmn_attention.FRAMEWORKS)
def test_ours_equals_nmn(framework: str) -> None:
    results = _results(framework)
    _record(framework, results)
    assert results, f"no cases for {framework}"
    ours_wrong = [_describe(r) for r in results if r.verdict == "OURS WRONG"]
    assert not ours_wrong, "ours differs from the float64 definition, or raises:\n" + "\n".join(ours_wrong)
    unnamed = [_describe(r) for r in results if not r.ok]
    assert not unnamed, (
        "ours and nmn differ where no named difference says so, or a named difference did not happen "
        "(update NMN_DIFFERENCES in verification/nmn_attention.py after deciding who is right):\n" + "\n".join(unnamed)
    )
    equal = [r for r in results if r.verdict == "equal"]
    assert all(r.ours_vs_nmn is not None and r.ours_vs_nmn < nmn_attention.TOLERANCE for r in equal)
