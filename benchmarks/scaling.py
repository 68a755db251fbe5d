"""How cost grows: seconds per epoch and the ratio to the floor over batch size and width.

``python -m benchmarks.scaling [--quick] [--backends numpy,jax,...]`` times the training
step of the seed MLP's shape, its hidden layers scaled, at batch sizes 32 to 4096 and
hidden widths 256 to 4096 on every installed backend and device
(:func:`benchmarks.devices.discover`: CUDA too where present), and writes
``scaling.json``, ``scaling.md`` and ``scaling.png`` to ``results/bench-scaling``
(quick: ``results/bench-scaling-quick``).

Decisions:

- **The model at width w** (:func:`scaled_spec`): ``Flatten -> Yat(784->w) ->
  Yat(w->w/2) -> Linear(w/2->10)``, the seed MLP's layer options; ``w = 256`` is the
  seed model.
- **What is timed**: full training steps through the machinery ``yat-core train``
  uses: :func:`yat_core.runners.make_runner` with ``TrainConfig(backend, device,
  batch_size)``, and the loop's chunked call where the runner offers one (JAX: several
  steps in one compiled call, :meth:`~yat_core.runners.Runner.chunk_runner`). The chunk
  is the loop's own length (the largest divisor of the epoch's full steps up to 64),
  shortened so that one call takes at most a third of the point's budget at the
  floor's pace. Synthetic uint8 images of MNIST's size, random labels.
- **How**: per point, the first call (tracing, compilation) is timed alone, a few
  warm-up calls follow, then timed calls until the point's budget is spent (at least
  :attr:`ScalingProfile.min_calls`, each at least one step); every call settles and
  synchronises the device before the clock is read. The step time is the median call
  over its steps. **Seconds per epoch are extrapolated**: ``ceil(60000 / batch)`` x the
  step time (the epoch's last, partial batch counted as a full one).
- **Processes**: one fresh process per backend and device (the worker, through
  :func:`benchmarks.processes.run_measured`), all its points in turn, each with a fresh
  runner; the thread pools set up as ``yat-core train`` sets them
  (:func:`yat_core.threads.thread_defaults`, recorded per point); PyTorch's compiler
  caches are reset between points, as a fresh ``yat-core train`` would start (and so
  that no point inherits another's recompilation limit).
- **The floor at each point**: the step's matrix-product FLOPs
  (:func:`benchmarks.flops.step_matmuls` of the point's model and batch) over a matmul
  rate measured in the same worker on those same shapes (best of a few repeats, before
  and after the point's steps: other processes only ever slow a rate down). The backend's own library gives its **own floor**; the
  fastest library measured on the same device at that point (all timed backends of the
  run) gives the **machine floor**. ``x floor`` is the step time over the floor's step
  time, so it does not depend on the extrapolation.
- **Grid** (:data:`PROFILES`): full: batch {32, ..., 4096} x width {256, ..., 4096};
  MLX on a CPU, about twenty times slower per FLOP there, only up to batch 1024 and
  width 1024 (:data:`LIMITS`). Quick (CI smoke run): 2 batches x 2 widths, NumPy and
  one other backend, a fraction of a second per point.
- **CUDA**: where PyTorch or JAX finds a CUDA device, the same sweep runs there, its
  floor from that GPU's matmul rate measured on the same shapes; where none is, the
  report says "no CUDA device on this machine".
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.devices import parse_devices
from benchmarks.flops import step_matmuls
from yat_core.spec import LayerSpec, ModelSpec

__all__ = [
    "BATCHES",
    "WIDTHS",
    "N_SAMPLES",
    "LIMITS",
    "PROFILES",
    "ScalingProfile",
    "Point",
    "scaled_spec",
    "grid",
    "step_flops",
    "steps_per_epoch",
    "epoch_seconds",
    "floor_step_seconds",
    "chunk_length",
    "measure_point",
    "worker",
    "derive",
    "merge",
    "knee",
    "cuda_statement",
    "render_markdown",
    "render_chart",
    "write_outputs",
    "run",
    "main",
]

#: Batch sizes and hidden widths of the full grid.
BATCHES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
WIDTHS = (256, 512, 1024, 2048, 4096)
#: Images of one epoch (MNIST's training set).
N_SAMPLES = 60_000
#: ``(backend, device) -> (largest batch, largest width)`` for targets too slow for the whole grid.
LIMITS: dict[tuple[str, str], tuple[int, int]] = {("mlx", "cpu"): (1024, 1024)}
#: A batch at most this much slower than the width's best counts as scaled (see :func:`knee`).
KNEE_TOLERANCE = 0.10
RESULTS_DIRS = {"full": Path("results") / "bench-scaling", "quick": Path("results") / "bench-scaling-quick"}
OUTPUT_NAMES = {"json": "scaling.json", "markdown": "scaling.md", "chart": "scaling.png"}
NO_CUDA = "no CUDA device on this machine"


@dataclass(frozen=True)
class ScalingProfile:
    """The grid and how long to time each point.

    Parameters
    ----------
    name : str
    batches, widths : tuple of int
        The grid (before :data:`LIMITS`).
    budget_s : float
        Timed calls per point fill about this many seconds.
    min_calls, max_calls : int
        Bounds on the timed calls per point.
    warmup_calls : int
        Untimed calls after the first (compiling) one.
    floor_repeats : int
        Repeats of the matmul-rate measurement (the best counts).
    floor_budget_s : float
        The rate measurement stops repeating after this long (at least two repeats).
    timeout_s : float
        Per worker process (one backend and device); the points finished by then are kept.
    backends : tuple of str or None
        Backends timed when none are asked for (None: every installed one); the first
        installed of ``backends[1:]`` joins ``backends[0]``.
    """

    name: str
    batches: tuple[int, ...]
    widths: tuple[int, ...]
    budget_s: float
    min_calls: int
    max_calls: int
    warmup_calls: int
    floor_repeats: int
    floor_budget_s: float
    timeout_s: float
    backends: tuple[str, ...] | None = None


PROFILES = {
    "full": ScalingProfile("full", BATCHES, WIDTHS, 2.0, 3, 200, 1, 5, 1.5, 5400.0),
    "quick": ScalingProfile("quick", (32, 256), (256, 512), 0.3, 3, 50, 1, 3, 0.3, 600.0, ("numpy", "jax", "torch")),
}


@dataclass(frozen=True)
class Point:
    """One grid point of one target."""

    backend: str
    device: str
    batch: int
    width: int


def scaled_spec(width: int) -> ModelSpec:
    """The seed MLP's shape with hidden widths ``(width, width // 2)``.

    Examples
    --------
    >>> from yat_core.spec import seed_spec
    >>> scaled_spec(256) == seed_spec()
    True
    >>> [(layer.in_features, layer.out_features) for layer in scaled_spec(1024).layers]
    [(784, 1024), (1024, 512), (512, 10)]
    """
    if width < 2 or width % 2:
        raise ValueError(f"width must be an even number >= 2 (the second hidden layer has width / 2), got {width}")
    return ModelSpec(
        (LayerSpec("yat", 784, width), LayerSpec("yat", width, width // 2), LayerSpec("linear", width // 2, 10))
    )


def grid(profile: ScalingProfile, backend: str, device: str) -> list[tuple[int, int]]:
    """``(width, batch)`` points of ``profile`` for one target, width-major, :data:`LIMITS` applied.

    Examples
    --------
    >>> len(grid(PROFILES["full"], "numpy", "cpu")), len(grid(PROFILES["full"], "mlx", "cpu"))
    (40, 18)
    >>> grid(PROFILES["quick"], "jax", "cpu")
    [(256, 32), (256, 256), (512, 32), (512, 256)]
    """
    max_batch, max_width = LIMITS.get((backend, device), (max(profile.batches), max(profile.widths)))
    return [(w, b) for w in profile.widths if w <= max_width for b in profile.batches if b <= max_batch]


def step_flops(width: int, batch: int) -> int:
    """Matrix-product FLOPs of one training step (:func:`benchmarks.flops.step_matmuls`).

    Examples
    --------
    >>> step_flops(256, 128) == 128 * 1007104  # the seed model's 1.007 MFLOP per sample
    True
    """
    return sum(s.flops for s in step_matmuls(scaled_spec(width), batch))


def steps_per_epoch(batch: int, n_samples: int = N_SAMPLES) -> int:
    """Steps of one epoch, the last partial batch included.

    Examples
    --------
    >>> steps_per_epoch(128), steps_per_epoch(4096)
    (469, 15)
    """
    return math.ceil(n_samples / batch)


def epoch_seconds(step_s: float, batch: int, n_samples: int = N_SAMPLES) -> float:
    """Seconds per epoch extrapolated from one step's: ``ceil(n_samples / batch) * step_s``.

    Examples
    --------
    >>> round(epoch_seconds(0.002, 128), 9)  # 469 steps
    0.938
    """
    return steps_per_epoch(batch, n_samples) * step_s


def floor_step_seconds(width: int, batch: int, gflops: float) -> float:
    """The step's matrix products at ``gflops`` GFLOP/s: the floor of one step.

    Examples
    --------
    >>> round(floor_step_seconds(256, 128, 128 * 1.007104e-3), 6)  # 1 GFLOP/s per sample-MFLOP
    1.0
    """
    if gflops <= 0:
        raise ValueError(f"a matmul rate must be > 0 GFLOP/s, got {gflops}")
    return step_flops(width, batch) / (gflops * 1e9)


def chunk_length(batch: int, floor_step_s: float, call_budget_s: float, n_samples: int = N_SAMPLES) -> int:
    """Steps per timed call: the training loop's chunk, shortened to fit ``call_budget_s`` at the floor's pace.

    The loop runs the largest divisor of the epoch's full steps up to 64 per chunked
    call (:func:`yat_core.train._chunk_length`); a chunk of the largest steps would take
    tens of seconds, so it is cut to the largest such divisor that fits.

    Examples
    --------
    >>> chunk_length(128, 1e-4, 1.0)  # 468 full steps: the loop's chunk is 52
    52
    >>> chunk_length(4096, 1.0, 1.0)
    1
    """
    from yat_core.train import _chunk_length

    fits = max(1, int(call_budget_s / max(floor_step_s, 1e-12)))
    return _chunk_length(n_samples // batch, longest=min(64, fits))


# ---------------------------------------------------------------- measuring (in the worker)


def matmul_gflops(library: str, width: int, batch: int, device: str, repeats: int, max_s: float) -> float:
    """``library``'s fp32 rate (GFLOP/s) on the products of one step at ``(width, batch)``, best of ``repeats``."""
    from benchmarks.floor import shapes_gflops

    return shapes_gflops(library, step_matmuls(scaled_spec(width), batch), repeats=repeats, device=device, max_s=max_s)


