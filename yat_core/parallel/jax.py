"""Data-parallel training on JAX: a 1-D device mesh, its shardings, the device count, ``jax.distributed``.

``yat-core train --devices N`` (``TrainConfig.devices``) trains the jax backend, the
Flax runners and Keras (on jax) with every batch split over ``N`` devices of each
process: parameters, optimizer state and the training data replicated on every
device, the gathered batch sharded along :data:`DATA_AXIS`, and the gradient's
all-reduce inserted by XLA (GSPMD). The arithmetic is the single device's, summed in
another order.

JAX fixes its devices when its backend starts, so :func:`set_up` runs before the
runner is built (:func:`yat_core.train.train` calls it): on CPU it asks for ``N``
host devices (``jax_num_cpu_devices``) and refuses when JAX already started with
fewer. Several processes (on one machine or many) join with
:func:`initialize_processes` (``jax.distributed.initialize``) before that; the mesh
then spans the devices of every process, each process holds the full data and the
same batch order, and process 0 alone reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from yat_core.errors import BackendUnavailableError

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = ["DATA_AXIS", "DataParallel", "set_up", "current", "initialize_processes"]

#: The mesh axis the batch is split along.
DATA_AXIS = "data"

# The plan of the runner being built: set by set_up, read by JaxBackend and the Keras runner.
_PLAN: dict[str, DataParallel | None] = {"plan": None}


@dataclass(eq=False)  # hashed by identity: a static argument of the Flax runners' jitted steps
class DataParallel:
    """A 1-D mesh over the devices that share each batch, and the shardings of what lives on it.

    A runner's data-parallel group (:class:`~yat_core.runners._base.DataParallelGroup`):
    process ``rank`` 0 reports.

    Examples
    --------
    >>> import jax
    >>> plan = DataParallel.over(jax.devices()[:1])
    >>> plan.record()
    {'devices': 1, 'local_devices': 1, 'processes': 1, 'mesh': {'data': 1}, 'platform': 'cpu'}
    >>> x = plan.put(np.arange(6, dtype=np.float32).reshape(3, 2))
    >>> x.sharding.is_fully_replicated
    True
    """

    mesh: Mesh
    rank: int = 0  #: this process's index (``jax.process_index()``)
    #: The compiled steps all-reduce on the devices (GSPMD): chunked steps stay as they are.
    host_collectives = False

    @classmethod
    def over(cls, devices: list[Any]) -> DataParallel:
        """The plan of a mesh over ``devices``, in that order."""
        return cls(Mesh(np.array(devices), (DATA_AXIS,)), jax.process_index())

    @property
    def replicated(self) -> NamedSharding:
        """Parameters, optimizer state and data: a full copy on every device."""
        return NamedSharding(self.mesh, P())

    @property
    def batch(self) -> NamedSharding:
        """A batch: its first axis split over the devices."""
        return NamedSharding(self.mesh, P(DATA_AXIS))

    @property
    def first_device(self) -> Any:
        """This process's first device of the mesh (the one named in receipts)."""
        return next(d for d in self.mesh.devices.flat if d.process_index == self.rank)

    def put(self, a: np.ndarray) -> jax.Array:
        """A host array replicated on every device of the mesh (every process passes the same array).

        Built shard by shard from the host copy, which works when the mesh spans
        devices of other processes too (``jax.device_put`` of a host array may not).
        """
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, self.replicated, lambda index: a[index])

    def put_tree(self, tree: Any) -> Any:
        """Every array of ``tree`` replicated on the mesh (model and optimizer state)."""
        # Through jnp first: a Python scalar leaf (a step counter) keeps JAX's dtype, not NumPy's int64.
        return jax.tree.map(lambda leaf: self.put(np.asarray(jnp.asarray(leaf))), tree)

    def shard_batch(self, x: jax.Array) -> jax.Array:
        """Inside a jitted step: split ``x`` along its first axis over the mesh.

        A batch that does not divide evenly (the last partial one) is padded by XLA;
        the padding takes no part in the result.
        """
        return jax.lax.with_sharding_constraint(x, self.batch)

    def epoch_finished(self, epoch_s: float) -> None:
        """Nothing to gather: the devices step together inside each compiled call."""

    def record(self) -> dict[str, Any]:
        """The receipt's ``"distributed"`` entry: devices in all, per process, processes, mesh shape."""
        n = int(self.mesh.devices.size)
        processes = len({d.process_index for d in self.mesh.devices.flat})
        return {
            "devices": n,
            "local_devices": n // processes,
            "processes": processes,
            "mesh": {DATA_AXIS: n},
            "platform": self.first_device.platform,
        }


def current() -> DataParallel | None:
    """The plan :func:`set_up` made for the runner being built; None for one device in one process."""
    return _PLAN["plan"]


def initialize_processes(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join ``num_processes`` JAX processes through the coordinator at ``coordinator`` (``HOST:PORT``).

    Process 0 runs the coordinator there; every process calls this with the same
    address and count and its own ``process_id``, before JAX computes anything. On
    CPU the processes' collectives go through gloo.
    """
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator must be HOST:PORT (process 0's address), got {coordinator!r}")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id must be in 0..{num_processes - 1} for {num_processes} processes, got {process_id}"
        )
    if jax.distributed.is_initialized():
        raise BackendUnavailableError("jax.distributed is already initialised in this process")
    # gloo is the default in current JAX; named so that an older default (none: no collectives) cannot bite.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    except RuntimeError as exc:
        raise BackendUnavailableError(
            f"jax.distributed could not start (call it before JAX computes anything): {exc}"
        ) from None


def set_up(config: TrainConfig) -> DataParallel | None:
    """Make the devices ``config.devices`` asks for and the plan of the runner about to be built.

    One device in one process: nothing changes (None). Otherwise the mesh holds the
    first ``config.devices`` devices of every process (of the ``--device`` platform,
    e.g. ``cpu`` on a GPU machine).

    Raises
    ------
    BackendUnavailableError
        JAX already started with fewer devices, or the machine has fewer.
    """
    config.validate()  # refuses --devices for runs not on JAX
    n = config.devices
    if n == 1 and not jax.distributed.is_initialized():
        _PLAN["plan"] = None
        return None
    platform = _platform(config.device)
    try:
        # Only takes effect before JAX's backend starts; the same value again is accepted.
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass  # started already: the count check below says whether it has enough
    try:
        local = sorted(jax.local_devices(backend=platform), key=lambda d: d.id)
    except RuntimeError as exc:
        raise BackendUnavailableError(f"jax has no {config.device!r} devices here: {exc}") from None
    if len(local) < n:
        started = ""
        if local[0].platform == "cpu":
            started = (
                "; JAX started before --devices could take effect: set it before any JAX computation "
                f"(a fresh process, or JAX_NUM_CPU_DEVICES={n} in the environment)"
            )
        raise BackendUnavailableError(
            f"--devices {n}: this process has {len(local)} {local[0].platform} device(s){started}"
        )
    # Every process lists the same devices in the same order: process by process, n each.
    by_process: dict[int, list[Any]] = {}
    for device in sorted(jax.devices(local[0].platform), key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(device.process_index, []).append(device)
    plan = DataParallel.over([d for p in sorted(by_process) for d in by_process[p][:n]])
    _PLAN["plan"] = plan
    return plan


def _platform(device: str | None) -> str | None:
    if device is None:
        return None
    kind, _, index = device.partition(":")
    if index:
        raise BackendUnavailableError(
            f"--device {device!r} names one device; with --devices give the platform alone (e.g. --device cpu)"
        )
    return {"cuda": "gpu"}.get(kind, kind)
