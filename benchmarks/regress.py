"""Regression mode: compare a run with a saved one and flag what got slower.

Every metric is a time (lower is better). Steps and epochs are compared on their
best-case times (the fastest timed round, the fastest timed epoch): other
processes on a shared machine only ever add time, so the minimum is the most
repeatable statistic. Start-up and end-to-end times are single measurements and
compared as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_THRESHOLD", "metrics", "compare", "load_results", "format_comparison"]

#: Flag a metric that is more than this fraction slower than the baseline.
DEFAULT_THRESHOLD = 0.10

Results = dict[str, Any]


def load_results(path: str | Path) -> Results:
    """Read a ``bench.json`` written by the suite.

    Raises
    ------
    ValueError
        When the file is not a benchmark result.
    """
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("suite") != "yat-core benchmarks":
        raise ValueError(f"{path} is not a yat-core benchmark result file")
    return data


def metrics(results: Results) -> dict[str, float]:
    """Flat ``{name: seconds}`` of every comparable time in ``results``.

    Examples
    --------
    >>> r = {"steps": [{"backend": "jax", "device": "cpu", "model": "yat", "kind": "forward",
    ...                 "batch": 1, "min_s": 1e-4}], "epochs": []}
    >>> metrics(r)
    {'step jax/cpu yat forward b=1 (min)': 0.0001}

    The CNN's metrics name the network (``step jax/cpu cnn yat ...``); the seed MLP's keep
    the names they had before the CNN was timed, so older baselines still compare.
    """
    out: dict[str, float] = {}
    for s in results.get("steps", []):
        model = _model_label(s)
        out[f"step {s['backend']}/{s['device']} {model} {s['kind']} b={s['batch']} (min)"] = s["min_s"]
    for e in results.get("epochs", []):
        if e.get("status") != "ok":
            continue
        prefix = f"epoch {e['backend']}/{e['device']} {_model_label(e)}"
        out[f"{prefix} s/epoch (min)"] = e["steady_min_s"]
        for key, label in (("first_step_s", "first step"), ("wall_s", "end-to-end")):
            if e.get(key) is not None:
                out[f"{prefix} {label}"] = e[key]
    return out


def _model_label(record: dict[str, Any]) -> str:
    network = record.get("network", "mlp")
    return record["model"] if network == "mlp" else f"{network} {record['model']}"


def compare(current: Results, baseline: Results, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Compare two runs metric by metric.

    Returns
    -------
    dict
        ``regressions`` and ``improvements`` (lists of ``{metric, baseline, current,
        ratio}``, ratio = current / baseline), ``compared`` (how many metrics both
        runs have) and ``notes`` (profile or machine differences that weaken the
        comparison).
    """
    cur, base = metrics(current), metrics(baseline)
    regressions, improvements = [], []
    for name in sorted(set(cur) & set(base)):
        if base[name] <= 0:
            continue
        ratio = cur[name] / base[name]
        row = {"metric": name, "baseline": base[name], "current": cur[name], "ratio": ratio}
        if ratio > 1.0 + threshold:
            regressions.append(row)
        elif ratio < 1.0 / (1.0 + threshold):
            improvements.append(row)
    return {
        "threshold": threshold,
        "compared": len(set(cur) & set(base)),
        "regressions": regressions,
        "improvements": improvements,
        "notes": _notes(current, baseline),
    }


def _notes(current: Results, baseline: Results) -> list[str]:
    notes = []
    cp, bp = current.get("profile", {}).get("name"), baseline.get("profile", {}).get("name")
    if cp != bp:
        notes.append(f"profiles differ (current {cp}, baseline {bp}): only shared metrics are compared")
    if current.get("machine", {}).get("cpu") != baseline.get("machine", {}).get("cpu"):
        notes.append("the runs come from different CPUs")
    rate_now = _floor_rate(current)
    rate_then = _floor_rate(baseline)
    if rate_now and rate_then and abs(rate_now / rate_then - 1.0) > 0.10:
        notes.append(
            f"the machine's measured matmul rate changed {rate_then:.0f} -> {rate_now:.0f} GFLOP/s: "
            "differences may come from the machine, not the code"
        )
    return notes


def _floor_rate(results: Results) -> float | None:
    return results.get("floor", {}).get("floor", {}).get("cpu", {}).get("gflops")


def format_comparison(comparison: dict[str, Any]) -> str:
    """Human-readable lines for the terminal and the Markdown report."""
    pct = 100 * comparison["threshold"]
    lines = [f"compared {comparison['compared']} metrics with a baseline; threshold {pct:.0f}% slower"]
    lines += [f"note: {n}" for n in comparison["notes"]]
    for title, rows in (("SLOWER", comparison["regressions"]), ("faster", comparison["improvements"])):
        for r in rows:
            lines.append(f"{title}: {r['metric']}: {r['baseline']:.4g} s -> {r['current']:.4g} s (x{r['ratio']:.2f})")
    if not comparison["regressions"]:
        lines.append("no regressions")
    return "\n".join(lines)
