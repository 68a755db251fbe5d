"""Data-parallel throughput: one process or device against two, on this machine.

``python -m benchmarks.parallel [--quick]``

Runs the seed recipe (global batch 128) as the user would: the torch backend in one
process and under ``torchrun --nproc-per-node 2`` (gloo on CPU), the jax backend on one
device, on two (``--devices 2``) and in two ``jax.distributed`` processes. Each run is
fresh; its steady throughput (training images per second of its last epoch) comes from
the receipt rank or process 0 writes, and the ratio is against the one-process run of
the same backend.

Two processes or devices on one CPU machine share its cores: a 2-core machine cannot
show a speed-up, only that data-parallel training runs and what its communication
costs. The report says so in plain words and names the core and GPU counts it ran on.

Outputs: ``results/bench-parallel/`` (``-quick``): ``parallel.json`` and ``parallel.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks import RESULTS_DIR
from benchmarks.processes import python_env
from yat_core._io import atomic_write_text
from yat_core.parallel import free_port
from yat_core.receipts import machine_info, write_json_atomic

__all__ = ["Setup", "SETUPS", "commands", "render", "main"]


class Setup(NamedTuple):
    """One way of running the recipe: the backend, its processes and devices per process."""

    backend: str
    processes: int
    devices: int
    launcher: str  # "one process", "torchrun", "--devices", "jax.distributed"

    @property
    def label(self) -> str:
        processes = f"{self.processes} process{'es' if self.processes > 1 else ''}"
        return f"{self.backend}, {processes} x {self.devices} device{'s' if self.devices > 1 else ''}"


SETUPS = (
    Setup("torch", 1, 1, "one process"),
    Setup("torch", 2, 1, "torchrun"),
    Setup("jax", 1, 1, "one process"),
    Setup("jax", 1, 2, "--devices"),
    Setup("jax", 2, 1, "jax.distributed"),
)


def commands(setup: Setup, flags: list[str], report: str) -> list[list[str]]:
    """The command line(s) of ``setup``: one, or one per process for ``jax.distributed``.

    Examples
    --------
    >>> cmds = commands(Setup("jax", 2, 1, "jax.distributed"), ["--epochs", "2"], "r.json")
    >>> len(cmds), cmds[1][cmds[1].index("--process-id") + 1]
    (2, '1')
    >>> " ".join(commands(Setup("torch", 2, 1, "torchrun"), [], "r.json")[0][1:7])
    '-m torch.distributed.run --nproc-per-node 2 --log-dir torchrun-logs'
    """
    train = ["-m", "yat_core", "train", "--backend", setup.backend, *flags, "--quiet", "--report", report]
    if setup.launcher == "torchrun":
        # torchrun's logs beside the receipt (its default is a temporary folder it never removes).
        logs = str(Path(report).parent / "torchrun-logs")
        launch = ["-m", "torch.distributed.run", "--nproc-per-node", str(setup.processes), "--log-dir", logs]
        return [[sys.executable, *launch, "--master-port", str(free_port()), *train]]
    if setup.launcher == "jax.distributed":
        join = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", str(setup.processes)]
        return [[sys.executable, *train, *join, "--process-id", str(i)] for i in range(setup.processes)]
    return [[sys.executable, *train, *(["--devices", str(setup.devices)] if setup.devices > 1 else [])]]


def run_setup(setup: Setup, flags: list[str], timeout_s: float = 1200.0) -> dict[str, Any]:
    """Run ``setup`` once, fresh; its steady throughput from process 0's receipt."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "receipt.json"
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=python_env(), text=True)
            for cmd in commands(setup, flags, str(report))
        ]
        errors = []
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=max(1.0, timeout_s - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                err = f"timed out after {timeout_s:.0f} s"
            if proc.returncode:
                errors.append(err.strip()[-800:])
        wall = time.perf_counter() - t0
        if errors or not report.exists():
            return {"status": "error", "reason": errors[0] if errors else "no receipt written"}
        receipt = json.loads(report.read_text())
    last = receipt["history"][-1]
    return {
        "status": "ok",
        "samples_per_s": receipt["n_train"] / last["epoch_s"],
        "epoch_s": [h["epoch_s"] for h in receipt["history"]],
        "wall_s": wall,
        "test_acc": receipt["final_test_acc"],
        "distributed": receipt.get("distributed"),
    }


def render(result: dict[str, Any]) -> str:
    """The Markdown report: throughput per setup, its ratio to one process, and what the machine can show.

    Examples
    --------
    >>> ok = {"status": "ok", "samples_per_s": 100.0, "wall_s": 9.0, "test_acc": 0.9}
    >>> text = render({"machine": {"cores": 2}, "gpus": 0, "flags": [], "runs": [
    ...     {"setup": list(SETUPS[0]), **ok}, {"setup": list(SETUPS[1]), **ok, "samples_per_s": 80.0}]})
    >>> "| torch | torchrun | 2 | 1 | 80 | 0.80x |" in text
    True
    """
    cores, gpus = result["machine"].get("cores"), result.get("gpus", 0)
    lines = [
        "# Data-parallel throughput: one process or device against two",
        "",
        f"Seed recipe, global batch 128, flags `{' '.join(result['flags'])}`; {cores} CPU cores, {gpus} GPUs. "
        "Throughput is the last epoch's training images per second (process 0's receipt).",
        "",
        f"**What this machine can show:** {_statement(cores, gpus)}",
        "",
        "| backend | launcher | processes | devices per process | images/s | x one process | wall s | test acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base: dict[str, float] = {}
    for run in result["runs"]:
        setup = Setup(*run["setup"])
        if run["status"] != "ok":
            lines.append(f"| {setup.backend} | {setup.launcher} | {setup.processes} | {setup.devices} | error: "
                         f"{run['reason'].splitlines()[-1] if run['reason'] else '?'} | | | |")  # fmt: skip
            continue
        if setup.processes * setup.devices == 1:
            base[setup.backend] = run["samples_per_s"]
        ratio = run["samples_per_s"] / base[setup.backend] if setup.backend in base else None
        lines.append(
            f"| {setup.backend} | {setup.launcher} | {setup.processes} | {setup.devices} | "
            f"{run['samples_per_s']:,.0f} | {'n/a' if ratio is None else f'{ratio:.2f}x'} | {run['wall_s']:.1f} | "
            f"{100 * run['test_acc']:.2f} % |"
        )
    return "\n".join(lines) + "\n"


def _statement(cores: int | None, gpus: int) -> str:
    if gpus >= 2:
        return f"{gpus} GPUs: run the torchrun and --devices setups on them for real scaling figures."
    return (
        f"{cores} CPU cores and no second accelerator. Two processes or devices here share the same cores "
        "(and torchrun gives each process one thread), so these figures show that data-parallel training runs "
        "and what its communication costs, not a speed-up; scaling needs a device per process."
    )


def _gpus() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except ImportError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.parallel", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 short epochs of 3,840 images (a smoke run)")
    args = p.parse_args(argv)
    limit = "3840" if args.quick else "19200"
    flags = ["--epochs", "2", "--train-limit", limit, "--test-limit", "2000"]
    runs = []
    for setup in SETUPS:
        run = run_setup(setup, flags)
        print(
            f"{setup.label} ({setup.launcher}): "
            + (f"{run['samples_per_s']:,.0f} images/s" if run["status"] == "ok" else run["reason"])
        )
        runs.append({"setup": list(setup), **run})
    result = {"suite": "parallel", "flags": flags, "machine": machine_info(), "gpus": _gpus(), "runs": runs}
    out = RESULTS_DIR.parent / ("bench-parallel-quick" if args.quick else "bench-parallel")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "parallel.json", result)
    markdown = render(result)
    atomic_write_text(out / "parallel.md", markdown)
    print(markdown)
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
