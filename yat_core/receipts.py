"""Receipts: the JSON record every training run leaves behind, written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from yat_core._io import atomic_write_text
from yat_core._mlx_blas import usable_cores

__all__ = [
    "machine_info",
    "versions",
    "git_commit",
    "write_json_atomic",
    "default_receipt_path",
    "command_line",
    "REQUIRED_KEYS",
    "HISTORY_KEYS",
]

#: Keys every receipt carries (checked by the tests and the parity suite).
REQUIRED_KEYS = (
    "backend",
    "device",
    "params",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "seed",
    "n_train",
    "n_test",
    "total_s",
    "final_test_acc",
    "final_test_loss",
    "history",
    "versions",
    "machine",
    "git_commit",
)
HISTORY_KEYS = ("epoch", "train_loss", "test_loss", "test_acc", "epoch_s", "samples_per_s")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, core count, OS and architecture of this machine.

    Examples
    --------
    >>> sorted(machine_info())
    ['arch', 'cores', 'cpu', 'os']
    """
    cores = usable_cores()
    return {"cpu": _cpu_model(), "cores": cores, "os": platform.platform(), "arch": platform.machine()}


def versions(*frameworks: str) -> dict[str, str]:
    """Versions of Python, yat_core, NumPy and the given distributions (those installed)."""
    import importlib.metadata as md

    import numpy

    import yat_core

    out = {"python": platform.python_version(), "yat_core": yat_core.__version__, "numpy": numpy.__version__}
    for name in frameworks:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding ``path`` (this package by default), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _json_safe(obj: Any) -> Any:
    # NaN and infinity are not JSON; a diverged run still gets a valid receipt (null).
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON; readers see the old file or the new one, never half.

    Non-finite floats (a diverged loss) are written as ``null``.

    Examples
    --------
    >>> import tempfile, json, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> _ = write_json_atomic(p, {"a": 1}); json.loads(p.read_text())
    {'a': 1}
    """
    # Serialise first: an unserialisable value fails before any file is touched.
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def default_receipt_path(kind: str, folder: str | os.PathLike = "receipts") -> Path:
    """``receipts/<kind>-<UTC timestamp>.json`` in the working directory."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return Path(folder) / f"{kind}-{stamp}.json"


def command_line() -> str:
    """The command that started this process, for the receipt."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
