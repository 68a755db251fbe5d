"""A compiled torch step kept on disk, so that later processes skip Dynamo and inductor.

``torch.compile`` traces and compiles the training step in every fresh process (2-5 s
on two cores, most of a 3-epoch run's first step), although the step is the same
each time. Here the step is exported (``torch.export``) and compiled once by
AOTInductor into a package (``.pt2``: one shared library and its metadata); later
processes load it with PyTorch's C++ loader (``torch._C._aoti.AOTIModelPackageLoader``)
in milliseconds, without importing Dynamo or inductor (about 2 s of a fresh
process's start on two cores). The loaded step runs without guards: the caller
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
- torch and the machine (:func:`machine_identity`): torch's version and build, the
  CPU's instruction-set flags, and inductor's settings made through the environment
  (``TORCHINDUCTOR_*``). Settings changed in-process through ``torch._inductor.config``
  are not seen: a process that changes them should clear the folder, or set
  ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``.

A file that does not load is compiled anew and replaced. After each compile the folder
keeps the :data:`KEEP` most recently used packages (a load marks its file used), about
2 MB each; older ones are deleted. The files live in
``$TORCHINDUCTOR_CACHE_DIR/yat-core-steps`` when that is set, else in
``$XDG_CACHE_HOME/yat-core/torch-steps`` (``~/.cache/yat-core/torch-steps``);
deleting the folder only costs the next run its compile.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import pickle
import platform
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from yat_core._io import atomic_write, cache_root, check_writable

__all__ = ["machine_identity", "step_key", "precompiled", "prune"]

#: The folder of saved steps inside ``$TORCHINDUCTOR_CACHE_DIR``.
FOLDER = "yat-core-steps"
#: Packages kept in the folder after a compile: the most recently used; the others are deleted.
KEEP = 32
#: The package's metadata entry holding the step's output structure (a pickled pytree spec).
_OUT_SPEC = "yat_core_out_spec"


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


@functools.cache
def _cpu_flags() -> str:
    # The instruction sets the compiled kernels may use: x86's "flags", Arm's "Features".
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.partition(":")[2].split()))
    except OSError:
        pass
    return platform.processor()


def machine_identity() -> list[Any]:
    """What a compiled step depends on besides its source, read without importing inductor.

    torch's version and build, the processor and its instruction-set flags, and
    inductor's settings made through the environment (its cache folder aside).

    Examples
    --------
    >>> identity = machine_identity()
    >>> identity[0] == torch.__version__ and len(identity)
    5
    """
    settings = sorted(
        (k, v) for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_") and k != "TORCHINDUCTOR_CACHE_DIR"
    )
    return [torch.__version__, torch.version.git_version, platform.machine(), _cpu_flags(), settings]


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
            machine_identity(),
        )
    except _Unkeyable:
        return None
    return hashlib.sha256(repr(described).encode()).hexdigest()


def _folder() -> Path:
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen:
        return Path(chosen) / FOLDER
    return cache_root() / "torch-steps"


def _caches_disabled() -> bool:
    # inductor's switch, read from the environment, or from its config where something imported it already.
    if os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "").lower() in ("1", "true"):
        return True
    config = sys.modules.get("torch._inductor.config")
    return bool(getattr(config, "force_disable_caches", False))


def _aoti_available() -> bool:
    aoti = getattr(torch._C, "_aoti", None)
    return hasattr(aoti, "AOTIModelPackageLoader") and hasattr(torch, "export")


def precompiled(
    fn: Callable[..., Any], args: tuple[Any, ...], *, prepare: Callable[[], None] | None = None
) -> tuple[Callable[..., Any], str] | None:
    """``fn`` compiled for calls like ``fn(*args)``, loaded from disk or compiled and saved; None when it cannot be.

    Returns the compiled function, which checks no guards (the caller keeps the
    calls alike), and ``"loaded"`` or ``"compiled"``. None, for the caller to use
    ``torch.compile``, when an argument is not a CPU tensor, when the step has no
    stable key, when inductor's caches are disabled, or when this torch has no
    AOTInductor. ``prepare`` runs just before a compile (not before a load). Must be
    called with the grad mode the step will run in.
    """
    if not isinstance(fn, types.FunctionType) or not _aoti_available() or _caches_disabled():
        return None
    leaves = pytree.tree_leaves(args)
    if not leaves or not all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in leaves):
        return None  # non-tensor leaves would be baked in; GPU steps are left to torch.compile
    key = step_key(fn, args)
    if key is None:
        return None
    path = _folder() / f"{key}.pt2"
    if path.is_file():
        try:
            step = _load(path)
        except Exception:  # noqa: BLE001 - unreadable or from another build: compile it again
            pass
        else:
            with contextlib.suppress(OSError):  # used now: the last to be pruned (a read-only folder keeps it anyway)
                os.utime(path)
            return step, "loaded"
    if prepare is not None:
        prepare()
    made = _compile(fn, args, path)
    step = _load(made)
    if made != path:  # a package for this process alone: the loader has read all of it
        made.unlink(missing_ok=True)
    return step, "compiled"


@contextlib.contextmanager
def _quiet_pytree() -> Iterator[None]:
    # Copying and pickling pytree specs trips torch's own deprecation of its LeafSpec check.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        yield


def _load(path: Path) -> Callable[..., Any]:
    loader = torch._C._aoti.AOTIModelPackageLoader(os.fspath(path), "model", False, 1, -1)
    with _quiet_pytree():
        out_spec = pickle.loads(bytes.fromhex(loader.get_metadata()[_OUT_SPEC]))
    run = loader.run

    def step(*args: Any) -> Any:
        return pytree.tree_unflatten(run(pytree.tree_leaves(args)), out_spec)

    return step


def _compile(fn: Callable[..., Any], args: tuple[Any, ...], path: Path) -> Path:
    """Export ``fn`` for ``args``, compile it into a package at ``path`` (atomically) and return where it is.

    Where the folder cannot be written, the package is a temporary file, for this process alone.
    """
    from torch._inductor import aoti_compile_and_package

    leaves, in_spec = pytree.tree_flatten(args)
    out_specs: list[Any] = []

    class FlatStep(torch.nn.Module):
        # AOTInductor's packages take and return flat lists of tensors; the nesting is kept beside.
        def forward(self, *flat: torch.Tensor) -> tuple[Any, ...]:
            out, spec = pytree.tree_flatten(fn(*pytree.tree_unflatten(list(flat), in_spec)))
            out_specs.append(spec)
            return tuple(out)

    with _quiet_pytree():
        exported = torch.export.export(FlatStep(), tuple(leaves), strict=False)
        metadata = {_OUT_SPEC: pickle.dumps(out_specs[-1]).hex()}

    def package(file: Any) -> None:
        with _quiet_pytree():
            aoti_compile_and_package(exported, package_path=file, inductor_configs={"aot_inductor.metadata": metadata})

    try:
        check_writable("the torch step folder", path.parent, folder=True)
    except ValueError:  # a package for this process alone
        fd, temporary = tempfile.mkstemp(suffix=".pt2", prefix="yat-core-step-")
        try:
            with os.fdopen(fd, "wb") as file:
                package(file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return Path(temporary)
    atomic_write(path, package)  # a reader sees the whole package or none
    prune(path.parent, KEEP)
    return path


def prune(folder: Path, keep: int = KEEP) -> list[Path]:
    """Delete all but the ``keep`` most recently used packages in ``folder``; the deleted paths.

    Examples
    --------
    >>> import tempfile, time
    >>> folder = Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     _ = (folder / f"{i}.pt2").write_bytes(b"")
    ...     os.utime(folder / f"{i}.pt2", (i, i))
    >>> [p.name for p in prune(folder, keep=2)], sorted(p.name for p in folder.iterdir())
    (['0.pt2'], ['1.pt2', '2.pt2'])
    """
    packages = []
    for package in folder.glob("*.pt2"):  # packages still being written end in .tmp (yat_core._io)
        with contextlib.suppress(OSError):  # another process pruned it first
            packages.append((package.stat().st_mtime, package))
    packages.sort(reverse=True)
    deleted = []
    for _, package in packages[keep:]:
        with contextlib.suppress(OSError):
            package.unlink()
            deleted.append(package)
    return deleted
