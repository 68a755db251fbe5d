"""yat_core.parallel.sharding: layers split along output features (attention along heads) compute as unsplit.

The layout rule is checked here; the split computations run in subprocesses (two JAX
host devices; two PyTorch gloo processes), which run this file as a script and write
their measurements as JSON for the tests to judge. Each compares, on a layer of each
kind and on the seed MLP, the CNN and the ViT, the split forward and gradients with the
unsplit float32 ones and with the float64 path at the same weights (JAX: the core's
analytic gradients in NumPy; PyTorch: the module in float64): the split result may be
no further from float64 than twice the unsplit float32 error plus a few units of
float32 roundoff (:func:`_within_error`). The JAX worker also counts the collectives XLA
compiles for a split Yat layer and a split linear one; the PyTorch worker also takes two
AdamW steps on the split ViT.

Run one by hand: ``python tests/test_sharding.py jax OUT.json`` or ``... torch OUT.json``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from yat_core.parallel.sharding import shard_axes
from yat_core.spec import LayerSpec, ModelSpec, cnn_spec, seed_spec, vit_spec

F32_EPS = float(np.finfo(np.float32).eps)


def _layer_specs() -> dict[str, ModelSpec]:
    """One small model per split layer kind (each ends in features, as a model must)."""
    return {
        "yat": ModelSpec((LayerSpec("yat", 12, 8),)),
        "yat_conv": ModelSpec(
            (LayerSpec("yat_conv", 2, 4, kernel_size=(3, 3)), LayerSpec("flatten", 4, 64)), input_shape=(2, 6, 6)
        ),
        "yat_conv_transpose": ModelSpec(
            (LayerSpec("yat_conv_transpose", 2, 4, kernel_size=(3, 3)), LayerSpec("flatten", 4, 4 * 6 * 6)),
            input_shape=(2, 4, 4),
        ),
        "yat_attention": ModelSpec(
            (LayerSpec("yat_attention", 8, 8, heads=2), LayerSpec("token_mean", 8, 8)), input_shape=(5, 8)
        ),
    }


def _all_specs() -> dict[str, ModelSpec]:
    return {**_layer_specs(), "mlp": seed_spec(), "cnn": cnn_spec(), "vit": vit_spec()}


def _within_error(split: float, unsplit: float) -> bool:
    """The split result's error (relative to max(1, |float64|)) is within the unsplit float32 one's."""
    return split <= 2 * unsplit + 4 * F32_EPS


# ---------------------------------------------------------------- the layout rule


def test_dense_layers_split_along_output_features_and_scalars_stay_whole() -> None:
    axes = shard_axes(seed_spec(), 2)
    assert axes == {
        "0.kernel": 0,
        "0.bias": 0,
        "0.alpha": None,
        "1.kernel": 0,
        "1.bias": 0,
        "1.alpha": None,
        "2.kernel": 0,
        "2.bias": 0,
    }
    assert set(axes) == set(seed_spec().param_shapes)


def test_a_layer_that_does_not_divide_stays_whole() -> None:
    axes = shard_axes(seed_spec(), 4)  # 10 classes on 4 devices
    assert axes["2.kernel"] is None and axes["2.bias"] is None and axes["0.kernel"] == 0


def test_attention_splits_along_heads() -> None:
    axes = shard_axes(vit_spec(), 4)  # 4 heads
    assert [axes[f"3.{p}_kernel"] for p in "qkvo"] == [0, 0, 0, 1]
    assert [axes[f"3.{p}_bias"] for p in "qkvo"] == [0, 0, 0, None]
    assert axes["3.alpha"] is None and axes["2.table"] is None
    on_8 = shard_axes(vit_spec(), 8)  # 4 heads do not split over 8 devices: the layer stays whole
    assert all(v is None for k, v in on_8.items() if k.startswith("3."))


def test_convolutions_split_along_output_channels() -> None:
    specs = _layer_specs()
    assert shard_axes(specs["yat_conv"], 2) == {"0.kernel": 0, "0.bias": 0, "0.alpha": None}
    # Transposed kernel (in, out, *k): the output channels are axis 1.
    assert shard_axes(specs["yat_conv_transpose"], 2) == {"0.kernel": 1, "0.bias": 0, "0.alpha": None}
    grouped = ModelSpec((LayerSpec("yat_conv", 4, 4, kernel_size=(3, 3), groups=2), LayerSpec("flatten", 4, 16)),
                        input_shape=(4, 4, 4))  # fmt: skip
    assert shard_axes(grouped, 2)["0.kernel"] is None


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_the_device_count_must_be_a_positive_integer(n: Any) -> None:
    with pytest.raises(ValueError, match="integer >= 1"):
        shard_axes(seed_spec(), n)


def test_jax_refuses_a_mesh_without_the_axis_or_with_an_explicit_one() -> None:
    jax = pytest.importorskip("jax")
    from jax.sharding import AxisType, Mesh

    from yat_core.parallel.sharding import jax_param_shardings, jax_shard_params

    devices = np.array(jax.devices()[:1])
    with pytest.raises(ValueError, match="no axis 'model'"):
        jax_param_shardings(seed_spec(), Mesh(devices, ("data",)))
    with pytest.raises(ValueError, match="Auto axis"):
        jax_param_shardings(seed_spec(), Mesh(devices, ("model",), axis_types=(AxisType.Explicit,)))
    with pytest.raises(ValueError, match="missing"):
        jax_shard_params({"0.kernel": np.zeros((256, 784))}, seed_spec(), Mesh(devices, ("model",)))


# ---------------------------------------------------------------- split computations, in subprocesses


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[subprocess.Popen[str], Path]]]:
    """Both workers started at once (they overlap on two cores); each test waits for its own."""
    tmp = tmp_path_factory.mktemp("sharding")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = {}
    for kind in ("jax", "torch"):
        out = tmp / f"{kind}.json"
        cmd = [sys.executable, __file__, kind, str(out)]
        started[kind] = (
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            out,
        )
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _result(workers: dict[str, tuple[subprocess.Popen[str], Path]], kind: str) -> dict[str, Any]:
    proc, out = workers[kind]
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
    assert proc.returncode == 0 and out.exists(), (
        f"the {kind} sharding worker failed (reproduce: python tests/test_sharding.py {kind} OUT.json):\n{log[-4000:]}"
    )
    return dict(json.loads(out.read_text()))


def _check_case(name: str, case: dict[str, Any], world: int) -> None:
    spec = _all_specs()[name]
    axes = shard_axes(spec, world)
    shapes = spec.param_shapes
    for param, local in case["local_shapes"].items():
        axis = axes[param]
        expected = list(shapes[param])
        if axis is not None:
            expected[axis] //= world
        assert local == expected, f"{name}: {param} holds {local} on each device, expected {expected}"
    assert any(axes[p] is not None for p in case["local_shapes"]), f"{name}: nothing was split"
    for what, (split, unsplit) in case["errors"].items():
        assert _within_error(split, unsplit), (
            f"{name}: {what} split differs from float64 by {split:.3g} (relative), the unsplit float32 by "
            f"{unsplit:.3g}: beyond the error model"
        )


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_split_layers_and_models_compute_as_unsplit(
    framework: str, workers: dict[str, tuple[subprocess.Popen[str], Path]]
) -> None:
    pytest.importorskip(framework)
    result = _result(workers, framework)
    assert result["world"] == 2
    assert sorted(result["cases"]) == sorted(_all_specs())
    for name, case in result["cases"].items():
        _check_case(name, case, result["world"])
    if framework == "torch":  # an optimizer steps the split parameters as the unsplit ones
        for name, (split, unsplit) in result["adamw"].items():
            assert _within_error(split, unsplit), f"ViT after 2 AdamW steps: {name} {split:.3g} vs {unsplit:.3g}"
    if framework == "jax":
        # A Yat layer split along its outputs needs the collectives a linear layer needs, no more.
        comm = result["collectives"]
        assert comm["yat"] == comm["linear"], comm
        assert comm["yat"]["kept split"] == {} and comm["yat"]["gathered"] == {"all-gather": 1}, comm


# ---------------------------------------------------------------- the workers


def _rel_err(a: Any, ref: Any) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def _errors(split: dict[str, Any], unsplit: dict[str, Any], exact: dict[str, Any]) -> dict[str, list[float]]:
    """``{what: [split error, unsplit float32 error]}`` relative to the float64 values, for every array."""
    return {k: [_rel_err(split[k], exact[k]), _rel_err(unsplit[k], exact[k])] for k in exact}


def _data(spec: ModelSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.random((6, *spec.input_shape)).astype(np.float32), rng.integers(0, spec.n_classes, 6)


def _jax_collectives(jax: Any, mesh: Any) -> dict[str, dict[str, dict[str, int]]]:
    """The collectives XLA compiles for a split Yat layer and a split linear layer of the same shape."""
    import re

    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from yat_core.product import dense, yat_product

    def count(text: str) -> dict[str, int]:
        names = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
        found = {k: len(re.findall(rf"\b{k}(?:-start)?\(", text)) for k in names}
        return {k: v for k, v in found.items() if v}

    w = jax.device_put(jnp.ones((8, 12)), NamedSharding(mesh, P("model", None)))
    x = jax.device_put(jnp.ones((4, 12)), NamedSharding(mesh, P()))
    layers = {"yat": lambda w, x: yat_product(x, w, alpha=1.0), "linear": lambda w, x: dense(x, w)}
    out = {}
    for name, f in layers.items():
        compiled = {
            what: jax.jit(f, out_shardings=NamedSharding(mesh, spec)).lower(w, x).compile().as_text()
            for what, spec in (("kept split", P(None, "model")), ("gathered", P()))
        }
        grad = jax.jit(jax.grad(lambda w, x: jnp.sum(f(w, x) ** 2), argnums=(0, 1)))  # noqa: B023
        compiled["gradient"] = grad.lower(w, x).compile().as_text()
        out[name] = {what: count(text) for what, text in compiled.items()}
    return out


def _jax_worker() -> dict[str, Any]:
    import jax

    jax.config.update("jax_num_cpu_devices", 2)  # before JAX starts its backend
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from yat_core.losses import softmax_cross_entropy
    from yat_core.mlp import init_mlp_numpy, mlp_forward, mlp_value_and_grad
    from yat_core.parallel.sharding import jax_shard_params

    mesh = Mesh(np.array(jax.devices()[:2]), ("model",))
    rng = np.random.default_rng(0)
    cases = {}
    for name, spec in _all_specs().items():
        params = init_mlp_numpy(spec, 0)
        x, y = _data(spec, rng)

        def loss(p: Any, x: Any, spec: ModelSpec = spec, y: Any = y) -> Any:
            logits = mlp_forward(p, x, spec)
            return softmax_cross_entropy(logits, jnp.asarray(y)), logits

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))

        def run(p: Any, x: Any, step: Any = step) -> dict[str, np.ndarray]:
            (value, logits), grads = step(p, x)
            return {"loss": np.asarray(value), "logits": np.asarray(logits), **jax.tree.map(np.asarray, grads)}

        split_params = jax_shard_params(params, spec, mesh)
        split = run(split_params, jax.device_put(x, NamedSharding(mesh, P())))
        unsplit = run(jax.device_put(params, jax.devices()[0]), jnp.asarray(x))
        # The float64 path: the core's analytic gradients in NumPy (no second compile).
        params64 = {k: v.astype(np.float64) for k, v in params.items()}
        value, grads = mlp_value_and_grad(params64, x.astype(np.float64), y, spec)
        exact = {"loss": value, "logits": mlp_forward(params64, x.astype(np.float64), spec), **grads}
        cases[name] = {
            "local_shapes": {k: list(v.addressable_shards[0].data.shape) for k, v in split_params.items()},
            "errors": _errors(split, unsplit, exact),
        }
    return {"world": int(mesh.devices.size), "cases": cases, "collectives": _jax_collectives(jax, mesh)}


def _torch_rank(rank: int, world: int, port: int, out: str) -> None:
    import copy

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from yat_core.nn import torch as ynn
    from yat_core.parallel.sharding import torch_shard_module

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    rng = np.random.default_rng(0)  # the same draws on every rank
    cases = {}
    for name, spec in _all_specs().items():
        x_np, _ = _data(spec, rng)
        model = ynn.build_model(spec, 0)

        def run(m: Any, dtype: Any, x_np: np.ndarray = x_np) -> dict[str, np.ndarray]:
            x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
            out = m(x)
            g = torch.tensor(np.random.default_rng(1).standard_normal(tuple(out.shape)), dtype=dtype)
            (out * g).sum().backward()  # the vector-Jacobian product with a fixed cotangent
            grads = {
                n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().numpy()
                for n, p in m.named_parameters()
            }
            assert x.grad is not None
            return {"output": out.detach().numpy(), "input_grad": x.grad.numpy(), **grads}

        exact = run(copy.deepcopy(model).double(), torch.float64)
        split_model = torch_shard_module(copy.deepcopy(model), mesh)
        split = run(split_model, torch.float32)
        unsplit = run(model, torch.float32)
        local = {}
        for n, p in split_model.named_parameters():
            local_shape = list(p.to_local().shape) if hasattr(p, "to_local") else list(p.shape)
            local[n] = local_shape
        cases[name] = {"local_shapes": _core_names(spec, local), "errors": _errors(split, unsplit, exact)}
    result = {"world": world, "cases": cases, "adamw": _torch_adamw_steps(ynn, mesh)}
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def _torch_adamw_steps(ynn: Any, mesh: Any) -> dict[str, list[float]]:
    """Two AdamW steps of the ViT, split and unsplit in float32 and in float64: the errors of the parameters."""
    import copy

    import torch

    from yat_core.parallel.sharding import torch_shard_module

    model = ynn.build_model(vit_spec(), 0)
    models = {
        "split": torch_shard_module(copy.deepcopy(model), mesh),
        "unsplit": model,
        "exact": copy.deepcopy(model).double(),
    }
    rng = np.random.default_rng(2)
    x_np, y_np = rng.random((4, 1, 28, 28)), rng.integers(0, 10, 4)
    params = {}
    for what, m in models.items():
        dtype = torch.float64 if what == "exact" else torch.float32
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        for _ in range(2):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(torch.tensor(x_np, dtype=dtype)), torch.tensor(y_np)).backward()
            opt.step()
        params[what] = {
            n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().numpy() for n, p in m.named_parameters()
        }
    return _errors(params["split"], params["unsplit"], params["exact"])


def _core_names(spec: ModelSpec, local: dict[str, list[int]]) -> dict[str, list[int]]:
    """PyTorch's parameter names and local shapes as the core's (``in_proj_weight`` holds q, k and v)."""
    out = {}
    for torch_name, shape in local.items():
        index, _, attr = torch_name.partition(".")
        if attr in ("in_proj_weight", "in_proj_bias"):
            third = [shape[0] // 3, *shape[1:]]
            for p in "qkv":
                out[f"{index}.{p}_{'kernel' if attr.endswith('weight') else 'bias'}"] = third
        elif attr.startswith("out_proj."):
            out[f"{index}.o_{'kernel' if attr.endswith('weight') else 'bias'}"] = shape
        else:
            out[f"{index}.{'kernel' if attr == 'weight' else attr}"] = shape
    assert set(out) == set(spec.param_shapes), (sorted(out), sorted(spec.param_shapes))
    return out


def _torch_worker(out: str) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_torch_rank, args=(2, port, out), nprocs=2)


if __name__ == "__main__":
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "jax":
        Path(path).write_text(json.dumps(_jax_worker()))
    else:
        _torch_worker(path)
