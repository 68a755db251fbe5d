"""What defines a training run: :class:`TrainConfig`, read by the runners and the loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from yat_core.optim import AdamWConfig
from yat_core.spec import MODELS

__all__ = ["TrainConfig", "default_backend", "DEFAULT_BACKEND_ORDER"]

#: Tried in this order when no backend is named: the fastest installed one wins.
DEFAULT_BACKEND_ORDER = ("jax", "torch", "mlx", "numpy")

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

    def __post_init__(self) -> None:
        if self.optimizer is _MODEL_DEFAULT:  # not given: AdamW at the model's learning rate
            recipe = MODELS.get(self.model)
            lr = recipe.lr if recipe is not None else AdamWConfig().lr  # an unknown model fails validate()
            object.__setattr__(self, "optimizer", AdamWConfig(lr=lr))

    def validate(self) -> None:
        """Raise :class:`ValueError` for settings no run can use."""
        for name in ("epochs", "batch_size", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {value}")
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
        self.optimizer.validate()

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
