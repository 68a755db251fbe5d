"""The physical floor: the epoch's FLOPs over this machine's measured fp32 matmul rate.

Two rates are measured per library, each the best of several repeats:

- ``model``: every matrix product of one training step of the seed model at batch
  128 (the shapes of :func:`benchmarks.flops.step_matmuls`), back to back. This is
  the rate the model's own work can reach, so it defines the floor.
- ``square``: one 2048 x 2048 x 2048 product, the usual "peak" figure, reported
  for comparison (NumPy and PyTorch only; it takes seconds on slower libraries).

The machine's floor uses the fastest library's ``model`` rate: no backend can run
the epoch's matrix products faster than the best BLAS on this machine runs those
same products. Each framework's own ``model`` rate is reported too, because it is
the floor *that framework* can reach (MLX on a Linux CPU multiplies far slower).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.flops import MatmulShape, epoch_flops, step_matmuls, train_flops_per_sample
from yat_core.mlp import MLPSpec, seed_spec

__all__ = ["best_time", "matmul_rates", "shapes_gflops", "measure_floor", "merge_floor", "FLOOR_LIBRARIES"]

#: Libraries whose matmul rate is measured on the CPU, in this order.
FLOOR_LIBRARIES = ("numpy", "torch", "jax", "mlx")
SQUARE = 2048
FLOOR_BATCH = 128


def best_time(fn: Callable[[], Any], repeats: int, max_s: float = 5.0) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls (fewer if ``max_s`` runs out; at least 2).

    ``fn`` must block until its work is done.
    """
    fn()  # warm caches, allocators and any compilation
    best, start = float("inf"), time.perf_counter()
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if i >= 1 and time.perf_counter() - start > max_s:
            break
    return best


def _operands(shapes: list[MatmulShape], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((s.m, s.k), dtype=np.float32), rng.standard_normal((s.k, s.n), dtype=np.float32))
        for s in shapes
    ]


def _numpy_runner(pairs: list[tuple[np.ndarray, np.ndarray]], device: str) -> Callable[[], Any]:
    return lambda: [a @ b for a, b in pairs]


def _torch_runner(pairs: list[tuple[np.ndarray, np.ndarray]], device: str) -> Callable[[], Any]:
    import torch

    dev = torch.device(device)
    tensors = [(torch.from_numpy(a).to(dev), torch.from_numpy(b).to(dev)) for a, b in pairs]

    def run() -> Any:
        out = [a @ b for a, b in tensors]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    return run


def _jax_runner(pairs: list[tuple[np.ndarray, np.ndarray]], device: str) -> Callable[[], Any]:
    import jax

    from yat_core.backends.jax import matmul_precision, traced_at

    dev = jax.devices("cpu" if device == "cpu" else "gpu")[0]
    arrays = jax.device_put(pairs, dev)
    # One compiled program for all products: per-call dispatch would dominate small shapes.
    # The backend's precision: on a GPU, full float32 rather than JAX's TensorFloat-32 default.
    products = jax.jit(traced_at(matmul_precision(dev.platform), lambda ps: [a @ b for a, b in ps]))
    return lambda: jax.block_until_ready(products(arrays))


def _mlx_runner(pairs: list[tuple[np.ndarray, np.ndarray]], device: str) -> Callable[[], Any]:
    from yat_core.backends import get_backend

    get_backend("mlx", "cpu")  # import MLX the backend's way (an opt-in BLAS must load first)
    import mlx.core as mx

    stream = mx.cpu if device == "cpu" else mx.gpu
    arrays = [(mx.array(a), mx.array(b)) for a, b in pairs]
    mx.eval(arrays)

    def run() -> Any:
        out = [mx.matmul(a, b, stream=stream) for a, b in arrays]
        mx.eval(out)  # MLX is lazy: nothing runs until evaluated
        return out

    return run


_RUNNERS: dict[str, Callable[[list[tuple[np.ndarray, np.ndarray]], str], Callable[[], Any]]] = {
    "numpy": _numpy_runner,
    "torch": _torch_runner,
    "jax": _jax_runner,
    "mlx": _mlx_runner,
}


