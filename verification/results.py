"""What a parity session measured, collected while the tests run.

Checks append one :class:`Example` per input they try; the headline and trajectory
tests store their tables; at the end of the session :mod:`verification.report`
writes it all to ``results/parity/``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["Example", "Store", "STORE", "summarise_error", "WELL_CONDITIONED"]

#: An element is "well conditioned" when the error model itself promises a relative
#: accuracy of 1e-3 or better there (no cancellation to speak of).
WELL_CONDITIONED = 1e-3


@dataclass
class Example:
    """One input tried by one check on one backend."""

    check: str  # "yat", "yat-grad", "mlp", ...
    backend: str
    case: str  # the case's repr (feed it to python -m verification.repro)
    max_ratio: float  # max over elements of |error| / bound
    well_ratio: float | None  # the same over well-conditioned elements (None: there were none)
    ill_ratio: float | None
    max_abs: float
    max_rel: float  # max |error| / max(1, |ref|)
    passed: bool


@dataclass
class Store:
    """Everything recorded in this session (the process-wide :data:`STORE`)."""

    examples: list[Example] = field(default_factory=list)
    headline: dict[str, Any] = field(default_factory=dict)
    trajectory: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    paused: bool = False

    def add(self, example: Example) -> None:
        if not self.paused:
            self.examples.append(example)

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Record nothing inside (the fault-injection tests run checks meant to fail)."""
        before, self.paused = self.paused, True
        try:
            yield
        finally:
            self.paused = before

    def by_check(self) -> dict[tuple[str, str], list[Example]]:
        groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
        for ex in self.examples:
            groups[(ex.check, ex.backend)].append(ex)
        return groups

    def summary(self) -> list[dict[str, Any]]:
        """Per check and backend: examples tried, the worst ratio and its case, and
        the tightness of the model (worst and median ratio on well-conditioned elements)."""
        rows = []
        for (check, backend), group in sorted(self.by_check().items()):
            worst = max(group, key=lambda e: e.max_ratio)
            well = [e.well_ratio for e in group if e.well_ratio is not None]
            ill = [e.ill_ratio for e in group if e.ill_ratio is not None]
            rows.append(
                {
                    "check": check,
                    "backend": backend,
                    "examples": len(group),
                    "failed": sum(not e.passed for e in group),
                    "worst_ratio": worst.max_ratio,
                    "worst_case": worst.case,
                    "worst_abs": max(e.max_abs for e in group),
                    "well_conditioned_worst_ratio": max(well) if well else None,
                    "well_conditioned_median_ratio": float(np.median(well)) if well else None,
                    "ill_conditioned_worst_ratio": max(ill) if ill else None,
                }
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "headline": self.headline,
            "trajectory": self.trajectory,
            "error_model": self.summary(),
            "faults": self.faults,
            "examples": [asdict(e) for e in self.examples],
        }


STORE = Store()


def summarise_error(
    check: str, backend: str, case: Any, err: np.ndarray, bound: np.ndarray, ref: np.ndarray
) -> Example:
    """Reduce one comparison to an :class:`Example` (not stored; see :meth:`Store.add`)."""
    err, bound, ref = (np.asarray(a, dtype=np.float64) for a in (err, bound, ref))
    ratio = np.where(np.isfinite(err), err / bound, np.inf)
    well = bound <= WELL_CONDITIONED * np.abs(ref)

    def _max(mask: np.ndarray) -> float | None:
        return float(np.max(ratio[mask])) if np.any(mask) else None

    finite = np.isfinite(err)
    return Example(
        check=check,
        backend=backend,
        case=repr(case),
        max_ratio=float(np.max(ratio)) if ratio.size else 0.0,
        well_ratio=_max(well),
        ill_ratio=_max(~well),
        max_abs=float(np.max(err[finite])) if np.any(finite) else float("inf"),
        max_rel=float(np.max(err / np.maximum(1.0, np.abs(ref)))) if err.size else 0.0,
        passed=bool(np.all(err <= bound)),
    )
