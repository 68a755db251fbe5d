"""A compiled torch step kept on disk, so that later processes skip Dynamo and inductor.

``torch.compile`` traces and compiles the training step in every fresh process (2-5 s
on two cores, most of a 3-epoch run's first step), although the step is the same
each time. PyTorch's ahead-of-time form of it (``aot_compile`` and
``torch.compiler.load_compiled_function``) saves the traced and compiled step to a
file, and a later process loads it in about a second. The loaded step runs without
Dynamo's per-call guard check (tens of microseconds of a ~1.3 ms step): the caller
(:class:`yat_core.backends.torch._CompiledStep`) already sends every call with other
tensor shapes, dtypes or devices to the eager step.

A saved step is used only for the very step it was compiled from. Its file name is a
hash of everything the compiled code depends on:

- the code: every source file of yat_core, and the versions of Python and
  array-api-compat;
- the step's closure: the functions it calls and the values they capture (the model
  spec, the optimizer's settings), by qualified name and value; a captured object
  whose only description is its memory address makes the step unkeyable, and it is
  then compiled as usual;
- the call: the nesting of the arguments (dict keys included) and each tensor's
  shape, strides, dtype, device and ``requires_grad``;
- torch and the machine: :func:`compiler_identity` (torch's version, the C++
  compiler, the CPU's instruction-set flags) and inductor's settings.

A file that does not load, or whose guards reject the call, is compiled anew and
replaced. The files live in inductor's cache folder (``TORCHINDUCTOR_CACHE_DIR``),
under ``yat-core-steps``; deleting the folder only costs the next run its compile.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["compiler_identity", "step_key", "precompiled"]

#: The folder of saved steps, inside inductor's cache folder.
FOLDER = "yat-core-steps"


class _Unkeyable(Exception):
    """A value the step depends on that has no stable description."""


def _describe(value: Any, depth: int = 0) -> Any:
    # A description of what the step's closure captured, equal across processes when
    # the value is the same (no memory addresses).
    if depth > 12:
        raise _Unkeyable("closure nested too deeply")
    if isinstance(value, functools.partial):
        return (
            "partial",
            _describe(value.func, depth + 1),
            _describe(value.args, depth + 1),
            _describe(sorted(value.keywords.items()), depth + 1),
        )
    if isinstance(value, types.FunctionType):
        cells = [_describe(c.cell_contents, depth + 1) for c in value.__closure__ or ()]
        return ("function", value.__module__, value.__qualname__, cells, _describe(value.__defaults__, depth + 1))
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return (type(value).__name__, [_describe(v, depth + 1) for v in value])
    if isinstance(value, dict):
        return ("dict", [(_describe(k, depth + 1), _describe(v, depth + 1)) for k, v in value.items()])
    text = repr(value)
    if " at 0x" in text or " object at " in text:
        raise _Unkeyable(f"{type(value).__qualname__} has no stable description")
    return (type(value).__module__, type(value).__qualname__, text)


def _signature(args: tuple[Any, ...]) -> Any:
    leaves, tree = torch.utils._pytree.tree_flatten(args)
    described = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            described.append((tuple(leaf.shape), leaf.stride(), str(leaf.dtype), str(leaf.device), leaf.requires_grad))
        else:
            described.append(_describe(leaf))
    return (str(tree), described)


@functools.cache
def _code_digest() -> str:
    # Every source file of the package: the step traces through any of them.
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def compiler_identity() -> list[Any]:
    """What inductor's compiled CPU code depends on besides its source.

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


def _machine() -> Any:
    from torch._inductor import config as inductor_config

    settings = inductor_config.save_config_portable() if hasattr(inductor_config, "save_config_portable") else {}
    return (compiler_identity(), sorted((k, repr(v)) for k, v in settings.items()))


def step_key(fn: Callable[..., Any], args: tuple[Any, ...]) -> str | None:
    """The file name of ``fn``'s saved compilation for a call with ``args``, or None if it has no stable key.

    Examples
    --------
    >>> import torch
    >>> def scale(x):
    ...     return 2.0 * x
    >>> key = step_key(scale, (torch.ones(3),))
    >>> len(key), key == step_key(scale, (torch.ones(3),)), key == step_key(scale, (torch.ones(4),))
    (64, True, False)
    >>> step_key(scale, (object(),)) is None  # described only by its address
    True
    """
    try:
        described = (
            sys.version,
            importlib.metadata.version("array-api-compat"),
            _code_digest(),
            _describe(fn),
            _signature(args),
            _machine(),
        )
    except _Unkeyable:
        return None
    return hashlib.sha256(repr(described).encode()).hexdigest()


def _folder() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / FOLDER


def precompiled(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Callable[..., Any], str] | None:
    """``fn`` compiled for calls like ``fn(*args)``, loaded from disk or compiled and saved; None when it cannot be.

    Returns the compiled function, which checks no guards (the caller keeps the
    calls alike), and ``"loaded"`` or ``"compiled"``. None, for the caller to use
    ``torch.compile``, when the step has no stable key, when inductor's caches are
    disabled, or when this torch cannot compile ahead of time. Must be called with
    the grad mode the step will run in.
    """
    from torch._inductor import config as inductor_config

    if not isinstance(fn, types.FunctionType) or not hasattr(torch.compiler, "load_compiled_function"):
        return None
    key = None if inductor_config.force_disable_caches else step_key(fn, args)
    if key is None:
        return None
    path = _folder() / f"{key}.step"
    # Before it looks for a kernel's library on disk, inductor precompiles a C++ header in
    # every process (a g++ run and a checksum, ~0.15 s); the saved step's libraries are there.
    no_header = (
        {"cpp_cache_precompile_headers": False} if hasattr(inductor_config, "cpp_cache_precompile_headers") else {}
    )
    try:
        with open(path, "rb") as file, inductor_config.patch(no_header):
            step: Any = torch.compiler.load_compiled_function(file, f_globals=fn.__globals__)
        if step.guard_check(*args):
            step.disable_guard_check()
            return step, "loaded"
    except Exception:  # noqa: BLE001 - absent, unreadable or from another build: compile it again
        pass
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    step = compiled.aot_compile((args, {}))  # type: ignore[attr-defined, unused-ignore]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        step.save_compiled_function(os.fspath(path))  # written to a temporary file, then renamed
    except (OSError, RuntimeError):  # a read-only cache folder, an unpicklable constant: use it unsaved
        pass
    step.disable_guard_check()
    return step, "compiled"