def matmul_rates(
    library: str, *, spec: MLPSpec, repeats: int, device: str = "cpu", square: bool = True
) -> dict[str, float]:
    """Measured fp32 GFLOP/s of ``library``: ``model`` (the step's products) and ``square``.

    Raises
    ------
    ImportError
        When the library is not installed.
    """
    rates = {"model_gflops": shapes_gflops(library, step_matmuls(spec, FLOOR_BATCH), repeats=repeats, device=device)}
    if square:
        big = MatmulShape(SQUARE, SQUARE, SQUARE)
        rates["square_gflops"] = shapes_gflops(library, [big], repeats=max(2, repeats // 5), device=device, max_s=6.0)
    return rates


def shapes_gflops(
    library: str, shapes: list[MatmulShape], *, repeats: int, device: str = "cpu", max_s: float = 5.0
) -> float:
    """``library``'s fp32 rate (GFLOP/s) on ``shapes`` run back to back, the best of ``repeats``.

    Raises
    ------
    ImportError
        When the library is not installed.
    """
    run = _RUNNERS[library](_operands(shapes), device)
    return sum(s.flops for s in shapes) / best_time(run, repeats, max_s) / 1e9


def _floor_entry(rates: dict[str, dict[str, float]], flops: int) -> dict[str, Any]:
    best_lib = max(rates, key=lambda lib: rates[lib]["model_gflops"])
    model_rate = rates[best_lib]["model_gflops"]
    squares = {lib: r["square_gflops"] for lib, r in rates.items() if "square_gflops" in r}
    entry: dict[str, Any] = {
        "library": best_lib,
        "gflops": model_rate,
        "seconds": flops / (model_rate * 1e9),
        "basis": f"{best_lib} on the step's own matmul shapes (batch {FLOOR_BATCH})",
    }
    if squares:
        peak_lib = max(squares, key=squares.__getitem__)
        entry.update(
            square_library=peak_lib,
            square_gflops=squares[peak_lib],
            seconds_at_square_rate=flops / (squares[peak_lib] * 1e9),
        )
    return entry


def measure_floor(
    *,
    repeats: int,
    libraries: tuple[str, ...] = FLOOR_LIBRARIES,
    devices: tuple[str, ...] = ("cpu",),
    n_samples: int = 60_000,
) -> dict[str, Any]:
    """Measure every installed library's matmul rates and derive the floor per device kind.

    Returns a JSON-ready dict: the FLOP counts, ``rates[device][library]`` and
    ``floor[device]`` (library, GFLOP/s, seconds per epoch).
    """
    spec = seed_spec()
    flops = epoch_flops(spec, n_samples)
    result: dict[str, Any] = {
        "flops_per_sample": train_flops_per_sample(spec),
        "flops_per_epoch": flops,
        "n_samples": n_samples,
        "batch": FLOOR_BATCH,
        "rates": {},
        "errors": {},
    }
    for device in devices:
        rates: dict[str, dict[str, float]] = {}
        for library in libraries:
            if device != "cpu" and library not in ("torch", "jax"):
                continue
            try:
                # On a GPU every library's square rate: the GPU's matrix rate, which the step's small
                # products (each one short kernel) do not reach.
                square = library in ("numpy", "torch") or device != "cpu"
                rates[library] = matmul_rates(library, spec=spec, repeats=repeats, device=device, square=square)
            except ImportError as exc:
                result["errors"][f"{device}/{library}"] = f"not installed: {exc}"
            except Exception as exc:  # a broken library must not sink the floor of the others
                result["errors"][f"{device}/{library}"] = f"{type(exc).__name__}: {exc}"
        if rates:
            result["rates"][device] = rates
    return with_floor(result)


def with_floor(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with ``floor`` recomputed from its ``rates``."""
    result["floor"] = {dev: _floor_entry(rates, result["flops_per_epoch"]) for dev, rates in result["rates"].items()}
    return result


def merge_floor(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Combine two measurements taken in one run, keeping the faster rate of each entry.

    Other processes only ever slow a measurement down, so the best of the two
    is the closer one to the machine's real rate.
    """
    if a is None or b is None:
        return a or b
    rates: dict[str, dict[str, dict[str, float]]] = {}
    for device in sorted(set(a["rates"]) | set(b["rates"]), key=lambda d: (d != "cpu", d)):
        ra, rb = a["rates"].get(device, {}), b["rates"].get(device, {})
        rates[device] = {}
        order = {lib: i for i, lib in enumerate(FLOOR_LIBRARIES)}
        for lib in sorted(set(ra) | set(rb), key=lambda name: (order.get(name, len(order)), name)):
            keys = set(ra.get(lib, {})) | set(rb.get(lib, {}))
            rates[device][lib] = {k: max(ra.get(lib, {}).get(k, 0.0), rb.get(lib, {}).get(k, 0.0)) for k in keys}
    merged = {**a, "rates": rates, "errors": {**b.get("errors", {}), **a.get("errors", {})}}
    return with_floor(merged)
