"""Thread pools of the libraries a training run drives: set up once per run, recorded in its receipt.

A run keeps up to three thread pools in one process: the BLAS that NumPy (and
SciPy) load, the pool of the library that computes (torch's OpenMP intra-op pool,
XLA's CPU pool, MLX's BLAS) and torch's inter-op pool. Each sizes itself to every
core by default, so under load the idle pools' spinning threads take cores from
the one that computes. :func:`configure_threads` gives the cores to the library
that computes; :func:`yat_core.train.train` calls it (through
:func:`thread_defaults`) before it builds the runner and puts its record in the
receipt as ``"threads"``.

What it sets, and why:

- The cores are those this process may run on (``os.sched_getaffinity``), which is
  also how OpenBLAS, OpenMP and XLA count them.
- NumPy's BLAS only prepares data while torch, JAX, MLX or TensorFlow trains: it is
  limited to 1 thread (``threadpoolctl``, the portable way to reach an already
  loaded BLAS; an environment variable is read only when the library loads). The
  numpy backend computes with it: it gets every core. Only BLAS libraries outside
  the computing library's own package are limited (a framework's wheel may bundle its own
  OpenBLAS), and not an OpenBLAS threaded by OpenMP: it may share one OpenMP runtime
  with torch, and limiting it would limit torch too.
- torch: intra-op threads = the cores, inter-op threads = 1 (the training step
  launches no parallel graph branches; one more idle pool is one less). torch
  accepts the inter-op setting once, before its first parallel work; after that the
  value in effect is recorded.
- torch on Linux with glibc: the allocator keeps freed memory for reuse
  (``mallopt``: blocks up to 64 MiB come from the heap instead of fresh ``mmap``
  pages, and up to 128 MiB of freed heap is kept). torch's CPU tensors come from
  ``malloc``; each compiled step frees and allocates its ~1 MB parameter and moment
  buffers, and glibc's default returned them to the system and faulted them back in
  page by page: about 50 page faults, some 5 % of a seed-model step on 2 cores. The
  setting is process-wide and stays after the run (keeping memory is harmless to
  what follows); ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or a
  ``glibc.malloc`` tunable in ``GLIBC_TUNABLES`` leave it to the user.
- XLA sizes its CPU pool from the same affinity mask (or ``PJRT_NPROC``), so its
  default already is the choice: yat-core sets no variable for it (a variable would
  leak into child processes, where it would read as the user's). There is no
  XLA flag for the pool size: ``XLA_FLAGS`` holds only flags XLA knows (an unknown
  one aborts the process), and yat-core adds none.

What a user set wins and is recorded as theirs: ``OPENBLAS_NUM_THREADS`` (and the
other BLAS variables) leave NumPy's BLAS alone, ``OMP_NUM_THREADS`` or
``MKL_NUM_THREADS`` leave torch's intra-op pool alone, ``PJRT_NPROC`` or a
thread flag in ``XLA_FLAGS`` are XLA's, and ``torch.set_num_threads`` or
``torch.set_num_interop_threads`` called before the run are kept. Each record entry
says where its value came from: ``"yat-core default"``, ``"user environment
(VAR=value)"``, ``"library default"``, or why it could not be set.

:func:`thread_defaults` undoes the BLAS limit and torch's intra-op setting when the
run ends, so NumPy work after an in-process :func:`~yat_core.train.train` gets
every core back (torch's inter-op setting is permanent). Setting up never fails a
run: what cannot be done is recorded, not raised.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yat_core._mlx_blas import BLAS_ENV as MLX_BLAS_ENV
from yat_core._mlx_blas import usable_cores as available_cores

if TYPE_CHECKING:
    from yat_core.config import TrainConfig

__all__ = [
    "YAT_CORE_DEFAULT",
    "LIBRARY_DEFAULT",
    "LIBRARIES",
    "available_cores",
    "thread_library",
    "configure_threads",
    "restore_threads",
    "thread_defaults",
]

YAT_CORE_DEFAULT = "yat-core default"
LIBRARY_DEFAULT = "library default"
_SET_BEFORE = "set in this process before the run ({})"

#: The libraries a run computes with, and the packages whose BLAS is theirs (never limited).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": (),
    "torch": ("torch",),
    "jax": ("jax", "jaxlib"),
    "mlx": ("mlx",),
    "tensorflow": ("tensorflow",),
}

# The variables each BLAS reads for its thread count, in the order it reads them.
_BLAS_ENV = {
    "openblas": ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"),
    "mkl": ("MKL_NUM_THREADS", "OMP_NUM_THREADS"),
    "blis": ("BLIS_NUM_THREADS", "OMP_NUM_THREADS"),
}
_ANY_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
_TORCH_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_XLA_POOL_ENV = ("PJRT_NPROC", "NPROC")
_XLA_THREAD_FLAGS = ("xla_cpu_multi_thread_eigen",)


@dataclass
class _Applied:
    """What :func:`configure_threads` changed, so that :func:`restore_threads` can undo it."""

    blas_limiters: list[Any] = field(default_factory=list)  # threadpoolctl limiters, oldest first
    torch_intra_before: int | None = None
    torch_intra: int | None = None  # the value yat-core set
    torch_interop: int | None = None  # set once per process; never undone
    malloc: bool = False  # glibc's thresholds set (process-wide; never undone)


_applied = _Applied()


def thread_library(config: TrainConfig) -> str:
    """The library that computes in a run of ``config`` (a key of :data:`LIBRARIES`, or its own name).

    Never raises: a configuration the runner will refuse gives a name
    :func:`configure_threads` records as unknown.

    Examples
    --------
    >>> from yat_core.config import TrainConfig
    >>> thread_library(TrainConfig(backend="numpy")), thread_library(TrainConfig(framework="nnx"))
    ('numpy', 'jax')
    >>> thread_library(TrainConfig(framework="keras", keras_backend="torch"))
    'torch'
    """
    name = config.framework or config.backend
    if name is None:
        try:
            name = config.resolved_backend()
        except Exception:  # no backend installed: the runner says so
            return "unknown"
    if name == "keras":
        from yat_core.runners import DEFAULT_KERAS_BACKEND

        name = config.keras_backend or DEFAULT_KERAS_BACKEND
    return {"nnx": "jax", "linen": "jax", "tf": "tensorflow"}.get(name, name)


def configure_threads(library: str) -> dict[str, Any]:
    """Set up the thread pools for a run that computes with ``library``; return what is in effect.

    Idempotent (a second call sets the same and returns an equal record) and cheap
    (a few milliseconds, once the libraries are imported; for ``"torch"`` it imports
    torch, which the run does next anyway). Never raises: an entry that could not be
    set says why in its ``"source"``.

    Parameters
    ----------
    library : str
        ``"numpy"``, ``"torch"``, ``"jax"``, ``"mlx"`` or ``"tensorflow"``
        (:func:`thread_library` of a configuration).

    Returns
    -------
    dict
        ``"library"``, ``"cores"``, and per thread pool ``{"value": threads or None,
        "source": where the value came from}``: ``"numpy_blas"`` always, then
        ``"torch_intra_op"``, ``"torch_inter_op"`` and ``"malloc"`` (whose value is the
        allocator's thresholds in bytes), ``"xla"``, ``"mlx_blas"`` or ``"tensorflow"``
        for that library.

    Examples
    --------
    >>> record = configure_threads("jax")
    >>> record["numpy_blas"]["value"] == 1 or record["numpy_blas"]["source"] != YAT_CORE_DEFAULT
    True
    >>> configure_threads("jax") == record
    True
    >>> restore_threads()
    >>> configure_threads("caffe")["caffe"]["source"]
    "not set up: unknown library 'caffe'"
    >>> restore_threads()
    """
    cores = available_cores()
    record: dict[str, Any] = {"library": library, "cores": cores}
    record["numpy_blas"] = _guarded(_set_up_blas, library, cores)
    if library == "torch":
        record["torch_intra_op"] = _guarded(_set_up_torch_intra, cores)
        record["torch_inter_op"] = _guarded(_set_up_torch_interop)
        record["malloc"] = _guarded(_set_up_malloc)
    elif library == "jax":
        record["xla"] = _guarded(_xla_record, cores)
    elif library == "mlx":
        record["mlx_blas"] = _guarded(_mlx_record, cores)
    elif library == "tensorflow":
        # TensorFlow sizes its own pools to the cores; yat-core leaves them as they are.
        record["tensorflow"] = {"value": None, "source": LIBRARY_DEFAULT}
    elif library != "numpy":
        record[library] = {"value": None, "source": f"not set up: unknown library {library!r}"}
    return record


def restore_threads() -> None:
    """Undo what :func:`configure_threads` set: NumPy's BLAS and torch's intra-op threads as before.

    torch's inter-op setting stays (torch accepts it once per process). Never raises.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> before = [lib["num_threads"] for lib in threadpool_info()]
    >>> _ = configure_threads("jax")
    >>> restore_threads()
    >>> [lib["num_threads"] for lib in threadpool_info()] == before
    True
    """
    while _applied.blas_limiters:
        limiter = _applied.blas_limiters.pop()  # newest first: the oldest holds the true originals
        try:
            limiter.restore_original_limits()
        except Exception:  # a library that went away: nothing left to restore
            pass
    if _applied.torch_intra is not None and _applied.torch_intra_before is not None:
        try:
            import torch

            torch.set_num_threads(_applied.torch_intra_before)
        except Exception:
            pass
    _applied.torch_intra = _applied.torch_intra_before = None


@contextmanager
def thread_defaults(library: str) -> Iterator[dict[str, Any]]:
    """:func:`configure_threads` for the ``with`` block, :func:`restore_threads` after it.

    Not nested: the end of any block restores everything.

    Examples
    --------
    >>> with thread_defaults("numpy") as record:
    ...     record["numpy_blas"]["value"] == record["cores"] or record["numpy_blas"]["source"] != YAT_CORE_DEFAULT
    True
    """
    record = configure_threads(library)
    try:
        yield record
    finally:
        restore_threads()


def _guarded(set_up: Any, *args: Any) -> dict[str, Any]:
    try:
        entry: dict[str, Any] = set_up(*args)
    except Exception as exc:  # never fail a run over threads: say what went wrong instead
        return {"value": None, "source": f"not set up: {type(exc).__name__}: {exc}"}
    return entry


def _user_env(names: tuple[str, ...]) -> str | None:
    """``"user environment (VAR=value)"`` for the first of ``names`` set (non-empty), else None."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return f"user environment ({name}={value})"
    return None


def _package_dirs(packages: tuple[str, ...]) -> tuple[str, ...]:
    """The install folders of ``packages`` and their wheels' bundled-library folders (``torch.libs``)."""
    dirs: list[str] = []
    for package in packages:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            real = os.path.realpath(location)
            dirs += [real + os.sep, real + ".libs" + os.sep]
    return tuple(dirs)


def _set_up_blas(library: str, cores: int) -> dict[str, Any]:
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    owned = _package_dirs(LIBRARIES.get(library, ()))
    mlx_blas = os.environ.get(MLX_BLAS_ENV)
    if mlx_blas:  # the BLAS yat-core loads for MLX computes: it is not NumPy's
        owned += (os.path.realpath(mlx_blas),)
    ours = [lib for lib in blas.lib_controllers if not os.path.realpath(lib.filepath).startswith(owned)]
    if not ours:
        return {"value": None, "source": "no BLAS loaded"}
    target = cores if library == "numpy" else 1
    sources, limits = set(), {}
    for lib in ours:
        user = _user_env(_BLAS_ENV.get(lib.internal_api, _ANY_BLAS_ENV))
        if user is not None:
            sources.add(user)
        elif lib.internal_api == "openblas" and getattr(lib, "threading_layer", None) == "openmp":
            sources.add(f"{LIBRARY_DEFAULT} (OpenBLAS threaded by OpenMP follows the OpenMP runtime)")
        else:
            limits[lib.filepath] = target
    if limits:
        _applied.blas_limiters.append(blas.limit(limits=limits))
        sources.add(YAT_CORE_DEFAULT)
    return {
        "value": max(lib.num_threads or 0 for lib in ours) or None,
        "source": "; ".join(sorted(sources)),
        "libraries": [f"{lib.internal_api} {lib.version}" for lib in ours],
    }


def _set_up_torch_intra(cores: int) -> dict[str, Any]:
    import torch

    user = _user_env(_TORCH_ENV)
    current = torch.get_num_threads()
    if user is not None:
        return {"value": current, "source": user}
    if _applied.torch_intra is None and current != cores:
        # torch's own default is the affinity count: anything else was asked for in this process.
        return {"value": current, "source": _SET_BEFORE.format("torch.set_num_threads")}
    if _applied.torch_intra is None:
        _applied.torch_intra_before = current
    torch.set_num_threads(cores)
    _applied.torch_intra = cores
    return {"value": torch.get_num_threads(), "source": YAT_CORE_DEFAULT}


def _set_up_torch_interop() -> dict[str, Any]:
    import torch

    if _applied.torch_interop is None:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            # torch takes this setting once, before its first parallel work.
            source = _SET_BEFORE.format("torch.set_num_interop_threads, or torch's first parallel work")
            return {"value": torch.get_num_interop_threads(), "source": source}
        _applied.torch_interop = 1
    return {"value": torch.get_num_interop_threads(), "source": YAT_CORE_DEFAULT}


# glibc's mallopt parameters (malloc.h) and the values yat-core sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_THRESHOLDS = {"mmap_threshold": 64 << 20, "trim_threshold": 128 << 20}
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _libc_version() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):  # not a GNU system
        return ""


