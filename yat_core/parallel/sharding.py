"""Model sharding: Yat dense and convolution layers split along output features, attention along heads.

One output feature of a Yat layer needs its kernel row ``w_j`` for both the dot
``x . w_j`` and the norm ``|w_j|^2`` of its distance, and nothing from the other rows.
Split along the output features, every device computes whole outputs from its own rows
and a full copy of the input: the communication is a column-parallel linear layer's
(gather the outputs; in the backward pass, sum the input's gradient), nothing more. A
convolution splits the same way along its output channels; multi-head attention along
its heads (the query, key and value projections by output rows, the output projection
by input columns, whose partial sums are added up).

The layout rule is written once, framework-neutral (:func:`shard_axes`), and applied

- on JAX (:func:`jax_param_shardings`, :func:`jax_shard_params`): a
  :class:`jax.sharding.NamedSharding` for every parameter of the core's model
  (:func:`yat_core.mlp.init_mlp_numpy`'s dict); the jitted
  :func:`yat_core.mlp.mlp_forward` and its gradient then run sharded, XLA (GSPMD)
  placing the collectives;
- on PyTorch (:func:`torch_shard_module`): the parameters of the native layers of
  :mod:`yat_core.nn.torch` become ``DTensor`` s on a 1-D ``DeviceMesh``, and each layer
  computes on its local shard with its own forward (the core's function), its output
  gathered for the next layer.

A layer whose split does not divide evenly (a 10-class output layer on 4 devices,
heads not a multiple of the devices), a grouped convolution and a position table stay
whole (replicated); so do the scalars ``alpha`` and ``epsilon_raw``.

Frameworks are imported only by the functions that need them.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from yat_core.spec import ATTENTION_KINDS, CONV_KINDS, LayerSpec, ModelSpec

if TYPE_CHECKING:
    import torch
    from jax.sharding import Mesh, NamedSharding
    from torch.distributed.device_mesh import DeviceMesh

__all__ = ["MODEL_AXIS", "shard_axes", "jax_param_shardings", "jax_shard_params", "torch_shard_module"]

#: The default name of the mesh axis the model is split along.
MODEL_AXIS = "model"


def _splits(layer: LayerSpec, n: int) -> bool:
    # Whether the layer is split over n devices (see the module's docstring for what stays whole).
    if layer.kind in ATTENTION_KINDS:
        return layer.heads % n == 0
    if layer.kind in CONV_KINDS:
        return layer.groups == 1 and layer.out_features % n == 0
    return layer.kind in ("yat", "linear") and layer.out_features % n == 0


def _layer_axes(layer: LayerSpec, n: int) -> dict[str, int | None]:
    """The split axis of each of ``layer``'s parameters (unprefixed names), None where it stays whole."""
    split = _splits(layer, n)
    axes: dict[str, int | None] = {}
    for name, shape in layer.param_shapes.items():
        if not split or not shape:
            axes[name] = None
        elif layer.kind in ATTENTION_KINDS:
            # q, k, v: output rows (contiguous blocks of heads); o: its input columns; o's bias is added once.
            axes[name] = 1 if name == "o_kernel" else None if name == "o_bias" else 0
        elif name == "kernel" and layer.kind == "yat_conv_transpose":
            axes[name] = 1  # kernel (in, out, *k): the output channels are its second axis
        else:
            axes[name] = 0
    return axes


