"""Epoch timing: one fresh training process per (backend, device, network, model).

- ``yat``: the user's own command, ``python -m yat_core train --model N --backend B --epochs E``;
  its wall time from spawn to exit is the end-to-end time of an ``E``-epoch run.
- ``relu`` and ``nmn``: :mod:`benchmarks.worker`, the same loop with the baseline model.

Networks: the seed MLP (``mlp``) and the Yat CNN (``cnn``), each with the epochs and
image counts of its :class:`~benchmarks.profiles.Plan`.

From each run's receipt: the first epoch is the warm-up (it includes
compilation); the steady state is the median of the later epochs. Also recorded:
the time to the first finished step (framework import, set-up, data to the
device and compilation, from the receipt), the process's peak resident memory,
and the final test accuracy (a benchmark of a model that does not learn means
nothing).
"""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any

from benchmarks.devices import Target
from benchmarks.nmn_runners import NMN_MODULES, nmn_version
from benchmarks.processes import run_measured, scratch_path
from benchmarks.profiles import Profile
from benchmarks.worker import UNAVAILABLE

__all__ = ["EPOCH_MODELS", "MNIST_TRAIN", "epoch_command", "run_epoch_bench", "summarise_receipt"]

#: Models of the epoch table: the Yat seed model and its two baselines.
EPOCH_MODELS = ("yat", "relu", "nmn")
#: Training images in one MNIST epoch (469 steps at batch 128).
MNIST_TRAIN = 60_000


def epoch_command(target: Target, model: str, profile: Profile, report: str, network: str = "mlp") -> list[str]:
    """The command line of one epoch-timing run.

    Examples
    --------
    >>> from benchmarks.profiles import get_profile
    >>> cmd = epoch_command(Target("jax", "cpu"), "yat", get_profile("quick"), "r.json", "cnn")
    >>> " ".join(cmd[1:])
    '-m yat_core train --quiet --model cnn --backend jax --device cpu --epochs 2 --report r.json --train-limit 640 --test-limit 1000'
    """
    plan = profile.plan(network)
    if model == "yat":
        # The user's command; the seed MLP is its default model, so its command line stays the one users type.
        cmd = [sys.executable, "-m", "yat_core", "train", "--quiet"]
        cmd += ["--model", network] if network != "mlp" else []
    else:
        cmd = [sys.executable, "-m", "benchmarks.worker", "--model", model]
        cmd += ["--network", network] if network != "mlp" else []
    cmd += ["--backend", target.backend, "--device", target.device, "--epochs", str(plan.epochs), "--report", report]
    if plan.train_limit is not None:
        cmd += ["--train-limit", str(plan.train_limit)]
    if plan.test_limit is not None:
        cmd += ["--test-limit", str(plan.test_limit)]
    return cmd


def summarise_receipt(receipt: dict[str, Any]) -> dict[str, Any]:
    """The timing facts of a training receipt.

    ``steady_s`` is seconds per *full* MNIST epoch: when the run used fewer
    images (quick profile) it is extrapolated from the measured samples/s.

    Examples
    --------
    >>> r = {"history": [{"epoch_s": 3.0, "test_acc": 0.9}, {"epoch_s": 1.0, "test_acc": 0.95}],
    ...      "n_train": 60000, "first_step_s": 2.0, "total_s": 5.0, "params": 1, "device": "cpu"}
    >>> s = summarise_receipt(r); s["steady_s"], s["samples_per_s"], s["warmup_epoch_s"]
    (1.0, 60000.0, 3.0)
    """
    epochs = [h["epoch_s"] for h in receipt["history"]]
    timed = epochs[1:] or epochs  # a one-epoch run has no steady state apart from its warm-up
    measured = statistics.median(timed)
    n_train = receipt["n_train"]
    samples_per_s = n_train / measured
    return {
        "status": "ok",
        "epoch_s": epochs,
        "warmup_epoch_s": epochs[0],
        "steady_s": MNIST_TRAIN / samples_per_s,
        "steady_min_s": MNIST_TRAIN * min(timed) / n_train,
        "samples_per_s": samples_per_s,
        "extrapolated": n_train != MNIST_TRAIN,
        "n_train": n_train,
        "first_step_s": receipt.get("first_step_s"),
        "total_s": receipt.get("total_s"),
        "load_s": receipt.get("load_s"),
        "train_epochs_s": sum(epochs),
        "eval_s": sum(h.get("eval_s", 0.0) for h in receipt["history"]),
        "test_acc": receipt["history"][-1].get("test_acc"),
        "params": receipt.get("params"),
        "device_name": receipt.get("device"),
    }


def _nmn_unavailable(backend: str) -> str | None:
    # Answer the common cases here rather than spawn a process to say "n/a".
    if backend not in NMN_MODULES:
        return f"nmn has no layer for the {backend} backend"
    if nmn_version() is None:
        return "nmn is not installed (optional: pip install nmn)"
    return None


def _failure(status: str, reason: str) -> dict[str, Any]:
    return {"status": status, "reason": reason.strip()[-2000:]}


def run_epoch_bench(
    target: Target, model: str, profile: Profile, *, network: str = "mlp", timeout_s: float = 1200.0
) -> dict[str, Any]:
    """Run one epoch-timing process and summarise it.

    Returns a JSON-ready record with ``status`` ``"ok"``, ``"n/a"`` (the comparison
    does not apply here, e.g. ``nmn`` not installed) or ``"error"`` (with the reason).
    """
    plan = profile.plan(network)
    record: dict[str, Any] = {
        "backend": target.backend,
        "device": target.device,
        "network": network,
        "model": model,
        "epochs": plan.epochs,
        "train_limit": plan.train_limit,
        "test_limit": plan.test_limit,
    }
    if model == "nmn":
        record["nmn_module"] = NMN_MODULES.get(target.backend)
        reason = _nmn_unavailable(target.backend)
        if reason:
            return {**record, **_failure("n/a", reason)}
    report = scratch_path(f"{target.backend}-{network}-{model}")
    cmd = epoch_command(target, model, profile, str(report), network)
    record["command"] = " ".join(cmd[1:]).replace(str(report), "RECEIPT.json")
    try:
        proc = run_measured(cmd, timeout_s=timeout_s)
        payload = json.loads(report.read_text()) if report.exists() else None
    finally:
        report.unlink(missing_ok=True)
    if proc.timed_out:
        return {**record, **_failure("error", f"timed out after {timeout_s:.0f} s")}
    if proc.returncode == UNAVAILABLE and model != "yat" and payload is not None:
        return {**record, **_failure("n/a", payload.get("reason", "not available"))}
    if proc.returncode != 0 or payload is None:
        return {**record, **_failure("error", f"exit status {proc.returncode}: {proc.stderr or proc.stdout}")}
    summary = summarise_receipt(payload)
    # Interpreter start, imports before training, writing the receipt and exiting.
    outside = proc.wall_s - summary["total_s"] if summary["total_s"] is not None else None
    return {**record, **summary, "wall_s": proc.wall_s, "outside_train_s": outside, "peak_rss_mb": proc.peak_rss_mb}
