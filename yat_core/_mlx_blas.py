"""Let MLX's CPU matrix products use an optimised BLAS (opt-in).

MLX's Linux CPU wheel links the reference (netlib) BLAS, which multiplies float32
matrices at a few GFLOP/s on one core. MLX calls the standard ``cblas_sgemm``
symbol, so a BLAS library loaded into the global symbol scope *before* MLX is
imported serves those calls instead. Point ``YAT_CORE_MLX_BLAS`` at such a library
(e.g. Debian's ``/usr/lib/x86_64-linux-gnu/libopenblas.so.0`` from package
``libopenblas0``). Results change only by floating-point summation order.

This module imports no framework: it must run before MLX loads.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

__all__ = ["BLAS_ENV", "preload_blas", "loaded_blas", "usable_cores"]

BLAS_ENV = "YAT_CORE_MLX_BLAS"
_loaded: str | None = None


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask), as OpenBLAS, OpenMP and XLA count them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def preload_blas() -> str | None:
    """Load the library named by ``$YAT_CORE_MLX_BLAS`` globally; return its path (or None).

    OpenBLAS sizes its thread pool from the host's CPU count, which oversubscribes a
    process limited to fewer cores (measured here: 4 GFLOP/s instead of 235), so
    ``OPENBLAS_NUM_THREADS`` is set to the usable cores unless already set.

    Examples
    --------
    >>> import os
    >>> os.environ.pop(BLAS_ENV, None) and None
    >>> preload_blas() is None
    True
    """
    global _loaded
    path = os.environ.get(BLAS_ENV)
    if not path or _loaded == path:
        return _loaded
    if "mlx.core" in sys.modules:
        warnings.warn(
            f"{BLAS_ENV} is set but MLX was imported first; its BLAS cannot be replaced now",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(usable_cores()))
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        from yat_core.errors import BackendUnavailableError

        raise BackendUnavailableError(f"{BLAS_ENV}={path!r} cannot be loaded: {exc}") from None
    _loaded = path
    return path


def loaded_blas() -> str:
    """What MLX's matrix products run on, for receipts."""
    return _loaded or "bundled reference BLAS"
