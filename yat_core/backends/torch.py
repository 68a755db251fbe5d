"""PyTorch backend: tensors on the chosen device, the training step under ``torch.compile``.

Gradients: ``"analytic"`` runs the core's hand-derived backward pass as plain tensor
code, the whole step under ``torch.compile``; ``"autodiff"`` compiles the loss alone and
differentiates it with ``torch.autograd``, whose compiled backward (AOTAutograd) picks
what to save and what to recompute. The parity suite holds both to the same numbers.
The default is the faster one for the model (:class:`TorchBackend`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import array_api_compat.torch as torch_xp
import numpy as np
import torch

from yat_core._io import atomic_write_text
from yat_core.backends._base import Backend, Params
from yat_core.backends._torch_aot import precompiled
from yat_core.errors import BackendUnavailableError
from yat_core.mlp import MLPSpec
from yat_core.parallel.torch import TorchDataParallel, rank_device
from yat_core.spec import ATTENTION_KINDS, YAT_CONV_KINDS

#: Set to "0" to run every step eagerly (no compilation, e.g. for quick tests).
COMPILE_ENV = "YAT_CORE_TORCH_COMPILE"


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise BackendUnavailableError(f"torch does not know device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
    try:  # a device type torch can name is not necessarily one this build can use (mps, xpu, ...)
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as exc:
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else exc.__class__.__name__
        raise BackendUnavailableError(f"torch cannot use device {device!r} here ({reason})") from None
    return resolved


# array-api-compat's type checks are lru-cached; Dynamo traces through the cache (they
# are pure) and says so once per helper: eight warnings a run that tell a user nothing.
_DYNAMO_LRU_CACHE_WARNING = "Dynamo detected a call to a `functools.lru_cache`-wrapped function"


def compiler_identity() -> list[Any]:
    """What inductor's vector-ISA probe depends on: the keys of its record.

    torch's version, the C++ compiler (its name and the file it resolves to) and the
    CPU's vector instruction sets (none off x86).

    Examples
    --------
    >>> identity = compiler_identity()
    >>> identity[0] == torch.__version__ and len(identity)
    4
    """
    from torch._inductor import cpu_vec_isa
    from torch._inductor.cpp_builder import get_cpp_compiler

    compiler = get_cpp_compiler()
    x86 = platform.machine() in ("x86_64", "AMD64")
    flags = sorted(cpu_vec_isa.x86_isa_checker()) if x86 else []
    return [torch.__version__, compiler, os.path.realpath(shutil.which(compiler) or compiler), flags]


def _vec_isa_probe_cached() -> None:
    """Let inductor skip its per-process vector-ISA probe when an earlier process passed it.

    Before its first CPU kernel, inductor checks every vector instruction set the
    CPU reports (AVX2, AVX-512, ...) by compiling a probe and loading it in a child
    Python process, in every process: about 1 s of a fresh run's first step on two
    cores. The outcome depends only on the CPU, the compiler and torch, so it is kept
    in a file in inductor's cache folder; when every ISA the CPU reports passed, later
    processes set ``torch._inductor.config.cpp.vec_isa_ok`` and trust the CPU's flags.
    A user's own ``vec_isa_ok`` setting is left alone; so are non-x86 machines.
    """
    import hashlib
    import json

    try:  # inductor's internals move between torch releases: without them, inductor probes as usual
        from torch._inductor import config as inductor_config
        from torch._inductor import cpu_vec_isa
        from torch._inductor.runtime.cache_dir_utils import cache_dir
    except ImportError:
        return
    if getattr(inductor_config.cpp, "vec_isa_ok", True) is not None or sys.platform != "linux":
        return  # set by the user (or not a setting of this torch)
    if platform.machine() != "x86_64":
        return
    try:
        identity = compiler_identity()
    except ImportError:
        return
    flags = set(identity[-1])
    claimed = [str(isa) for isa in cpu_vec_isa.supported_vec_isa_list if set(str(isa).split()) <= flags]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]
    record = Path(cache_dir()) / f"yat-core-vec-isa-{key}.json"
    try:
        valid = json.loads(record.read_text())["valid"]
    except (OSError, ValueError, KeyError, TypeError):  # first process here: probe as inductor would
        valid = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
        with contextlib.suppress(OSError):
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record, json.dumps({"identity": identity, "claimed": claimed, "valid": valid}))
    # Set in the probing process too, so that every process compiles under one config (one cache key).
    if valid == claimed:
        inductor_config.cpp.vec_isa_ok = True


class _CompiledStep:
    """``torch.compile`` for the steady batch shape, eager for any other.

    The last batch of an epoch is smaller; compiling a second graph for one step
    per epoch costs more than it saves. A compiler failure (no C++ toolchain, an
    unsupported platform) falls back to eager with one warning. ``grad=False`` runs
    ``fn`` under ``torch.no_grad`` (a whole step); ``grad=True`` leaves autograd on, so
    a loss compiled this way is differentiated by AOTAutograd's compiled backward.
    """

    def __init__(self, fn: Callable[..., Any], *, grad: bool = False) -> None:
        self.fn, self.grad = fn, grad
        self.eager = fn if grad else torch.no_grad()(fn)
        # Made on the first call: torch.compile's set-up (importing Dynamo and inductor's
        # compiler) is wasted when a step compiled ahead of time loads instead.
        self.compiled: Callable[..., Any] | None = self._compile_on_first_call
        self.shape_key: tuple | None = None
        self.ready = False  # compiled and run once: later calls skip the first call's set-up
        #: How the compiled step came to be: "loaded" or "compiled" (ahead of time, kept on
        #: disk: yat_core.backends._torch_aot), "torch.compile", or "eager" (after a compiler fault).
        self.source: str | None = None

    def __call__(self, *args: Any) -> Any:
        key = tuple((a.shape, a.dtype, a.device) for a in args if isinstance(a, torch.Tensor))
        if self.shape_key is None:
            self.shape_key = key
        if self.compiled is None or key != self.shape_key:
            return self.eager(*args)
        try:
            # Dynamo warns while it traces, on the first call: filtering every call would cost ~9 us a step.
            quiet = contextlib.nullcontext() if self.ready else warnings.catch_warnings()
            with torch.enable_grad() if self.grad else torch.no_grad(), quiet:
                if not self.ready:
                    warnings.filterwarnings("ignore", message=_DYNAMO_LRU_CACHE_WARNING, category=UserWarning)
                out = self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler fault means: run eagerly
            warnings.warn(
                f"torch.compile failed ({exc.__class__.__name__}); running the step eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            self.compiled, self.source = None, "eager"
            return self.eager(*args)
        self.ready = True
        return out

    def _compile_on_first_call(self, *args: Any) -> Any:
        # A whole step (no autograd around it) is compiled ahead of time and kept on disk, or
        # loaded from there; anything that stops that leaves the step to torch.compile.
        made = None
        if not self.grad:
            try:
                made = precompiled(self.fn, args, prepare=_vec_isa_probe_cached)
            except Exception:  # noqa: BLE001 - e.g. a construct export refuses: torch.compile may take it
                made = None
        if made is None:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if not tensors or tensors[0].device.type == "cpu":  # none: a data-parallel update
                _vec_isa_probe_cached()
            made = (torch.compile(self.fn, dynamic=False), "torch.compile")
        self.compiled, self.source = made
        return self.compiled(*args)


class TorchBackend(Backend):
    """PyTorch through array-api-compat.

    Gradients: ``"autodiff"`` on CPU for models with Yat convolutions or attention,
    ``"analytic"`` otherwise.

    Measured at batch 128, each model's step, medians:

    ========================  ==========  ==========  ============  ============
    model                     CPU analyt  CPU autodf  H100 analyt   H100 autodf
    ========================  ==========  ==========  ============  ============
    seed MLP                  1.4 ms      2.5 ms      0.60 ms       2.35 ms
    Yat CNN                   58 ms       43 ms       1.34 ms       3.37 ms
    Conv+ReLU CNN             37 ms       46 ms       0.93 ms       2.66 ms
    Yat ViT                   38 ms       29 ms       2.52 ms       6.25 ms
    ========================  ==========  ==========  ============  ============

    On CPU the compiled backward of autodiff (AOTAutograd) fuses the Yat convolution's
    and the attention's gradients in fewer passes than the analytic step's kernels
    (the analytic attention backward also recomputes the scores); on a GPU the whole
    analytic step under ``torch.compile`` wins for every model. The ViT's CPU figures
    are one epoch's steps (150 steps, ``--train-limit 19200``).

    Examples
    --------
    >>> from yat_core.spec import cnn_spec, cnn_relu_spec, seed_spec, vit_spec
    >>> backend = TorchBackend("cpu")
    >>> [backend.gradients_for(s) for s in (seed_spec(), cnn_spec(), cnn_relu_spec(), vit_spec())]
    ['analytic', 'autodiff', 'analytic', 'autodiff']
    """

    name = "torch"
    framework = "torch"
    xp = torch_xp
    default_gradients = "analytic"
    cpu_autodiff_kinds = (*YAT_CONV_KINDS, *ATTENTION_KINDS)

    def __init__(self, device: str | None = None, gradients: str | None = None, spec: MLPSpec | None = None) -> None:
        # Under torchrun each process trains on its own device (cuda:LOCAL_RANK).
        self.torch_device = _resolve_device(rank_device(device))
        self.use_compile = os.environ.get(COMPILE_ENV, "1") != "0"
        super().__init__(str(self.torch_device), gradients, spec)

    def on_cpu(self) -> bool:
        return self.torch_device.type == "cpu"

    def device_name(self) -> str:
        if self.torch_device.type == "cuda":
            return f"{self.torch_device} ({torch.cuda.get_device_name(self.torch_device)})"
        return str(self.torch_device)

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        # np.require keeps 0-d shapes (ascontiguousarray does not) and copies read-only arrays,
        # which torch.from_numpy cannot share safely.
        return torch.from_numpy(np.require(a, requirements=["C", "W"])).to(self.torch_device)

    def to_numpy(self, a: Any) -> np.ndarray:
        return a.detach().cpu().numpy()

    def synchronize(self, tree: Any = None) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def value_and_grad(self, fn: Callable[..., Any]) -> Callable[..., tuple[Any, Params]]:
        # The loss is compiled on its own and differentiated outside the compiled region:
        # AOTAutograd compiles the backward too, and chooses what to save and what to recompute.
        loss = _CompiledStep(fn, grad=True) if self.use_compile else fn

        def value_and_grad_fn(params: Params, *args: Any) -> tuple[Any, Params]:
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            with torch.enable_grad():
                value = loss(leaves, *args)
                grads = torch.autograd.grad(value, list(leaves.values()))
            return value.detach(), dict(zip(leaves, grads))

        return value_and_grad_fn

    def compile(
        self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = (), *, hot: bool = True
    ) -> Callable[..., Any]:
        # torch.compile traces autograd.grad poorly: the analytic step is compiled whole,
        # the autodiff step eagerly around its compiled loss (value_and_grad).
        if hot and self.use_compile and self.gradients == "analytic":
            return _CompiledStep(fn)
        return torch.no_grad()(fn)

    def data_parallel(self) -> TorchDataParallel | None:
        """This process's group when torchrun launched it (:mod:`yat_core.parallel.torch`), else None."""
        return TorchDataParallel.from_launch(self.torch_device)


BACKEND_CLASS = TorchBackend
