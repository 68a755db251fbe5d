"""Reports of a benchmark run: ``bench.json``, ``bench.md`` and ``bench.png``.

Every ratio column ("x floor", "x ReLU baseline", "x nmn") is a ratio of times,
this backend's over the comparison's: below 1 is faster than the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.devices import BACKEND_ORDER
from benchmarks.steps import KINDS
from benchmarks.targets import NMN_EXAMPLE_S_PER_EPOCH, evaluate_targets, step_ratio
from yat_core._io import atomic_write, atomic_write_text

__all__ = ["summarise", "derive", "epoch_table", "render_markdown", "render_chart", "write_outputs", "OUTPUT_NAMES"]

Results = dict[str, Any]
OUTPUT_NAMES = {"json": "bench.json", "markdown": "bench.md", "chart": "bench.png"}
NA = "n/a"


# -- derived numbers ------------------------------------------------------------------
def _rows(results: Results) -> list[tuple[str, str]]:
    """(backend, device) pairs that have any measurement, in table order."""
    seen = {(r["backend"], r["device"]) for r in results.get("epochs", []) + results.get("steps", [])}
    rank = {b: i for i, b in enumerate(BACKEND_ORDER)}
    return sorted(seen, key=lambda bd: (rank.get(bd[0], len(rank)), bd[1] != "cpu", bd[1]))


def _epoch(results: Results, backend: str, device: str, model: str) -> dict[str, Any] | None:
    for rec in results.get("epochs", []):
        if (rec["backend"], rec["device"], rec["model"]) == (backend, device, model):
            return rec
    return None


def _ok(rec: dict[str, Any] | None, key: str) -> float | None:
    return rec.get(key) if rec is not None and rec.get("status") == "ok" else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _floor_s(results: Results, device: str) -> float | None:
    # CPU rows against the CPU floor; a GPU row against the floor of its device kind, if measured.
    floors = (results.get("floor") or {}).get("floor", {})
    entry = floors.get("cpu" if device == "cpu" else "cuda")
    return entry.get("seconds") if entry else None


def summarise(results: Results) -> list[dict[str, Any]]:
    """One row per backend/device: the epoch table and the facts beside it."""
    rows = []
    for backend, device in _rows(results):
        yat = _epoch(results, backend, device, "yat")
        relu = _epoch(results, backend, device, "relu")
        nmn = _epoch(results, backend, device, "nmn")
        s = _ok(yat, "steady_s")
        rows.append(
            {
                "backend": backend,
                "device": device,
                "s_per_epoch": s,
                "samples_per_s": _ok(yat, "samples_per_s"),
                "x_floor": _ratio(s, _floor_s(results, device)),
                "x_relu": _ratio(s, _ok(relu, "steady_s")),
                "x_nmn": _ratio(s, _ok(nmn, "steady_s")),
                "relu_s_per_epoch": _ok(relu, "steady_s"),
                "nmn_s_per_epoch": _ok(nmn, "steady_s"),
                "nmn_status": None if nmn is None else (nmn.get("status"), nmn.get("reason")),
                "step_ratio_b128": step_ratio(results, backend, device),
                "extrapolated": bool(yat and yat.get("extrapolated")),
                "yat_status": None if yat is None else (yat.get("status"), yat.get("reason")),
            }
        )
    return rows


def derive(results: Results, comparison: dict[str, Any] | None = None) -> Results:
    """``results`` with ``summary``, ``targets`` (and ``comparison`` when given) filled in."""
    out = dict(results)
    out["summary"] = summarise(results)
    out["targets"] = evaluate_targets(results)
    if comparison is not None:
        out["comparison"] = comparison
    return out


# -- Markdown --------------------------------------------------------------------------
def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if value == 0:
        return "0"
    places = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{places}f}"


def _x(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _md_header(results: Results) -> list[str]:
    m, v, prof = results.get("machine", {}), results.get("versions", {}), results.get("profile", {})
    load = results.get("load_avg", {})
    lines = [
        f"# yat-core benchmarks ({prof.get('name', '?')} profile)",
        "",
        f"- run: {results.get('started', '?')} to {results.get('finished', '?')}, "
        f"commit `{results.get('git_commit') or 'unknown'}`",
        f"- machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('os', '?')}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- environment: "
        + (
            ", ".join(f"{k}={val}" for k, val in results.get("environment", {}).items())
            or "no thread, BLAS or compiler variables set"
        ),
        f"- load average (1/5/15 min) at start {load.get('start')}, at end {load.get('end')}",
    ]
    start = (load.get("start") or [0.0])[0]
    cores = m.get("cores") or 1
    if start > 0.5:
        lines.append(
            f"- note: other processes were using the CPU when the run started "
            f"(load {start:.2f} on {cores} cores); times include their interference"
        )
    if prof.get("train_limit"):
        lines.append(
            f"- quick profile: epochs of {prof['train_limit']:,} images; seconds per MNIST epoch are "
            "extrapolated from the measured samples/s and are indicative only"
        )
    return lines


def epoch_table(summary: list[dict[str, Any]]) -> list[str]:
    """The issue's table: rows backend/device; s/epoch, samples/s, x floor, x ReLU baseline, x nmn."""
    rows = []
    for r in summary:
        nmn = _x(r["x_nmn"])
        if r["x_nmn"] is None and r["nmn_status"] and r["nmn_status"][0] == "error":
            nmn = "error"
        rows.append(
            [
                f"{r['backend']}/{r['device']}",
                _f(r["s_per_epoch"]),
                _f(r["samples_per_s"], 4),
                _x(r["x_floor"]),
                _x(r["x_relu"]),
                nmn,
            ]
        )
    return _table(["backend/device", "s/epoch", "samples/s", "x floor", "x ReLU baseline", "x nmn"], rows)


