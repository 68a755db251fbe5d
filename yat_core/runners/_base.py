"""The :class:`Runner` protocol, complete, and :class:`BaseRunner`, its defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from yat_core.errors import BackendUnavailableError

if TYPE_CHECKING:
    from yat_core.backends import Backend

__all__ = ["Runner", "BaseRunner", "BackendRunner", "ChunkRunner", "DataParallelGroup"]

#: ``(images, labels, order, first_step) -> losses``: several full steps in one call.
ChunkRunner = Callable[[Any, Any, Any, int], Any]


class DataParallelGroup(Protocol):
    """What a runner asks of the processes it shares every batch with (:mod:`yat_core.parallel`)."""

    rank: int  #: this process's rank; rank 0 reports
    #: True when the group communicates between compiled calls (torch.distributed): its core
    #: runner then steps one batch at a time through ``train_step(gradient, update)``.
    #: False when the compiled step communicates itself (JAX's GSPMD): nothing changes.
    host_collectives: bool

    def epoch_finished(self, epoch_s: float) -> None: ...
    def record(self) -> dict[str, Any]: ...


@runtime_checkable
class Runner(Protocol):
    """Everything the training loop asks of a model on a device.

    ``step`` and ``evaluate`` may return device scalars; the loop converts them to host
    numbers only at the end of an epoch (or for the progress bar), so no step waits on
    the host.
    """

    name: str  #: the backend or framework name recorded in the receipt (``"jax"``, ``"nnx"``)
    framework: str | None  #: the ``--framework`` of a native runner; None for the core on a backend
    gradients: str  #: ``"autodiff"`` or ``"analytic"``
    distributions: tuple[str, ...]  #: distributions whose versions the receipt records

    def device_name(self) -> str: ...
    def n_params(self) -> int: ...
    def put(self, a: np.ndarray) -> Any: ...
    def step(self, images: Any, labels: Any, idx: Any) -> Any: ...
    def chunk_runner(self, batch_size: int, n_steps: int) -> ChunkRunner | None: ...
    def evaluate(self, images: Any, labels: Any) -> tuple[Any, Any]: ...
    def settle(self, loss: Any) -> None: ...
    def synchronize(self, tree: Any) -> None: ...
    def to_float(self, value: Any) -> float: ...
    def host_losses(self, loss: Any) -> list[float]: ...
    def export_params(self) -> dict[str, np.ndarray]: ...
    def receipt_facts(self) -> dict[str, Any]: ...
    def epoch_finished(self, epoch_s: float) -> None: ...
    @property
    def is_main_process(self) -> bool: ...


class BaseRunner:
    """Defaults for a runner that steps eagerly or asynchronously, one batch per call.

    Subclasses set :attr:`name`, :attr:`framework` and :attr:`distributions` and
    implement ``device_name``, ``n_params``, ``put``, ``step``, ``evaluate`` and
    ``export_params``; the rest has a default here.
    """

    name: str = ""
    framework: str | None = None
    gradients: str = "autodiff"
    distributions: tuple[str, ...] = ()
    #: The processes this one shares every batch with (e.g.
    #: :class:`yat_core.parallel.torch.TorchDataParallel`); None: one process.
    parallel: DataParallelGroup | None = None

    @property
    def is_main_process(self) -> bool:
        """Whether this process reports (prints, writes the receipt): all but rank 0 of several do not."""
        return self.parallel is None or self.parallel.rank == 0

    def epoch_finished(self, epoch_s: float) -> None:
        """Called by the loop on every process after each epoch; a data-parallel group gathers the timings."""
        if self.parallel is not None:
            self.parallel.epoch_finished(epoch_s)

    def chunk_runner(self, batch_size: int, n_steps: int) -> ChunkRunner | None:
        """Several steps in one compiled call, where the runner offers it; None here."""
        return None

    def settle(self, loss: Any) -> None:
        """Run work a lazy framework has only recorded so far (nothing for eager ones)."""

    def synchronize(self, tree: Any) -> None:
        """Block until the work that produces ``tree`` has finished (nothing for synchronous ones)."""

    def to_float(self, value: Any) -> float:
        """A device scalar as a Python float."""
        return float(self.to_numpy(value))

    def host_losses(self, loss: Any) -> list[float]:
        """The per-step losses one ``step`` (or chunk) returned, as Python floats."""
        return [float(v) for v in np.ravel(np.asarray(self.to_numpy(loss)))]

    def to_numpy(self, value: Any) -> np.ndarray:
        """A device array as a host array."""
        return np.asarray(value)

    def export_params(self) -> dict[str, np.ndarray]:
        """The trained parameters in the interchange format of :mod:`yat_core.nn`."""
        raise BackendUnavailableError(f"the {self.name!r} runner cannot export its parameters")

    def receipt_facts(self) -> dict[str, Any]:
        """What this runner adds to the receipt beyond the loop's record (its data-parallel group's too)."""
        facts: dict[str, Any] = {"framework": self.framework}
        if self.parallel is not None:
            facts["distributed"] = self.parallel.record()
        return facts


class BackendRunner(BaseRunner):
    """A runner whose device, transfers and synchronisation are a backend's (:mod:`yat_core.backends`).

    Subclasses set :attr:`backend` in ``__init__``.
    """

    backend: Backend

    def device_name(self) -> str:
        return self.backend.device_name()

    def put(self, a: np.ndarray) -> Any:
        return self.backend.asarray(a)

    def synchronize(self, tree: Any) -> None:
        self.backend.synchronize(tree)

    def to_numpy(self, value: Any) -> np.ndarray:
        # The backend's copy: np.asarray alone cannot read a CUDA tensor.
        return np.asarray(self.backend.to_numpy(value))