def _reset_compilers(backend: str) -> None:
    # A fresh `yat-core train` starts with empty caches; torch.compile's per-function
    # recompilation limit would otherwise send later points to eager mode.
    if backend == "torch" and "torch" in sys.modules:
        import torch

        torch._dynamo.reset()
    gc.collect()


def _training_call(backend: str, device: str, width: int, batch: int, chunk: int) -> tuple[Callable[[], Any], int]:
    """One timed call of the training loop at the point, and the steps it runs."""
    from yat_core.config import TrainConfig
    from yat_core.runners import make_runner

    runner = make_runner(scaled_spec(width), TrainConfig(backend=backend, device=device, batch_size=batch, epochs=1))
    chunked = runner.chunk_runner(batch, chunk) if chunk > 1 else None
    steps = chunk if chunked is not None else 1
    rng = np.random.default_rng(0)
    n = batch * steps
    images = runner.put(rng.integers(0, 256, (n, 784), dtype=np.uint8))
    labels = runner.put(rng.integers(0, 10, n).astype(np.int32))
    order = runner.put(rng.permutation(n).astype(np.int32))

    def call() -> Any:
        if chunked is not None:
            loss = chunked(images, labels, order, 0)
        else:
            loss = runner.step(images, labels, order[0:batch])
        runner.settle(loss)
        runner.synchronize(loss)
        return loss

    return call, steps


