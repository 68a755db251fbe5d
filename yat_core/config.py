"""What defines a training run: :class:`TrainConfig`, read by the runners and the loop."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

from yat_core.optim import AdamWConfig
from yat_core.spec import MODELS

__all__ = [
    "TrainConfig",
    "default_backend",
    "DEFAULT_BACKEND_ORDER",
    "SEED_MAX",
    "EPOCHS_MAX",
    "SIZE_MAX",
    "DEVICES_MAX",
    "int_problem",
    "float_problem",
]

#: Tried in this order when no backend is named: the fastest installed one wins.
DEFAULT_BACKEND_ORDER = ("jax", "torch", "mlx", "numpy")

#: The largest seed: every framework takes 0 <= seed < 2**32 (Keras's set_random_seed
#: is the narrowest; JAX and Flax refuse 2**63, NumPy any negative seed).
SEED_MAX = 2**32 - 1
#: The most epochs a run may ask for: each epoch's batch order redraws the earlier ones.
EPOCHS_MAX = 10_000
#: Batch sizes and limits index samples with int32; larger values mean "the whole split" anyway.
SIZE_MAX = 2**31 - 1
#: The most devices per process ``--devices`` may ask for (far above any machine's).
DEVICES_MAX = 4096


def int_problem(value: Any, low: int, high: int) -> str | None:
    """What makes ``value`` unfit for an integer option in ``[low, high]``, or None.

    The one check behind the CLI's numeric flags and :meth:`TrainConfig.validate`.

    Examples
    --------
    >>> int_problem(3, 1, 10) is None, int_problem(0, 1, 10), int_problem(2**40, 0, SEED_MAX)
    (True, 'must be >= 1, got 0', 'must be <= 4294967295, got 1099511627776')
    >>> int_problem(True, 1, 10), int_problem(2.5, 1, 10)
    ('must be an integer, got True', 'must be an integer, got 2.5')
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return f"must be an integer, got {value!r}"
    number = int(value)
    if number < low:
        return f"must be >= {low}, got {number}"
    if number > high:
        return f"must be <= {high}, got {number}"
    return None


def float_problem(value: Any, *, positive: bool) -> str | None:
    """What makes ``value`` unfit for a finite number option (> 0 when ``positive``, else >= 0), or None.

    Examples
    --------
    >>> float_problem(1e-3, positive=True) is None, float_problem(0.0, positive=True)
    (True, 'must be > 0, got 0.0')
    >>> float_problem(float("inf"), positive=False), float_problem("x", positive=False)
    ('must be a finite number, got inf', "must be a number, got 'x'")
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"must be a number, got {value!r}"
    number = float(value)
    if not math.isfinite(number):
        return f"must be a finite number, got {number}"
    if positive and not number > 0:
        return f"must be > 0, got {number}"
    if not positive and not number >= 0:
        return f"must be >= 0, got {number}"
    return None


# Stands for "AdamW at the model's learning rate" until __post_init__ replaces it.
_MODEL_DEFAULT = AdamWConfig()


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; recorded in the receipt.

    ``backend`` trains the core's model on that array backend (None: the first
    installed of :data:`DEFAULT_BACKEND_ORDER`); ``framework`` instead trains that
    framework's native model with its own optimizer (``keras_backend`` picks Keras's).

    Examples
    --------
    ``optimizer`` defaults to AdamW with the model's learning rate
    (:class:`~yat_core.spec.ModelRecipe`).

    >>> TrainConfig(backend="numpy").batch_size, TrainConfig().optimizer.lr, TrainConfig(model="cnn").optimizer.lr
    (128, 0.0003, 0.001)
    """

    model: str = "mlp"
    backend: str | None = None
    framework: str | None = None
    keras_backend: str | None = None
    epochs: int = 3
    batch_size: int = 128
    optimizer: AdamWConfig = field(default_factory=lambda: _MODEL_DEFAULT)
    seed: int = 0
    device: str | None = None
    gradients: str | None = None  # "autodiff" or "analytic"; None: the backend's faster one
    dtype: str = "float32"
    data_dir: str | None = None
    train_limit: int | None = None  # use the first N training images (tests, quick runs)
    test_limit: int | None = None
    eval_batch: int = 2000
    devices: int = 1  # devices of each process the batch is split over (JAX: yat_core.parallel.jax)

    def __post_init__(self) -> None:
        if self.optimizer is _MODEL_DEFAULT:  # not given: AdamW at the model's learning rate
            recipe = MODELS.get(self.model)
            lr = recipe.lr if recipe is not None else AdamWConfig().lr  # an unknown model fails validate()
            object.__setattr__(self, "optimizer", AdamWConfig(lr=lr))

    def validate(self) -> None:
        """Raise :class:`ValueError` for settings no run can use; the message names the CLI flag.

        Bounds: ``1 <= epochs <= EPOCHS_MAX``; batch size and limits ``1 ..
        SIZE_MAX`` (a batch or limit larger than the training set means the whole
        set); ``0 <= seed <= SEED_MAX``; learning rate finite and > 0, weight decay
        finite and >= 0.
        """
        bounds = {
            "epochs": (1, EPOCHS_MAX),
            "batch_size": (1, SIZE_MAX),
            "eval_batch": (1, SIZE_MAX),
            "seed": (0, SEED_MAX),
            "train_limit": (1, SIZE_MAX),
            "test_limit": (1, SIZE_MAX),
            "devices": (1, DEVICES_MAX),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            problem = None if value is None and name.endswith("_limit") else int_problem(value, low, high)
            if problem is not None:
                raise ValueError(f"--{name.replace('_', '-')} {problem}")
        for flag, value, positive in (
            ("learning rate", self.optimizer.lr, True),
            ("weight decay", self.optimizer.weight_decay, False),
        ):
            problem = float_problem(value, positive=positive)
            if problem is not None:
                raise ValueError(f"{flag} {problem}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.framework is not None and self.backend is not None:
            raise ValueError("give --backend (the core's model) or --framework (its native model), not both")
        if self.keras_backend is not None and self.framework != "keras":
            raise ValueError("--keras-backend applies to --framework keras only")
        if self.gradients is not None and self.framework is not None:
            raise ValueError("--gradients applies to --backend runs; a --framework run uses the framework's autodiff")
        if self.devices > 1:
            self._check_devices()
        self.optimizer.validate()

    def _check_devices(self) -> None:
        # Data parallelism in one process is JAX's (yat_core.parallel.jax); torch runs one process per device.
        name = self.framework or self.backend
        if name in (None, "jax", "nnx", "linen") or (name == "keras" and self.keras_backend in (None, "jax")):
            return
        torch = name == "torch" or self.keras_backend == "torch"
        advice = (
            "for torch, start one process per device with torchrun (README: Training on several devices and machines)"
            if torch
            else f"{self.keras_backend or name} trains on one device here"
        )
        raise ValueError(
            f"--devices applies to JAX runs (--backend jax, --framework nnx, linen or keras on jax); {advice}"
        )

    def resolved_backend(self) -> str:
        """The backend a core run uses: the one named, else the first installed."""
        return self.backend if self.backend is not None else default_backend()

    def as_record(self) -> dict[str, Any]:
        """The configuration as JSON-ready data (the optimizer as a mapping)."""
        return {**asdict(self), "optimizer": self.optimizer._asdict()}


def default_backend() -> str:
    """The first installed backend of :data:`DEFAULT_BACKEND_ORDER`."""
    from yat_core.backends import available_backends

    installed = available_backends()
    return next(name for name in DEFAULT_BACKEND_ORDER if name in installed)
