"""PyTorch's native model of any spec trained by ``torch.optim.AdamW`` (``yat-core train --framework torch``)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import array_api_compat.torch as torch_xp
import numpy as np
import torch
import torch.nn.functional as F

from yat_core.backends.torch import TorchBackend
from yat_core.mlp import ModelSpec, flatten_images
from yat_core.nn.torch import build_model, count_params, export_params
from yat_core.runners._base import BackendRunner

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = ["TorchRunner", "RUNNER_CLASS"]


class TorchRunner(BackendRunner):
    """Trains the :class:`~yat_core.nn.torch.YatModel` of any spec with ``torch.optim.AdamW``, eagerly
    (PyTorch's default idiom).

    The device is resolved as the torch backend resolves it (CUDA when present). The
    uint8 images become flat floats in [0, 1] (:func:`~yat_core.mlp.flatten_images`),
    which the model reshapes to its input (``(n, 1, 28, 28)`` for the CNN).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> from yat_core.config import TrainConfig
    >>> runner = TorchRunner(seed_spec(), TrainConfig(framework="torch", device="cpu"))
    >>> runner.name, runner.distributions, runner.n_params(), runner.device_name()
    ('torch', ('torch',), 235148, 'cpu')
    >>> from yat_core.spec import cnn_spec
    >>> TorchRunner(cnn_spec(), TrainConfig(model="cnn", framework="torch", device="cpu")).n_params()
    225037
    """

    name = "torch"
    framework = "torch"
    distributions = ("torch",)

    def __init__(self, spec: ModelSpec, config: TrainConfig) -> None:
        self.spec = spec
        self.backend = TorchBackend(config.device)
        self.dtype = getattr(torch, config.dtype)
        self.model = build_model(spec, config.seed, device=self.backend.torch_device, dtype=self.dtype)
        opt = config.optimizer
        # AdamW decays every parameter passed to it: all of them, as the core does.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps, weight_decay=opt.weight_decay
        )
        # Several processes (torchrun): the model trains under DistributedDataParallel (yat_core.parallel.torch).
        group = self.parallel = self.backend.data_parallel()
        self._parallel_step = (
            None
            if group is None
            else functools.partial(group.module_step, group.wrap_module(self.model), self.optimizer, self._inputs)
        )

    def n_params(self) -> int:
        return count_params(self.model)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return flatten_images(images, self.dtype, xp=torch_xp)

    def step(self, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        self.model.train()
        if self._parallel_step is not None:
            return self._parallel_step(images, labels, idx)
        x = self._inputs(torch.index_select(images, 0, idx))
        y = torch.index_select(labels, 0, idx).long()
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        with torch.no_grad():
            logits = self.model(self._inputs(images))
            loss_sum = F.cross_entropy(logits, labels.long(), reduction="sum")
            correct = (logits.argmax(dim=-1) == labels.long()).sum()
        return loss_sum, correct

    def export_params(self) -> dict[str, np.ndarray]:
        return export_params(self.model)


RUNNER_CLASS = TorchRunner
