"""The two run profiles: ``ci`` (deterministic, a few minutes on two cores) and
``thorough`` (random, many more examples, full three-epoch training runs of the seed
model, 100 steps of the CNN, 40 of the vision transformer, and the Conv+ReLU baseline's
headline too).

``verification/conftest.py`` selects one (``--parity-profile``, or the
``YAT_PARITY_PROFILE`` environment variable) before the test modules are imported,
so the decorators below see the right budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from hypothesis import HealthCheck, Phase, settings

__all__ = ["PROFILES", "Profile", "active", "select", "examples"]

F = TypeVar("F", bound=Callable)


@dataclass(frozen=True)
class Profile:
    """Budgets of one profile."""

    name: str
    scale: float  # multiplies every test's base number of Hypothesis examples
    derandomize: bool
    trajectory_steps: int | None  # training steps compared per backend; None: full epochs
    trajectory_epochs: int
    trajectory_test_limit: int | None  # test images evaluated after the run (None: all)
    # The Yat CNN's trajectory (every backend and framework): steps of epoch 1, test images.
    cnn_trajectory_steps: int
    cnn_trajectory_test_limit: int | None
    #: Models of the headline (verification.headline.MODELS).
    headline_models: tuple[str, ...] = ("seed", "cnn", "vit")
    # The Yat ViT's trajectory (every backend and framework): steps of epoch 1, test images.
    # At its learning rate (2e-3) the ViT's training is chaotic: float32 runs stay within a
    # few 1e-6 of the float64 loss for 40-60 steps and part from it after about 70 (ERROR_MODEL.md,
    # "The vision transformer"), so no profile runs more than 40.
    vit_trajectory_steps: int = 3
    vit_trajectory_test_limit: int | None = 256

    def trajectory(self, model: str) -> tuple[int | None, int, int | None]:
        """``(steps, epochs, test_limit)`` of ``model``'s trajectory runs (``"seed"``, ``"cnn"``, ``"vit"``)."""
        if model == "cnn":
            return self.cnn_trajectory_steps, 1, self.cnn_trajectory_test_limit
        if model == "vit":
            return self.vit_trajectory_steps, 1, self.vit_trajectory_test_limit
        return self.trajectory_steps, self.trajectory_epochs, self.trajectory_test_limit


PROFILES = {
    "ci": Profile("ci", 1.0, True, 120, 1, 2000, 3, 256),
    "thorough": Profile(
        "thorough", 12.0, False, None, 3, None, 100, 2000, ("seed", "cnn", "cnn-relu", "vit", "vit-softmax"), 40, 2000
    ),
}

_HEALTH = [
    HealthCheck.too_slow,
    HealthCheck.function_scoped_fixture,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
]
for _p in PROFILES.values():
    settings.register_profile(
        _p.name,
        derandomize=_p.derandomize,
        deadline=None,
        database=None if _p.derandomize else settings.default.database,
        print_blob=True,
        suppress_health_check=_HEALTH,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )

_ACTIVE = {"profile": PROFILES["ci"]}


def select(name: str) -> Profile:
    """Make ``name`` the active profile (and Hypothesis profile)."""
    if name not in PROFILES:
        raise ValueError(f"unknown parity profile {name!r}; choose one of {sorted(PROFILES)}")
    settings.load_profile(name)
    _ACTIVE["profile"] = PROFILES[name]
    return PROFILES[name]


def active() -> Profile:
    """The profile in use."""
    return _ACTIVE["profile"]


def examples(base: int) -> Callable[[F], F]:
    """``@settings(max_examples=...)``: ``base`` examples in CI, ``scale * base`` when thorough.

    Read at import time of the test module, after the conftest has selected the profile.
    """
    return settings(settings.get_profile(active().name), max_examples=max(1, round(base * active().scale)))