def _md_epochs(results: Results, summary: list[dict[str, Any]]) -> list[str]:
    floor = (results.get("floor") or {}).get("floor", {}).get("cpu")
    floor_line = (
        f"Floor: {results['floor']['flops_per_epoch'] / 1e9:.1f} GFLOP per epoch at "
        f"{floor['gflops']:.0f} GFLOP/s ({floor['basis']}) = {floor['seconds']:.3f} s/epoch."
        if floor
        else "Floor: not measured in this run."
    )
    epochs = results.get("profile", {}).get("epochs", "?")
    return [
        "## Epoch timing: MNIST, batch 128, steady state",
        "",
        f"Each row is a fresh `yat-core train` process of {epochs} epochs; the first epoch "
        "(compilation) is the warm-up and s/epoch is the median of the others. Ratios are "
        "times, this row over the comparison (below 1 = faster): *x floor* against the "
        "physical floor, *x ReLU baseline* against the same-shape `Linear + ReLU` MLP on the "
        "same backend, *x nmn* against the published `nmn` package's layer of the same "
        "framework in the same loop.",
        "",
        *epoch_table(summary),
        "",
        floor_line,
    ]


def _md_runs(results: Results) -> list[str]:
    rows = []
    impl = {"yat": "yat-core (Yat)", "relu": "Linear + ReLU"}
    for rec in results.get("epochs", []):
        label = f"{rec['backend']}/{rec['device']}"
        name = impl.get(rec["model"]) or f"nmn YatNMN ({rec.get('nmn_module') or 'none for this framework'})"
        if rec.get("status") != "ok":
            rows.append([label, name, rec.get("status", "?"), NA, NA, NA, NA, NA, (rec.get("reason") or "")[:80]])
            continue
        rows.append(
            [
                label,
                name,
                _f(rec["steady_s"]),
                _f(rec["warmup_epoch_s"]),
                _f(rec.get("first_step_s")),
                _f(rec.get("wall_s")),
                _f(rec.get("peak_rss_mb"), 4),
                NA if rec.get("test_acc") is None else f"{100 * rec['test_acc']:.2f}%",
                "",
            ]
        )
    return [
        "## Every run: start-up, end to end, memory",
        "",
        "*first step*: from the start of training (framework import, set-up, data to the device, "
        "compilation) to the first finished step. *wall*: the whole process, spawn to exit "
        "(for the Yat rows: the user's `yat-core train` command). *peak RSS*: the process's "
        "peak resident memory.",
        "",
        *_table(
            [
                "backend/device",
                "model",
                "s/epoch",
                "warm-up epoch s",
                "first step s",
                "wall s",
                "peak RSS MB",
                "test acc",
                "note",
            ],
            rows,
        ),
    ]


