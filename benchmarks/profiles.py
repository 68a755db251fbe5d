"""Benchmark profiles: how long to time, and what.

``quick`` checks that every measurement runs (CI, a few minutes on two cores);
``full`` produces the numbers the project is judged by. Pick one with
``--bench-profile`` or the ``YAT_BENCH_PROFILE`` environment variable.

Each network has its own :class:`Plan` (batch sizes, step kinds, epochs and how many
images an epoch sees): the seed MLP's from the profile's top-level fields, the CNN's
from :attr:`Profile.cnn`. A CNN training step costs about fifteen times the MLP's, so
its epochs are shorter runs whose seconds per MNIST epoch are extrapolated from the
measured samples/s, and its batch sizes stop at 128.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Plan", "Profile", "PROFILES", "NETWORKS", "get_profile", "ENV_VAR"]

ENV_VAR = "YAT_BENCH_PROFILE"
#: The networks the suite can time (``--bench-model``): the seed MLP and the Yat CNN
#: (:data:`yat_core.spec.MODELS`), in report order.
NETWORKS = ("mlp", "cnn")
#: Step kinds, in table order (also :data:`benchmarks.steps.KINDS`).
ALL_KINDS = ("forward", "forward_backward", "train_step")


@dataclass(frozen=True)
class Plan:
    """What one network's step and epoch timings cover under a profile.

    Parameters
    ----------
    batch_sizes : tuple of int
        Batch sizes of the step timings.
    kinds : tuple of str
        Step kinds timed (``forward``, ``forward_backward``, ``train_step``).
    epochs : int
        Epochs of each epoch-timing run; the first is the warm-up.
    train_limit, test_limit : int or None
        Train on / evaluate the first N images only; seconds per epoch are then
        extrapolated to the full 60,000 training images from the measured samples/s.
    """

    batch_sizes: tuple[int, ...]
    kinds: tuple[str, ...]
    epochs: int
    train_limit: int | None
    test_limit: int | None = None

    @property
    def timed_epochs(self) -> int:
        """Epochs after the warm-up epoch."""
        return self.epochs - 1


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
    cnn : Plan
        The Yat CNN's timings (the seed MLP's are the fields above).

    Examples
    --------
    >>> get_profile("quick").batch_sizes
    (1, 128)
    >>> get_profile("quick").plan("cnn").batch_sizes
    (128,)
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
    cnn: Plan = Plan(batch_sizes=(128,), kinds=("train_step",), epochs=2, train_limit=640, test_limit=1000)

    @property
    def timed_epochs(self) -> int:
        """Epochs after the warm-up epoch."""
        return self.epochs - 1

    def plan(self, network: str) -> Plan:
        """The step and epoch plan of ``network`` (``"mlp"`` or ``"cnn"``).

        Raises
        ------
        ValueError
            For a network the suite does not time.
        """
        if network == "mlp":
            return Plan(self.batch_sizes, ALL_KINDS, self.epochs, self.train_limit)
        if network == "cnn":
            return self.cnn
        raise ValueError(f"unknown network {network!r}; choose one of: {', '.join(NETWORKS)}")

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
        # One step kind and batch size (the 1.5x criterion's), epochs of 5 steps: a smoke run.
        cnn=Plan(batch_sizes=(128,), kinds=("train_step",), epochs=2, train_limit=640, test_limit=1000),
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
        # Epochs of 100 steps (12,800 images), the warm-up and two timed; evaluation on 2,000
        # test images (outside s/epoch, inside the end-to-end time).
        cnn=Plan(batch_sizes=(1, 32, 128), kinds=ALL_KINDS, epochs=3, train_limit=12_800, test_limit=2_000),
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
