"""Attention timings: Yat attention against softmax attention and nmn's, as the sequence grows.

``python -m benchmarks.attention [--quick] [--backends torch,jax,...]`` times one
self-attention block of the vision transformer's shape on every installed backend
and device (:func:`benchmarks.devices.discover`) at sequence lengths 64 to 1024
(quick: 64 and 256), and writes ``attention.json``, ``attention.md`` and
``attention.png`` to ``results/bench-attention`` (quick: ``results/bench-attention-quick``).

The timed unit (:data:`SHAPE`): input ``x (batch 8, T, 64)``; query, key, value and
output projections ``64 -> 64`` with biases (the ViT's, initialised uniform
``±1/sqrt(64)``); 4 heads of size 16; the attention; the output projection. Models
(:data:`MODELS`), each through the same block, data and loop:

- ``yat``: :func:`yat_core.attention.yat_attention` (alpha 1, epsilon 1e-5);
- ``softmax``: :func:`yat_core.attention.softmax_attention`, the same machinery with the
  scaled dot product;
- ``fused``: the framework's own fused softmax attention (``F.scaled_dot_product_attention``,
  ``jax.nn.dot_product_attention``, ``mx.fast.scaled_dot_product_attention``), a reference;
- ``nmn``: nmn 0.3.5's ``yat_attention`` of the framework (``nmn.torch.attention``,
  ``nmn.linen.attention``, ``nmn.mlx.attention``), called as a black box, same options.

Kinds: the forward pass, and the training step (forward, the loss ``mean(out^2)``, the
gradients of the eight projection parameters, one plain SGD update). Each backend
compiles as it compiles the ViT: the yat and softmax gradients are the backend's mode
for the ViT (PyTorch: autodiff on the CPU, the loss under ``torch.compile``, and on a
GPU the core's analytic backward, the whole step under ``torch.compile``; JAX, MLX:
autodiff, the whole step under ``jax.jit`` / ``mx.compile``; NumPy: analytic, no
compiler). The fused and nmn attentions have no analytic backward
and use the framework's autodiff (PyTorch: the loss under ``torch.compile``,
differentiated by AOTAutograd, as the backend's autodiff mode runs). Forward passes are
compiled the same way for every model.

Every (backend, device, model, length) runs in a fresh process (:func:`worker`): the
first call (tracing, compilation) is timed on its own, a few more warm up, then the
median of the timed rounds; every call waits for its result (``cuda.synchronize``,
``block_until_ready``, ``mx.eval``). Peak memory (:func:`_memory_reader`): on CUDA
``torch.cuda.max_memory_allocated`` (JAX: the device's ``peak_bytes_in_use``) over the
timed training steps; on the CPU the growth of the process's peak resident set
(``VmHWM``, reset after the warm-up) over its resident set after the imports, i.e.
what the steady training steps hold and allocate beyond the loaded frameworks.

The criterion of issue 10, per backend and length: Yat's training step at most 1.5x
softmax attention's, and no slower than nmn's (``nmn / Yat >= 1``; NumPy, having no nmn,
is judged on the first alone).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "SHAPE",
    "MODELS",
    "KINDS",
    "PROFILES",
    "MAX_RATIO_SOFTMAX",
    "Shape",
    "AttentionProfile",
    "Case",
    "cases",
    "init_block",
    "block_forward",
    "block_loss",
    "block_value_and_grad",
    "attention_fn",
    "build",
    "measure_warm",
    "worker",
    "derive",
    "render_markdown",
    "render_chart",
    "write_outputs",
    "main",
]

#: Yat, the core's softmax attention, the framework's fused softmax, nmn's Yat attention; then Yat and
#: softmax by autodiff on PyTorch, whose own mode for the ViT is the analytic backward on a GPU.
MODELS = ("yat", "softmax", "fused", "nmn", "yat_ad", "softmax_ad")
#: Timed per case, in this order (the training step first: its rounds give the memory figure).
KINDS = ("train_step", "forward")
#: The judged bound on Yat's training step over softmax attention's.
MAX_RATIO_SOFTMAX = 1.5
#: SGD's learning rate (the update's cost does not depend on it).
LR = 1e-3
#: The frameworks each model exists for (NumPy has no fused attention and no nmn module).
_AVAILABLE = {
    "yat": ("numpy", "torch", "jax", "mlx"),
    "softmax": ("numpy", "torch", "jax", "mlx"),
    "fused": ("torch", "jax", "mlx"),
    "nmn": ("torch", "jax", "mlx"),
    "yat_ad": ("torch",),
    "softmax_ad": ("torch",),
}
#: nmn's attention module for each backend's framework.
NMN_ATTENTION = {"torch": "nmn.torch.attention", "jax": "nmn.linen.attention", "mlx": "nmn.mlx.attention"}
#: Where the two profiles write.
RESULTS_DIRS = {"full": Path("results") / "bench-attention", "quick": Path("results") / "bench-attention-quick"}
OUTPUT_NAMES = {"json": "attention.json", "markdown": "attention.md", "chart": "attention.png"}


class Shape(NamedTuple):
    """The attention block's shape: the ViT's width and heads, at batch ``batch``."""

    batch: int = 8
    d_model: int = 64
    heads: int = 4

    @property
    def head_size(self) -> int:
        return self.d_model // self.heads


SHAPE = Shape()


@dataclass(frozen=True)
class AttentionProfile:
    """Sequence lengths and how long to time each case."""

    name: str
    lengths: tuple[int, ...]
    warmup_calls: int  # untimed calls after the first (compiling) one
    budget_s: float  # timed rounds fill about this much per kind
    min_rounds: int
    max_rounds: int
    timeout_s: float  # per worker process


PROFILES = {
    "full": AttentionProfile("full", (64, 128, 256, 512, 1024), 3, 2.0, 5, 50, 900.0),
    "quick": AttentionProfile("quick", (64, 256), 2, 0.5, 3, 15, 600.0),
}


class Case(NamedTuple):
    """One worker process: a model at one sequence length on one backend and device."""

    backend: str
    device: str
    model: str
    length: int

    @property
    def id(self) -> str:
        return f"{self.backend}/{self.device}-{self.model}-T{self.length}"


def cases(targets: Sequence[tuple[str, str]], lengths: Sequence[int], models: Sequence[str] = MODELS) -> list[Case]:
    """Every (backend, device, model, length) to run, models that do not exist for a framework left out.

    Examples
    --------
    >>> [c.id for c in cases([("numpy", "cpu")], [64])]
    ['numpy/cpu-yat-T64', 'numpy/cpu-softmax-T64']
    """
    return [
        Case(backend, device, model, length)
        for backend, device in targets
        for length in lengths
        for model in MODELS
        if model in models and backend in _AVAILABLE[model]
    ]


# ---------------------------------------------------------------- the block


def init_block(shape: Shape = SHAPE, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 projections ``{q,k,v,o}_kernel (d, d)`` (layout ``(out, in)``) and ``{q,k,v,o}_bias (d,)``.

    Uniform ``±1/sqrt(d)``, as the ViT's attention projections start.

    Examples
    --------
    >>> sorted(init_block(Shape(2, 8, 2)))[:3]
    ['k_bias', 'k_kernel', 'o_bias']
    """
    rng = np.random.default_rng(seed)
    d, bound = shape.d_model, 1.0 / math.sqrt(shape.d_model)
    params = {}
    for p in "qkvo":
        params[f"{p}_kernel"] = rng.uniform(-bound, bound, (d, d)).astype(np.float32)
        params[f"{p}_bias"] = rng.uniform(-bound, bound, (d,)).astype(np.float32)
    return params


