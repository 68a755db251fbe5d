"""Reports of a benchmark run: ``bench.json``, ``bench.md`` and ``bench.png``.

Every ratio column of the seed MLP ("x floor", "x ReLU baseline", "x nmn") is a
ratio of times, this backend's over the comparison's: below 1 is faster than the
comparison. The Yat CNN's columns name their ratio: "Yat / Conv+ReLU" (time of the
Yat CNN over the Conv + ReLU CNN's: at most 1.5 meets issue 9's criterion) and
"nmn / Yat" (nmn's time over the Yat CNN's: above 1 means the Yat CNN is faster).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.devices import BACKEND_ORDER
from benchmarks.nmn_runners import NMN_MODULES
from benchmarks.steps import KINDS, MODELS
from benchmarks.targets import (
    CNN_STEP_LIMIT,
    NMN_EXAMPLE_S_PER_EPOCH,
    epoch_ratio,
    evaluate_targets,
    network_of,
    step_ratio,
)
from yat_core._io import atomic_write, atomic_write_text

__all__ = [
    "summarise",
    "summarise_cnn",
    "derive",
    "epoch_table",
    "cnn_tables",
    "render_markdown",
    "torch_profile_section",
    "render_chart",
    "write_outputs",
    "OUTPUT_NAMES",
]

Results = dict[str, Any]
OUTPUT_NAMES = {"json": "bench.json", "markdown": "bench.md", "chart": "bench.png"}
NA = "n/a"


# -- derived numbers ------------------------------------------------------------------
def _rows(results: Results, network: str | None = None) -> list[tuple[str, str]]:
    """(backend, device) pairs that have any measurement (of ``network``, if given), in table order."""
    seen = {
        (r["backend"], r["device"])
        for r in results.get("epochs", []) + results.get("steps", [])
        if network is None or network_of(r) == network
    }
    rank = {b: i for i, b in enumerate(BACKEND_ORDER)}
    return sorted(seen, key=lambda bd: (rank.get(bd[0], len(rank)), bd[1] != "cpu", bd[1]))


def _networks(results: Results) -> list[str]:
    """The networks this run measured, the seed MLP first."""
    seen = {network_of(r) for r in results.get("epochs", []) + results.get("steps", [])}
    return sorted(seen, key=lambda n: (n != "mlp", n))


def _epoch(results: Results, backend: str, device: str, model: str, network: str = "mlp") -> dict[str, Any] | None:
    for rec in results.get("epochs", []):
        if (rec["backend"], rec["device"], rec["model"]) == (backend, device, model) and network_of(rec) == network:
            return rec
    return None


def _step(
    results: Results, backend: str, device: str, model: str, network: str, kind: str = "train_step", batch: int = 128
) -> dict[str, Any] | None:
    for rec in results.get("steps", []):
        key = (rec["backend"], rec["device"], rec["model"], rec["kind"], rec["batch"])
        if key == (backend, device, model, kind, batch) and network_of(rec) == network:
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
    """One row per backend/device of the seed MLP: the epoch table and the facts beside it."""
    rows = []
    for backend, device in _rows(results, "mlp"):
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


def _ms(rec: dict[str, Any] | None, key: str = "median_s") -> float | None:
    return 1e3 * rec[key] if rec is not None else None


def _status(rec: dict[str, Any] | None) -> tuple[str, str | None] | None:
    return None if rec is None else (rec.get("status", "?"), rec.get("reason"))


def _meets(step_x_relu: float | None, nmn_over_yat: float | None, nmn_applies: bool) -> bool | None:
    """Issue 9's criterion on one backend: None until the Yat/Conv+ReLU step ratio (and nmn's, where it applies)
    is measured."""
    if step_x_relu is None or (nmn_applies and nmn_over_yat is None):
        return None
    return step_x_relu <= CNN_STEP_LIMIT and (not nmn_applies or nmn_over_yat is not None and nmn_over_yat > 1.0)


def summarise_cnn(results: Results) -> list[dict[str, Any]]:
    """One row per backend/device of the Yat CNN: step and epoch times of the Yat CNN, the Conv + ReLU CNN
    and nmn's conv layers, the two ratios, and issue 9's criterion (``meets``).

    The step is the full training step at batch 128 (median; ``*_best``: the fastest round); "same loop" is
    the epoch timing, every model trained by the same loop. ``meets`` is None until measured; where nmn has
    no layer (NumPy) only the 1.5x criterion applies; where it has one but was not measured (not
    installed), the criterion stays unjudged.
    """
    rows = []
    for backend, device in _rows(results, "cnn"):
        epochs = {m: _epoch(results, backend, device, m, "cnn") for m in MODELS}
        steps = {m: _step(results, backend, device, m, "cnn") for m in MODELS}
        nmn_applies = backend in NMN_MODULES

        step_x_relu = step_ratio(results, backend, device, network="cnn")
        epoch_nmn_over_yat = epoch_ratio(results, backend, device, network="cnn", numerator="nmn", denominator="yat")
        rows.append(
            {
                "backend": backend,
                "device": device,
                "yat_step_ms": _ms(steps["yat"]),
                "relu_step_ms": _ms(steps["relu"]),
                "nmn_step_ms": _ms(steps["nmn"]),
                "step_x_relu": step_x_relu,
                "step_x_relu_best": step_ratio(results, backend, device, stat="min_s", network="cnn"),
                "step_nmn_over_yat": step_ratio(
                    results, backend, device, network="cnn", numerator="nmn", denominator="yat"
                ),
                "s_per_epoch": _ok(epochs["yat"], "steady_s"),
                "samples_per_s": _ok(epochs["yat"], "samples_per_s"),
                "relu_s_per_epoch": _ok(epochs["relu"], "steady_s"),
                "nmn_s_per_epoch": _ok(epochs["nmn"], "steady_s"),
                "epoch_x_relu": epoch_ratio(results, backend, device, network="cnn"),
                "epoch_nmn_over_yat": epoch_nmn_over_yat,
                "nmn_applies": nmn_applies,
                "meets_step_limit": None if step_x_relu is None else step_x_relu <= CNN_STEP_LIMIT,
                "faster_than_nmn": None if epoch_nmn_over_yat is None else epoch_nmn_over_yat > 1.0,
                "meets": _meets(step_x_relu, epoch_nmn_over_yat, nmn_applies),
                "extrapolated": bool(epochs["yat"] and epochs["yat"].get("extrapolated")),
                "yat_status": _status(epochs["yat"]),
                "relu_status": _status(epochs["relu"]),
                "nmn_status": _status(epochs["nmn"]),
            }
        )
    return rows


def derive(results: Results, comparison: dict[str, Any] | None = None) -> Results:
    """``results`` with ``summary``, ``cnn_summary``, ``targets`` (and ``comparison`` when given) filled in."""
    out = dict(results)
    out["summary"] = summarise(results)
    out["cnn_summary"] = summarise_cnn(results)
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
    networks = _networks(results)
    if prof.get("train_limit") and "mlp" in networks:
        lines.append(
            f"- quick profile: epochs of {prof['train_limit']:,} images; seconds per MNIST epoch are "
            "extrapolated from the measured samples/s and are indicative only"
        )
    cnn = prof.get("cnn") or {}
    if "cnn" in networks and cnn.get("train_limit"):
        test = f", evaluated on {cnn['test_limit']:,} test images" if cnn.get("test_limit") else ""
        lines.append(
            f"- Yat CNN: {cnn.get('epochs', '?')} epochs of {cnn['train_limit']:,} training images each{test}; "
            "seconds per MNIST epoch are extrapolated from the measured samples/s"
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
    floors = (results.get("floor") or {}).get("floor", {})
    floor_lines = [_floor_line(results["floor"]["flops_per_epoch"], device, f) for device, f in floors.items()]
    epochs = results.get("profile", {}).get("epochs", "?")
    return [
        "## Epoch timing: MNIST, batch 128, steady state (seed MLP)",
        "",
        f"Each row is a fresh `yat-core train` process of {epochs} epochs; the first epoch "
        "(compilation) is the warm-up and s/epoch is the median of the others. Ratios are "
        "times, this row over the comparison (below 1 = faster): *x floor* against the "
        "physical floor, *x ReLU baseline* against the same-shape `Linear + ReLU` MLP on the "
        "same backend, *x nmn* against the published `nmn` package's layer of the same "
        "framework in the same loop.",
        "",
        *epoch_table(summary),
        *[part for line in floor_lines or ["Floor: not measured in this run."] for part in ("", line)],
    ]


def _floor_line(flops_per_epoch: float, device: str, floor: dict[str, Any]) -> str:
    """The sentence under the epoch table for one device kind's floor (a GPU's: why it is not its matrix rate)."""
    line = (
        f"Floor on {device}: {flops_per_epoch / 1e9:.1f} GFLOP per epoch at {floor['gflops']:,.0f} GFLOP/s "
        f"({floor['basis']}) = {_f(floor['seconds'])} s/epoch."
    )
    if device != "cpu" and "square_gflops" in floor:
        line += (
            f" At the GPU's matrix rate ({floor['square_library']}, one 2048³ product: "
            f"{floor['square_gflops']:,.0f} GFLOP/s) the epoch's products would take "
            f"{_f(floor['seconds_at_square_rate'])} s. At batch 128 each product is one short kernel that "
            "costs more to launch than to compute: the model-shapes rate measures launches, and a loop that "
            "runs many steps per compiled call (JAX's) gets under it. The scaling sweep "
            "(`python -m benchmarks.scaling --devices cuda`) shows where larger batches reach the matrix rate."
        )
    return line


#: How the "every run" and step tables name each (network, model).
_MODEL_NAMES = {
    ("mlp", "yat"): "yat-core (Yat)",
    ("mlp", "relu"): "Linear + ReLU",
    ("mlp", "nmn"): "nmn YatNMN",
    ("cnn", "yat"): "CNN: yat-core (Yat)",
    ("cnn", "relu"): "CNN: Conv + ReLU",
    ("cnn", "nmn"): "CNN: nmn YatConv2D + YatNMN",
}


def _model_name(rec: dict[str, Any]) -> str:
    name = _MODEL_NAMES.get((network_of(rec), rec["model"]), f"{network_of(rec)} {rec['model']}")
    if rec["model"] == "nmn" and "backend" in rec and "kind" not in rec:
        name += f" ({rec.get('nmn_module') or 'none for this framework'})"
    return name


def _md_runs(results: Results) -> list[str]:
    rows = []
    for rec in results.get("epochs", []):
        label = f"{rec['backend']}/{rec['device']}"
        name = _model_name(rec)
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
    networks = _networks(results)
    for t in targets:
        if t.get("network", "mlp") not in networks:
            continue  # a network this run did not time
        met = "not measured" if t["met"] is None else ("met" if t["met"] else "**not met**")
        measured = NA if t["measured"] is None else f"{_f(t['measured'])} {t['unit']}"
        best = NA if t.get("best_case") is None else f"{_f(t['best_case'])} {t['unit']}"
        sign = ">=" if t.get("at_least") else "<="
        rows.append([t["name"], f"{sign} {t['limit']:g} {t['unit']}", measured, met, best, t["basis"]])
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
        cnn = " (CNN)" if network_of(rec) == "cnn" else ""
        rows.append(
            [
                f"{rec['backend']}/{rec['device']}{cnn}",
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
        "## Where the end-to-end time goes (`yat-core train`, Yat models)",
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
                f"GFLOP/s) it would be {_f(entry['seconds_at_square_rate'])} s"
            )
        lines += ["", f"Floor on {device}: {entry['seconds']:.3f} s/epoch ({entry['basis']}){extra}."]
    return lines


def _md_steps(results: Results) -> list[str]:
    steps = results.get("steps", [])
    if not steps:
        return []
    lines = [
        "## Step timing (pytest-benchmark)",
        "",
        "Milliseconds per step after warm-up, median (fastest round in brackets); every call waits for its result "
        "(device synchronised, MLX graph evaluated) before the clock is read. *forward*: "
        "logits of a float batch; *forward_backward*: loss and all gradients; *train_step*: "
        "batch gather, loss, gradients and the AdamW update (what one training step costs). "
        "nmn's layers are timed on the training step only, in the runner of the epoch timings.",
    ]
    for network in _networks(results):
        lines += ["", *_step_tables(network, [s for s in steps if network_of(s) == network])]
    return lines


def _step_tables(network: str, steps: list[dict[str, Any]]) -> list[str]:
    if not steps:
        return []
    batches = sorted({s["batch"] for s in steps})
    by_key = {(s["backend"], s["device"], s["model"], s["kind"], s["batch"]): s for s in steps}
    model_rank = {m: i for i, m in enumerate(MODELS)}
    groups = sorted(
        {(s["backend"], s["device"], s["model"], s["kind"]) for s in steps},
        key=lambda k: (_rank(k[0]), k[1], model_rank.get(k[2], len(model_rank)), KINDS.index(k[3])),
    )
    median_rows, first_rows = [], []
    for g in groups:
        cells = [by_key.get((*g, b)) for b in batches]
        name = _MODEL_NAMES.get((network, g[2]), g[2])
        label = [f"{g[0]}/{g[1]}", name, g[3]]
        median_rows.append(
            label + [NA if c is None else f"{_f(1e3 * c['median_s'])} ({_f(1e3 * c['min_s'])})" for c in cells]
        )
        first_rows.append(label + [NA if c is None else _f(c["first_call_s"]) for c in cells])
    head = ["backend/device", "model", "step"]
    title = {"mlp": "Seed MLP", "cnn": "Yat CNN"}.get(network, network)
    return [
        f"### {title}",
        "",
        *_table(head + [f"b={b} ms" for b in batches], median_rows),
        "",
        "First call in seconds (tracing, compilation and warm-up, timed separately):",
        "",
        *_table(head + [f"b={b} s" for b in batches], first_rows),
    ]


def _rank(backend: str) -> int:
    return BACKEND_ORDER.index(backend) if backend in BACKEND_ORDER else len(BACKEND_ORDER)


def _meets_cell(r: dict[str, Any]) -> str:
    if r["meets"] is None:
        missing = "Yat/Conv+ReLU step" if r["step_x_relu"] is None else "nmn in the loop"
        return f"not measured ({missing})"
    if r["meets"]:
        return "yes" if r["nmn_applies"] else "yes (no nmn layer here)"
    why = []
    if not r["meets_step_limit"]:
        why.append(f"{r['step_x_relu']:.2f}x > {CNN_STEP_LIMIT:g}x")
    if r["nmn_applies"] and not r["faster_than_nmn"]:
        why.append("nmn faster in the loop")
    return "**no**: " + "; ".join(why)


def cnn_tables(cnn_summary: list[dict[str, Any]]) -> list[str]:
    """The Yat CNN's two tables: the training step with issue 9's criterion, and the epoch."""
    step_rows = [
        [
            f"{r['backend']}/{r['device']}",
            _f(r["yat_step_ms"]),
            _f(r["relu_step_ms"]),
            _f(r["nmn_step_ms"]),
            _x(r["step_x_relu"]),
            _x(r["step_x_relu_best"]),
            _x(r["step_nmn_over_yat"]),
            _x(r["epoch_nmn_over_yat"]),
            _meets_cell(r),
        ]
        for r in cnn_summary
    ]
    epoch_rows = [
        [
            f"{r['backend']}/{r['device']}",
            _f(r["s_per_epoch"]),
            _f(r["samples_per_s"], 4),
            _f(r["relu_s_per_epoch"]),
            _f(r["nmn_s_per_epoch"]) if r["nmn_applies"] else NA,
            _x(r["epoch_x_relu"]),
            _x(r["epoch_nmn_over_yat"]),
        ]
        for r in cnn_summary
    ]
    return [
        *_table(
            [
                "backend/device",
                "Yat step ms",
                "Conv+ReLU step ms",
                "nmn step ms",
                "Yat / Conv+ReLU",
                "(best case)",
                "nmn / Yat (step)",
                "nmn / Yat (same loop)",
                f"meets (<= {CNN_STEP_LIMIT:g}x, faster than nmn)",
            ],
            step_rows,
        ),
        "",
        *_table(
            [
                "backend/device",
                "Yat s/epoch",
                "samples/s",
                "Conv+ReLU s/epoch",
                "nmn s/epoch",
                "Yat / Conv+ReLU",
                "nmn / Yat",
            ],
            epoch_rows,
        ),
    ]


def _md_cnn(cnn_summary: list[dict[str, Any]]) -> list[str]:
    if not cnn_summary:
        return []
    judged = [r for r in cnn_summary if r["meets"] is not None]
    met = sum(1 for r in judged if r["meets"])
    verdict = f"Criterion met on {met} of {len(judged)} backend/device rows measured" + (
        f" ({len(cnn_summary) - len(judged)} not measured)." if len(judged) < len(cnn_summary) else "."
    )
    return [
        "## Yat CNN: against Conv + ReLU and nmn's conv layers",
        "",
        f"Issue 9's criterion: the Yat CNN's training step no more than {CNN_STEP_LIMIT:g}x the Conv + ReLU "
        "CNN's step on the same backend (*Yat / Conv+ReLU*: full training step, batch 128, median; the "
        "fastest rounds' ratio beside it), and faster than nmn's conv layers of the same framework in the "
        "same training loop (*nmn / Yat (same loop)*: nmn's seconds per epoch over the Yat CNN's, above 1 "
        "= Yat faster). The Conv + ReLU CNN is `cnn_relu_spec()` run by the same backend machinery; nmn's "
        "model is nmn's `YatConv2D` and `YatNMN` layers with the framework's pooling, flatten and Linear, "
        "nmn's initialisers, the framework's AdamW (nmn has no NumPy layers).",
        "",
        *cnn_tables(cnn_summary),
        "",
        verdict,
    ]


def _md_comparison(results: Results) -> list[str]:
    from benchmarks.regress import format_comparison

    comparison = results.get("comparison")
    if not comparison:
        return []
    return ["## Comparison with the baseline", "", "```", format_comparison(comparison), "```"]


def torch_profile_section(profile: dict[str, Any] | None) -> list[str]:
    """Where one torch training step's time goes (``python -m benchmarks.profile_torch``); [] without one.

    One column per model (the Yat seed MLP, its Linear + ReLU twin): ms per step of
    each part in the profiled step, the step's wall time without the profiler, the
    loss and gradients alone, and the optimizer's share (their difference).
    """
    if not profile or not profile.get("models"):
        return []
    models = profile["models"]
    names = {"yat": "Yat MLP", "relu": "Linear+ReLU MLP"}
    first = models[0]
    lines = [
        "## Where a torch training step's time goes",
        "",
        f"`{profile.get('command', 'python -m benchmarks.profile_torch')}`: batch {first['batch']}, "
        f"device {first['device']}, {profile.get('torch_threads', '?')} torch threads, load average "
        f"{profile.get('load_avg')}; wall times are the median (best) of {first['rounds']} rounds of "
        f"{first['steps']} steps without the profiler; the parts are ms per step under the profiler "
        "(which adds its own cost), inductor's kernels named for that run only.",
        "",
    ]
    header = ["ms per step", *(names.get(m["model"], m["model"]) for m in models)]
    rows = [[part, *(_f(m["parts"].get(part)) for m in models)] for part in models[0]["parts"]]
    rows.append(["**profiled step**", *(_f(m["profiled_step_ms"]) for m in models)])
    rows.append(
        ["**step, no profiler**", *(f"{_f(m['step_ms']['median'])} ({_f(m['step_ms']['min'])})" for m in models)]
    )
    rows.append(
        [
            "loss and gradients alone",
            *(f"{_f(m['gradient_ms']['median'])} ({_f(m['gradient_ms']['min'])})" for m in models),
        ]
    )
    rows.append(["optimizer (step - gradients)", *(_f(m["optimizer_ms"]) for m in models)])
    rows.append(["first step (compile), s", *(_f(m["first_step_s"]) for m in models)])
    lines += _table(header, rows)
    by_model = {m["model"]: m for m in models}
    if "yat" in by_model and "relu" in by_model:
        ratio = _ratio(by_model["yat"]["step_ms"]["median"], by_model["relu"]["step_ms"]["median"])
        lines += ["", f"Yat step / Linear+ReLU step: {_x(ratio)} (issue 13 asks for at most 1.10x)."]
    return lines


def render_markdown(results: Results) -> str:
    """The Markdown report of a derived result (see :func:`derive`)."""
    summary = results.get("summary") or summarise(results)
    cnn_summary = results.get("cnn_summary") or summarise_cnn(results)
    targets = results.get("targets") or evaluate_targets(results)
    sections = [
        _md_header(results),
        _md_epochs(results, summary) if summary else [],
        _md_cnn(cnn_summary),
        _md_targets(results, targets),
        _md_runs(results),
        _md_wall(results),
        _md_floor(results),
        _md_steps(results),
        _md_comparison(results),
        torch_profile_section(results.get("torch_profile")),
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
    for kind in ("cpu", "cuda"):
        floor = _floor_s(results, kind)
        groups = [j for j, (_, device) in enumerate(rows) if (device == "cpu") == (kind == "cpu")]
        if floor and groups:
            # Each group against the floor of its own device kind.
            for n, j in enumerate(groups):
                ax.hlines(
                    floor,
                    j - 0.45,
                    j + 0.45,
                    colors="green" if kind == "cpu" else "purple",
                    linestyles="--",
                    linewidth=1.2,
                    label=None if n else f"{kind.upper()} floor {_f(floor, 2)} s (FLOPs / measured matmul rate)",
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


def _chart_cnn(ax: Any, results: Results, rows: list[tuple[str, str]]) -> None:
    series = (
        ("Yat / Conv+ReLU, training step b128", "#1f77b4", lambda b, d: step_ratio(results, b, d, network="cnn")),
        (
            "nmn / Yat, training step b128",
            "#ffbb78",
            lambda b, d: step_ratio(results, b, d, network="cnn", numerator="nmn", denominator="yat"),
        ),
        (
            "nmn / Yat, s/epoch (same loop)",
            "#ff7f0e",
            lambda b, d: epoch_ratio(results, b, d, network="cnn", numerator="nmn", denominator="yat"),
        ),
    )
    width = 0.8 / len(series)
    for i, (label, color, measure) in enumerate(series):
        xs, ys = [], []
        for j, (backend, device) in enumerate(rows):
            value = measure(backend, device)
            if value is not None:
                xs.append(j - 0.4 + (i + 0.5) * width)
                ys.append(value)
        bars = ax.bar(
            xs, [y - 1.0 for y in ys], width, bottom=1.0, label=label, color=color, edgecolor="black", linewidth=0.5
        )
        ax.bar_label(bars, labels=[f"{y:.3g}" for y in ys], fontsize=7, padding=1)
    ax.axhline(CNN_STEP_LIMIT, color="red", linewidth=1.5, label=f"Yat / Conv+ReLU limit {CNN_STEP_LIMIT:g}x")
    ax.axhline(1.0, color="grey", linewidth=0.8, label="parity (nmn / Yat must be above)")
    ax.set_yscale("log", base=2)
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 0.5), max(high, 2.0) * 1.5)
    ax.yaxis.set_major_formatter(matplotlib_ticker().FuncFormatter(lambda v, _: f"{v:.3g}x"))
    ax.set_xticks(range(len(rows)), [f"{b}/{d}" for b, d in rows])
    ax.set_ylabel("time ratio (log)")
    ax.set_title("Yat CNN: against the Conv + ReLU CNN (same backend) and nmn's conv layers (same loop)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)


def matplotlib_ticker() -> Any:
    """``matplotlib.ticker``, imported with the rest of matplotlib only when a chart is drawn."""
    import matplotlib.ticker

    return matplotlib.ticker


def render_chart(results: Results, path: str | Path) -> Path:
    """Write the PNG bar chart: the seed MLP's epoch times with floor and targets and its Yat/ReLU step
    ratio; the Yat CNN's ratios against Conv + ReLU and nmn. Panels of a network not timed are left out."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on CI
    import matplotlib.pyplot as plt

    mlp_rows, cnn_rows = _rows(results, "mlp"), _rows(results, "cnn")
    panels: list[tuple[float, Any]] = []
    if mlp_rows or not cnn_rows:
        panels += [(3.0, lambda ax: _chart_epochs(ax, results, mlp_rows))]
        if any(s.get("network", "mlp") == "mlp" for s in results.get("steps", [])):
            panels += [(2.0, lambda ax: _chart_step_ratio(ax, results, mlp_rows))]
    if cnn_rows:
        panels += [(2.0, lambda ax: _chart_cnn(ax, results, cnn_rows))]
    ratios = [h for h, _ in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(10, 2 * sum(ratios)), gridspec_kw={"height_ratios": ratios}, squeeze=False
    )
    for ax, (_, draw) in zip(axes[:, 0], panels):
        draw(ax)
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
