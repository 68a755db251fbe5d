"""The project's performance targets, checked against a run's results.

The limits come from the benchmark issue and the reference numbers of DESIGN.md
section 4 (nmn 0.3.5's own example scripts on the 2-core reference machine).
They are stated for that machine's CPU; on other machines they are indicative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["NMN_EXAMPLE_S_PER_EPOCH", "Target", "TARGETS", "evaluate_targets", "step_ratio"]

#: Steady seconds per epoch of nmn 0.3.5's own MNIST example scripts (DESIGN.md §4).
NMN_EXAMPLE_S_PER_EPOCH = {"torch": 4.2, "jax": 0.77, "mlx": 18.4}

Results = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """One performance target: a measured value that must not exceed ``limit``."""

    name: str
    limit: float
    unit: str
    measure: Callable[[Results], float | None]
    basis: str
    #: The same measurement from best-case (minimum) times, where there is one: on a
    #: shared machine it shows what the code does when other processes leave it alone.
    measure_best: Callable[[Results], float | None] | None = None


def _epoch(results: Results, backend: str, model: str = "yat", key: str = "steady_s") -> float | None:
    for rec in results.get("epochs", []):
        if (rec["backend"], rec["device"], rec["model"], rec.get("status")) == (backend, "cpu", model, "ok"):
            return rec.get(key)
    return None


def _full_run_wall(results: Results, backend: str) -> float | None:
    # The end-to-end target is about a full 3-epoch run; a quick-profile run is not one.
    for rec in results.get("epochs", []):
        if (rec["backend"], rec["device"], rec["model"], rec.get("status")) == (backend, "cpu", "yat", "ok"):
            if rec.get("epochs") == 3 and not rec.get("extrapolated"):
                return rec.get("wall_s")
    return None


def step_ratio(
    results: Results,
    backend: str,
    device: str = "cpu",
    kind: str = "train_step",
    batch: int = 128,
    stat: str = "median_s",
) -> float | None:
    """Yat step time over the ReLU-MLP step time (``stat``: median or min), same backend, device, kind, batch."""
    times: dict[str, float] = {}
    for rec in results.get("steps", []):
        if (rec["backend"], rec["device"], rec["kind"], rec["batch"]) == (backend, device, kind, batch):
            times[rec["model"]] = rec[stat]
    if "yat" in times and "relu" in times:
        return times["yat"] / times["relu"]
    return None


def _targets() -> list[Target]:
    targets = [
        Target(
            "jax s/epoch",
            0.45,
            "s",
            lambda r: _epoch(r, "jax"),
            "issue target; nmn Linen example 0.77 s, floor ~0.30 s",
            lambda r: _epoch(r, "jax", key="steady_min_s"),
        ),
        Target(
            "torch s/epoch",
            0.6,
            "s",
            lambda r: _epoch(r, "torch"),
            "issue target; nmn PyTorch example 4.2 s",
            lambda r: _epoch(r, "torch", key="steady_min_s"),
        ),
        Target(
            "mlx s/epoch",
            NMN_EXAMPLE_S_PER_EPOCH["mlx"] / 2,
            "s",
            lambda r: _epoch(r, "mlx"),
            "at least 2x faster than nmn's MLX example (18.4 s)",
            lambda r: _epoch(r, "mlx", key="steady_min_s"),
        ),
    ]
    for backend in ("numpy", "torch", "jax", "mlx"):
        targets.append(
            Target(
                f"{backend} Yat step / ReLU step",
                1.3,
                "x",
                lambda r, b=backend: step_ratio(r, b),
                "full training step, batch 128, median",
                lambda r, b=backend: step_ratio(r, b, stat="min_s"),
            )
        )
    targets.append(
        Target(
            "jax 3-epoch run, end to end",
            6.0,
            "s",
            lambda r: _full_run_wall(r, "jax"),
            "yat-core train --backend jax --epochs 3, process start to exit",
        )
    )
    return targets


TARGETS = _targets()


def evaluate_targets(results: Results) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (None: not measured in this run)."""
    out = []
    for t in TARGETS:
        value = t.measure(results)
        best = t.measure_best(results) if t.measure_best else None
        out.append(
            {
                "name": t.name,
                "limit": t.limit,
                "unit": t.unit,
                "measured": value,
                "best_case": best,
                "met": None if value is None else bool(value <= t.limit),
                "basis": t.basis,
            }
        )
    return out
