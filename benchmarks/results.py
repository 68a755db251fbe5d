"""The results of one benchmark run, as the JSON document the reports are made from.

Schema (``bench.json``)::

    suite, schema, profile{..., cnn{...}}, networks[], started, finished, git_commit,
    machine{cpu, cores, ...}, versions{...}, load_avg{start, end}
    floor{flops_per_sample, flops_per_epoch, rates{device{library{model_gflops, square_gflops}}},
          floor{device{library, gflops, seconds, ...}}}
    steps[{backend, device, network, model, kind, batch, first_call_s, median_s, min_s, mean_s,
           stddev_s, rounds}]
    epochs[{backend, device, network, model, status, steady_s, steady_min_s, samples_per_s,
            epoch_s[], warmup_epoch_s, first_step_s, wall_s, peak_rss_mb, test_acc, ...}]
    summary[...], cnn_summary[...], targets[...], comparison{...}   (derived when written)

``network`` is ``"mlp"`` (the seed model) or ``"cnn"`` (the Yat CNN); a record
without it (a run saved before the CNN was timed) is the seed model's.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.floor import merge_floor
from benchmarks.profiles import Profile

__all__ = ["Collector", "VERSIONED", "SCHEMA", "write_outputs"]

SCHEMA = 1
#: Distributions whose versions every result records (those installed).
VERSIONED = ("torch", "jax", "jaxlib", "mlx", "flax", "optax", "nmn", "array-api-compat", "pytest-benchmark")
#: Environment variables that change how fast the frameworks run; recorded when set.
ENVIRONMENT = (
    "YAT_CORE_MLX_BLAS",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
    "TORCHINDUCTOR_COMPILE_THREADS",
    "YAT_BENCH_PROFILE",
)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _load_avg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on Windows
        return None


class Collector:
    """Accumulates the measurements of one run; :meth:`document` gives the JSON."""

    def __init__(self, profile: Profile, networks: tuple[str, ...] = ("mlp",)) -> None:
        self.data: dict[str, Any] = {
            "suite": "yat-core benchmarks",
            "schema": SCHEMA,
            "profile": profile.as_dict(),
            "networks": list(networks),
            "started": _now(),
            "load_avg": {"start": _load_avg()},
            "floor": None,
            "steps": [],
            "epochs": [],
        }

    def add_step(self, record: dict[str, Any]) -> None:
        self.data["steps"].append(record)

    def add_epoch(self, record: dict[str, Any]) -> None:
        self.data["epochs"].append(record)

    def add_floor(self, floor: dict[str, Any]) -> None:
        """Record a floor measurement; a second one is merged (the faster rates win)."""
        self.data["floor"] = merge_floor(self.data["floor"], floor)

    def has_measurements(self) -> bool:
        return bool(self.data["steps"] or self.data["epochs"])

    def document(self) -> dict[str, Any]:
        """The run's JSON document, with machine, versions and finishing time filled in."""
        from yat_core.receipts import git_commit, machine_info, versions

        doc = dict(self.data)
        doc.update(
            finished=_now(),
            git_commit=git_commit(),
            machine=machine_info(),
            versions=versions(*VERSIONED),
            environment={k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
        )
        doc["load_avg"] = {**self.data["load_avg"], "end": _load_avg()}
        return doc


def write_outputs(
    doc: dict[str, Any],
    out_dir: str | os.PathLike[str],
    names: Mapping[str, str],
    render_markdown: Callable[[dict[str, Any]], str],
    render_chart: Callable[[dict[str, Any], Path], Any],
) -> dict[str, Path]:
    """A report's three files in ``out_dir``, each written atomically: ``names["json"]`` (``doc``),
    ``names["markdown"]`` and ``names["chart"]`` (a PNG); returns their paths by kind."""
    from yat_core._io import atomic_write_text
    from yat_core.receipts import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / name for kind, name in names.items()}
    write_json_atomic(paths["json"], doc)
    atomic_write_text(paths["markdown"], render_markdown(doc))
    render_chart(doc, paths["chart"])
    return paths