def _md_targets(results: Results, targets: list[dict[str, Any]]) -> list[str]:
    rows = []
    for t in targets:
        met = "not measured" if t["met"] is None else ("met" if t["met"] else "**not met**")
        measured = NA if t["measured"] is None else f"{_f(t['measured'])} {t['unit']}"
        best = NA if t.get("best_case") is None else f"{_f(t['best_case'])} {t['unit']}"
        rows.append([t["name"], f"<= {t['limit']:g} {t['unit']}", measured, met, best, t["basis"]])
    return [
        "## Targets",
        "",
        "Judged on *measured* (median times). *best case* is the same quantity from the fastest "
        "timed epoch or step: on a shared machine it shows what the code does when other "
        "processes leave it alone.",
        "",
        *_table(["target", "limit", "measured", "status", "best case", "basis"], rows),
    ]


def _md_wall(results: Results) -> list[str]:
    rows = []
    for rec in results.get("epochs", []):
        if rec["model"] != "yat" or rec.get("status") != "ok" or rec.get("outside_train_s") is None:
            continue
        set_up = rec["total_s"] - rec["train_epochs_s"] - rec["eval_s"]
        rows.append(
            [
                f"{rec['backend']}/{rec['device']}",
                _f(rec["wall_s"]),
                _f(rec["outside_train_s"]),
                _f(rec.get("load_s")),
                _f(set_up),
                _f(rec["train_epochs_s"]),
                _f(rec["eval_s"]),
            ]
        )
    if not rows:
        return []
    return [
        "## Where the end-to-end time goes (`yat-core train`, Yat model)",
        "",
        "*outside train()*: interpreter start, imports before training, writing the receipt, exit. "
        "*set-up*: inside train() but outside the epochs and evaluations: framework import, "
        "initialisation, data load (also shown on its own) and transfer to the device. The first "
        "epoch includes compilation.",
        "",
        *_table(
            ["backend/device", "wall s", "outside train() s", "data load s", "set-up s", "epochs s", "evaluation s"],
            rows,
        ),
    ]


def _md_floor(results: Results) -> list[str]:
    floor = results.get("floor")
    if not floor:
        return []
    rows = []
    for device, libs in floor["rates"].items():
        for lib, r in libs.items():
            rows.append(
                [
                    device,
                    lib,
                    _f(r.get("model_gflops")),
                    _f(r.get("square_gflops")),
                    _f(floor["flops_per_epoch"] / (r["model_gflops"] * 1e9)),
                ]
            )
    lines = [
        "## The floor: fp32 matrix-multiply rates measured in this run",
        "",
        f"One epoch = {floor['n_samples']:,} samples x {floor['flops_per_sample'] / 1e6:.3f} MFLOP "
        f"(forward 2·in·out per layer; backward: weight gradients of every layer, input gradients "
        f"of all but the first) = {floor['flops_per_epoch'] / 1e9:.1f} GFLOP. *model shapes*: all "
        f"matrix products of one batch-{floor['batch']} training step back to back; *square*: one "
        "2048³ product. Best of several repeats each. The floor uses the fastest library on the "
        "model's own shapes (what the epoch's products can actually reach here); the square rate "
        "is shown for reference.",
        "",
        *_table(["device", "library", "model shapes GFLOP/s", "square GFLOP/s", "its floor s/epoch"], rows),
    ]
    for device, entry in floor.get("floor", {}).items():
        extra = ""
        if "square_gflops" in entry:
            extra = (
                f"; at the square-matmul rate ({entry['square_library']}, {entry['square_gflops']:.0f} "
                f"GFLOP/s) it would be {entry['seconds_at_square_rate']:.3f} s"
            )
        lines += ["", f"Floor on {device}: {entry['seconds']:.3f} s/epoch ({entry['basis']}){extra}."]
    return lines


