"""``python -m benchmarks.profile_torch``: where one torch training step's time goes.

For the Yat seed MLP and its same-shape Linear + ReLU twin (``yat_core.spec.relu_spec()``),
on the torch backend (the core's step under ``torch.compile``: the graph that ``yat-core
train --backend torch`` compiles once with AOTInductor and loads from disk, where a C++
wrapper replaces the Python one and no guards run), it measures:

- the step's wall time (median and best of several rounds of steps, no profiler);
- the same for the loss and gradients alone, compiled the same way: the step's
  surplus over it is what the AdamW update costs inside the step;
- a ``torch.profiler`` breakdown of the step into matrix products, compiled
  (inductor) kernels, Dynamo's guards and dispatch, the compiled graph's Python
  wrapper, host synchronisations, copies, other ATen operators, and the rest
  (the runner and the loop, in Python). Inductor's CPU kernels are profiled by
  name for this run only (``cpp.enable_kernel_profile``).

It prints the table and writes ``profile.json`` and ``profile.md`` into
``results/bench-profile-torch`` (``--out``); ``--into results/bench/bench.json`` also
adds the record to a saved benchmark run, whose report (``python -m benchmarks
render``) then shows it::

    python -m benchmarks.profile_torch                   # batch 128, 50 profiled steps
    python -m benchmarks.profile_torch --steps 100 --rounds 9 --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import torch_profile_section

__all__ = ["CATEGORIES", "categorise", "profile_model", "main"]

#: The step's parts, in table order; "rest" is the profiled step's time no event accounts for.
CATEGORIES = (
    "matrix products",
    "compiled kernels",
    "guards and dispatch",
    "graph wrapper (Python)",
    "host syncs",
    "copies",
    "other operators",
    "rest (runner, loop)",
)
_MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")
_SYNCS = ("aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize")
_COPIES = ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous", "Memcpy", "Memset")
_GUARDS = ("TorchDynamo Cache Lookup",)
_WRAPPER = ("Torch-Compiled Region", "## Call CompiledFxGraph", "CompiledFunction")


def categorise(name: str) -> str:
    """The :data:`CATEGORIES` entry a profiler event of this name belongs to.

    Examples
    --------
    >>> categorise("aten::addmm"), categorise("graph_0_cpp_fused_add_3"), categorise("TorchDynamo Cache Lookup")
    ('matrix products', 'compiled kernels', 'guards and dispatch')
    >>> categorise("aten::item"), categorise("aten::copy_"), categorise("aten::relu")
    ('host syncs', 'copies', 'other operators')
    """
    if name in _MATMUL or "gemm" in name.lower():
        return "matrix products"
    if "cpp_fused" in name or name.startswith(("triton_", "kernel_cpp")):  # CPU: graph_0_cpp_fused_...
        return "compiled kernels"
    if name in _GUARDS:
        return "guards and dispatch"
    if name.startswith(_WRAPPER):
        return "graph wrapper (Python)"
    if name in _SYNCS:
        return "host syncs"
    if name.startswith(_COPIES):
        return "copies"
    return "other operators"


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # Synthetic MNIST-shaped data: the step's time does not depend on the pixel values.
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 784), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def _runner(model: str, device: str | None, batch: int) -> Any:
    from yat_core.config import TrainConfig
    from yat_core.runners import make_runner
    from yat_core.spec import relu_spec, seed_spec

    spec = {"yat": seed_spec, "relu": relu_spec}[model]()
    return make_runner(spec, TrainConfig(backend="torch", device=device, batch_size=batch))


def _gradient_step(runner: Any) -> Callable[[Any, Any, Any], Any]:
    """The runner's loss and gradients alone (no update), compiled as its step is."""
    backend, xp = runner.backend, runner.backend.xp
    loss_and_grad = backend.loss_and_grad(runner.spec)

    def gradient(params: Any, images: Any, labels: Any, idx: Any) -> Any:
        return loss_and_grad(params, xp.take(images, idx, axis=0), xp.take(labels, idx, axis=0))

    compiled = backend.compile(gradient)
    return lambda images, labels, idx: compiled(runner.params, images, labels, idx)[0]


def _timed(step: Callable[[Any, Any, Any], Any], runner: Any, data: tuple, steps: int, rounds: int) -> list[float]:
    """Seconds per step of ``rounds`` rounds of ``steps`` steps, each round synchronised at its end."""
    images, labels, order = data
    batch = len(order) // (steps + 1)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(steps):
            # The loop's own calls (yat_core.train.run_epoch): step, settle, no host sync.
            loss = step(images, labels, order[i * batch : (i + 1) * batch])
            runner.settle(loss)
        runner.synchronize(loss)
        out.append((time.perf_counter() - t0) / steps)
    return out