def make_input(shape: Shape, length: int, seed: int = 0) -> np.ndarray:
    """Standard-normal float32 tokens ``(batch, length, d_model)``."""
    rng = np.random.default_rng(seed + 1)
    return rng.standard_normal((shape.batch, length, shape.d_model)).astype(np.float32)


def _heads(a: Any, heads: int, xp: Any) -> Any:
    n, t, d = (int(s) for s in a.shape)
    return xp.reshape(a, (n, t, heads, d // heads))


def _projections(params: dict[str, Any], x: Any, heads: int, xp: Any) -> list[Any]:
    from yat_core.product import dense

    return [_heads(dense(x, params[f"{p}_kernel"], bias=params[f"{p}_bias"], xp=xp), heads, xp) for p in "qkv"]


def block_forward(params: dict[str, Any], x: Any, attend: Callable[..., Any], heads: int, xp: Any) -> Any:
    """``o(attend(q(x), k(x), v(x)))`` for ``x (n, T, d)``; ``attend`` takes and returns ``(n, T, heads, d/heads)``."""
    from yat_core.product import dense

    q, k, v = _projections(params, x, heads, xp)
    a = xp.reshape(attend(q, k, v), tuple(x.shape))
    return dense(a, params["o_kernel"], bias=params["o_bias"], xp=xp)


def block_loss(params: dict[str, Any], x: Any, attend: Callable[..., Any], heads: int, xp: Any) -> Any:
    """The scalar loss of the training step: ``mean(out^2)``."""
    out = block_forward(params, x, attend, heads, xp)
    return xp.mean(out * out)


def _flat(a: Any, xp: Any) -> Any:
    return xp.reshape(a, (-1, int(a.shape[-1])))


def block_value_and_grad(params: dict[str, Any], x: Any, model: str, heads: int, xp: Any) -> tuple[Any, dict]:
    """:func:`block_loss` and its gradients by the core's analytic backward (``model`` "yat" or "softmax").

    Through the output projection, :func:`yat_core.attention.yat_attention_vjp` (or
    :func:`~yat_core.attention.softmax_attention_vjp`), then the three input projections.
    """
    from yat_core.attention import softmax_attention, softmax_attention_vjp, yat_attention, yat_attention_vjp
    from yat_core.product import dense

    attend, vjp = {
        "yat": (yat_attention, yat_attention_vjp),
        "softmax": (softmax_attention, softmax_attention_vjp),
    }[model]
    q, k, v = _projections(params, x, heads, xp)
    a = xp.reshape(attend(q, k, v, xp=xp), tuple(x.shape))
    out = dense(a, params["o_kernel"], bias=params["o_bias"], xp=xp)
    loss = xp.mean(out * out)
    g_out = out * (2.0 / math.prod(int(s) for s in out.shape))
    grads = {
        "o_kernel": xp.matrix_transpose(_flat(g_out, xp)) @ _flat(a, xp),
        "o_bias": xp.sum(_flat(g_out, xp), axis=0),
    }
    g_a = xp.reshape(g_out @ params["o_kernel"], tuple(q.shape))
    parts = vjp(q, k, v, g_a, xp=xp)
    for p, g_p in zip("qkv", (parts.q, parts.k, parts.v)):
        g_p = xp.reshape(g_p, (-1, int(x.shape[-1])))  # heads merged back: (n * T, d)
        grads[f"{p}_kernel"] = xp.matrix_transpose(g_p) @ _flat(x, xp)
        grads[f"{p}_bias"] = xp.sum(g_p, axis=0)
    return loss, {name: grads[name] for name in params}


def attention_fn(model: str, backend: str, xp: Any) -> Callable[[Any, Any, Any], Any]:
    """``attend(q, k, v)`` on ``(n, T, heads, d)`` arrays of ``backend``'s framework for ``model``.

    Raises
    ------
    ValueError
        For a model that does not exist for the framework (NumPy's fused or nmn attention).
    ImportError
        When nmn (or its module for this framework) is not installed.
    """
    if backend not in _AVAILABLE.get(model, ()):
        raise ValueError(f"no {model!r} attention for the {backend} backend")
    model = model.removesuffix("_ad")
    if model in ("yat", "softmax"):
        from yat_core.attention import softmax_attention, yat_attention

        return functools.partial(yat_attention if model == "yat" else softmax_attention, xp=xp)
    if model == "nmn":
        import importlib

        module = importlib.import_module(NMN_ATTENTION[backend])
        # No dropout, nmn's defaults otherwise (alpha None, epsilon 1e-5: ours).
        extra = {"jax": {"deterministic": True}}.get(backend, {"training": False})
        return functools.partial(module.yat_attention, **extra)
    return _FUSED[backend]()


def _fused_torch() -> Callable[..., Any]:
    import torch.nn.functional as F

    def attend(q: Any, k: Any, v: Any) -> Any:  # torch wants (n, heads, T, d)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    return attend


def _fused_jax() -> Callable[..., Any]:
    import jax

    return jax.nn.dot_product_attention  # (n, T, heads, d), as ours


def _fused_mlx() -> Callable[..., Any]:
    import mlx.core as mx

    def attend(q: Any, k: Any, v: Any) -> Any:  # MLX wants (n, heads, T, d)
        scale = 1.0 / math.sqrt(int(q.shape[-1]))
        out = mx.fast.scaled_dot_product_attention(
            mx.swapaxes(q, 1, 2), mx.swapaxes(k, 1, 2), mx.swapaxes(v, 1, 2), scale=scale
        )
        return mx.swapaxes(out, 1, 2)

    return attend


_FUSED = {"torch": _fused_torch, "jax": _fused_jax, "mlx": _fused_mlx}


# ---------------------------------------------------------------- one case


def gradient_mode(case: Case) -> str:
    """How the training step differentiates: the backend's mode for the ViT (yat, softmax), else autodiff.

    ``yat_ad`` and ``softmax_ad`` are Yat and softmax by autodiff, beside the analytic mode.
    """
    if case.model not in ("yat", "softmax"):
        return "autodiff"
    from yat_core.backends import get_backend
    from yat_core.spec import vit_spec

    return get_backend(case.backend, case.device, spec=vit_spec()).gradients


def build(case: Case, kind: str, shape: Shape = SHAPE, seed: int = 0) -> Callable[[], Any]:
    """Parameters, data and the compiled ``kind`` of ``case``; returns ``run()``: one synchronised call.

    The training step threads its parameters through (JAX donates them).
    """
    from yat_core.backends import get_backend

    mode = gradient_mode(case)
    b = get_backend(case.backend, case.device, gradients=mode)
    # Forward passes compile as the backend compiles its default-mode steps (torch.compile on PyTorch).
    fwd_backend = get_backend(case.backend, case.device)
    xp = b.xp
    attend = attention_fn(case.model, case.backend, xp)
    params = {k: b.asarray(v) for k, v in init_block(shape, seed).items()}
    x = b.asarray(make_input(shape, case.length, seed))
    heads = shape.heads

    def wait(tree: Any) -> None:
        b.settle(tree)
        b.synchronize(tree)

    if kind == "forward":
        forward = fwd_backend.compile(functools.partial(block_forward, attend=attend, heads=heads, xp=xp))

        def run_forward() -> Any:
            out = forward(params, x)
            wait(out)
            return out

        return run_forward
    if kind != "train_step":
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if mode == "analytic":
        value_and_grad = functools.partial(block_value_and_grad, model=case.model, heads=heads, xp=xp)
    else:
        value_and_grad = b.value_and_grad(functools.partial(block_loss, attend=attend, heads=heads, xp=xp))

    def step(params: dict[str, Any], x: Any) -> tuple[dict[str, Any], Any]:
        loss, grads = value_and_grad(params, x)
        return {k: p - LR * grads[k] for k, p in params.items()}, loss

    compiled = b.compile(step, donate_argnums=(0,))
    state = {"params": params}

    def run_step() -> Any:
        state["params"], loss = compiled(state["params"], x)
        wait((state["params"], loss))
        return loss

    return run_step


def _time_calls(run: Callable[[], Any], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def _timed(run: Callable[[], Any], typical_s: float, profile: AttentionProfile) -> dict[str, Any]:
    from benchmarks.steps import rounds_for

    times = _time_calls(run, rounds_for(typical_s, profile.budget_s, profile.min_rounds, profile.max_rounds))
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "rounds": len(times),
    }


# ---------------------------------------------------------------- memory


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_hwm() -> bool:
    # Linux >= 4.0: writing 5 resets the peak resident set (VmHWM) to the current one.
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _MemoryReader:
    """Peak memory of the timed training steps, by the device's own accounting (see the module docstring)."""

    def __init__(self, backend: str, device: str) -> None:
        self.backend, self.device = backend, device
        self.method = self._method()
        gc.collect()
        self.baseline_kb = _proc_status_kb("VmRSS")  # after the imports, before any array exists
        self.resettable = True

    def _method(self) -> str:
        if self.device == "cpu":
            return "cpu: peak RSS growth over the post-import RSS"
        if self.backend == "torch":
            return "cuda: torch.cuda.max_memory_allocated"
        if self.backend == "jax":
            return "gpu: device peak_bytes_in_use (since process start)"
        if self.backend == "mlx":
            return "gpu: mx.get_peak_memory"
        return "n/a"

    def reset(self) -> None:
        """Start the peak afresh (after compilation and warm-up)."""
        if self.device == "cpu":
            self.resettable = _reset_hwm()
        elif self.backend == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif self.backend == "mlx":
            import mlx.core as mx

            mx.reset_peak_memory()

    def peak_mb(self) -> float | None:
        """The peak since :meth:`reset`, MiB (on a CPU without a resettable peak: since the process started)."""
        if self.device == "cpu":
            hwm = _proc_status_kb("VmHWM")
            if hwm is None or self.baseline_kb is None:
                import resource

                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return (hwm - self.baseline_kb) / 1024
        if self.backend == "torch":
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        if self.backend == "jax":
            import jax

            stats = jax.devices("gpu")[0].memory_stats() or {}
            peak = stats.get("peak_bytes_in_use")
            return None if peak is None else peak / 2**20
        if self.backend == "mlx":
            import mlx.core as mx

            return mx.get_peak_memory() / 2**20
        return None


def _memory_reader(backend: str, device: str) -> _MemoryReader:
    return _MemoryReader(backend, device)


# ---------------------------------------------------------------- the worker process


def worker(case: Case, profile: AttentionProfile, shape: Shape = SHAPE) -> dict[str, Any]:
    """Time ``case``'s training step (with its peak memory) then its forward pass; the record."""
    from yat_core.backends import get_backend

    record: dict[str, Any] = {**case._asdict(), "status": "ok", "shape": shape._asdict()}
    try:
        b = get_backend(case.backend, case.device)  # imports the framework as the backend loads it
        record["device_name"] = b.device_name()
        record["gradients"] = gradient_mode(case)
        attention_fn(case.model, case.backend, b.xp)  # imports nmn's module before the baseline
    except ImportError as exc:
        return {**record, "status": "n/a", "reason": f"{exc.__class__.__name__}: {exc}"}
    memory = _memory_reader(case.backend, case.device)
    record["memory_method"] = memory.method
    try:
        for kind in KINDS:
            run = build(case, kind, shape)
            first, typical = measure_warm(run, profile)
            if kind == "train_step":
                if memory.device == "cpu":
                    record["process_peak_mb"] = _peak_growth_mb(memory)
                memory.reset()
            timed = _timed(run, typical, profile)
            record[kind] = {"first_call_s": first, **timed}
            if kind == "train_step":
                record["peak_mb"] = memory.peak_mb()
                record["peak_reset"] = memory.resettable
            del run
            gc.collect()
    except Exception as exc:  # noqa: BLE001 - one case failing (e.g. a compiler fault) must not stop the run
        record.update(status="error", reason=f"{exc.__class__.__name__}: {exc}"[:500])
        record["traceback"] = traceback.format_exc()[-2000:]
    return record


def measure_warm(run: Callable[[], Any], profile: AttentionProfile) -> tuple[float, float]:
    """The first call's seconds (compilation included) and the median of ``profile.warmup_calls`` more."""
    from benchmarks.steps import warm_up

    return warm_up(run, profile.warmup_calls)


def _peak_growth_mb(memory: _MemoryReader) -> float | None:
    # Before the reset: the whole process's peak over the baseline, compilation included.
    hwm = _proc_status_kb("VmHWM")
    return None if hwm is None or memory.baseline_kb is None else (hwm - memory.baseline_kb) / 1024


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that caps the frameworks' CPU threads at ``threads`` (nothing when None).

    On a shared machine a multi-threaded kernel whose threads are descheduled stalls at
    every barrier; capped runs measure the arithmetic rather than the scheduler.

    Examples
    --------
    >>> thread_env(1)["OMP_NUM_THREADS"], thread_env(None)
    ('1', {})
    """
    if threads is None:
        return {}
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    env = {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # XLA's CPU pool takes its size from PJRT_NPROC; XLA_FLAGS holds only flags XLA knows.
    env["PJRT_NPROC"] = str(threads)
    flags = f"--xla_cpu_multi_thread_eigen={'false' if threads == 1 else 'true'}"
    env["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS"), flags)))
    return env


def _run_worker_process(case: Case, profile: AttentionProfile, threads: int | None = None) -> dict[str, Any]:
    from benchmarks.processes import python_env, run_measured, scratch_path

    report = scratch_path("attention")
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.attention",
        "worker",
        "--backend",
        case.backend,
        "--device",
        case.device,
        "--model",
        case.model,
        "--length",
        str(case.length),
        "--profile",
        profile.name,
        "--report",
        str(report),
    ]
    result = run_measured(cmd, timeout_s=profile.timeout_s, env={**python_env(), **thread_env(threads)})
    try:
        record = json.loads(report.read_text())
    except (OSError, ValueError):
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        what = "timed out" if result.timed_out else f"exit {result.returncode}"
        record = {**case._asdict(), "status": "error", "reason": f"worker {what}: {' | '.join(tail)}"[:500]}
    finally:
        report.unlink(missing_ok=True)
    record["wall_s"] = result.wall_s
    return record


# ---------------------------------------------------------------- derived tables


def _ms(record: dict[str, Any] | None, kind: str) -> float | None:
    if not record or record.get("status") != "ok" or kind not in record:
        return None
    return record[kind]["median_s"] * 1e3


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def derive(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per ``backend/device``: one row per length with the times (ms), ratios, memory and the verdict.

    ``meets``: Yat's step <= 1.5x softmax's and nmn's step / Yat's >= 1 (where nmn ran);
    None when Yat's or softmax's step is missing.

    Examples
    --------
    >>> rec = lambda m, s: {"backend": "numpy", "device": "cpu", "model": m, "length": 64, "status": "ok",
    ...                     "train_step": {"median_s": s}, "forward": {"median_s": s / 3}, "peak_mb": 1.0}
    >>> row = derive([rec("yat", 0.003), rec("softmax", 0.002)])["numpy/cpu"][0]
    >>> round(row["yat_over_softmax"], 2), row["meets"]
    (1.5, True)
    """
    by_key: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    order: list[str] = []
    for r in records:
        label = f"{r['backend']}/{r['device']}"
        if label not in order:
            order.append(label)
        by_key.setdefault((label, int(r["length"])), {})[r["model"]] = r
    tables: dict[str, list[dict[str, Any]]] = {label: [] for label in order}
    for (label, length), models in sorted(by_key.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        row: dict[str, Any] = {"length": length}
        for model in MODELS:
            r = models.get(model)
            row[f"{model}_fwd_ms"] = _ms(r, "forward")
            row[f"{model}_step_ms"] = _ms(r, "train_step")
            row[f"{model}_peak_mb"] = r.get("peak_mb") if r and r.get("status") == "ok" else None
            row[f"{model}_status"] = None if r is None else r.get("status")
        row["yat_over_softmax"] = _ratio(row["yat_step_ms"], row["softmax_step_ms"])
        row["nmn_over_yat"] = _ratio(row["nmn_step_ms"], row["yat_step_ms"])
        row["yat_over_fused"] = _ratio(row["yat_step_ms"], row["fused_step_ms"])
        row["yat_over_softmax_ad"] = _ratio(row["yat_ad_step_ms"], row["softmax_ad_step_ms"])
        row["nmn_over_yat_ad"] = _ratio(row["nmn_step_ms"], row["yat_ad_step_ms"])
        if row["yat_over_softmax"] is None:
            row["meets"] = None
        else:
            ok = row["yat_over_softmax"] <= MAX_RATIO_SOFTMAX
            if row["nmn_over_yat"] is not None:
                ok = ok and row["nmn_over_yat"] >= 1.0
            row["meets"] = ok
        tables[label].append(row)
    return tables


# ---------------------------------------------------------------- report


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _mem(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def render_markdown(doc: dict[str, Any]) -> str:
    """The Markdown report of a document of :func:`run` (tables derived by :func:`derive`)."""
    shape = Shape(**doc["shape"])
    load = doc.get("load_avg", {})
    machine = doc.get("machine", {})
    lines = [
        f"# Yat attention vs softmax attention vs nmn {doc.get('versions', {}).get('nmn') or '(not installed)'}"
        f" ({doc['profile']['name']} profile)",
        "",
        f"One self-attention block as in the ViT: input `(batch {shape.batch}, T, {shape.d_model})`, q/k/v/o "
        f"projections `{shape.d_model} -> {shape.d_model}` with biases, {shape.heads} heads of size "
        f"{shape.head_size}, float32. *fwd*: the block's forward pass; *step*: forward, loss `mean(out^2)`, the "
        "gradients of the eight projection parameters, one SGD update. Median ms of the timed rounds after the "
        "first (compiling) call and a warm-up, every call synchronised. Models: **Yat** "
        "`yat_core.attention.yat_attention` (alpha 1, epsilon 1e-5); **softmax** `softmax_attention` through "
        "the same machinery; **fused** the framework's own fused softmax attention (a reference); **nmn** nmn's "
        "`yat_attention` of the framework (`nmn.torch.attention`, `nmn.linen.attention`, `nmn.mlx.attention`), "
        "same block, data and loop.",
        "",
        "Gradients (*grad*): Yat and softmax use the backend's mode for the ViT (PyTorch: autodiff on the CPU, the "
        "core's analytic backward on a GPU, under `torch.compile`; JAX / MLX: autodiff, the whole step under `jax.jit` / "
        "`mx.compile`; NumPy: analytic, no compiler); fused and nmn have no analytic backward and use autodiff "
        "(PyTorch: the loss under `torch.compile`, its backward by AOTAutograd). Forward passes are compiled "
        "alike for every model.",
        "",
        "**Peak memory** (MiB, training step): " + doc["memory_note"],
        "",
        f"**Criterion** (*meets*): Yat's step <= {MAX_RATIO_SOFTMAX:g}x softmax's at the same shape, and nmn / "
        "Yat >= 1 (nmn's step no faster than Yat's); NumPy, which has no nmn, is judged on the first alone.",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; load average (1, 5, 15 min) "
        f"{load.get('start')} at the start, {load.get('end')} at the end. Started {doc.get('started')}, "
        f"finished {doc.get('finished')}, commit {doc.get('git_commit') or '?'}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in (doc.get("versions") or {}).items() if v)
        + "."
        + (
            " Environment: " + ", ".join(f"`{k}={v}`" for k, v in doc["environment"].items()) + "."
            if doc.get("environment")
            else ""
        ),
        "",
    ]
    for m in doc.get("merged_from", []):
        lines += [f"Cases merged in from `{m['file']}` (started {m['started']}, load average {m['load_avg']}).", ""]
    summary = doc.get("summary", {})
    if summary:
        lines += [
            f"**Summary**: {summary['met']} of {summary['judged']} (backend, length) rows meet the criterion"
            + (f"; not met: {', '.join(summary['not_met'])}" if summary["not_met"] else "")
            + f". Worst Yat / softmax step {_f(summary['worst_yat_over_softmax'])}, lowest nmn / Yat "
            f"{_f(summary['lowest_nmn_over_yat'])}.",
            "",
        ]
    devices = {f"{r['backend']}/{r['device']}": r.get("device_name") for r in doc["records"] if r.get("device_name")}
    grads = {
        f"{r['backend']}/{r['device']}": r.get("gradients")
        for r in doc["records"]
        if r.get("model") == "yat" and r.get("gradients")
    }
    for label, rows in doc["tables"].items():
        lines += [
            f"## {label}" + (f" ({devices[label]})" if devices.get(label) else ""),
            "",
            f"Yat / softmax gradients: {grads.get(label, '?')}.",
            "",
            "| T | Yat fwd | Yat step | softmax fwd | softmax step | Yat / softmax (step) | nmn step | nmn / Yat "
            "| fused fwd | fused step | mem Yat | mem softmax | mem nmn | mem fused | meets |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            cells = [
                row["length"],
                _f(row["yat_fwd_ms"]),
                _f(row["yat_step_ms"]),
                _f(row["softmax_fwd_ms"]),
                _f(row["softmax_step_ms"]),
                _f(row["yat_over_softmax"]) + "x" if row["yat_over_softmax"] is not None else "n/a",
                _f(row["nmn_step_ms"]),
                _f(row["nmn_over_yat"]) + "x" if row["nmn_over_yat"] is not None else "n/a",
                _f(row["fused_fwd_ms"]),
                _f(row["fused_step_ms"]),
                _mem(row["yat_peak_mb"]),
                _mem(row["softmax_peak_mb"]),
                _mem(row["nmn_peak_mb"]),
                _mem(row["fused_peak_mb"]),
                _f(row["meets"]),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
        if any(row["yat_ad_step_ms"] is not None for row in rows):
            lines += [
                "Yat and softmax by the framework's autodiff (the loss compiled, its backward by the compiler), "
                "the path nmn's attention takes here; not judged (the backend's own mode above is):",
                "",
                "| T | Yat step (autodiff) | softmax step (autodiff) | Yat / softmax | nmn / Yat (autodiff) "
                "| mem Yat (autodiff) | mem softmax (autodiff) |",
                "|---|---|---|---|---|---|---|",
            ]
            for row in rows:
                cells = [
                    row["length"],
                    _f(row["yat_ad_step_ms"]),
                    _f(row["softmax_ad_step_ms"]),
                    _f(row["yat_over_softmax_ad"]) + "x" if row["yat_over_softmax_ad"] is not None else "n/a",
                    _f(row["nmn_over_yat_ad"]) + "x" if row["nmn_over_yat_ad"] is not None else "n/a",
                    _mem(row["yat_ad_peak_mb"]),
                    _mem(row["softmax_ad_peak_mb"]),
                ]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
            lines.append("")
    failures = [r for r in doc["records"] if r.get("status") != "ok"]
    if failures:
        lines += ["## Cases that did not run", ""]
        lines += [
            f"- `{Case(r['backend'], r['device'], r['model'], r['length']).id}` ({r['status']}): {r.get('reason', '')}"
            for r in failures
        ]
        lines.append("")
    lines += [
        "## Every case",
        "",
        "| case | grad | first call s | step median ms | step min ms | rounds | fwd median ms | peak MiB "
        "| process peak MiB | worker wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["records"]:
        if r.get("status") != "ok":
            continue
        step, fwd = r["train_step"], r["forward"]
        cells = [
            Case(r["backend"], r["device"], r["model"], r["length"]).id,
            r.get("gradients", "?"),
            _f(step["first_call_s"]),
            _f(step["median_s"] * 1e3),
            _f(step["min_s"] * 1e3),
            step["rounds"],
            _f(fwd["median_s"] * 1e3),
            _mem(r.get("peak_mb")),
            _mem(r.get("process_peak_mb")),
            _f(r.get("wall_s")),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)


_STYLE = {
    "yat": ("C0", "o", "-"),
    "softmax": ("C1", "s", "-"),
    "fused": ("C2", "^", "-"),
    "nmn": ("C3", "D", "-"),
    "yat_ad": ("C0", "o", ":"),
    "softmax_ad": ("C1", "s", ":"),
}


def render_chart(doc: dict[str, Any], path: str | Path) -> Path:
    """Step time and peak memory against sequence length (log-log), a row of two panels per backend/device."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    from yat_core._io import atomic_write

    labels = list(doc["tables"]) or ["(no results)"]
    fig, axes = plt.subplots(len(labels), 2, figsize=(11, 3.2 * len(labels)), squeeze=False)
    for (ax_t, ax_m), label in zip(axes, labels):
        rows = doc["tables"].get(label, [])
        for model in MODELS:
            color, marker, line = _STYLE[model]
            for ax, key in ((ax_t, f"{model}_step_ms"), (ax_m, f"{model}_peak_mb")):
                pts = [(r["length"], r[key]) for r in rows if r.get(key) is not None and r[key] > 0]
                if pts:
                    ax.plot(*zip(*pts), color=color, marker=marker, linestyle=line, label=model)
        for ax, what in ((ax_t, "training step, ms (median)"), (ax_m, "peak memory, MiB (training step)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length T")
            ax.set_title(f"{label}: {what}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(
        f"Yat vs softmax vs nmn attention ({doc['profile']['name']} profile), batch {doc['shape']['batch']}, "
        f"d_model {doc['shape']['d_model']}, {doc['shape']['heads']} heads",
        fontsize=10,
    )
    fig.tight_layout()
    out = atomic_write(Path(path), lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return out


def summarize(tables: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """How many judged rows meet the criterion, which do not, the worst ratios."""
    judged = [(label, row) for label, rows in tables.items() for row in rows if row["meets"] is not None]
    ratios = [row["yat_over_softmax"] for _, row in judged]
    nmn = [row["nmn_over_yat"] for _, row in judged if row["nmn_over_yat"] is not None]
    return {
        "judged": len(judged),
        "met": sum(bool(row["meets"]) for _, row in judged),
        "not_met": [f"{label} T={row['length']}" for label, row in judged if not row["meets"]],
        "worst_yat_over_softmax": max(ratios) if ratios else None,
        "lowest_nmn_over_yat": min(nmn) if nmn else None,
    }


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill in the derived tables and the summary of a document's records."""
    doc["tables"] = derive(doc["records"])
    doc["summary"] = summarize(doc["tables"])
    return doc


def write_outputs(doc: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``attention.json``, ``attention.md`` and ``attention.png`` in ``out_dir``, each written atomically."""
    from benchmarks.results import write_outputs as write_report

    return write_report(doc, out_dir, OUTPUT_NAMES, render_markdown, render_chart)


MEMORY_NOTE = (
    "on the CPU, the growth of the worker process's peak resident set (`VmHWM`, reset after the compiling call "
    "and the warm-up) during the timed training steps over its resident set right after the imports (framework "
    "and nmn loaded, no array yet): parameters, data, compiled code and what the steps allocate; *process peak* "
    "(every case table) is the same growth without the reset, compilation included. On CUDA "
    "`torch.cuda.max_memory_allocated` over the timed steps (JAX: the device's `peak_bytes_in_use` since the "
    "process started; MLX: `mx.get_peak_memory` over the timed steps). One fresh process per "
    "(backend, device, model, length)."
)


def run(
    profile: AttentionProfile,
    backends: tuple[str, ...] | None = None,
    *,
    in_process: bool = False,
    threads: int | None = None,
    models: Sequence[str] = MODELS,
) -> dict[str, Any]:
    """Every case of ``profile`` on the installed ``backends`` (all when None); the completed document."""
    import datetime as dt

    from benchmarks.devices import discover
    from benchmarks.results import ENVIRONMENT
    from yat_core.receipts import git_commit, machine_info, versions

    def now() -> str:
        return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    def load() -> list[float] | None:
        try:
            return [round(v, 2) for v in os.getloadavg()]
        except (AttributeError, OSError):
            return None

    doc: dict[str, Any] = {
        "suite": "yat-core attention benchmark",
        "schema": 1,
        "profile": asdict(profile),
        "shape": SHAPE._asdict(),
        "criterion": {"max_yat_over_softmax": MAX_RATIO_SOFTMAX, "min_nmn_over_yat": 1.0},
        "memory_note": MEMORY_NOTE,
        "started": now(),
        "load_avg": {"start": load()},
        "threads": threads,
        "records": [],
    }
    targets = [(t.backend, t.device) for t in discover(backends)]
    todo = cases(targets, profile.lengths, models)
    for i, case in enumerate(todo, 1):
        t0 = time.perf_counter()
        record = worker(case, profile) if in_process else _run_worker_process(case, profile, threads)
        doc["records"].append(record)
        step = _ms(record, "train_step")
        what = f"step {step:.3g} ms" if step is not None else f"{record['status']}: {record.get('reason', '')}"
        print(f"[{i}/{len(todo)}] {case.id}: {what} ({time.perf_counter() - t0:.1f} s)", flush=True)
    doc.update(
        finished=now(),
        git_commit=git_commit(),
        machine=machine_info(),
        versions=versions("numpy", "torch", "jax", "jaxlib", "mlx", "flax", "nmn"),
    )
    doc["load_avg"]["end"] = load()
    doc["environment"] = {k: os.environ[k] for k in ENVIRONMENT if k in os.environ} | thread_env(threads)
    return complete(doc)


# ---------------------------------------------------------------- command line


def _worker_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention worker")
    p.add_argument("--backend", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--profile", choices=tuple(PROFILES), default="full")
    p.add_argument("--report", required=True)
    args = p.parse_args(argv)
    from yat_core.receipts import write_json_atomic

    record = worker(Case(args.backend, args.device, args.model, args.length), PROFILES[args.profile])
    write_json_atomic(args.report, record)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.attention [--quick] [--backends ...] [--out DIR]``, ``render JSON``, ``worker ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return _worker_main(argv[1:])
    if argv[:1] == ["render"]:
        # render RUN.json [MORE.json ...]: redraw RUN's md and png, with the cases of MORE added (or replaced).
        path = Path(argv[1])
        doc = json.loads(path.read_text())
        merged = {Case(r["backend"], r["device"], r["model"], r["length"]): r for r in doc["records"]}
        for extra in argv[2:]:
            more = json.loads(Path(extra).read_text())
            merged.update({Case(r["backend"], r["device"], r["model"], r["length"]): r for r in more["records"]})
            doc.setdefault("merged_from", []).append(
                {"file": extra, "started": more.get("started"), "load_avg": more.get("load_avg")}
            )
        doc["records"] = list(merged.values())
        doc = complete(doc)
        for p in write_outputs(doc, path.parent).values():
            print(f"wrote {p}")
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="lengths 64 and 256, few rounds")
    parser.add_argument("--backends", default=None, help="comma-separated subset of numpy,torch,jax,mlx")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--lengths", default=None, help="comma-separated sequence lengths (default: the profile's)")
    parser.add_argument("--out", default=None, help="output folder (default results/bench-attention[-quick])")
    parser.add_argument("--in-process", action="store_true", help="no worker processes (debugging; memory mixed)")
    parser.add_argument(
        "--threads", type=int, default=None, help="cap the workers' CPU threads (OMP/BLAS/XLA), for a shared machine"
    )
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "full"]
    if args.lengths:
        profile = AttentionProfile(**{**asdict(profile), "lengths": tuple(int(t) for t in args.lengths.split(","))})
    backends = tuple(args.backends.split(",")) if args.backends else None
    models = tuple(args.models.split(",")) if args.models else MODELS
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    doc = run(profile, backends, in_process=args.in_process, threads=args.threads, models=models)
    for p in write_outputs(doc, Path(args.out) if args.out else RESULTS_DIRS[profile.name]).values():
        print(f"wrote {p}")
    s = doc["summary"]
    print(
        f"criterion met in {s['met']} of {s['judged']} rows"
        + (f"; not met: {', '.join(s['not_met'])}" if s["not_met"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
