"""``yat-core compare``: one recipe trained in every framework and backend, then compared.

:func:`plan_runs` lists the runs (the core model on each backend, each framework's
native model, Keras once per Keras backend); :func:`compare` trains each in its own
``python -m yat_core train`` process (Keras reads its backend once per process, so
backends never collide), then builds the report from the receipts
(:mod:`yat_core.report`). A run that cannot start or fails is a row that says why.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from yat_core._io import atomic_write_text, check_writable
from yat_core.backends import BACKENDS
from yat_core.report import KERAS_LIBRARY, Failure, ReceiptError, load_receipt, report_receipts
from yat_core.runners import DEFAULT_KERAS_BACKEND, FRAMEWORK_RUNNERS

__all__ = ["Run", "plan_runs", "compare", "RUNS"]

#: The subfolder of a comparison's folder that holds the runs' receipts and logs.
RUNS = "runs"


@dataclass(frozen=True)
class Run:
    """One ``yat-core train`` of the comparison: its row label, receipt stem, flags and the imports it needs."""

    label: str
    stem: str
    flags: tuple[str, ...]
    requires: tuple[str, ...]
    extra: str


def plan_runs(
    model: str,
    backends: Sequence[str] | None = None,
    frameworks: Sequence[str] | None = None,
    keras_backends: Sequence[str] = (DEFAULT_KERAS_BACKEND,),
) -> list[Run]:
    """The runs of a comparison: every backend (core model), then every framework (native model).

    None means all of them; Keras runs once per Keras backend.

    Examples
    --------
    >>> [run.label for run in plan_runs("mlp", ["numpy"], ["torch", "keras"], ["jax", "torch"])]
    ['core/numpy', 'torch', 'keras/jax', 'keras/torch']
    >>> plan_runs("cnn", ["numpy"], [])[0].flags
    ('--model', 'cnn', '--backend', 'numpy')
    """
    runs = []
    for name in BACKENDS if backends is None else backends:
        entry = BACKENDS[name]
        runs.append(
            Run(
                f"core/{name}",
                f"{model}-backend-{name}",
                ("--model", model, "--backend", name),
                (entry.requires,),
                entry.extra,
            )
        )
    for name in FRAMEWORK_RUNNERS if frameworks is None else frameworks:
        entry = FRAMEWORK_RUNNERS[name]
        flags = ("--model", model, "--framework", name)
        if name != "keras":
            runs.append(Run(name, f"{model}-framework-{name}", flags, (entry.requires,), entry.extra))
            continue
        for kb in keras_backends:
            runs.append(
                Run(
                    f"keras/{kb}",
                    f"{model}-framework-keras-{kb}",
                    (*flags, "--keras-backend", kb),
                    (entry.requires, KERAS_LIBRARY[kb]),
                    entry.extra,
                )
            )
    return runs


def _missing(run: Run) -> str | None:
    # find_spec on the top-level package imports nothing: this process stays framework-free.
    absent = [req for req in run.requires if importlib.util.find_spec(req.split(".")[0]) is None]
    if not absent:
        return None
    return f"not installed: {', '.join(absent)} (pip install 'yat-core[{run.extra}]')"


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


Launch = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _launch(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def compare(
    runs: Sequence[Run],
    train_flags: Sequence[str],
    out: str | os.PathLike[str],
    *,
    launch: Launch | None = None,
    log: Callable[[str], None] | None = print,
    is_missing: Callable[[Run], str | None] | None = None,
) -> str:
    """Train every run in its own process, then report on the receipts; returns the Markdown.

    Each run is ``python -m yat_core train <run flags> <train_flags> --report
    out/runs/<stem>.json --quiet``; its output goes to ``out/runs/<stem>.log``, the
    report into ``out`` (so ``yat-core report out/runs/*.json --out out`` rebuilds it).
    A run whose framework is absent is not started; one that fails is a row with its
    last error line.
    ``launch`` (runs a command, :func:`subprocess.run` by default) and ``is_missing``
    (why a run cannot start, or None) can be replaced, e.g. by tests.

    Raises
    ------
    ValueError
        When ``out`` is a file, or a folder that cannot be written (checked before any run).
    """
    launch = launch or _launch
    is_missing = is_missing or _missing
    folder = check_writable("out", out, folder=True)
    (folder / RUNS).mkdir(parents=True, exist_ok=True)
    receipts: list[Path] = []
    failures: list[Failure] = []
    say = log or (lambda _: None)
    for i, run in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {run.label}"
        missing = is_missing(run)
        if missing is not None:
            say(f"{tag}: skipped, {missing}")
            failures.append(Failure(run.label, missing))
            continue
        report, logfile = folder / RUNS / f"{run.stem}.json", folder / RUNS / f"{run.stem}.log"
        report.unlink(missing_ok=True)  # a receipt from an earlier comparison must not stand in for this run
        command = [
            sys.executable,
            "-m",
            "yat_core",
            "train",
            *run.flags,
            *train_flags,
            "--report",
            str(report),
            "--quiet",
        ]
        say(f"{tag}: started")
        t0 = time.perf_counter()
        try:
            done = launch(command)
            output, returncode = (done.stdout or "") + (done.stderr or ""), done.returncode
            reason = None if returncode == 0 else _last_error_line(done.stderr or done.stdout or "")
        except OSError as exc:
            output, reason = str(exc), f"could not start: {exc}"
        seconds = time.perf_counter() - t0
        atomic_write_text(logfile, "$ " + " ".join(command) + "\n" + output)
        if reason is None:
            try:
                acc = load_receipt(report)["final_test_acc"]
            except ReceiptError as exc:
                reason = str(exc)
        if reason is not None:
            say(f"{tag}: failed after {seconds:.1f} s: {reason}")
            failures.append(Failure(run.label, reason))
            continue
        say(f"{tag}: test accuracy {100 * acc:.2f}% in {seconds:.1f} s")
        receipts.append(report)
    return report_receipts(receipts, folder, failures=failures)
