"""Training beyond one device: data parallel and sharding (:mod:`yat_core.parallel.jax`, :mod:`yat_core.parallel.torch`).

- :mod:`yat_core.parallel.torch`: data parallel on ``torch.distributed`` for the torch
  backend and the PyTorch framework, one process per device, launched by ``torchrun``;
- :mod:`yat_core.parallel.jax`: a device mesh for the jax backend, Flax and Keras
  (``--devices N``), and ``jax.distributed`` across processes.

This package imports no framework: :func:`torchrun_launch` reads the launcher's
environment, so the command line can refuse a backend that cannot join a torchrun
launch without importing torch.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["TorchrunLaunch", "torchrun_launch", "TORCHRUN_VARIABLES", "free_port"]

#: What ``torchrun`` sets in every process it starts (``env://`` initialisation reads them).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class TorchrunLaunch(NamedTuple):
    """This process's place in a torchrun launch: global rank, number of processes, rank on its machine."""

    rank: int
    world_size: int
    local_rank: int


def torchrun_launch(environ: Mapping[str, str] | None = None) -> TorchrunLaunch | None:
    """The launch ``torchrun`` started this process in, or None when it did not.

    A launch is recognised by ``WORLD_SIZE``; the other variables of
    :data:`TORCHRUN_VARIABLES` must then be set too, and consistent.

    Raises
    ------
    ValueError
        For a partial or inconsistent set of variables, naming them.

    Examples
    --------
    >>> torchrun_launch({}) is None
    True
    >>> env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    >>> torchrun_launch(env)
    TorchrunLaunch(rank=1, world_size=2, local_rank=1)
    >>> torchrun_launch({"WORLD_SIZE": "2"})
    Traceback (most recent call last):
    ...
    ValueError: WORLD_SIZE is set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not: launch data-parallel training with torchrun (python -m torch.distributed.run), which sets them all
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in env]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: launch "
            "data-parallel training with torchrun (python -m torch.distributed.run), which sets them all"
        )
    try:
        rank, world_size, local_rank = (int(env[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        values = ", ".join(f"{name}={env[name]!r}" for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        raise ValueError(f"torchrun's variables must be integers, got {values}") from None
    if not (world_size >= 1 and 0 <= rank < world_size and 0 <= local_rank <= rank):
        raise ValueError(
            f"inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} "
            "(0 <= LOCAL_RANK <= RANK < WORLD_SIZE)"
        )
    return TorchrunLaunch(rank, world_size, local_rank)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now: for a coordinator or ``--master-port`` of processes on one machine.

    Another program may take it before it is used; for a local launch that race is rare.

    Examples
    --------
    >>> 0 < free_port() < 65536
    True
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