def _set_up_malloc() -> dict[str, Any]:
    user = _user_env(_MALLOC_ENV)
    if user is None and "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        user = f"user environment (GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']})"
    if user is not None:
        return {"value": None, "source": user}
    if sys.platform != "linux" or not _libc_version().startswith("glibc"):
        return {"value": None, "source": f"{LIBRARY_DEFAULT} (not glibc)"}
    if not _applied.malloc:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLDS["mmap_threshold"]) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLDS["trim_threshold"]) == 1 and ok
        if not ok:
            return {"value": None, "source": "not set up: mallopt refused the thresholds"}
        _applied.malloc = True
    return {"value": dict(MALLOC_THRESHOLDS), "source": YAT_CORE_DEFAULT}


def _xla_record(cores: int) -> dict[str, Any]:
    pool = next((f"{n}={os.environ[n].strip()}" for n in _XLA_POOL_ENV if os.environ.get(n, "").strip()), None)
    flags = [
        f"XLA_FLAGS={flag}"
        for flag in os.environ.get("XLA_FLAGS", "").split()
        if flag.lstrip("-").split("=")[0] in _XLA_THREAD_FLAGS
    ]
    user = ([pool] if pool is not None else []) + flags
    size = pool.split("=", 1)[1] if pool is not None else ""
    return {
        "value": int(size) if size.isdigit() else cores,
        "source": f"user environment ({', '.join(user)})" if user else LIBRARY_DEFAULT,
    }


def _mlx_record(cores: int) -> dict[str, Any]:
    from yat_core._mlx_blas import loaded_blas

    if not os.environ.get(MLX_BLAS_ENV):
        return {"value": 1, "source": f"{LIBRARY_DEFAULT} (MLX's bundled reference BLAS runs on one thread)"}
    setting = os.environ.get("OPENBLAS_NUM_THREADS", "").strip()
    value = int(setting) if setting.isdigit() else None
    if loaded_blas() == os.environ[MLX_BLAS_ENV]:  # loaded by an earlier run, with the count of that time
        return {"value": value, "source": f"set when {MLX_BLAS_ENV} was loaded (OPENBLAS_NUM_THREADS={setting})"}
    # The runner loads it next, with every core unless the user set the count (yat_core._mlx_blas).
    user = _user_env(("OPENBLAS_NUM_THREADS",))
    return {"value": value if user is not None else cores, "source": user or YAT_CORE_DEFAULT}
