"""Run a command as a user would, and measure its wall time and peak memory.

Each epoch-timing run is a fresh process: its start-up and compilation are
measured as a user meets them, its peak resident memory is its own (read from
the kernel's per-child accounting, ``wait4``), and no framework's thread pool or
cache is left warm by an earlier measurement.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import REPO_ROOT

__all__ = ["ProcessResult", "run_measured", "python_env", "scratch_path"]


@dataclass(frozen=True)
class ProcessResult:
    """Outcome of :func:`run_measured`."""

    returncode: int
    wall_s: float
    peak_rss_mb: float | None
    stdout: str
    stderr: str
    timed_out: bool = False
    #: Wall-clock time (``time.time()``) just before the spawn, to date the files the child writes.
    started_at: float = 0.0


def python_env() -> dict[str, str]:
    """This process's environment with the repository root on ``PYTHONPATH``.

    The worker is ``python -m benchmarks.worker``: it must import this package
    whatever the caller's working directory.
    """
    env = dict(os.environ)
    parts = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def _maxrss_mb(ru_maxrss: int) -> float:
    # macOS reports bytes, Linux kibibytes.
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


def _vm_hwm_mb(pid: int) -> float | None:
    """The process's peak resident set (``VmHWM``), or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


class _PeakSampler(threading.Thread):
    """Samples a child's ``VmHWM`` until it exits (Linux).

    ``wait4``'s ``ru_maxrss`` cannot be used on Linux: a spawned child inherits the
    high-water mark of the process that spawned it (here the whole pytest
    process), so every child would report at least the parent's size. ``VmHWM``
    belongs to the child's own address space and only grows, so the last sample
    is the peak up to ``interval_s`` before the exit.
    """

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.peak_mb: float | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            value = _vm_hwm_mb(self.pid)
            if value is not None:
                self.peak_mb = value if self.peak_mb is None else max(self.peak_mb, value)
            self.done.wait(self.interval_s)


def run_measured(
    cmd: Sequence[str], *, timeout_s: float, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None
) -> ProcessResult:
    """Run ``cmd`` to completion; wall time from before the spawn to after the exit.

    Output goes to temporary files (a pipe could fill and stall the child). The
    child is killed after ``timeout_s``. Peak memory is the child's own peak
    resident set: sampled from ``/proc`` on Linux, from ``wait4`` elsewhere.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started_at, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd or REPO_ROOT, env=env or python_env()
        )
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        sampler = _PeakSampler(proc.pid) if sys.platform.startswith("linux") else None
        if sampler is not None:
            sampler.start()
        try:
            if hasattr(os, "wait4"):
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
                peak: float | None = _maxrss_mb(usage.ru_maxrss)
            else:  # pragma: no cover - Windows has no per-child accounting
                proc.wait()
                wall, peak = time.perf_counter() - t0, None
        finally:
            # The timer's event is set only once it has fired (checked before cancel() sets it too).
            timed_out = timer.finished.is_set()
            timer.cancel()
            if sampler is not None:
                sampler.done.set()
                sampler.join()
        if sampler is not None:
            peak = sampler.peak_mb
        out.seek(0)
        err.seek(0)
        return ProcessResult(
            proc.returncode,
            wall,
            peak,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            timed_out,
            started_at,
        )


def scratch_path(name: str) -> Path:
    """A fresh path in the system temp folder for a child's report."""
    fd, path = tempfile.mkstemp(prefix=f"yat-bench-{name}-", suffix=".json")
    os.close(fd)
    os.unlink(path)
    return Path(path)
