"""Our native Yat convolutions against the published nmn 0.3.5's, on the same weights.

Per framework, every case of :mod:`verification.nmn_conv` (1-, 2- and 3-D, direct and
transposed; stride, padding, dilation, groups, bias, Keras/TF channels_first) asserts:

- ours equals the float64 definition, within the parity suite's float32 error model, in
  every case;
- ours equals nmn's layer within ``TOLERANCE`` (1e-6 of the largest output) in every case
  not named in ``NMN_DIFFERENCES``;
- every named case really differs (nmn raises the named exception, or computes another
  value), so the list cannot go stale.

An nmn framework module that does not import here is a named limitation (recorded, not
skipped). The results also go to the parity report (``parity.json``, ``meta.nmn_conv``);
``python -m verification.nmn_conv`` writes the full table to ``results/nmn/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from verification import nmn_conv
from verification.results import STORE

_RESULTS: dict[str, list[nmn_conv.Result]] = {}


def _results(framework: str) -> list[nmn_conv.Result]:
    if framework not in _RESULTS:
        _RESULTS[framework] = nmn_conv.run([framework])
    return _RESULTS[framework]


def _record(framework: str, results: list[nmn_conv.Result]) -> None:
    store: dict[str, Any] = STORE.meta.setdefault("nmn_conv", {"tolerance": nmn_conv.TOLERANCE, "results": {}})
    store["keras_backend"] = nmn_conv.keras_backend()
    store["results"][framework] = [dataclasses.asdict(r) for r in results]
    store["named_differences"] = {d.name: list(d.cases) for d in set(nmn_conv.listed().values())}


def _describe(r: nmn_conv.Result) -> str:
    return (
        f"{r.id}: {r.verdict} (ours vs ref {r.ours_vs_ref}, error-model ratio {r.ours_bound_ratio}; "
        f"nmn vs ref {r.nmn_vs_ref}; ours vs nmn {r.ours_vs_nmn}; ours error {r.ours_error}; "
        f"nmn error {r.nmn_error})"
    )


def test_named_cases_exist() -> None:
    """Every case a named difference lists is one the suite runs (no typo can hide a case)."""
    ids = {case.id for case in nmn_conv.cases()}
    unknown = [(d.name, c) for d in nmn_conv.NMN_DIFFERENCES for c in d.cases if c not in ids]
    assert not unknown, f"named differences list cases that do not exist: {unknown}"


@pytest.mark.parametrize("framework", nmn_conv.FRAMEWORKS)
def test_ours_equals_nmn(framework: str) -> None:
    results = _results(framework)
    _record(framework, results)
    assert results, f"no cases for {framework}"
    ours_wrong = [_describe(r) for r in results if r.verdict == "OURS WRONG"]
    assert not ours_wrong, "ours differs from the float64 definition:\n" + "\n".join(ours_wrong)
    unnamed = [_describe(r) for r in results if not r.ok]
    assert not unnamed, (
        "ours and nmn differ where no named difference says so, or a named difference did not happen "
        "(update NMN_DIFFERENCES in verification/nmn_conv.py after deciding who is right):\n" + "\n".join(unnamed)
    )
    equal = [r for r in results if r.verdict == "equal"]
    assert all(r.ours_vs_nmn is not None and r.ours_vs_nmn < nmn_conv.TOLERANCE for r in equal)