def _md_steps(results: Results) -> list[str]:
    steps = results.get("steps", [])
    if not steps:
        return []
    batches = sorted({s["batch"] for s in steps})
    by_key = {(s["backend"], s["device"], s["model"], s["kind"], s["batch"]): s for s in steps}
    groups = sorted(
        {(s["backend"], s["device"], s["model"], s["kind"]) for s in steps},
        key=lambda k: (_rank(k[0]), k[1], k[2] != "yat", KINDS.index(k[3])),
    )
    median_rows, first_rows = [], []
    for g in groups:
        cells = [by_key.get((*g, b)) for b in batches]
        label = [f"{g[0]}/{g[1]}", g[2], g[3]]
        median_rows.append(
            label + [NA if c is None else f"{_f(1e3 * c['median_s'])} ({_f(1e3 * c['min_s'])})" for c in cells]
        )
        first_rows.append(label + [NA if c is None else _f(c["first_call_s"]) for c in cells])
    head = ["backend/device", "model", "step"]
    return [
        "## Step timing (pytest-benchmark)",
        "",
        "Milliseconds per step after warm-up, median (fastest round in brackets); every call waits for its result "
        "(device synchronised, MLX graph evaluated) before the clock is read. *forward*: "
        "logits of a float batch; *forward_backward*: loss and all gradients; *train_step*: "
        "batch gather, loss, gradients and the AdamW update (what one training step costs).",
        "",
        *_table(head + [f"b={b} ms" for b in batches], median_rows),
        "",
        "First call in seconds (tracing, compilation and warm-up, timed separately):",
        "",
        *_table(head + [f"b={b} s" for b in batches], first_rows),
    ]


def _rank(backend: str) -> int:
    return BACKEND_ORDER.index(backend) if backend in BACKEND_ORDER else len(BACKEND_ORDER)


def _md_comparison(results: Results) -> list[str]:
    from benchmarks.regress import format_comparison

    comparison = results.get("comparison")
    if not comparison:
        return []
    return ["## Comparison with the baseline", "", "```", format_comparison(comparison), "```"]


def render_markdown(results: Results) -> str:
    """The Markdown report of a derived result (see :func:`derive`)."""
    summary = results.get("summary") or summarise(results)
    targets = results.get("targets") or evaluate_targets(results)
    sections = [
        _md_header(results),
        _md_epochs(results, summary),
        _md_targets(results, targets),
        _md_runs(results),
        _md_wall(results),
        _md_floor(results),
        _md_steps(results),
        _md_comparison(results),
    ]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


# -- chart -----------------------------------------------------------------------------
_TARGET_S = {"jax": 0.45, "torch": 0.6, "mlx": NMN_EXAMPLE_S_PER_EPOCH["mlx"] / 2}
_SERIES = (
    ("yat", "yat-core Yat", "#1f77b4"),
    ("relu", "Linear + ReLU (same backend)", "#aec7e8"),
    ("nmn", "nmn YatNMN (same framework)", "#ff7f0e"),
)