def measure_point(point: Point, profile: ScalingProfile) -> dict[str, Any]:
    """The point's own matmul rate, then its training steps; the record (``status`` ``"ok"`` or ``"error"``)."""
    from benchmarks.steps import rounds_for, warm_up

    record: dict[str, Any] = {**asdict(point), "status": "ok", "step_flops": step_flops(point.width, point.batch)}
    try:
        args = (point.backend, point.width, point.batch, point.device, profile.floor_repeats, profile.floor_budget_s)
        rate_before = matmul_gflops(*args)
        chunk = chunk_length(
            point.batch, floor_step_seconds(point.width, point.batch, rate_before), profile.budget_s / profile.min_calls
        )
        call, steps = _training_call(point.backend, point.device, point.width, point.batch, chunk)
        first_s, typical_s = warm_up(call, profile.warmup_calls)
        times = []
        for _ in range(rounds_for(typical_s, profile.budget_s, profile.min_calls, profile.max_calls)):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        del call
        # Measured on both sides of the steps, the faster counts: other processes only slow a rate down.
        rate = max(rate_before, matmul_gflops(*args))
        floor_s = floor_step_seconds(point.width, point.batch, rate)
        step_s = statistics.median(times) / steps
        record.update(
            gflops=rate,
            floor_step_s=floor_s,
            steps_per_call=steps,
            calls=len(times),
            first_call_s=first_s,
            step_s=step_s,
            step_min_s=min(times) / steps,
            epoch_s=epoch_seconds(step_s, point.batch),
            floor_epoch_s=epoch_seconds(floor_s, point.batch),
            x_own_floor=step_s / floor_s,
        )
    except Exception as exc:  # noqa: BLE001 - one point failing (out of memory, a compiler fault) must not end the sweep
        record.update(status="error", reason=f"{exc.__class__.__name__}: {exc}"[:500])
        record["traceback"] = traceback.format_exc()[-2000:]
    finally:
        _reset_compilers(point.backend)
    return record


