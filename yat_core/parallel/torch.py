"""Data-parallel training on ``torch.distributed``: one process per device, launched by ``torchrun``.

``torchrun --nproc-per-node N [--nnodes M ...] -m yat_core train --backend torch ...``
(or ``--framework torch``) starts ``N`` processes per machine; each joins the process
group from torchrun's environment (:func:`yat_core.parallel.torchrun_launch`): gloo on
CPU, NCCL on CUDA, where rank ``r`` trains on ``cuda:LOCAL_RANK``. Every process holds
the whole data set and draws the same batch order (:func:`yat_core.train.batch_order`),
so no sample travels: each step, rank ``r`` takes its contiguous part of the global
batch (:meth:`TorchDataParallel.shard`), and the gradients are summed weighted by each
part's size, which gives the global batch's mean gradient: the single process's
numbers, summed in another order.

- The core on the torch backend (``--backend torch``): the step is split into a
  compiled gradient and a compiled AdamW update, with one all-reduce of the weighted
  gradients and loss between them (:meth:`TorchDataParallel.train_step`).
- The PyTorch framework (``--framework torch``): the model is wrapped in
  ``DistributedDataParallel``, which all-reduces the gradients during the backward
  pass (:meth:`TorchDataParallel.module_step`).

The reported loss of each step is the global batch's mean on every rank; each rank
evaluates the whole test set with the same parameters, so every rank's accuracy is the
single process's. Rank 0 alone prints and writes; the receipt's ``"distributed"``
entry (:meth:`TorchDataParallel.record`) holds every rank's epoch seconds.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from yat_core.errors import BackendUnavailableError
from yat_core.parallel import TorchrunLaunch, torchrun_launch

__all__ = ["TorchDataParallel", "rank_device", "shard_bounds"]

Params = dict[str, Any]


def rank_device(device: str | None) -> str | None:
    """The device this process trains on: under torchrun, CUDA is ``cuda:LOCAL_RANK``.

    Outside a torchrun launch, or for an explicit index (``cuda:1``) or another device
    type, ``device`` is returned unchanged.

    Examples
    --------
    >>> rank_device("cpu")
    'cpu'
    """
    launch = torchrun_launch()
    if launch is None:
        return device
    if device is None:
        return f"cuda:{launch.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{launch.local_rank}"
    return device


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous part of a batch of ``n``: as even as can be,
    the first ``n % world_size`` ranks one sample more.

    Examples
    --------
    >>> [shard_bounds(128, 2, r) for r in range(2)]
    [(0, 64), (64, 128)]
    >>> [shard_bounds(5, 3, r) for r in range(3)]
    [(0, 2), (2, 4), (4, 5)]
    >>> shard_bounds(1, 2, 1)
    (1, 1)
    """
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class TorchDataParallel:
    """This process's membership in a torchrun launch: the process group and what it communicates.

    Build it with :meth:`from_launch`; it joins the default process group (or uses
    the one the program already initialised).
    """

    #: Gradients are all-reduced between the compiled gradient and update (one step per call).
    host_collectives = True

    def __init__(self, device: torch.device, launch: TorchrunLaunch) -> None:
        self.device = device
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            if self.backend == "nccl":
                torch.cuda.set_device(device)
            dist.init_process_group(self.backend, device_id=device if device.type == "cuda" else None)
            atexit.register(_destroy)
        else:
            self.backend = str(dist.get_backend())
        if (dist.get_rank(), dist.get_world_size()) != (launch.rank, launch.world_size):
            raise BackendUnavailableError(
                f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, but torchrun set "
                f"RANK={launch.rank} WORLD_SIZE={launch.world_size}"
            )
        self.rank, self.world_size, self.local_rank = launch
        #: ``epoch_s[e][r]``: rank ``r``'s seconds for epoch ``e + 1`` (gathered on every rank).
        self.epoch_s: list[list[float]] = []

    @classmethod
    def from_launch(cls, device: torch.device) -> TorchDataParallel | None:
        """The data-parallel group of this process when torchrun launched it, else None."""
        launch = torchrun_launch()
        return None if launch is None else cls(device, launch)

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's part of the global batch ``idx``, and its share of the batch (count / total)."""
        n = int(idx.shape[0])
        start, stop = shard_bounds(n, self.world_size, self.rank)
        return idx[start:stop], (stop - start) / n

    def all_reduce_weighted(self, loss: torch.Tensor, grads: Params, share: float) -> tuple[torch.Tensor, Params]:
        """The sum over ranks of ``share *`` (loss, grads): the global batch's mean loss and gradient.

        One all-reduce of one flat buffer (one collective's latency per step, not one per parameter).
        """
        parts = [loss.reshape(1), *(g.reshape(-1) for g in grads.values())]
        flat = torch.cat(parts) * share
        dist.all_reduce(flat)
        pieces = torch.split(flat, [p.numel() for p in parts])
        reduced = {name: piece.view_as(g) for (name, g), piece in zip(grads.items(), pieces[1:])}
        return pieces[0].reshape(()), reduced

    def train_step(self, gradient: Callable[..., Any], update: Callable[..., Any]) -> Callable[..., Any]:
        """The core's step from its compiled halves, with the all-reduce between them.

        ``gradient(params, images, labels, idx) -> (mean loss, grads)`` runs on this
        rank's part of the batch (a rank whose part is empty, in a last batch smaller than
        the world, contributes zeros); ``update(grads, state, params) -> (params, state)``
        is the AdamW update, identical on every rank.
        """

        def step(params: Params, state: Any, images: Any, labels: Any, idx: torch.Tensor) -> Any:
            local, share = self.shard(idx)
            if local.shape[0]:
                loss, grads = gradient(params, images, labels, local)
            else:  # the mean over no samples is NaN; this rank's share is zero
                grads = {k: torch.zeros_like(v) for k, v in params.items()}
                loss = torch.zeros((), dtype=next(iter(grads.values())).dtype, device=self.device)
            loss, grads = self.all_reduce_weighted(loss, grads, share)
            params, state = update(grads, state, params)
            return params, state, loss

        return step

    def wrap_module(self, model: torch.nn.Module) -> DistributedDataParallel:
        """``model`` under ``DistributedDataParallel`` (rank 0's parameters broadcast to every rank)."""
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)

    def module_step(
        self,
        module: DistributedDataParallel,
        optimizer: torch.optim.Optimizer,
        inputs: Callable[[torch.Tensor], torch.Tensor],
        images: torch.Tensor,
        labels: torch.Tensor,
        idx: torch.Tensor,
    ) -> torch.Tensor:
        """One step of a native model under DDP on this rank's part of ``idx``; returns the global mean loss.

        DDP averages the gradients over ranks, so each rank back-propagates its summed
        loss times ``world_size / n``: the average is then the mean over the ``n`` samples
        of the global batch, however they are split (an empty part adds zeros).
        """
        n = int(idx.shape[0])
        local, _ = self.shard(idx)
        m = int(local.shape[0])
        rows = local if m else idx[:1]  # an empty part: flattening cannot infer the width of no rows
        x = inputs(torch.index_select(images, 0, rows))[:m]
        y = torch.index_select(labels, 0, rows).long()[:m]
        loss_sum = F.cross_entropy(module(x), y, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        (loss_sum * (self.world_size / n)).backward()
        optimizer.step()
        loss = loss_sum.detach() / n
        dist.all_reduce(loss)
        return loss

    def epoch_finished(self, epoch_s: float) -> None:
        """Gather every rank's seconds for the epoch just finished (every rank calls this)."""
        mine = torch.tensor([epoch_s], dtype=torch.float64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        self.epoch_s.append([float(t.item()) for t in every])

    def record(self) -> dict[str, Any]:
        """The receipt's ``"distributed"`` entry.

        ``rank_timings[r]`` lists rank ``r``'s seconds per epoch.
        """
        return {
            "launcher": "torchrun",
            "world_size": self.world_size,
            "backend": self.backend,
            "rank_timings": [[epoch[r] for epoch in self.epoch_s] for r in range(self.world_size)],
        }


def _destroy() -> None:
    # At exit, so NCCL and gloo shut down cleanly instead of warning from their destructors.
    if dist.is_initialized():
        dist.destroy_process_group()