def shard_axes(spec: ModelSpec, n: int) -> dict[str, int | None]:
    """The axis along which each of the model's parameters is split over ``n`` devices (None: whole).

    Names and layouts are the core's (:attr:`yat_core.spec.ModelSpec.param_shapes`):
    dense kernels ``(out, in)`` and convolution kernels ``(out, in, *k)`` split along
    axis 0 with their biases, transposed convolution kernels ``(in, out, *k)`` along
    axis 1; attention's ``q``/``k``/``v`` kernels and biases along axis 0 (blocks of
    heads), ``o_kernel`` along axis 1. What cannot split evenly stays whole.

    Raises
    ------
    ValueError
        When ``n`` is not a positive integer.

    Examples
    --------
    >>> from yat_core.spec import seed_spec
    >>> shard_axes(seed_spec(), 2)
    {'0.kernel': 0, '0.bias': 0, '0.alpha': None, '1.kernel': 0, '1.bias': 0, '1.alpha': None, '2.kernel': 0, '2.bias': 0}
    >>> shard_axes(seed_spec(), 4)["2.kernel"] is None  # 10 classes on 4 devices: the output layer stays whole
    True
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of devices to split the model over must be an integer >= 1, got {n!r}")
    return {f"{i}.{name}": axis for i, layer in enumerate(spec.layers) for name, axis in _layer_axes(layer, n).items()}


# ---------------------------------------------------------------- JAX


def jax_param_shardings(spec: ModelSpec, mesh: Mesh, axis: str = MODEL_AXIS) -> dict[str, NamedSharding]:
    """A :class:`~jax.sharding.NamedSharding` for each parameter of ``spec``'s core model, split along ``axis``.

    The keys are :func:`yat_core.mlp.init_mlp_numpy`'s; pass the dict to
    :func:`jax.device_put` with the parameters (:func:`jax_shard_params` does), or use it
    as a jitted function's ``in_shardings``. Other axes of ``mesh`` (a data axis) hold
    full copies.

    The axis must be of type ``Auto`` (XLA places the collectives), as
    ``jax.sharding.Mesh(devices, ("model",))`` makes it; ``jax.make_mesh`` makes
    ``Explicit`` axes unless given ``axis_types=(jax.sharding.AxisType.Auto,)``.

    Raises
    ------
    ValueError
        When ``mesh`` has no axis ``axis``, or an ``Explicit`` one.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from jax.sharding import Mesh
    >>> from yat_core.spec import seed_spec
    >>> mesh = Mesh(np.array(jax.devices()[:1]), ("model",))
    >>> shardings = jax_param_shardings(seed_spec(), mesh)
    >>> shardings["0.kernel"].spec, shardings["0.alpha"].spec
    (P('model', None), P())
    """
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    if axis not in mesh.shape:
        raise ValueError(f"the mesh has no axis {axis!r} to split the model along (its axes: {tuple(mesh.shape)})")
    axis_type = dict(zip(mesh.axis_names, mesh.axis_types))[axis]
    if axis_type != AxisType.Auto:
        raise ValueError(
            f"the mesh axis {axis!r} is {axis_type}: the model is split on an Auto axis, where XLA places the "
            "collectives; build the mesh with jax.sharding.Mesh(devices, axis_names) or "
            "jax.make_mesh(..., axis_types=(jax.sharding.AxisType.Auto, ...))"
        )
    shapes = spec.param_shapes
    out = {}
    for name, split in shard_axes(spec, int(mesh.shape[axis])).items():
        parts: list[str | None] = [None] * len(shapes[name])
        if split is not None:
            parts[split] = axis
        out[name] = NamedSharding(mesh, P(*parts))
    return out


def jax_shard_params(params: dict[str, Any], spec: ModelSpec, mesh: Mesh, axis: str = MODEL_AXIS) -> dict[str, Any]:
    """``params`` (the core's dict, NumPy or JAX arrays) placed on ``mesh`` by :func:`jax_param_shardings`.

    Raises
    ------
    ValueError
        When the names of ``params`` are not those of ``spec``'s model.

    Examples
    --------
    >>> import jax
    >>> from yat_core.mlp import init_mlp_numpy
    >>> from yat_core.spec import seed_spec
    >>> from jax.sharding import Mesh
    >>> mesh = Mesh(jax.devices()[:1], ("model",))
    >>> params = jax_shard_params(init_mlp_numpy(seed_spec(), 0), seed_spec(), mesh)
    >>> params["0.kernel"].sharding.spec
    P('model', None)
    """
    import jax

    shardings = jax_param_shardings(spec, mesh, axis)
    if set(params) != set(shardings):
        missing, unknown = sorted(set(shardings) - set(params)), sorted(set(params) - set(shardings))
        raise ValueError(
            f"the parameters do not belong to this model spec: missing {missing}, unknown {unknown} "
            "(pass the dict init_mlp_numpy(spec, seed) gives, or one with the same names)"
        )
    return jax.device_put(params, {name: shardings[name] for name in params})


# ---------------------------------------------------------------- PyTorch


def _torch_layer_axes(module: Any, n: int) -> dict[str, int | None] | None:
    """The split axis of each parameter of a native layer (PyTorch's names), or None for a layer left as is."""
    from torch import nn

    from yat_core.nn import torch as ynn

    spec = getattr(module, "spec", None)
    if isinstance(module, ynn.YatMultiHeadAttention):
        if not _splits(module.spec, n):
            return None
        # in_proj_weight stacks q, k, v: each block is split along its rows (_distribute).
        return {"in_proj_weight": 0, "in_proj_bias": 0, "out_proj.weight": 1, "out_proj.bias": None}
    kinds = (ynn.YatNMN, ynn._YatConvNd, nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    if not isinstance(module, kinds) or not isinstance(spec, LayerSpec) or not _splits(spec, n):
        return None
    if spec.residual and not isinstance(module, ynn.YatNMN):
        return None  # PyTorch's own layers add the residual inside their forward, which sees only a shard
    attrs = {"kernel": "weight"}
    return {attrs.get(name, name): axis for name, axis in _layer_axes(spec, n).items()}


def _distribute(module: Any, axes: dict[str, int | None], mesh: DeviceMesh) -> None:
    """Turn the module's parameters into DTensors: split along ``axes``, whole where None."""
    import torch
    from torch import nn
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    for name, p in list(module.named_parameters()):
        owner = module.get_submodule(name.rpartition(".")[0])
        axis = axes.get(name)
        if name.startswith("in_proj"):
            # q, k, v stacked: each rank holds its heads' rows of each of the three blocks. DTensor's strided
            # shard (the three blocks split alike) says so, so full_tensor() and state_dict read PyTorch's order.
            placement: Any = _StridedShard(0, split_factor=3)
        else:
            placement = Replicate() if axis is None else Shard(axis)
        value = distribute_tensor(p.detach(), mesh, [placement])
        with torch.no_grad():
            owner.register_parameter(name.rpartition(".")[2], nn.Parameter(value, requires_grad=p.requires_grad))


def _local(p: torch.Tensor) -> torch.Tensor:
    """A DTensor parameter's local shard; a whole (replicated) one's gradient is each rank's partial sum."""
    from torch.distributed.tensor import Partial, Replicate

    whole = all(isinstance(pl, Replicate) for pl in p.placements)  # type: ignore[attr-defined, unused-ignore]
    return p.to_local(grad_placements=[Partial()] if whole else p.placements)  # type: ignore[attr-defined, unused-ignore]


def _replicated_input(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """``x`` (the same on every rank) as each rank's input; its gradient is summed over the ranks."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def _gathered(y: torch.Tensor, dim: int, mesh: DeviceMesh) -> torch.Tensor:
    """Each rank's slice of the output along ``dim``, gathered whole on every rank."""
    from torch.distributed.tensor import DTensor, Shard

    return DTensor.from_local(y, mesh, [Shard(dim % y.dim())], run_check=False).full_tensor()


def _layer_forward(module: Any, mesh: DeviceMesh) -> Any:
    """The forward of a split dense or convolution layer: its own forward on the local shard, gathered."""
    import torch
    from torch import nn
    from torch.distributed.tensor import DTensor

    from yat_core.nn import torch as ynn

    yat_dense = isinstance(module, ynn.YatNMN)
    # A residual Yat layer adds its input after the gather: its shard's forward is YatNMN's own.
    forward = types.MethodType(ynn.YatNMN.forward, module) if yat_dense else module.forward
    residual = isinstance(module, ynn._ResidualYatNMN)  # the model's residual Yat layer (its spec is the layer's)
    dim = -1 if yat_dense or isinstance(module, nn.Linear) else 1  # dense: features last; convolution: channels

    def sharded(self: Any, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.named_parameters())
        if not any(isinstance(p, DTensor) for p in params.values()):
            return forward(x)  # inside functional_call below: the local shards are in place
        local = {name: _local(p) for name, p in params.items()}
        y = _gathered(torch.func.functional_call(self, local, (_replicated_input(x, mesh),)), dim, mesh)
        return x + y if residual else y

    return types.MethodType(sharded, module)


def _attention_forward(module: Any, mesh: DeviceMesh) -> Any:
    """Self-attention split along the heads: this rank's heads, its share of the output projection, summed."""
    import torch.nn.functional as F
    from torch.distributed.tensor import DTensor, Partial

    from yat_core.attention import yat_attention
    from yat_core.nn import torch as ynn
    from yat_core.nn.options import forward_options

    def sharded(self: Any, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[0], x.shape[1]  # batched (N, T, E): the model's self-attention
        h = _replicated_input(x, mesh)
        w = _local(self.in_proj_weight).chunk(3)
        b = [None] * 3 if self.in_proj_bias is None else _local(self.in_proj_bias).chunk(3)
        heads = [F.linear(h, w[i], b[i]).reshape(n, t, -1, self.head_dim) for i in range(3)]
        options = forward_options(self._score_spec, lambda name: _local(getattr(self, name)), ynn.torch_xp)
        del options["bias"]
        a = yat_attention(*heads, **options, xp=ynn.torch_xp).reshape(n, t, -1)
        partial = F.linear(a, _local(self.out_proj.weight))
        out = DTensor.from_local(partial, mesh, [Partial()], run_check=False).full_tensor()
        if self.out_proj.bias is not None:  # whole on every rank: so is its gradient
            out = out + self.out_proj.bias.to_local()
        return x + out if getattr(self, "residual", False) else out

    return types.MethodType(sharded, module)


def torch_shard_module(module: torch.nn.Module, mesh: DeviceMesh) -> torch.nn.Module:
    """Split the native layers of ``module`` (:mod:`yat_core.nn.torch`) over a 1-D ``DeviceMesh``, in place.

    Every rank builds the same module (the same weights: :func:`yat_core.nn.torch.build_model`
    with one seed) and calls this; each splittable layer's parameters become
    ``DTensor`` s (``Shard`` along the output features, ``Replicate`` for the scalars
    and what stays whole, see :func:`shard_axes`) and the layer computes its outputs from
    its own shard by its own forward, then gathers them, so every rank holds the full
    activations and the rest of the model runs as before. Gradients land on the
    ``DTensor`` parameters (``p.grad.full_tensor()`` is the unsplit gradient); an
    optimizer steps them shard by shard.

    Covered: :class:`~yat_core.nn.torch.YatNMN` (residual or not), the Yat convolutions
    (``groups=1``), PyTorch's ``nn.Linear`` / ``nn.ConvNd`` of a spec (not residual ones,
    which add their input inside their own forward), and the model's Yat self-attention
    (split along the heads, no masks: the model's use); the softmax baseline's
    ``nn.MultiheadAttention`` stays whole. The input of each split layer must be the same
    on every rank.

    Dense layers would run on DTensors as they are; PyTorch's DTensor convolution rule
    assumes a whole kernel, so every split layer computes on its local shard instead, one
    path for all, the core's function unchanged.

    Raises
    ------
    ValueError
        When ``mesh`` is not one-dimensional, or ``module`` holds DTensors already (split once).

    Examples
    --------
    >>> import torch, torch.distributed as dist
    >>> from torch.distributed.device_mesh import init_device_mesh
    >>> from yat_core.nn.torch import build_model
    >>> from yat_core.spec import seed_spec
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> model = torch_shard_module(build_model(seed_spec(), 0), init_device_mesh("cpu", (1,)))
    >>> model[0].weight.placements, model(torch.zeros(2, 784)).shape
    ((Shard(dim=0),), torch.Size([2, 10]))
    >>> dist.destroy_process_group()
    """
    from torch.distributed.tensor import DTensor

    from yat_core.nn import torch as ynn

    if mesh.ndim != 1:
        raise ValueError(f"torch_shard_module splits over a 1-D DeviceMesh, got {mesh.ndim} dimensions")
    split = [name for name, p in module.named_parameters() if isinstance(p, DTensor)]
    if split:
        raise ValueError(
            f"the module holds DTensors already ({', '.join(split[:3])}, ...): split a module once, "
            "from the plain module every rank built"
        )
    n = mesh.size()
    for sub in list(module.modules()):
        axes = _torch_layer_axes(sub, n)
        if axes is None:
            continue
        attention = isinstance(sub, ynn.YatMultiHeadAttention)
        if attention and type(sub).forward is ynn.YatMultiHeadAttention.forward:
            raise ValueError(
                "torch_shard_module splits the self-attention of a model (build_model of a spec with "
                "'yat_attention'); a bare YatMultiHeadAttention(query, key, value) is not supported"
            )
        _distribute(sub, axes, mesh)
        # An attribute of the instance: the layer keeps its class, names and state_dict keys.
        sub.forward = _attention_forward(sub, mesh) if attention else _layer_forward(sub, mesh)
    return module
