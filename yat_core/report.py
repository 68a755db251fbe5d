"""Comparison tables and loss curves rebuilt from training receipts alone (``yat-core report``).

:func:`build_report` reads nothing but training receipts (:func:`load_receipt`) and
returns the comparison as JSON-ready data: one row per run (framework, backend and
device, parameters, final test accuracy and loss, total seconds, steady seconds per
epoch), the per-epoch train-loss table, and for the runs that started from the same
weights the largest per-step loss difference and the pair that has it.
:func:`render_markdown` turns it into Markdown, :func:`write_report` writes both (and
a PNG of the loss curves, :func:`plot_losses`) atomically. The output depends on the
receipts' contents only (rows are sorted, files named by their base name), so the same
receipts always give byte-identical tables.

**Same initial weights.** The training loop draws the initial weights in NumPy from
the seed (:func:`yat_core.mlp.init_mlp_numpy`), the same in every framework and
backend, and the batch order from the same seed. Two receipts are therefore taken to
have started from the same weights, and to have seen the same batches, when they
record the same model (name, layer list and input shape), ``seed`` and ``dtype``, and the
same ``n_train`` and ``batch_size`` (:func:`init_key`); only such runs are compared
step by step.

**Receipts are untrusted input.** :func:`load_receipt` reads only a regular file (a
folder, FIFO, device or symlink loop is named as what it is, and never blocks), at most
:data:`RECEIPT_MAX` bytes of it, refuses JSON nested too deeply or made of too many
objects and lists to be a receipt, and checks the type of every field the report uses,
so every fault ends in one :class:`ReceiptError` naming the file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yat_core._io import atomic_write, atomic_write_text, open_regular, parse_json
from yat_core.backends import BACKENDS
from yat_core.errors import YatError
from yat_core.nn.interchange import one_line
from yat_core.receipts import REQUIRED_KEYS, write_json_atomic
from yat_core.runners import FRAMEWORK_RUNNERS

__all__ = [
    "ReceiptError",
    "Failure",
    "load_receipt",
    "run_label",
    "init_key",
    "build_report",
    "render_markdown",
    "plot_losses",
    "write_report",
    "report_receipts",
    "KERAS_LIBRARY",
    "REPORT_MD",
    "REPORT_JSON",
    "REPORT_PNG",
    "RECEIPT_MAX",
]

#: What :func:`write_report` writes into its folder.
REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "loss_curves.png"

#: The largest receipt read: about 800,000 per-step losses (1,700 epochs of MNIST at batch 128). Parsing
#: JSON takes up to about ten bytes of memory per byte of text, so this bounds a hostile file's cost too.
RECEIPT_MAX = 16 * 2**20
#: The most JSON objects and lists a receipt may hold (a receipt has two per epoch and a few more).
_CONTAINERS_MAX = 100_000
#: The deepest nesting of JSON objects and lists a receipt may have.
_DEPTH_MAX = 32

#: The array library under each framework, for the "backend / device" column (Keras: its receipt's).
_FRAMEWORK_LIBRARY = {"torch": "torch", "nnx": "jax", "linen": "jax", "mlx": "mlx", "tf": "tensorflow"}
#: The Keras backends, and the import each needs besides Keras.
KERAS_LIBRARY = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}


class ReceiptError(YatError, ValueError):
    """A receipt is missing, unreadable, not a training receipt, or does not fit with the others."""


# -- reading receipts --------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    # An integer too large for a float (JSON allows any) is not a usable number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, float) or abs(value) <= 2**1023


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(receipt: dict[str, Any]) -> str | None:
    """What field of ``receipt`` has a type the report cannot use, or None."""
    for key in ("params", "seed", "batch_size", "n_train", "n_test", "epochs"):
        if not _is_int(receipt[key]):
            return f"{key} is {receipt[key]!r}, not an integer"
    for key in ("final_test_acc", "total_s", "lr", "weight_decay"):
        if not _is_number(receipt[key]):
            return f"{key} is {receipt[key]!r}, not a number"
    if receipt.get("final_test_loss") is not None and not _is_number(receipt["final_test_loss"]):
        return f"final_test_loss is {receipt['final_test_loss']!r}, not a number"
    for key in ("backend", "device"):
        if not isinstance(receipt[key], str):
            return f"{key} is {receipt[key]!r}, not a string"
    for key in ("framework", "keras_backend", "model_name", "dtype"):
        if receipt.get(key) is not None and not isinstance(receipt[key], str):
            return f"{key} is {receipt[key]!r}, not a string"
    steps = receipt.get("steps_per_epoch")
    if steps is not None and not (_is_int(steps) and steps >= 0):
        return f"steps_per_epoch is {steps!r}, not a count"
    return None


def _check_receipt(receipt: Any) -> str | None:
    """What makes ``receipt`` unusable as a training receipt, or None."""
    if not isinstance(receipt, dict):
        return f"not a training receipt (a JSON {type(receipt).__name__}, not an object)"
    if receipt.get("kind", "train") != "train":
        return f"not a training receipt (kind {receipt.get('kind')!r})"
    missing = [key for key in REQUIRED_KEYS if key not in receipt]
    if missing:
        return f"not a training receipt (missing {', '.join(missing)})"
    wrong = _check_types(receipt)
    if wrong is not None:
        return wrong
    history = receipt["history"]
    if not isinstance(history, list) or not history:
        return "history is empty or not a list"
    for i, record in enumerate(history, 1):
        if not isinstance(record, dict) or record.get("epoch") != i:
            return f"history entry {i} is not epoch {i}"
        if not _is_number(record.get("epoch_s")):
            return f"history entry {i} has no epoch_s"
        if record.get("train_loss") is not None and not _is_number(record["train_loss"]):
            return f"history entry {i} has a train_loss that is not a number"
        steps = record.get("step_loss", [])
        if not isinstance(steps, list) or not all(v is None or _is_number(v) for v in steps):
            return f"history entry {i} has a step_loss that is not a list of numbers"
    return None


def _read(path: Path) -> tuple[dict[str, Any], str]:
    def fault(what: str) -> ReceiptError:
        return ReceiptError(f"receipt {path}: {one_line(what)}")

    try:
        with open_regular(path, fault=fault)[0] as fh:
            data = fh.read(RECEIPT_MAX + 1)
    except OSError as exc:
        raise fault(f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > RECEIPT_MAX:
        raise fault(f"larger than {RECEIPT_MAX // 2**20} MiB, more than any training receipt")
    if not data.strip():
        raise fault("empty, not a training receipt")
    try:
        receipt = parse_json(data, "the file", max_containers=_CONTAINERS_MAX, max_depth=_DEPTH_MAX)
    except ValueError as exc:
        raise fault(str(exc)) from None
    problem = _check_receipt(receipt)
    if problem is not None:
        raise fault(problem)
    return receipt, hashlib.sha256(data).hexdigest()


def load_receipt(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check one training receipt; every fault raises :class:`ReceiptError` naming the file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "cut.json"
    >>> _ = bad.write_text('{"kind": "train", "hist')
    >>> load_receipt(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    yat_core.report.ReceiptError: receipt .../cut.json: the file is not valid JSON (truncated?): ...
    """
    return _read(Path(path))[0]


