"""FLOP count of the model's matrix multiplies: the work no implementation can skip.

Only the matrix multiplies are counted (the element-wise work of the Yat layer is
O(batch * out) per layer, small next to O(batch * in * out)). Per sample and layer
of shape ``in -> out``:

- forward: ``2 * in * out`` (one ``x @ W.T``; the Yat layer's distance reuses it);
- backward: the weight gradient ``2 * in * out`` for every layer, and the input
  gradient ``2 * in * out`` for every layer but the first (nothing needs the
  gradient of the pixels).

For the seed model this is 469.5 kFLOP forward and 1.007 MFLOP per sample in all,
60.4 GFLOP per MNIST epoch (DESIGN.md, section 4).
"""

from __future__ import annotations

from typing import NamedTuple

from yat_core.mlp import MLPSpec

__all__ = ["MatmulShape", "forward_flops_per_sample", "train_flops_per_sample", "epoch_flops", "step_matmuls"]


class MatmulShape(NamedTuple):
    """One ``(m, k) @ (k, n)`` product."""

    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two FLOPs."""
        return 2 * self.m * self.k * self.n


def forward_flops_per_sample(spec: MLPSpec) -> int:
    """FLOPs of one sample's forward pass.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> forward_flops_per_sample(seed_spec())
    469504
    """
    return sum(2 * layer.in_features * layer.out_features for layer in spec.layers)


def train_flops_per_sample(spec: MLPSpec) -> int:
    """FLOPs of one sample's forward and backward pass.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> train_flops_per_sample(seed_spec())
    1007104
    """
    forward = forward_flops_per_sample(spec)
    input_grads = sum(2 * layer.in_features * layer.out_features for layer in spec.layers[1:])
    return 2 * forward + input_grads


def epoch_flops(spec: MLPSpec, n_samples: int = 60_000) -> int:
    """FLOPs of one training epoch over ``n_samples`` images (60,000 for MNIST).

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> round(epoch_flops(seed_spec()) / 1e9, 1)
    60.4
    """
    return n_samples * train_flops_per_sample(spec)


def step_matmuls(spec: MLPSpec, batch: int) -> list[MatmulShape]:
    """The matrix products of one training step at ``batch``, in the order they run.

    Their FLOPs add up to ``batch * train_flops_per_sample(spec)``.

    Examples
    --------
    >>> from yat_core.mlp import seed_spec
    >>> spec = seed_spec()
    >>> sum(s.flops for s in step_matmuls(spec, 128)) == 128 * train_flops_per_sample(spec)
    True
    """
    forward = [MatmulShape(batch, layer.in_features, layer.out_features) for layer in spec.layers]
    backward: list[MatmulShape] = []
    for i in reversed(range(len(spec.layers))):
        layer = spec.layers[i]
        # dW = g.T @ h: (out, batch) @ (batch, in)
        backward.append(MatmulShape(layer.out_features, batch, layer.in_features))
        if i > 0:
            # dh = g @ W: (batch, out) @ (out, in)
            backward.append(MatmulShape(batch, layer.out_features, layer.in_features))
    return forward + backward
