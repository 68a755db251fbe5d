"""Benchmark profiles: how long to time, and what.

``quick`` checks that every measurement runs (CI, about two minutes on two cores);
``full`` produces the numbers the project is judged by. Pick one with
``--bench-profile`` or the ``YAT_BENCH_PROFILE`` environment variable.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Profile", "PROFILES", "get_profile", "ENV_VAR"]

ENV_VAR = "YAT_BENCH_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Settings of one benchmark profile.

    Parameters
    ----------
    name : str
    batch_sizes : tuple of int
        Batch sizes of the step timings.
    step_budget_s : float
        Approximate seconds of timed calls per step benchmark; the number of
        rounds is derived from it and the warm-up call time.
    min_rounds, max_rounds : int
        Bounds on the rounds of one step benchmark.
    warmup_calls : int
        Untimed calls after the first (compiling) call and before the timed ones.
    epochs : int
        Epochs of each epoch-timing run; the first is the warm-up (it includes
        compilation) and the rest are the steady state.
    train_limit : int or None
        Train on the first N images only (quick runs); seconds per epoch are then
        extrapolated to the full training set from the measured samples/s.
    floor_repeats : int
        Repeats of each matrix-multiply measurement (the best one counts).
    nmn : bool
        Time the published ``nmn`` layers when the package is installed.

    Examples
    --------
    >>> get_profile("quick").batch_sizes
    (1, 128)
    """

    name: str
    batch_sizes: tuple[int, ...]
    step_budget_s: float
    min_rounds: int
    max_rounds: int
    warmup_calls: int
    epochs: int
    train_limit: int | None
    floor_repeats: int
    nmn: bool = True

    @property
    def timed_epochs(self) -> int:
        """Epochs after the warm-up epoch."""
        return self.epochs - 1

    def as_dict(self) -> dict[str, Any]:
        """The profile as a JSON-ready dict (recorded in every result file)."""
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick",
        batch_sizes=(1, 128),
        step_budget_s=0.1,
        min_rounds=3,
        max_rounds=200,
        warmup_calls=2,
        epochs=2,
        train_limit=3840,
        floor_repeats=5,
    ),
    "full": Profile(
        name="full",
        batch_sizes=(1, 32, 128, 1024),
        step_budget_s=1.0,
        min_rounds=7,
        max_rounds=3000,
        warmup_calls=5,
        epochs=3,
        train_limit=None,
        floor_repeats=30,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """The profile called ``name``, else ``$YAT_BENCH_PROFILE``, else ``quick``.

    Raises
    ------
    ValueError
        For a name that is not a profile.
    """
    name = name or os.environ.get(ENV_VAR) or "quick"
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown benchmark profile {name!r}; choose one of: {', '.join(PROFILES)}") from None
