"""The project's performance targets, checked against a run's results.

The limits come from the benchmark issue and the reference numbers of DESIGN.md
section 4 (nmn 0.3.5's own example scripts on the 2-core reference machine).
They are stated for that machine's CPU; on other machines they are indicative.

The Yat CNN's criterion (issue 9): its training step no more than
:data:`CNN_STEP_LIMIT` times the ``Conv + ReLU`` step on the same backend (full
training step, batch 128, median), and faster than nmn's conv layers of the same
framework in the same training loop (nmn's seconds per epoch over Yat's at least 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CNN_STEP_LIMIT",
    "NMN_EXAMPLE_S_PER_EPOCH",
    "Target",
    "TARGETS",
    "epoch_ratio",
    "evaluate_targets",
    "network_of",
    "step_ratio",
]

#: Steady seconds per epoch of nmn 0.3.5's own MNIST example scripts (DESIGN.md §4).
NMN_EXAMPLE_S_PER_EPOCH = {"torch": 4.2, "jax": 0.77, "mlx": 18.4}

#: Issue 9: the Yat CNN's training step at most this many times the Conv + ReLU step.
CNN_STEP_LIMIT = 1.5

Results = dict[str, Any]


def network_of(record: dict[str, Any]) -> str:
    """A step or epoch record's network: ``"mlp"`` unless it says otherwise (runs saved before the CNN)."""
    return str(record.get("network", "mlp"))


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
    #: The measured value must be at least ``limit`` (a speed-up), not at most.
    at_least: bool = False
    #: The network the target is about (``"mlp"``: the seed model; ``"cnn"``: the Yat CNN).
    network: str = "mlp"

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the target."""
        return value >= self.limit if self.at_least else value <= self.limit


def _epoch(
    results: Results, backend: str, model: str = "yat", key: str = "steady_s", network: str = "mlp", device: str = "cpu"
) -> float | None:
    for rec in results.get("epochs", []):
        if (rec["backend"], rec["device"], rec["model"], rec.get("status")) == (backend, device, model, "ok"):
            if network_of(rec) == network:
                return rec.get(key)
    return None


def epoch_ratio(
    results: Results,
    backend: str,
    device: str = "cpu",
    *,
    network: str = "mlp",
    numerator: str = "yat",
    denominator: str = "relu",
    key: str = "steady_s",
) -> float | None:
    """Seconds per epoch of ``numerator`` over ``denominator`` (models), same backend, device and network."""
    a = _epoch(results, backend, numerator, key, network, device)
    b = _epoch(results, backend, denominator, key, network, device)
    return a / b if a is not None and b else None


def _full_run_wall(results: Results, backend: str) -> float | None:
    # The end-to-end target is about a full 3-epoch run; a quick-profile run is not one.
    for rec in results.get("epochs", []):
        if (rec["backend"], rec["device"], rec["model"], rec.get("status")) == (backend, "cpu", "yat", "ok"):
            if network_of(rec) == "mlp" and rec.get("epochs") == 3 and not rec.get("extrapolated"):
                return rec.get("wall_s")
    return None


def step_ratio(
    results: Results,
    backend: str,
    device: str = "cpu",
    kind: str = "train_step",
    batch: int = 128,
    stat: str = "median_s",
    *,
    network: str = "mlp",
    numerator: str = "yat",
    denominator: str = "relu",
) -> float | None:
    """Step time of ``numerator`` over ``denominator`` (models; by default the Yat network over its ReLU
    twin), same backend, device, network, kind and batch; ``stat``: ``median_s`` or ``min_s``."""
    times: dict[str, float] = {}
    for rec in results.get("steps", []):
        if (rec["backend"], rec["device"], rec["kind"], rec["batch"]) == (backend, device, kind, batch):
            if network_of(rec) == network:
                times[rec["model"]] = rec[stat]
    if numerator in times and times.get(denominator):
        return times[numerator] / times[denominator]
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
    for backend in ("numpy", "torch", "jax", "mlx"):
        targets.append(
            Target(
                f"cnn {backend} Yat step / Conv+ReLU step",
                CNN_STEP_LIMIT,
                "x",
                lambda r, b=backend: step_ratio(r, b, network="cnn"),
                "issue 9; Yat CNN's full training step over the Conv+ReLU CNN's, batch 128, median",
                lambda r, b=backend: step_ratio(r, b, stat="min_s", network="cnn"),
                network="cnn",
            )
        )
    for backend in ("torch", "jax", "mlx"):  # nmn has no NumPy layers
        targets.append(
            Target(
                f"cnn {backend} nmn / Yat, same loop",
                1.0,
                "x",
                lambda r, b=backend: epoch_ratio(r, b, network="cnn", numerator="nmn", denominator="yat"),
                "issue 9; nmn's conv layers' s/epoch over the Yat CNN's, same training loop (> 1: Yat faster)",
                lambda r, b=backend: epoch_ratio(
                    r, b, network="cnn", numerator="nmn", denominator="yat", key="steady_min_s"
                ),
                at_least=True,
                network="cnn",
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
                "met": None if value is None else bool(t.met(value)),
                "at_least": t.at_least,
                "network": t.network,
                "basis": t.basis,
            }
        )
    return out
