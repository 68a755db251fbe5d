"""The parity report: ``parity.json`` (the receipt), ``parity.md`` (the tables) and
``loss_curves.png`` / ``loss_curves_cnn.png`` / ``loss_curves_vit.png`` (the training
losses of the seed model, the Yat CNN and the Yat vision transformer overlaid), written at
the end of a session.

``python -m verification.report [FOLDER]`` re-renders the Markdown and the figure
from an existing ``parity.json`` (default folder: ``results/parity``).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from yat_core._io import atomic_write, atomic_write_text

__all__ = ["write", "render_markdown", "plot_losses", "versions", "main"]

PACKAGES = ("numpy", "array-api-strict", "array-api-compat", "torch", "jax", "jaxlib", "mlx", "hypothesis", "yat-core")


def versions() -> dict[str, str]:
    """Installed versions of the packages the suite exercises."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


#: Loss-curve figure per trajectory model (the seed model's keeps its name).
FIGURES = {"seed": "loss_curves.png", "cnn": "loss_curves_cnn.png", "vit": "loss_curves_vit.png"}


def _trajectories(traj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{model: trajectory}``; a report written before the CNN had the seed model's flat."""
    if "comparisons" in traj or "runs" in traj:
        return {"seed": traj}
    return {name: t for name, t in traj.items() if isinstance(t, dict)}


def _plot_all(traj: dict[str, Any], folder: Path) -> list[Path]:
    paths = []
    for name, t in _trajectories(traj).items():
        if t.get("runs") and t.get("reference"):
            paths.append(folder / FIGURES.get(name, f"loss_curves_{name}.png"))
            plot_losses(t, paths[-1], title=_TRAJECTORY_TITLE.get(name))
    return paths


def write(store: Any, folder: Path) -> list[Path]:
    """Write ``parity.json``, ``parity.md`` and the loss curves of ``store`` (a
    :class:`~verification.results.Store`) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = store.to_json()
    paths = [folder / "parity.json", folder / "parity.md"]
    atomic_write_text(paths[0], json.dumps(data, indent=1, default=_json_default, allow_nan=True) + "\n")
    atomic_write_text(paths[1], render_markdown(data))
    return paths + _plot_all(data.get("trajectory", {}), folder)


# -- Markdown ---------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.2e}" if value != 0 else "0"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


#: Per headline model: title, inputs, what the forward compares, the first layer's name.
_HEADLINE_TEXT = {
    "seed": (
        "the seed model's domain",
        "First training batch of the seed recipe (128 MNIST images, pixels in [0, 1]), Xavier-initialised "
        "weights of the seed model (seed 0).",
        "both Yat layers and the logits",
        "Yat layer 1 of the seed model",
    ),
    "cnn": (
        "the Yat CNN's domain",
        "The same first training batch, channels first (128 x 1 x 28 x 28), and the initial weights of the "
        "Yat CNN (`cnn_spec()`, seed 0).",
        "each Yat layer on identical inputs (both YatConv layers and the dense Yat layer; core backends) "
        "and the logits (every backend and framework-native model)",
        "YatConv layer 1 of the CNN",
    ),
    "cnn-relu": (
        "the Conv+ReLU baseline of the CNN",
        "The same batch and the initial weights of the CNN's same-shape Conv+ReLU baseline "
        "(`cnn_relu_spec()`, seed 0).",
        "the logits",
        "",
    ),
    "vit": (
        "the Yat vision transformer's domain",
        "The same first training batch, channels first (128 x 1 x 28 x 28, 16 patches of 7 x 7 per image), "
        "and the initial weights of the Yat ViT (`vit_spec()`, seed 0).",
        "each Yat layer on identical inputs (both Yat attention layers, q/k/v/o projections and residual "
        "included, and both dense Yat layers, the product of the 128 x 16 token rows; core backends) and "
        "the logits (every backend and framework-native model)",
        "the ViT's first dense Yat layer, 64 -> 64 on 2,048 token rows",
    ),
    "vit-softmax": (
        "the softmax baseline of the ViT",
        "The same batch and the initial weights of the ViT's same-shape softmax-attention and Linear+ReLU "
        "baseline (`vit_softmax_spec()`, seed 0).",
        "the logits",
        "",
    ),
}


def _headline_model(name: str, head: dict[str, Any], target: float) -> list[str]:
    if not head.get("forward") and not head.get("gradient"):
        return []
    title, inputs, forward, first = _HEADLINE_TEXT.get(name, (f"the {name} model", "", "the logits", ""))
    out = [
        f"## Headline: {title}",
        "",
        f"{inputs} *headline* = max |a - b| / max(1, |oracle|); *max rel* = "
        "max |a - b| / max |oracle| (per tensor, then the worst tensor). Forward: "
        f"{forward}; gradient: every parameter of the loss. Target: headline < {target:g}.",
        "",
    ]
    for kind in ("forward", "gradient"):
        table = head.get(kind) or {}
        if not table:
            continue
        worst = max((v["headline"] for v in table.values()), default=0.0)
        out += [
            f"### {kind.capitalize()} (worst headline {_fmt(worst)}, "
            f"{'below' if worst < target else 'ABOVE'} the target)",
            "",
        ]
        rows = [[pair, v["max_abs"], v["max_rel"], v["headline"], v["worst_tensor"]] for pair, v in table.items()]
        out += _table(["pair", "max abs", "max rel", "headline", "worst tensor"], rows)
    ratios = head.get("forward_error_model_ratio_layer1")
    if ratios and first:
        k = head.get("first_layer_k", 784 if name == "seed" else None)
        out += [
            f"Observed error / error-model bound on {first} (k = {k}): "
            + ", ".join(f"{b} {_fmt(v)}" for b, v in ratios.items())
            + ".",
            "",
        ]
    if "core_float64_vs_oracle" in head:
        out += [
            f"Core float64 analytic gradients vs the independent oracle: {_fmt(head['core_float64_vs_oracle'])}.",
            "",
        ]
    return out


def _headline_section(head: dict[str, Any]) -> list[str]:
    """One section per model (``head[model]``); a report written before the CNN had the seed's flat."""
    target = head.get("target", 1e-6)
    models = {"seed": head} if "forward" in head or "gradient" in head else head
    out: list[str] = []
    for name, entry in models.items():
        if isinstance(entry, dict):
            out += _headline_model(name, entry, target)
    return out


def _error_model_section(rows: list[dict[str, Any]], examples: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    well = [e for e in examples if e.get("well_ratio") is not None]
    worst_well = max(well, key=lambda e: e["well_ratio"]) if well else None
    out = [
        "## Error model: every example Hypothesis tried",
        "",
        "ratio = |error| / bound, the worst element of each example (1 would be the bound reached). "
        "Well conditioned: elements where the bound itself promises 1e-3 relative accuracy or better.",
        "",
    ]
    table = [
        [
            r["check"],
            r["backend"],
            r["examples"],
            r["failed"],
            r["worst_ratio"],
            r["well_conditioned_median_ratio"],
            r["well_conditioned_worst_ratio"],
            r["ill_conditioned_worst_ratio"],
        ]
        for r in rows
    ]
    out += _table(
        [
            "check",
            "backend",
            "comparisons",
            "failed",
            "worst ratio",
            "median (well cond.)",
            "worst (well cond.)",
            "worst (ill cond.)",
        ],
        table,
    )
    worst = max(rows, key=lambda r: r["worst_ratio"])
    out += [
        "### Worst cases found",
        "",
        f"Overall: `{worst['check']}` on `{worst['backend']}` reached {_fmt(worst['worst_ratio'])} of the bound "
        "(a ratio of 1 is an honest bound met exactly: an ill-conditioned element whose interval reaches 0, "
        "computed as 0).",
        "",
        "```",
        f'python -m verification.repro {worst["check"]} {worst["backend"]} "{worst["worst_case"]}"',
        "```",
        "",
    ]
    if worst_well:
        out += [
            f"Well conditioned: `{worst_well['check']}` on `{worst_well['backend']}` reached "
            f"{_fmt(worst_well['well_ratio'])} of the bound.",
            "",
            "```",
            f'python -m verification.repro {worst_well["check"]} {worst_well["backend"]} "{worst_well["case"]}"',
            "```",
            "",
        ]
    return out


def _model_checks_section(meta: dict[str, Any]) -> list[str]:
    """Tightness by k, honesty near x == w, and the measured elementary functions."""
    out: list[str] = []
    tight = meta.get("tightness_by_k") or {}
    if tight:
        ks = sorted({int(k) for v in tight.values() for k in v})
        out += ["### Tightness on well-conditioned inputs (observed / bound, worst element of 32 x k x 16)", ""]
        out += _table(
            ["backend"] + [f"k = {k}" for k in ks],
            [[b] + [v.get(k, v.get(str(k))) for k in ks] for b, v in tight.items()],
        )
    cancel = meta.get("cancellation_relative_error") or {}
    if cancel:
        out += [
            "Honesty near x == w (x a relative 1e-6 from a kernel row, k = 256): observed relative error "
            + ", ".join(f"{b} {_fmt(v)}" for b, v in cancel.items())
            + ", all within the bound.",
            "",
        ]
    fns = meta.get("elementary_functions") or {}
    if fns:
        out += [
            "Elementary functions, max relative error in units of u: "
            + ", ".join(f"{k} {v:.1f}" for k, v in fns.items())
            + ".",
            "",
        ]
    return out


_TRAJECTORY_TITLE = {
    "seed": None,
    "cnn": "Yat CNN, same init, same batches: per-step loss of every backend and framework",
    "vit": "Yat ViT, same init, same batches: per-step loss of every backend and framework",
}
_TRAJECTORY_NAME = {"cnn": "Yat CNN", "vit": "Yat vision transformer"}


def _trajectory_model(name: str, traj: dict[str, Any]) -> list[str]:
    comps = traj.get("comparisons") or {}
    if not comps:
        return []
    ref = traj.get("reference", {})
    steps = len(ref.get("step_loss", []))
    if name == "seed":
        out = ["## Trajectory: same init, same batches", ""]
        what = "Per-step training loss of each float32 backend against it."
    else:
        out = [f"## Trajectory: the {_TRAJECTORY_NAME.get(name, name)}, same init, same batches", ""]
        what = (
            "Per-step training loss of each float32 backend, and of each framework's native model trained "
            "with its own optimizer (`nn-*`) from the same initial weights, against it."
        )
    out += [
        f"Reference: NumPy float64, {steps} steps, final test accuracy "
        f"{100 * ref.get('test_acc', [0])[-1]:.2f} %. {what}",
        "",
    ]
    rows = [
        [
            label,
            c["steps"],
            c["first_step_diff"],
            c.get("first_step_bound"),
            c["max_loss_diff"],
            c["max_loss_diff_step"],
            c.get("loss_diff_limit"),
            f"{100 * c['final_test_acc']:.2f} %",
            f"{c['acc_diff_pp']:.2f}",
            f"{c['seconds']:.1f}",
        ]
        for label, c in comps.items()
    ]
    out += _table(
        [
            "run",
            "steps",
            "step-1 diff",
            "step-1 bound",
            "max diff",
            "at step",
            "limit",
            "test acc",
            "acc diff (pp)",
            "seconds",
        ],
        rows,
    )
    pairs = traj.get("pairs") or {}
    if pairs:
        worst = max(pairs.items(), key=lambda kv: kv[1]["max_loss_diff"])
        if name == "seed":
            out += [
                "Between float32 runs: "
                + "; ".join(f"{k}: {_fmt(v['max_loss_diff'])}" for k, v in pairs.items())
                + ".",
                "",
            ]
        else:  # 45 pairs for the CNN: the worst, and the accuracy spread
            spread = max(v["acc_diff_pp"] for v in pairs.values())
            out += [
                f"Between float32 runs ({len(pairs)} pairs): largest per-step loss difference "
                f"{_fmt(worst[1]['max_loss_diff'])} ({worst[0]}); largest test-accuracy difference {spread:.2f} pp.",
                "",
            ]
    return out


def _trajectory_section(traj: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, t in _trajectories(traj).items():
        out += _trajectory_model(name, t)
    return out


def _fault_section(faults: dict[str, Any]) -> list[str]:
    if not faults:
        return []
    rows = []
    for fault, checks in faults.items():
        for check, info in checks.items():
            detail = info.get("message") or f"minimal case {info.get('minimal_case')}"
            rows.append([fault, check, detail.replace("|", "/")])
    return ["## Fault injection: deliberately wrong backends", ""] + _table(["fault", "caught by", "how"], rows)


def _interchange_section(result: dict[str, Any] | None) -> list[str]:
    if not result:
        return []
    rows = [
        [
            r["source"],
            r["target"],
            f"{r['same_argmax']:,}/{r['n']:,}",
            f"{r['max_logit_diff']:.2e}",
            f"{r['max_diff_over_bound']:.3f}",
            f"{100 * r['test_acc']:.2f} %",
        ]
        for r in result["pairs"]
    ]
    return [
        "## Interchange: weights trained in one framework, predicted by every other",
        "",
        f"Each framework trains the seed model for {result['epochs']} epoch and exports `.npz`; every "
        "framework loads every export and predicts all MNIST test images. The bound is twice the error "
        "model's float32 bound on the logits (two evaluations, each within it of float64).",
        "",
    ] + _table(["trained in", "loaded into", "same class", "max logit diff", "diff / bound", "test acc"], rows)


def render_markdown(data: dict[str, Any]) -> str:
    """The Markdown report of a ``parity.json`` document."""
    meta = data.get("meta", {})
    lines = [
        "# yat-core parity report",
        "",
        f"Profile `{meta.get('profile')}`, started {meta.get('started')}, {meta.get('duration_s')} s, "
        f"exit status {meta.get('exit_status')}; {meta.get('platform')}, Python {meta.get('python')}.",
        "",
    ]
    if meta.get("versions"):
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", ""]
    lines += _headline_section(data.get("headline", {}))
    lines += _error_model_section(data.get("error_model", []), data.get("examples", []))
    lines += _model_checks_section(meta)
    lines += _trajectory_section(data.get("trajectory", {}))
    lines += _fault_section(data.get("faults", {}))
    lines += _interchange_section(meta.get("interchange"))
    return "\n".join(lines)


# -- the figure -------------------------------------------------------------------------


def plot_losses(traj: dict[str, Any], path: Path, title: str | None = None) -> None:
    """Top: the per-step losses overlaid; bottom: each run's distance from float64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = np.asarray(traj["reference"]["step_loss"])
    steps = np.arange(1, ref.size + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, height_ratios=[3, 2])
    top.plot(steps, ref, color="black", lw=3.0, alpha=0.35, label="numpy float64 (reference)")
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    for i, (label, r) in enumerate(sorted(traj["runs"].items())):
        loss = np.asarray(r["step_loss"])
        line = top.plot(steps[: loss.size], loss, lw=1.1, ls=styles[i % len(styles)], label=label)[0]
        diff = np.abs(loss - ref[: loss.size])
        bottom.semilogy(steps[: loss.size], np.maximum(diff, 1e-12), lw=1.0, color=line.get_color(), label=label)
    top.set_ylabel("training loss (per step)")
    top.set_title(title or "Same init, same batches: per-step loss of every backend")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlabel("training step")
    bottom.set_ylabel("|loss - float64 loss|")
    bottom.grid(alpha=0.3, which="both")
    bottom.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[1] / "results" / "parity"))
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    data = json.loads((folder / "parity.json").read_text())
    atomic_write_text(folder / "parity.md", render_markdown(data))
    _plot_all(data.get("trajectory", {}), folder)
    print(f"rendered {folder / 'parity.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