def worker(
    backend: str,
    device: str,
    points: Sequence[tuple[int, int]],
    profile: ScalingProfile,
    report: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every ``(width, batch)`` point on one target; after each, the records so far are written to ``report``.

    Examples
    --------
    >>> tiny = ScalingProfile("tiny", (8,), (16,), 0.01, 1, 1, 0, 1, 0.01, 60.0)
    >>> [r["status"] for r in worker("numpy", "cpu", [(16, 8)], tiny)]
    ['ok']
    """
    with _thread_defaults(backend, device) as threads:
        return _points(backend, device, points, profile, threads, report, log)


@contextmanager
def _thread_defaults(backend: str, device: str) -> Iterator[dict[str, Any] | None]:
    # The thread pools as `yat-core train` sets them up for this backend (yat_core.threads), before
    # the framework starts; where yat-core has no such set-up, the libraries' defaults.
    try:
        from yat_core.threads import thread_defaults, thread_library
    except ImportError:
        yield None
        return
    from yat_core.config import TrainConfig

    with thread_defaults(thread_library(TrainConfig(backend=backend, device=device))) as record:
        yield record


def _points(
    backend: str,
    device: str,
    points: Sequence[tuple[int, int]],
    profile: ScalingProfile,
    threads: dict[str, Any] | None,
    report: Path | None,
    log: Callable[[str], None] | None,
) -> list[dict[str, Any]]:
    from yat_core.backends import get_backend
    from yat_core.receipts import write_json_atomic

    device_name = get_backend(backend, device).device_name()  # the framework loaded as the backend loads it
    records: list[dict[str, Any]] = []
    for width, batch in points:
        t0 = time.perf_counter()
        record = {**measure_point(Point(backend, device, batch, width), profile), "device_name": device_name}
        if threads is not None:
            record["threads"] = threads
        records.append(record)
        if report is not None:
            write_json_atomic(report, {"records": records})
        if log is not None:
            what = (
                f"{record['epoch_s']:.3g} s/epoch, {record['x_own_floor']:.2f}x own floor"
                if record["status"] == "ok"
                else f"error: {record['reason']}"
            )
            log(f"{backend}/{device} w={width} b={batch}: {what} ({time.perf_counter() - t0:.1f} s)")
    return records


#: A worker given less time than this is not started: importing a framework alone takes seconds.
_LEAST_WORKER_S = 10.0


def _run_worker_process(
    backend: str,
    device: str,
    points: Sequence[tuple[int, int]],
    profile: ScalingProfile,
    threads: int | None = None,
    timeout_s: float | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The worker in a fresh process (its CPU threads capped at ``threads``, stopped after ``timeout_s``,
    default the profile's): its records, those of the points finished in time, and how it went."""
    timeout_s = profile.timeout_s if timeout_s is None else timeout_s
    from benchmarks.attention import thread_env
    from benchmarks.processes import python_env, run_measured, scratch_path

    report = scratch_path("scaling")
    cmd = [sys.executable, "-m", "benchmarks.scaling", "worker", "--backend", backend, "--device", device]
    cmd += ["--profile", profile.name, "--points", ",".join(f"{w}x{b}" for w, b in points), "--report", str(report)]
    result = run_measured(cmd, timeout_s=timeout_s, env={**python_env(), **thread_env(threads)})
    try:
        records = json.loads(report.read_text())["records"]
    except (OSError, ValueError, KeyError):
        records = []
    finally:
        report.unlink(missing_ok=True)
    process: dict[str, Any] = {
        "target": f"{backend}/{device}",
        "returncode": result.returncode,
        "timed_out": result.timed_out,
        "wall_s": result.wall_s,
        "peak_rss_mb": result.peak_rss_mb,
        "points": len(points),
        "measured": len(records),
    }
    if result.returncode != 0 or len(records) < len(points):
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        what = f"timed out after {timeout_s:g} s" if result.timed_out else f"exit {result.returncode}"
        process["reason"] = f"worker {what}: {' | '.join(tail)}"[:500]
    return records, process


# ---------------------------------------------------------------- derived tables


def _device_kind(device: str) -> str:
    return "cpu" if device == "cpu" else "gpu"


def derive(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Machine floors per device kind and point, and each record's ratio to it.

    The machine floor at a point is the fastest rate any library measured there on that
    kind of device (``cpu`` or ``gpu``). Returns ``{"machine_floor": {kind: {"WxB":
    {library, gflops, floor_step_s, epoch_s}}}, "tables": {target: [row, ...]}}``.

    Examples
    --------
    >>> recs = [{"backend": b, "device": "cpu", "width": 256, "batch": 128, "status": "ok", "gflops": g,
    ...          "step_s": 0.002, "epoch_s": 0.938, "x_own_floor": 2.0} for b, g in (("numpy", 100.0), ("jax", 50.0))]
    >>> d = derive(recs)
    >>> d["machine_floor"]["cpu"]["256x128"]["library"]
    'numpy'
    >>> [round(r["x_machine_floor"], 2) for r in d["tables"]["jax/cpu"]]
    [1.55]
    """
    best: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        key, kind = f"{r['width']}x{r['batch']}", _device_kind(r["device"])
        if r["gflops"] > best.setdefault(kind, {}).get(key, {}).get("gflops", 0.0):
            floor_s = floor_step_seconds(r["width"], r["batch"], r["gflops"])
            best[kind][key] = {
                "library": r["backend"],
                "gflops": r["gflops"],
                "floor_step_s": floor_s,
                "epoch_s": epoch_seconds(floor_s, r["batch"]),
            }
    tables: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        row = {k: r.get(k) for k in ("width", "batch", "status", "epoch_s", "x_own_floor", "gflops", "step_s")}
        floor = best.get(_device_kind(r["device"]), {}).get(f"{r['width']}x{r['batch']}")
        ok = r.get("status") == "ok" and floor is not None
        row["machine_floor_epoch_s"] = floor["epoch_s"] if floor else None
        row["machine_library"] = floor["library"] if floor else None
        row["x_machine_floor"] = r["step_s"] / floor["floor_step_s"] if ok and floor else None
        tables.setdefault(f"{r['backend']}/{r['device']}", []).append(row)
    return {"machine_floor": best, "tables": tables}


def knee(rows: Sequence[dict[str, Any]], width: int, tolerance: float = KNEE_TOLERANCE) -> int | None:
    """The smallest batch whose s/epoch is within ``tolerance`` of the width's best: where scaling stops.

    Larger batches than this buy less than ``tolerance``; None when no point of the width ran.

    Examples
    --------
    >>> rows = [{"width": 256, "batch": b, "status": "ok", "epoch_s": s} for b, s in ((32, 4.0), (64, 2.1), (128, 2.0))]
    >>> knee(rows, 256)
    64
    """
    pts = sorted((r["batch"], r["epoch_s"]) for r in rows if r["width"] == width and r.get("status") == "ok")
    if not pts:
        return None
    best = min(s for _, s in pts)
    return next(b for b, s in pts if s <= best * (1 + tolerance))


def cuda_statement(doc: dict[str, Any]) -> str:
    """The report's CUDA line: where the sweep ran on a GPU, or that no CUDA device was found.

    Examples
    --------
    >>> cuda_statement({"cuda": {"found": False, "probed": {"torch": "cpu only"}}, "records": []})
    'CUDA: no CUDA device on this machine (probed: torch: cpu only); the sweep ran on the CPU only.'
    """
    cuda = doc.get("cuda", {})
    probed = ", ".join(f"{k}: {v}" for k, v in cuda.get("probed", {}).items())
    timed = sorted({f"{r['backend']}/{r['device']}" for r in doc.get("records", []) if r["device"] == "cuda"})
    if timed:
        names = sorted({r["device_name"] for r in doc["records"] if r["device"] == "cuda" and r.get("device_name")})
        return (
            f"CUDA: the sweep ran on {', '.join(timed)} ({', '.join(names) or 'GPU'}); its floor is that GPU's "
            "matmul rate measured on each point's shapes in the same run (the fastest of the CUDA libraries)."
        )
    if cuda.get("found"):
        return f"CUDA: a CUDA device is present ({probed}) but no CUDA backend was timed in this run (--backends)."
    return f"CUDA: {NO_CUDA} (probed: {probed or 'nothing'}); the sweep ran on the CPU only."


# ---------------------------------------------------------------- report


def _cell(v: float | None, fmt: Callable[[float], str]) -> str:
    from benchmarks.report import NA

    return NA if v is None else fmt(v)


def _matrix(rows: Sequence[dict[str, Any]], key: str, fmt: Callable[[float], str]) -> list[str]:
    from benchmarks.report import _table

    widths = sorted({r["width"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    at = {(r["width"], r["batch"]): r for r in rows}
    body = []
    for w in widths:
        cells = [_cell(at.get((w, b), {}).get(key), fmt) for b in batches]
        body.append([f"**{w}**", *cells])
    return _table(["width \\ batch", *(str(b) for b in batches)], body)


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown report of a document of :func:`run`."""
    from benchmarks.report import _f, _table, _x

    machine, load, prof = doc.get("machine", {}), doc.get("load_avg", {}), doc["profile"]
    lines = [
        f"# How cost grows: s/epoch over batch size and width ({prof['name']} profile)",
        "",
        "Model at width w: `Flatten -> Yat(784->w) -> Yat(w->w/2) -> Linear(w/2->10)` (w = 256: the seed MLP). "
        "Each point: full training steps through `yat-core train`'s runner (`make_runner`, the loop's chunked "
        "call where the backend has one), after a compiling call and a warm-up, every call synchronised; "
        f"about {prof['budget_s']:g} s of timed calls (at least {prof['min_calls']}) per point. "
        f"**s/epoch is extrapolated**: ceil({N_SAMPLES:,} / batch) x the median step. One fresh process per "
        "backend and device.",
        "",
        "Floors: the step's matrix-product FLOPs over a matmul rate measured in the same run on the point's own "
        "shapes. *x own floor*: over the backend's own library's rate; *x machine floor*: over the fastest "
        "library measured at that point on the same kind of device. Scaling stops (*knee*) at the smallest batch "
        f"within {KNEE_TOLERANCE:.0%} of the width's best s/epoch.",
        "",
        f"**{cuda_statement(doc)}**",
        "",
        f"- run: {doc.get('started')} to {doc.get('finished')}, commit `{doc.get('git_commit') or 'unknown'}`",
        f"- machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in (doc.get("versions") or {}).items() if v),
        "- environment: "
        + (", ".join(f"{k}={v}" for k, v in (doc.get("environment") or {}).items()) or "no variables set"),
        f"- load average (1/5/15 min): {load.get('start')} at the start, {load.get('end')} at the end",
        "- thread pools: "
        + (
            "set up as `yat-core train` sets them (`yat_core.threads`; each point's record in scaling.json)"
            if any(r.get("threads") for r in doc["records"])
            else "the libraries' defaults"
        ),
    ]
    busiest = max((v or [0.0])[0] for v in (load.get("start"), load.get("end")))
    if busiest > 0.5 * (machine.get("cores") or 1):
        lines.append(
            f"- note: other processes were using the CPU (load up to {busiest:.2f} on {machine.get('cores', '?')} "
            "cores): the times include their interference; the per-point table's *fastest call* column is the "
            "least disturbed figure"
        )
    for m in doc.get("merged_from", []):
        lines.append(
            f"- {', '.join(m['targets'])} from `{m['file']}` (started {m.get('started')}, "
            f"load average {(m.get('load_avg') or {}).get('start')})"
        )
    for (backend, device), (b, w) in LIMITS.items():
        if any(r["backend"] == backend and r["device"] == device for r in doc["records"]):
            lines.append(f"- {backend}/{device}: grid limited to batch <= {b} and width <= {w} (slow per FLOP there)")
    lines.append("")
    for label, rows in doc["tables"].items():
        names = {r.get("device_name") for r in doc["records"] if f"{r['backend']}/{r['device']}" == label}
        name = ", ".join(sorted(n for n in names if n and n != label.split("/")[1]))
        knees = [(w, knee(rows, w)) for w in sorted({r["width"] for r in rows})]
        lines += [f"## {label}" + (f" ({name})" if name else ""), ""]
        lines += [
            "Scaling stops at batch: " + ", ".join(f"{k if k else 'n/a'} (width {w})" for w, k in knees) + ".",
            "",
        ]
        lines += ["s/epoch (extrapolated):", "", *_matrix(rows, "epoch_s", lambda v: _f(v)), ""]
        lines += ["x own floor:", "", *_matrix(rows, "x_own_floor", _x), ""]
        lines += ["x machine floor:", "", *_matrix(rows, "x_machine_floor", _x), ""]
    for kind, floors in doc["machine_floor"].items():
        rows = [
            {"width": int(k.split("x")[0]), "batch": int(k.split("x")[1]), **v}
            for k, v in floors.items()  # "WxB" keys
        ]
        lines += [f"## Machine floor ({kind}): s/epoch, library", ""]
        lines += [*_matrix(rows, "epoch_s", lambda v: _f(v)), ""]
        lines += ["Library of the floor, GFLOP/s:", ""]
        lines += [*_matrix(rows, "gflops", lambda v: _f(v)), ""]
        libs = sorted({r["library"] for r in rows})
        lines += [f"Floor libraries: {', '.join(libs)}.", ""]
    failed = [r for r in doc["records"] if r.get("status") != "ok"]
    bad = [p for p in doc.get("processes", []) if p.get("reason")]
    if failed or bad:
        lines += ["## Points that did not run", ""]
        lines += [f"- `{r['backend']}/{r['device']}` w={r['width']} b={r['batch']}: {r.get('reason')}" for r in failed]
        lines += [f"- `{p['target']}`: {p['measured']} of {p['points']} points; {p['reason']}" for p in bad]
        lines.append("")
    lines += ["## Every point", ""]
    body = [
        [
            f"{r['backend']}/{r['device']}",
            str(r["width"]),
            str(r["batch"]),
            _f(r.get("first_call_s")),
            str(r.get("steps_per_call", "")),
            str(r.get("calls", "")),
            _f(None if r.get("step_s") is None else r["step_s"] * 1e3),
            _f(None if r.get("step_min_s") is None else r["step_min_s"] * 1e3),
            _f(r.get("gflops")),
            _f(r.get("epoch_s")),
            _x(r.get("x_own_floor")),
            _x(r["step_min_s"] / r["floor_step_s"] if r.get("floor_step_s") else None),
        ]
        for r in doc["records"]
        if r.get("status") == "ok"
    ]
    header = ["target", "width", "batch", "first call s", "steps/call", "calls", "step ms", "step min ms"]
    lines += _table([*header, "own GFLOP/s", "s/epoch", "x own floor", "x own floor (fastest call)"], body)
    lines.append("")
    return "\n".join(lines)


def render_chart(doc: dict[str, Any], path: str | Path) -> Path:
    """Curves over batch size (log2): s/epoch with the machine floors, and x own floor; one row per width."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from yat_core._io import atomic_write

    tables = doc["tables"]
    widths = sorted({r["width"] for rows in tables.values() for r in rows}) or [0]
    fig, axes = plt.subplots(len(widths), 2, figsize=(11, 3.0 * len(widths)), squeeze=False)
    markers = "osD^v<>"
    for (ax_s, ax_x), width in zip(axes, widths):
        for i, (label, rows) in enumerate(tables.items()):
            ok = sorted((r["batch"], r) for r in rows if r["width"] == width and r.get("status") == "ok")
            if not ok:
                continue
            style = {"marker": markers[i % len(markers)], "color": f"C{i}", "label": label}
            ax_s.plot([b for b, _ in ok], [r["epoch_s"] for _, r in ok], **style)
            ax_x.plot([b for b, _ in ok], [r["x_own_floor"] for _, r in ok], **style)
        for j, (kind, floors) in enumerate(doc["machine_floor"].items()):
            pts = sorted(
                (int(k.split("x")[1]), v["epoch_s"]) for k, v in floors.items() if int(k.split("x")[0]) == width
            )
            if pts:
                ax_s.plot(*zip(*pts), "k--" if j == 0 else "k:", label=f"machine floor ({kind})")
        ax_x.axhline(1.0, color="k", linestyle="--", linewidth=0.8, label="own floor")
        batches = sorted({r["batch"] for rows in tables.values() for r in rows if r["width"] == width})
        for ax, what in ((ax_s, "s/epoch (extrapolated)"), (ax_x, "x own floor")):
            ax.set_xscale("log", base=2)
            if batches:
                ax.set_xticks(batches, [str(b) for b in batches])
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_title(f"width {width}: {what}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    cuda = "; " + NO_CUDA if not doc.get("cuda", {}).get("found") else ""
    fig.suptitle(
        f"How cost grows ({doc['profile']['name']} profile): {doc.get('machine', {}).get('cpu', '')}{cuda}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))  # room for the title
    out = atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return out


def write_outputs(doc: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``scaling.json``, ``scaling.md`` and ``scaling.png`` in ``out_dir``, each written atomically."""
    from benchmarks.results import write_outputs as write_report

    return write_report(doc, out_dir, OUTPUT_NAMES, render_markdown, render_chart)


# ---------------------------------------------------------------- the run


def probe_cuda() -> dict[str, Any]:
    """Whether PyTorch or JAX (those installed) sees a CUDA device: ``{"found", "probed": {library: what}}``."""
    from benchmarks.devices import backend_devices, installed_backends

    probed: dict[str, str] = {}
    for backend in ("torch", "jax"):
        if not installed_backends((backend,)):
            probed[backend] = "not installed"
            continue
        probed[backend] = "cuda" if "cuda" in backend_devices(backend) else "cpu only"
    return {"found": "cuda" in probed.values(), "probed": probed}


def _targets(
    profile: ScalingProfile, backends: tuple[str, ...] | None, devices: tuple[str, ...] | None = None
) -> list[tuple[str, str]]:
    from benchmarks.devices import discover

    if backends is None and profile.backends is not None:
        first, *others = profile.backends
        found = discover((first, *others), devices)
        other = next((t.backend for t in found if t.backend != first), None)
        return [(t.backend, t.device) for t in found if t.backend in (first, other)]
    return [(t.backend, t.device) for t in discover(backends, devices)]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill in the machine floors and tables of a document's records."""
    doc.update(derive(doc["records"]))
    return doc


def merge(doc: dict[str, Any], more: dict[str, Any], name: str) -> dict[str, Any]:
    """``doc`` with the points and worker processes of ``more`` added, replacing those of the same targets.

    For a target rerun on its own (e.g. on a subset of the grid, ``--batches``/``--widths``):
    its points and process note replace the first run's; the report names the file merged in.

    Examples
    --------
    >>> a = {"records": [{"backend": "torch", "device": "cpu", "width": 256, "batch": 32}], "processes": [
    ...     {"target": "torch/cpu", "reason": "killed"}]}
    >>> b = {"records": [{"backend": "torch", "device": "cpu", "width": 512, "batch": 64}], "processes": [
    ...     {"target": "torch/cpu"}], "started": "t", "load_avg": {}}
    >>> m = merge(a, b, "b.json")
    >>> [r["width"] for r in m["records"]], m["processes"], m["merged_from"][0]["file"]
    ([512], [{'target': 'torch/cpu'}], 'b.json')
    """
    targets = {p["target"] for p in more.get("processes", [])}
    targets |= {f"{r['backend']}/{r['device']}" for r in more["records"]}
    kept = [r for r in doc["records"] if f"{r['backend']}/{r['device']}" not in targets]
    processes = [p for p in doc.get("processes", []) if p["target"] not in targets]
    merged = {**doc, "records": kept + more["records"], "processes": processes + more.get("processes", [])}
    note = {"file": name, "targets": sorted(targets), "started": more.get("started"), "load_avg": more.get("load_avg")}
    merged["merged_from"] = [*doc.get("merged_from", []), note]
    return merged


def run(
    profile: ScalingProfile,
    backends: tuple[str, ...] | None = None,
    *,
    devices: tuple[str, ...] | None = None,
    threads: int | None = None,
    time_limit_s: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The sweep of ``profile`` on ``backends`` (default: the profile's), one process per target; the document.

    ``devices`` limits the targets to those device kinds (``("cuda",)``); default every one found.
    ``time_limit_s`` bounds the whole sweep: each worker gets what is left of it, its finished
    points are kept, and targets reached after it is spent are recorded as not run.

    ``threads`` caps the workers' CPU threads (OpenMP, BLAS, XLA; :func:`benchmarks.attention.thread_env`):
    on a shared machine, timings of the arithmetic rather than of the scheduler.
    """
    from benchmarks.attention import thread_env
    from benchmarks.results import ENVIRONMENT
    from yat_core.receipts import git_commit, machine_info, versions

    doc: dict[str, Any] = {
        "suite": "yat-core scaling benchmark",
        "schema": 1,
        "profile": asdict(profile),
        "n_samples": N_SAMPLES,
        "limits": {f"{b}/{d}": {"max_batch": mb, "max_width": mw} for (b, d), (mb, mw) in LIMITS.items()},
        "started": _now(),
        "load_avg": {"start": _load()},
        "cuda": probe_cuda(),
        "threads": threads,
        "devices": list(devices) if devices else None,
        "time_limit_s": time_limit_s,
        "records": [],
        "processes": [],
    }
    deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
    for backend, device in _targets(profile, backends, devices):
        points = grid(profile, backend, device)
        left = profile.timeout_s if deadline is None else min(profile.timeout_s, deadline - time.monotonic())
        if left < _LEAST_WORKER_S:
            reason = f"not run: the sweep's time limit of {time_limit_s:g} s was spent"
            doc["processes"].append(
                {"target": f"{backend}/{device}", "points": len(points), "measured": 0, "reason": reason}
            )
            log(f"{backend}/{device}: {reason}")
            continue
        log(f"{backend}/{device}: {len(points)} points in a fresh process")
        records, process = _run_worker_process(backend, device, points, profile, threads, left)
        doc["records"] += records
        doc["processes"].append(process)
        for r in records:
            what = f"{r['epoch_s']:.3g} s/epoch" if r["status"] == "ok" else r["status"]
            log(f"  w={r['width']} b={r['batch']}: {what}")
        if process.get("reason"):
            log(f"  {process['reason']}")
    doc.update(
        finished=_now(),
        git_commit=git_commit(),
        machine=machine_info(),
        versions=versions("numpy", "torch", "jax", "jaxlib", "mlx"),
        environment={k: os.environ[k] for k in ENVIRONMENT if k in os.environ} | thread_env(threads),
    )
    doc["load_avg"]["end"] = _load()
    return complete(doc)


# ---------------------------------------------------------------- command line


def _parse_points(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(w), int(b)) for w, b in (p.split("x") for p in text.split(","))]
    except ValueError:
        raise ValueError(f"points must read WIDTHxBATCH,... (e.g. 256x32,256x64), got {text!r}") from None


def _worker_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling worker")
    p.add_argument("--backend", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--profile", choices=tuple(PROFILES), default="full")
    p.add_argument("--points", required=True, help="WIDTHxBATCH,... in order")
    p.add_argument("--report", required=True, type=Path)
    args = p.parse_args(argv)
    worker(args.backend, args.device, _parse_points(args.points), PROFILES[args.profile], args.report, print)
    return 0


def _ints(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else tuple(int(v) for v in text.split(","))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.scaling [--quick] [--backends ...] [--batches ...] [--widths ...] [--out DIR]``,
    ``render JSON``, ``worker ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return _worker_main(argv[1:])
    if argv[:1] == ["render"]:
        if len(argv) < 2:
            print("usage: python -m benchmarks.scaling render RESULTS.json [MORE.json ...]", file=sys.stderr)
            return 2
        path = Path(argv[1])
        doc = json.loads(path.read_text())
        for extra in argv[2:]:
            doc = merge(doc, json.loads(Path(extra).read_text()), extra)
        for out in write_outputs(complete(doc), path.parent).values():
            print(f"wrote {out}")
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 batches x 2 widths, NumPy and one other backend")
    parser.add_argument("--backends", default=None, help="comma-separated subset of numpy,torch,jax,mlx")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default: the profile's)")
    parser.add_argument("--widths", default=None, help="comma-separated even hidden widths (default: the profile's)")
    parser.add_argument("--devices", default=None, help="comma-separated device kinds: cpu, cuda, gpu (default: all)")
    parser.add_argument("--out", default=None, help="output folder (default results/bench-scaling[-quick])")
    parser.add_argument(
        "--threads", type=int, default=None, help="cap the workers' CPU threads (OMP/BLAS/XLA), for a shared machine"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="end the whole sweep within this many seconds, keeping the points finished by then",
    )
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "full"]
    try:
        batches, widths = _ints(args.batches), _ints(args.widths)
    except ValueError:
        parser.error("--batches and --widths take comma-separated integers, e.g. --batches 32,128")
    for w in widths or ():
        if w < 2 or w % 2:
            parser.error(f"--widths: {w} is not an even number >= 2")
    if any(b < 1 for b in batches or ()):
        parser.error("--batches: batch sizes must be >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.time_limit is not None and args.time_limit <= 0:
        parser.error(f"--time-limit must be > 0 seconds, got {args.time_limit:g}")
    try:
        devices = parse_devices(args.devices)
    except ValueError as exc:
        parser.error(f"--devices: {exc}")
    profile = ScalingProfile(
        **{**asdict(profile), "batches": batches or profile.batches, "widths": widths or profile.widths}
    )
    backends = tuple(args.backends.split(",")) if args.backends else None
    doc = run(profile, backends, devices=devices, threads=args.threads, time_limit_s=args.time_limit)
    for out in write_outputs(doc, Path(args.out) if args.out else RESULTS_DIRS[profile.name]).values():
        print(f"wrote {out}")
    # Exit status 1 when a point failed or a worker stopped before its last point.
    complete_run = all(r["status"] == "ok" for r in doc["records"]) and not any(
        p.get("reason") for p in doc["processes"]
    )
    return 0 if doc["records"] and complete_run else 1


if __name__ == "__main__":
    sys.exit(main())
