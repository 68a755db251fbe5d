"""Fault injection: deliberately wrong backends must fail the suite's own checks.

Each fault (:mod:`verification.faults`) is run through the checking functions the
other tests use, on inputs where the correct NumPy backend passes them, and must
raise :class:`AssertionError`. The Hypothesis search of the forward and gradient
tests must also find each fault on its own, from the same strategies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, find, settings

from verification import properties
from verification.cases import MLPCase, YatCase, yat_cases
from verification.checks import check_mlp, check_yat, check_yat_fd, check_yat_grads, in_float32_range
from verification.faults import FaultyImpl
from verification.results import STORE

#: (fault, the check that must catch it, a case where the correct backend passes it).
SCENARIOS: list[tuple[str, str, Any]] = [
    ("epsilon-twice", "yat", YatCase(8, 16, 6, seed=1, scale_x=-2, scale_w=-2, epsilon="const", eps_value=0.1)),
    ("epsilon-twice", "equal-rows", YatCase(6, 8, 4, seed=5, data="integer", hard="equal", alpha="array")),
    ("epsilon-twice", "mlp", MLPCase(8, 20, 10, 8, 4, seed=1, epsilon="const", eps_value=1.0)),
    ("bias-in-distance", "yat", YatCase(8, 16, 6, seed=2, bias="array")),
    ("bias-in-distance", "mlp", MLPCase(8, 20, 10, 8, 4, seed=1, epsilon="const", eps_value=1.0)),
    ("no-clamp", "yat", YatCase(6, 300, 5, seed=3, scale_x=2, scale_w=2, hard="equal")),
    ("no-clamp", "nonneg", YatCase(6, 300, 5, seed=3, scale_x=2, scale_w=2, hard="equal")),
    ("dropped-distance-gradient", "yat-grad", YatCase(6, 10, 5, seed=4, bias="array", alpha="array")),
    ("dropped-distance-gradient", "yat-fd", YatCase(6, 10, 5, seed=4, bias="array", alpha="array")),
]


def _run(check: str, backend: str, case: Any, impl: Any) -> None:
    runners: dict[str, Callable[[], Any]] = {
        "yat": lambda: check_yat(backend, case, impl=impl),
        "mlp": lambda: check_mlp(backend, case, impl=impl),
        "equal-rows": lambda: properties.check_value_at_equal_rows(backend, case, True, impl=impl),
        "nonneg": lambda: properties.check_non_negative_and_finite(backend, case, impl=impl),
        "yat-grad": lambda: check_yat_grads(f"{backend}-analytic", case, impl=impl),
        "yat-fd": lambda: check_yat_fd(f"{backend}-analytic", case, impl=impl),
    }
    runners[check]()


@pytest.mark.parametrize("fault,check,case", SCENARIOS, ids=[f"{f}-{c}" for f, c, _ in SCENARIOS])
def test_fault_is_caught(fault: str, check: str, case: Any, require_backend: Callable[[str], Any]) -> None:
    require_backend("numpy")
    with STORE.pause():
        _run(check, "numpy", case, None)  # the control: the correct backend passes
        with pytest.raises(AssertionError) as caught:
            _run(check, f"fault:{fault}", case, FaultyImpl(fault))
    STORE.faults.setdefault(fault, {})[check] = {"case": repr(case), "message": str(caught.value).splitlines()[0]}


def _fails(check: Callable[[], Any]) -> bool:
    try:
        check()
    except AssertionError:
        return True
    return False


SEARCH = settings(
    max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)


@pytest.mark.parametrize("fault", ["epsilon-twice", "bias-in-distance", "no-clamp"])
def test_forward_search_finds_fault(fault: str, require_backend: Callable[[str], Any]) -> None:
    """Hypothesis, with the forward test's strategy, finds an input that exposes the fault."""
    require_backend("numpy")
    impl = FaultyImpl(fault)
    with STORE.pause():
        found = find(
            yat_cases(spherical=(False,)),
            lambda c: in_float32_range(c) and _fails(lambda: check_yat(f"fault:{fault}", c, impl=impl)),
            settings=SEARCH,
        )
    STORE.faults.setdefault(fault, {})["hypothesis"] = {"minimal_case": repr(found)}


def test_gradient_search_finds_fault(require_backend: Callable[[str], Any]) -> None:
    require_backend("numpy")
    impl = FaultyImpl("dropped-distance-gradient")
    with STORE.pause():
        found = find(
            yat_cases(spherical=(False,)),
            lambda c: (
                in_float32_range(c)
                and _fails(lambda: check_yat_grads("fault:dropped-distance-gradient-analytic", c, impl=impl))
            ),
            settings=SEARCH,
        )
    STORE.faults.setdefault("dropped-distance-gradient", {})["hypothesis"] = {"minimal_case": repr(found)}
