"""Step timing with pytest-benchmark: forward, forward+backward, full training step.

One ``test_step`` per backend/device and step case: network (the seed MLP, the Yat
CNN), model (the Yat network, its ReLU twin, and nmn's layers on the training step),
step kind and batch size (:func:`benchmarks.steps.step_cases`). The first call
(tracing, compilation, allocator warm-up) is timed on its own; pytest-benchmark then
times the steady state, every call waiting for its result before the clock is read.

Each backend is timed in a pytest process of its own (``test_steps_in_own_process``
starts it), as a user's program would run it: frameworks loaded side by side in
one process keep thread pools that compete for the same two cores, and that
would charge one framework for another's threads. ``--bench-in-process`` runs the
step tests directly instead (quicker to debug, less faithful).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from benchmarks.devices import Target
from benchmarks.nmn_runners import NmnUnavailable
from benchmarks.processes import run_measured, scratch_path
from benchmarks.profiles import Profile
from benchmarks.steps import StepBench, StepCase, rounds_for, warm_up

#: Seconds a backend's whole step suite may take before it is stopped.
CHILD_TIMEOUT_S = 1800.0


def test_step(benchmark: Any, collector: Any, profile: Profile, bench_target: Target, step_case: StepCase) -> None:
    target, (network, model, kind, batch) = bench_target, step_case
    try:
        run = StepBench(target.backend, target.device, model, kind, batch, network=network).build()
    except NmnUnavailable as exc:
        pytest.skip(str(exc))
    first_s, typical_s = warm_up(run, profile.warmup_calls)
    rounds = rounds_for(typical_s, profile.step_budget_s, profile.min_rounds, profile.max_rounds)
    benchmark.group = f"{network} {kind} batch {batch}"
    benchmark.extra_info.update(
        backend=target.backend, device=target.device, network=network, model=model, first_call_s=first_s
    )
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark.stats, "stats", None) if benchmark.stats else None
    if stats is None:
        pytest.skip("pytest-benchmark is disabled (--benchmark-disable): nothing was timed")
    collector.add_step(
        {
            "backend": target.backend,
            "device": target.device,
            "network": network,
            "model": model,
            "kind": kind,
            "batch": batch,
            "first_call_s": first_s,
            "median_s": stats.median,
            "min_s": stats.min,
            "mean_s": stats.mean,
            "stddev_s": stats.stddev,
            "rounds": stats.rounds,
        }
    )
    assert stats.min > 0


def test_steps_in_own_process(
    collector: Any, profile: Profile, bench_target: Target, child_tables: list[str], pytestconfig: pytest.Config
) -> None:
    """Run this backend's ``test_step`` cases in a fresh pytest process and collect their results."""
    out = scratch_path(f"steps-{bench_target.backend}-{bench_target.device}")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        __file__,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--bench-profile={profile.name}",
        f"--bench-child={bench_target.label}",
        f"--bench-child-out={out}",
    ]
    model = pytestconfig.getoption("--bench-model")
    if model:  # otherwise the child reads $YAT_BENCH_MODEL, as this process did
        cmd.append(f"--bench-model={model}")
    try:
        proc = run_measured(cmd, timeout_s=CHILD_TIMEOUT_S)
        records = json.loads(out.read_text()) if out.exists() else []
    finally:
        out.unlink(missing_ok=True)
    for record in records:
        collector.add_step(record)
    child_tables.append(f"--- {bench_target.label} (own process) ---\n{_tables(proc.stdout)}")
    assert not proc.timed_out, f"{bench_target.label}: step timings ran past {CHILD_TIMEOUT_S:.0f} s"
    assert proc.returncode == 0, (
        f"{bench_target.label} step timings failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    )
    assert records, f"{bench_target.label}: the step timings recorded nothing"


def _tables(stdout: str) -> str:
    # pytest-benchmark's tables start at the first "benchmark" rule; drop pytest's progress dots.
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "benchmark" in line and "---" in line), 0)
    return "\n".join(lines[start:])