def profile_model(
    model: str, *, device: str | None = None, batch: int = 128, steps: int = 50, rounds: int = 7
) -> dict[str, Any]:
    """The time of one training step of ``model`` (``"yat"`` or ``"relu"``) and where it goes.

    Returns ``{model, device, batch, steps, step_ms{median, min}, gradient_ms{median, min},
    optimizer_ms, first_step_s, profiled_step_ms, parts{category: ms per step}}``.
    """
    import torch
    from torch._inductor import config as inductor_config

    runner = _runner(model, device, batch)
    images, labels = _data(batch * (steps + 1))
    order = np.arange(batch * (steps + 1), dtype=np.int32)
    data = (runner.put(images), runner.put(labels), runner.put(order))
    t0 = time.perf_counter()
    runner.synchronize(runner.step(*data[:2], data[2][:batch]))
    first_step_s = time.perf_counter() - t0
    step_s = _timed(runner.step, runner, data, steps, rounds)
    gradient = _gradient_step(runner)
    gradient(*data[:2], data[2][:batch])
    gradient_s = _timed(gradient, runner, data, steps, rounds)

    # A second runner whose compiled kernels are named in the profile: another compile, past
    # the caches (a cached graph would come back without the names). torch.compile takes
    # inductor's config when it is called: the runner is built under the patch. Dynamo's
    # cache is emptied first: the step's code, already compiled, would pass its guards.
    torch._dynamo.reset()
    with inductor_config.patch({"cpp.enable_kernel_profile": True, "force_disable_caches": True}):
        profiled = _runner(model, device, batch)
        profiled.synchronize(profiled.step(*data[:2], data[2][:batch]))
    _timed(profiled.step, profiled, data, steps, 1)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if profiled.backend.torch_device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        wall = _timed(profiled.step, profiled, data, steps, 1)[0]
    parts = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.key_averages():
        on_device = getattr(event, "self_device_time_total", 0.0) or 0.0
        parts[categorise(event.key)] += (event.self_cpu_time_total + on_device) / 1e3 / steps
    parts["rest (runner, loop)"] = max(0.0, wall * 1e3 - sum(parts.values()))
    med = 1e3 * statistics.median(step_s)
    grad_med = 1e3 * statistics.median(gradient_s)
    return {
        "model": model,
        "device": runner.device_name(),
        "batch": batch,
        "steps": steps,
        "rounds": rounds,
        "first_step_s": first_step_s,
        "step_ms": {"median": med, "min": 1e3 * min(step_s)},
        "gradient_ms": {"median": grad_med, "min": 1e3 * min(gradient_s)},
        "optimizer_ms": max(0.0, med - grad_med),
        "profiled_step_ms": wall * 1e3,
        "parts": parts,
    }


def profile_record(models: Sequence[str], **kwargs: Any) -> dict[str, Any]:
    """:func:`profile_model` of each of ``models``, with the machine, versions and threads."""
    import torch

    from yat_core.receipts import machine_info, versions

    return {
        "kind": "torch_profile",
        "command": "python -m benchmarks.profile_torch " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "versions": versions("torch"),
        "torch_threads": torch.get_num_threads(),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "models": [profile_model(m, **kwargs) for m in models],
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_torch", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="yat,relu", help="comma-separated: yat (seed MLP), relu (Linear+ReLU twin)")
    p.add_argument("--device", default=None, help="torch device (default: the backend's)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50, help="steps per round and in the profile")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (median and best reported)")
    p.add_argument("--out", type=Path, default=Path("results") / "bench-profile-torch")
    p.add_argument("--into", type=Path, default=None, help="a saved bench.json to add the record to")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from yat_core._io import atomic_write_text
    from yat_core.receipts import write_json_atomic

    args = _parser().parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"yat", "relu"})
    if unknown or args.batch < 1 or args.steps < 1 or args.rounds < 1:
        print(
            f"profile_torch: error: --models takes yat and relu (got {', '.join(unknown) or 'none unknown'}); "
            "--batch, --steps and --rounds must be >= 1",
            file=sys.stderr,
        )
        return 2
    record = profile_record(models, device=args.device, batch=args.batch, steps=args.steps, rounds=args.rounds)
    text = "\n".join(torch_profile_section(record)) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "profile.json", record)
    atomic_write_text(args.out / "profile.md", text)
    if args.into is not None:
        from benchmarks.regress import load_results

        saved = load_results(args.into)
        saved["torch_profile"] = record
        write_json_atomic(args.into, saved)
        print(f"added to {args.into}; `python -m benchmarks render {args.into}` redraws its report")
    print(f"wrote {args.out / 'profile.json'} and {args.out / 'profile.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