def run_label(receipt: Mapping[str, Any]) -> str:
    """The row name of a run: ``core/<backend>`` for the core model, else the framework (``keras/<backend>``).

    Examples
    --------
    >>> run_label({"backend": "jax", "framework": None}), run_label({"backend": "nnx", "framework": "nnx"})
    ('core/jax', 'nnx')
    >>> run_label({"backend": "keras", "framework": "keras", "keras_backend": "torch"})
    'keras/torch'
    """
    framework = receipt.get("framework")
    if not framework:
        return f"core/{receipt['backend']}"
    if framework == "keras":
        return f"keras/{receipt.get('keras_backend') or '?'}"
    return str(framework)


def _library(receipt: Mapping[str, Any]) -> str:
    framework = receipt.get("framework")
    if not framework:
        return str(receipt["backend"])
    if framework == "keras":
        return str(receipt.get("keras_backend") or "?")
    return _FRAMEWORK_LIBRARY.get(str(framework), str(framework))


def _model_name(receipt: Mapping[str, Any]) -> str:
    config = receipt.get("config")
    fallback = config.get("model") if isinstance(config, dict) else None
    return str(receipt.get("model_name") or fallback or "unknown")


def init_key(receipt: Mapping[str, Any]) -> str:
    """The runs with equal keys started from the same weights and saw the same batches.

    Model (name, layers and input shape), seed and dtype fix the initial weights; seed,
    ``n_train`` and ``batch_size`` fix the batches.

    Examples
    --------
    >>> a = {"model": [{"kind": "yat"}], "input_shape": [784], "seed": 0, "dtype": "float32",
    ...      "n_train": 60000, "batch_size": 128}
    >>> init_key(a) == init_key(dict(a)), init_key(a) == init_key({**a, "seed": 1})
    (True, False)
    """
    keys = ("model_name", "model", "input_shape", "seed", "dtype", "n_train", "batch_size")
    fields = {k: receipt.get(k) for k in keys}
    return json.dumps(fields, sort_keys=True)


