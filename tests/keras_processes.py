"""The harness of the Keras test files: checks run in one process per Keras backend.

Keras fixes its backend when it is first imported, so a test file that checks the
Keras layers on jax, torch and tensorflow is also a script: run as
``python tests/test_nn_<x>_keras.py BACKEND OUT_DIR [ARG ...]`` under
``KERAS_BACKEND=BACKEND``, it runs its checks (:class:`Checks`) and writes one record
per check to ``OUT_DIR/results.json`` (:func:`run_checks`). On the pytest side,
:class:`BackendProcesses` starts every backend's process together on first use and
:func:`assert_check` reports each check as its own test, with the check's traceback
on failure. The pytest process never imports Keras through this module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

Check = Callable[[SimpleNamespace], None]
#: (results by check name, or None when the process wrote none; the log with the command that reproduces it)
Outcome = tuple[dict[str, Any] | None, str]


class CheckSkipped(Exception):
    """Raised by a check that cannot run in this process; the test reports a skip with its message."""


class Checks(dict[str, Check]):
    """The checks of one test file, by name, in the order they were registered.

    Examples
    --------
    >>> checks = Checks()
    >>> @checks.register("adds")
    ... def _(ctx):
    ...     assert ctx.a + 1 == 2
    >>> list(checks)
    ['adds']
    """

    def register(self, name: str) -> Callable[[Check], Check]:
        if name in self:
            raise ValueError(f"check {name!r} is registered twice")

        def add(fn: Check) -> Check:
            self[name] = fn
            return fn

        return add


def run_checks(checks: dict[str, Check], names: Iterable[str], ctx: SimpleNamespace, out: Path) -> None:
    """The subprocess's loop: run each named check with ``ctx``; write ``out/results.json``.

    Every failure is recorded and the next check still runs.
    """
    keras = ctx.keras
    if keras.backend.backend() != ctx.backend:
        raise RuntimeError(f"asked for Keras backend {ctx.backend!r}, Keras runs on {keras.backend.backend()!r}")
    results = {}
    for name in names:
        start = time.perf_counter()
        try:
            checks[name](ctx)
            outcome, message = "passed", ""
        except CheckSkipped as exc:
            outcome, message = "skipped", str(exc)
        except BaseException:  # noqa: BLE001 - every failure is reported, the next check still runs
            outcome, message = "failed", traceback.format_exc()
        results[name] = {"outcome": outcome, "message": message, "seconds": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(results, indent=1))


def missing(backend: str) -> str | None:
    """The first of Keras and the backend's framework that is not installed (the backends share their import names)."""
    for module in ("keras", backend):
        if importlib.util.find_spec(module) is None:
            return module
    return None


class BackendProcesses:
    """Every installed backend's check process of ``script``, started together on the first :meth:`result`.

    Parameters
    ----------
    script : path of the test file run as a script, with ``BACKEND OUT_DIR *args``.
    backends : the Keras backends.
    make_out : makes a fresh output folder from a name (``tmp_path_factory.mktemp``).
    timeout : seconds each process may take.
    args : more command-line arguments for every process.
    """

    def __init__(
        self,
        script: str,
        backends: Sequence[str],
        make_out: Callable[[str], Path],
        timeout: float,
        args: Sequence[str] = (),
    ) -> None:
        self._script, self._backends, self._make_out = script, tuple(backends), make_out
        self._timeout, self._args = timeout, tuple(args)
        self._running: dict[str, tuple[subprocess.Popen[str], Path, list[str]]] = {}
        self._done: dict[str, Outcome] = {}
        self._outs: dict[str, Path] = {}

    def _start_all(self) -> None:
        tag = Path(self._script).stem.removeprefix("test_")
        for backend in self._backends:
            if missing(backend) is None:
                out = self._make_out(f"{tag}-{backend}")
                env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
                cmd = [sys.executable, self._script, backend, str(out), *self._args]
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                self._running[backend] = (proc, out, cmd)
                self._outs[backend] = out

    def result(self, backend: str) -> Outcome:
        """``backend``'s results and log, waiting for its process (killed after the timeout)."""
        if backend in self._done:
            return self._done[backend]
        if not self._running:
            self._start_all()
        proc, out, cmd = self._running.pop(backend)
        try:
            log = proc.communicate(timeout=self._timeout)[0][-8000:]
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            log = f"timed out after {self._timeout} s"
        results_file = out / "results.json"
        results = json.loads(results_file.read_text()) if results_file.exists() else None
        self._done[backend] = (results, f"reproduce: KERAS_BACKEND={backend} {' '.join(cmd)}\n{log}")
        return self._done[backend]

    def folder(self, backend: str) -> Path:
        """The output folder of ``backend``'s process (what its checks wrote besides the results)."""
        self.result(backend)
        return self._outs[backend]


def assert_check(processes: BackendProcesses, backend: str, check: str) -> None:
    """The pytest side of one check: skipped when the backend is absent or the check skipped itself."""
    absent = missing(backend)
    if absent:
        pytest.skip(f"{absent} is not installed")
    results, log = processes.result(backend)
    assert results is not None, f"the {backend} check process wrote no results\n{log}"
    result = results[check]
    if result["outcome"] == "skipped":
        pytest.skip(result["message"])
    assert result["outcome"] == "passed", f"[keras-backend={backend}] {check}\n{result['message']}"