def _chart_epochs(ax: Any, results: Results, rows: list[tuple[str, str]]) -> None:
    width = 0.26
    for i, (model, label, color) in enumerate(_SERIES):
        xs, ys = [], []
        for j, (backend, device) in enumerate(rows):
            value = _ok(_epoch(results, backend, device, model), "steady_s")
            if value is not None:
                xs.append(j + (i - 1) * width)
                ys.append(value)
        bars = ax.bar(xs, ys, width, label=label, color=color, edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, labels=[_f(y, 2) for y in ys], fontsize=7, padding=1)
    labelled: set[str] = set()  # one legend entry per kind of marker
    for j, (backend, device) in enumerate(rows):
        if device != "cpu":
            continue
        if backend in _TARGET_S:
            ax.hlines(
                _TARGET_S[backend],
                j - 0.42,
                j + 0.42,
                colors="red",
                linewidth=2,
                label=None if "target" in labelled else "target",
            )
            labelled.add("target")
        if backend in NMN_EXAMPLE_S_PER_EPOCH:
            # A dotted bar top over the nmn bar: where nmn's own example script lands.
            ax.hlines(
                NMN_EXAMPLE_S_PER_EPOCH[backend],
                j + width / 2,
                j + 1.5 * width,
                colors="black",
                linestyles=":",
                linewidth=2,
                label=None if "example" in labelled else "nmn's own example script (DESIGN.md §4)",
            )
            labelled.add("example")
    floor = _floor_s(results, "cpu")
    if floor:
        ax.axhline(
            floor,
            color="green",
            linestyle="--",
            linewidth=1.2,
            label=f"CPU floor {floor:.2f} s (FLOPs / measured matmul rate)",
        )
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 2.5)  # headroom for the value labels
    ax.set_xticks(range(len(rows)), [f"{b}/{d}" for b, d in rows])
    ax.set_ylabel("seconds per MNIST epoch (log)")
    ax.set_title("Steady-state epoch time, batch 128 (lower is better)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, frameon=False)
    ax.grid(axis="y", which="both", alpha=0.3)


def _chart_step_ratio(ax: Any, results: Results, rows: list[tuple[str, str]]) -> None:
    batches = sorted({s["batch"] for s in results.get("steps", [])})
    width = 0.8 / max(1, len(batches))
    for i, batch in enumerate(batches):
        xs, ys = [], []
        for j, (backend, device) in enumerate(rows):
            value = step_ratio(results, backend, device, batch=batch)
            if value is not None:
                xs.append(j - 0.4 + (i + 0.5) * width)
                ys.append(value)
        # Bars grow from parity (1x): up when the Yat step is slower, down when faster.
        bars = ax.bar(
            xs, [y - 1.0 for y in ys], width, bottom=1.0, label=f"batch {batch}", edgecolor="black", linewidth=0.5
        )
        ax.bar_label(bars, labels=[f"{y:.3g}" for y in ys], fontsize=7, padding=1)
    ax.axhline(1.3, color="red", linewidth=1.5, label="target 1.3x (batch 128)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    # Log scale: a ratio of 2 and of 1/2 are equally far from parity, and outliers stay on the chart.
    ax.set_yscale("log", base=2)
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 0.5), max(high, 2.0) * 1.5)
    ax.yaxis.set_major_formatter(matplotlib_ticker().FuncFormatter(lambda v, _: f"{v:.3g}x"))
    ax.set_xticks(range(len(rows)), [f"{b}/{d}" for b, d in rows])
    ax.set_ylabel("Yat step / ReLU step (log)")
    ax.set_title("Full training step: Yat MLP time over the same-shape Linear + ReLU MLP (median)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=5, frameon=False)
    ax.grid(axis="y", alpha=0.3)


def matplotlib_ticker() -> Any:
    """``matplotlib.ticker``, imported with the rest of matplotlib only when a chart is drawn."""
    import matplotlib.ticker

    return matplotlib.ticker


def render_chart(results: Results, path: str | Path) -> Path:
    """Write the PNG bar chart: epoch times with floor and targets, and the Yat/ReLU step ratio."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on CI
    import matplotlib.pyplot as plt

    rows = _rows(results)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 10), gridspec_kw={"height_ratios": [3, 2]})
    _chart_epochs(top, results, rows)
    _chart_step_ratio(bottom, results, rows)
    prof = results.get("profile", {}).get("name", "?")
    cpu = results.get("machine", {}).get("cpu", "")
    fig.suptitle(
        f"yat-core benchmarks ({prof} profile) - {cpu}, {results.get('machine', {}).get('cores', '?')} cores",
        fontsize=10,
    )
    fig.tight_layout()
    path = atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return path


# -- all outputs -----------------------------------------------------------------------
def write_outputs(results: Results, out_dir: str | Path) -> dict[str, Path]:
    """Write ``bench.json``, ``bench.md`` and ``bench.png`` of a derived result into ``out_dir``."""
    from yat_core.receipts import write_json_atomic

    out_dir = Path(out_dir)
    paths = {kind: out_dir / name for kind, name in OUTPUT_NAMES.items()}
    write_json_atomic(paths["json"], results)
    atomic_write_text(paths["markdown"], render_markdown(results))
    render_chart(results, paths["chart"])
    return paths