# -- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A run that left no receipt, and why (one line)."""

    label: str
    reason: str


def _steady_epoch_s(history: Sequence[Mapping[str, Any]]) -> float | None:
    # The first epoch carries compilation and warm-up; with one epoch there is no steady state.
    later = [float(h["epoch_s"]) for h in history[1:]]
    return statistics.median(later) if later else None


def _finite(value: Any) -> float | None:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _step_losses(receipt: Mapping[str, Any]) -> list[float] | None:
    """All steps' losses in order (NaN for a non-finite one), or None when an epoch lacks them."""
    out: list[float] = []
    for record in receipt["history"]:
        steps = record.get("step_loss")
        if not steps:
            return None
        out += [math.nan if v is None else float(v) for v in steps]
    return out


def _largest_difference(
    members: Sequence[tuple[str, Mapping[str, Any]]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Every pair's largest per-step difference over their common steps, and the largest of all."""
    losses = {label: _step_losses(r) for label, r in members}
    per_epoch = {
        label: int(r.get("steps_per_epoch") or len(r["history"][0].get("step_loss", []))) for label, r in members
    }
    pairs = []
    for (a, _), (b, _) in itertools.combinations(members, 2):
        la, lb = losses[a], losses[b]
        if la is None or lb is None:
            continue
        n = min(len(la), len(lb))
        diffs = [abs(x - y) for x, y in zip(la[:n], lb[:n])]
        if not diffs:
            continue
        bad = next((i for i, d in enumerate(diffs) if not math.isfinite(d)), None)
        step = bad if bad is not None else max(range(n), key=diffs.__getitem__)
        pair = {
            "a": a,
            "b": b,
            "steps": n,
            "max_abs_diff": None if bad is not None else diffs[step],
            "non_finite": bad is not None,
            "step": step + 1,
            "epoch": step // max(per_epoch[a], 1) + 1,
        }
        pairs.append(pair)
    # A non-finite loss is the largest difference there is.
    largest = max(pairs, key=lambda p: (p["non_finite"], p["max_abs_diff"] or 0.0), default=None)
    return largest, pairs


def build_report(
    receipts: Mapping[str, Mapping[str, Any]],
    failures: Iterable[Failure] = (),
    *,
    digests: Mapping[str, str] | None = None,
    mixed_models: bool = False,
) -> dict[str, Any]:
    """The comparison of ``receipts`` (file name -> checked receipt) as JSON-ready data.

    Parameters
    ----------
    receipts : mapping
        File name (as it should appear in the tables) -> receipt, each checked by
        :func:`load_receipt`.
    failures : iterable of Failure
        Runs without a receipt; each becomes a row that says why.
    digests : mapping, optional
        File name -> sha256 of the receipt file, recorded in each row.
    mixed_models : bool
        Allow receipts of different models (``model_name``); refused otherwise.

    Examples
    --------
    >>> def receipt(backend, framework, losses):
    ...     history = [{"epoch": 1, "train_loss": sum(losses) / 2, "test_loss": 0.5, "test_acc": 0.9,
    ...                 "epoch_s": 2.0, "step_loss": losses}]
    ...     return {"kind": "train", "backend": backend, "framework": framework, "device": "cpu", "params": 10,
    ...             "epochs": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "seed": 0, "n_train": 4,
    ...             "n_test": 2, "total_s": 3.0, "final_test_acc": 0.9, "final_test_loss": 0.5, "history": history,
    ...             "versions": {}, "machine": {}, "git_commit": None, "model_name": "mlp", "model": [],
    ...             "input_shape": [4], "dtype": "float32"}
    >>> report = build_report({"a.json": receipt("numpy", None, [2.0, 1.0]), "b.json": receipt("torch", "torch", [2.0, 1.25])})
    >>> [row["label"] for row in report["rows"]], report["same_init"][0]["largest"]["max_abs_diff"]
    (['core/numpy', 'torch'], 0.25)
    """
    models: dict[str, list[str]] = {}
    for name, receipt in receipts.items():
        models.setdefault(_model_name(receipt), []).append(name)
    if len(models) > 1 and not mixed_models:
        kinds = "; ".join(f"{model}: {', '.join(sorted(names))}" for model, names in sorted(models.items()))
        raise ReceiptError(f"receipts of different models ({kinds}); report them apart, or say --mixed-models")

    # Order: the core's backends, then the frameworks, each in registry order; then the file name.
    order = [f"core/{b}" for b in BACKENDS] + [
        label
        for fw in FRAMEWORK_RUNNERS
        for label in ([f"keras/{k}" for k in KERAS_LIBRARY] if fw == "keras" else [fw])
    ]

    def sort_key(label: str, name: str, model: str) -> tuple[str, int, str, str]:
        return (model, order.index(label) if label in order else len(order), label, name)

    # In a report of several models each row names its model.
    prefix = (lambda r: f"{_model_name(r)}: ") if len(models) > 1 else (lambda r: "")
    entries = sorted(
        ((prefix(r) + run_label(r), name, r) for name, r in receipts.items()),
        key=lambda e: sort_key(run_label(e[2]), e[1], _model_name(e[2])),
    )
    counts = Counter(label for label, _, _ in entries)
    rows: list[dict[str, Any]] = []
    labelled: list[tuple[str, Mapping[str, Any]]] = []
    for label, name, receipt in entries:
        if counts[label] > 1:
            label = f"{label} ({Path(name).stem})"  # two runs of one kind: the file tells them apart
        history = receipt["history"]
        rows.append(
            {
                "label": label,
                "status": "ok",
                "receipt": name,
                "sha256": (digests or {}).get(name),
                "model": _model_name(receipt),
                "framework": receipt.get("framework") or "core",
                "backend": _library(receipt),
                "device": str(receipt["device"]),
                "params": receipt["params"],
                "test_acc": _finite(receipt["final_test_acc"]),
                "test_loss": _finite(receipt["final_test_loss"]),
                "total_s": float(receipt["total_s"]),
                "steady_epoch_s": _steady_epoch_s(history),
                "epochs": len(history),
                "seed": receipt["seed"],
                "dtype": receipt.get("dtype"),
                "batch_size": receipt["batch_size"],
                "lr": receipt["lr"],
                "n_train": receipt["n_train"],
                "n_test": receipt["n_test"],
                "train_loss": [_finite(h.get("train_loss")) for h in history],
            }
        )
        labelled.append((label, receipt))
    for failure in sorted(failures, key=lambda f: sort_key(f.label, "", "")):
        rows.append({"label": failure.label, "status": "failed", "reason": failure.reason})

    groups: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for label, receipt in labelled:
        groups.setdefault(init_key(receipt), []).append((label, receipt))
    same_init = []
    for members in groups.values():
        first = members[0][1]
        largest, pairs = _largest_difference(members)
        same_init.append(
            {
                "model": _model_name(first),
                "seed": first["seed"],
                "dtype": first.get("dtype"),
                "n_train": first["n_train"],
                "batch_size": first["batch_size"],
                "runs": [label for label, _ in members],
                "largest": largest,
                "pairs": pairs,
            }
        )
    return {
        "kind": "comparison",
        "schema": 1,
        "models": sorted(models),
        "rows": rows,
        "same_init": same_init,
    }


def _fmt(value: Any, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(report: Mapping[str, Any], plot: str | None = None) -> str:
    """The report as Markdown: the run table, the train-loss table, the same-weights differences.

    ``plot`` is the file name of the loss-curve PNG to show, if there is one.
    """
    rows = report["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    failed = any(r["status"] != "ok" for r in rows)
    models = ", ".join(report["models"]) or "no model"
    lines = [f"# Comparison: {models}", ""]
    if ok:
        recipe = sorted({(r["epochs"], r["batch_size"], r["lr"], r["seed"], r["n_train"], r["n_test"]) for r in ok})
        for epochs, batch, lr, seed, n_train, n_test in recipe:
            lines.append(
                f"Recipe: {epochs} epoch{'s' * (epochs != 1)}, batch {batch}, AdamW lr {lr:g}, seed {seed}, "
                f"{n_train:,} training and {n_test:,} test images."
            )
        lines.append("")
    header = [
        "Run",
        "Framework",
        "Backend / device",
        "Parameters",
        "Test acc",
        "Test loss",
        "Total s",
        "Steady s/epoch",
    ]
    if failed:
        header.append("Status")
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        if r["status"] == "ok":
            cells = [
                r["label"],
                r["framework"],
                f"{r['backend']} / {r['device']}",
                f"{r['params']:,}",
                "—" if r["test_acc"] is None else f"{100 * r['test_acc']:.2f}%",
                _fmt(r["test_loss"], ".4f"),
                f"{r['total_s']:.1f}",
                _fmt(r["steady_epoch_s"], ".2f"),
            ] + (["ok"] if failed else [])
        else:
            cells = [r["label"], *["—"] * (len(header) - 2), f"failed: {r['reason']}"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if any(r["steady_epoch_s"] is None for r in ok):
        lines += ["", "Steady s/epoch is the median of the epochs after the first; — where a run had one epoch."]

    if ok:
        epochs = max(r["epochs"] for r in ok)
        lines += ["", "## Train loss per epoch", ""]
        lines += ["| Run | " + " | ".join(f"epoch {e}" for e in range(1, epochs + 1)) + " |"]
        lines += ["|---|" + "---|" * epochs]
        for r in ok:
            cells = [_fmt(v, ".4f") for v in r["train_loss"]] + ["—"] * (epochs - len(r["train_loss"]))
            lines.append("| " + " | ".join([_cell(r["label"]), *cells]) + " |")

    if report["same_init"]:
        lines += ["", "## Runs from the same initial weights", ""]
        lines += ["Same model, seed and dtype (so the same initial weights) and the same batches; per-step train loss:"]
        lines.append("")
        for group in report["same_init"]:
            what = (
                f"{group['model']}, seed {group['seed']}, {group['dtype']}, batch {group['batch_size']}, "
                f"{group['n_train']:,} training images ({len(group['runs'])} run{'s' * (len(group['runs']) != 1)})"
            )
            largest = group["largest"]
            if largest is None:
                detail = "nothing to compare" if len(group["runs"]) < 2 else "no per-step losses in the receipts"
            elif largest["non_finite"]:
                detail = f"a non-finite loss: `{largest['a']}` vs `{largest['b']}` at step {largest['step']}"
            else:
                detail = (
                    f"largest difference {largest['max_abs_diff']:.3e} between `{largest['a']}` and `{largest['b']}` "
                    f"at step {largest['step']} (epoch {largest['epoch']}) of {largest['steps']}"
                )
            lines.append(f"- {what}: {detail}.")
    if plot:
        lines += ["", f"![Per-step train loss of every run]({plot})"]
    return "\n".join(lines) + "\n"


def plot_losses(receipts: Mapping[str, Mapping[str, Any]], report: Mapping[str, Any], path: Path) -> str | None:
    """Write the loss-curve PNG to ``path``; returns None, or why there is no plot (matplotlib absent).

    Top: every run's per-step train loss, overlaid (x in epochs). Bottom, where runs
    started from the same weights: each one's per-step distance from the first of them.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'yat-core[plot]'): no loss-curve plot"
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in report["rows"]:
        losses = _step_losses(receipts[row["receipt"]]) if row["status"] == "ok" else None
        if losses:
            per_epoch = len(receipts[row["receipt"]]["history"][0]["step_loss"])
            curves[row["label"]] = ([(k + 1) / per_epoch for k in range(len(losses))], losses)
    if not curves:
        return "no per-step losses in the receipts: no loss-curve plot"
    groups = [[label for label in g["runs"] if label in curves] for g in report["same_init"]]
    groups = [g for g in groups if len(g) > 1]
    fig, axes = plt.subplots(2 if groups else 1, 1, figsize=(9, 7.5 if groups else 5), sharex=True, squeeze=False)
    top = axes[0, 0]
    styles = ["-", "--", "-.", ":"]
    colours = {}
    for i, (label, (x, losses)) in enumerate(curves.items()):
        colours[label] = top.plot(x, losses, lw=1.0, ls=styles[i // 10 % len(styles)], alpha=0.8, label=label)[0]
    top.set_yscale("log")
    top.set_ylabel("train loss per step")
    top.set_title(f"Per-step train loss: {', '.join(report['models'])}")
    top.grid(alpha=0.3, which="both")
    top.legend(fontsize=8, ncol=2)
    if groups:
        bottom = axes[1, 0]
        for group in groups:
            ref = curves[group[0]][1]
            for label in group[1:]:
                x, losses = curves[label]
                n = min(len(ref), len(losses))
                diff = [max(abs(a - b), 1e-12) for a, b in zip(losses[:n], ref[:n])]
                line = colours[label]
                bottom.plot(
                    x[:n], diff, lw=0.8, ls=line.get_linestyle(), color=line.get_color(), label=f"{label} vs {group[0]}"
                )
        bottom.set_yscale("log")
        bottom.set_ylabel("|loss - first run's loss|")
        bottom.grid(alpha=0.3, which="both")
        bottom.legend(fontsize=8, ncol=2)
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120, metadata={"Software": None}))
    plt.close(fig)
    return None


def write_report(
    receipts: Mapping[str, Mapping[str, Any]], report: dict[str, Any], out: str | os.PathLike[str]
) -> tuple[str, list[Path]]:
    """Write ``report.md``, ``report.json`` and ``loss_curves.png`` into ``out``; returns the Markdown and the files."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    note = plot_losses(receipts, report, folder / REPORT_PNG)
    report = {**report, "plot": None if note else REPORT_PNG, "plot_note": note}
    markdown = render_markdown(report, plot=None if note else REPORT_PNG)
    if note:
        markdown += f"\n{note}.\n"
    written = [atomic_write_text(folder / REPORT_MD, markdown), write_json_atomic(folder / REPORT_JSON, report)]
    return markdown, ([folder / REPORT_PNG] if not note else []) + written


def report_receipts(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    failures: Iterable[Failure] = (),
    mixed_models: bool = False,
) -> str:
    """``yat-core report``: load ``paths``, build the comparison, write it to ``out`` (if given); returns the Markdown."""
    if not paths and not failures:
        raise ReceiptError("no receipts to report on")
    receipts: dict[str, dict[str, Any]] = {}
    digests: dict[str, str] = {}
    for p in paths:
        name = Path(p).name
        if name in receipts:
            raise ReceiptError(f"receipt {p}: a second file named {name}; the tables name receipts by file name")
        receipts[name], digests[name] = _read(Path(p))
    report = build_report(receipts, failures, digests=digests, mixed_models=mixed_models)
    if out is None:
        return render_markdown(report)
    return write_report(receipts, report, out)[0]
