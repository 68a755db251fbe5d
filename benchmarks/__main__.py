"""``python -m benchmarks``: run the suite, re-render a saved run, compare runs, save a baseline.

Examples::

    python -m benchmarks                       # the full profile (= pytest benchmarks --bench-profile=full)
    python -m benchmarks --quick               # the quick profile (CI smoke run)
    python -m benchmarks --model cnn           # the Yat CNN only (results/bench-cnn/)
    python -m benchmarks --compare results/bench/baseline.json    # and fail on slowdowns
    python -m benchmarks --save-baseline       # keep this run as results/bench/baseline.json
    python -m benchmarks render results/bench/bench.json  # bench.md + bench.png beside it
    python -m benchmarks compare results/bench/bench.json results/bench/baseline.json
    python -m benchmarks save-baseline results/bench/bench.json

Running the suite, any argument it does not know goes to pytest. ``compare``
exits with status 1 when any metric is slower than the threshold.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import REPO_ROOT, RESULTS_DIR
from benchmarks.profiles import PROFILES
from benchmarks.regress import DEFAULT_THRESHOLD, compare, format_comparison, load_results
from yat_core._io import atomic_write_text

__all__ = ["main"]


#: Subcommands that work on saved results; anything else runs the suite.
TOOLS = ("render", "compare", "save-baseline")


def _tools_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="yat-core benchmark suite")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = sub.add_parser("render", help="write bench.md and bench.png from a saved bench.json")
    render.add_argument("results", type=Path)
    render.add_argument("--out", type=Path, default=None, help="folder (default: beside the JSON)")

    cmp_ = sub.add_parser("compare", help="flag metrics of CURRENT slower than in BASELINE")
    cmp_.add_argument("current", type=Path)
    cmp_.add_argument("baseline", type=Path)
    cmp_.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)

    save = sub.add_parser("save-baseline", help="copy a run to baseline.json (the future comparison)")
    save.add_argument("results", type=Path, nargs="?", default=RESULTS_DIR / "bench.json")
    save.add_argument("--to", type=Path, default=None, help="default: baseline.json beside the results")
    return p


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the benchmark suite under pytest (tools on saved runs: " + ", ".join(TOOLS) + ").",
        epilog="Other arguments are passed to pytest.",
    )
    p.add_argument("--profile", choices=tuple(PROFILES), default="full")
    p.add_argument("--quick", action="store_const", const="quick", dest="profile", help="= --profile quick")
    p.add_argument(
        "--model",
        choices=("all", "mlp", "cnn"),
        default="all",
        help="networks to time: the seed MLP, the Yat CNN, or both (default; a one-network run writes to "
        "results/bench-<model> or results/bench-quick-<model>)",
    )
    p.add_argument("--compare", metavar="PATH", default=None, help="saved bench.json; slowdowns fail the run")
    p.add_argument("--threshold", type=float, default=None, help="fraction slower that counts (default 0.10)")
    p.add_argument("--save-baseline", action="store_true", help="keep this run as <out>/baseline.json")
    return p


def _run(argv: Sequence[str]) -> int:
    import pytest

    args, extra = _run_parser().parse_known_args(argv)
    options = [f"--bench-profile={args.profile}", f"--bench-model={args.model}"]
    if args.compare:
        options.append(f"--bench-compare={args.compare}")
    if args.threshold is not None:
        options.append(f"--bench-threshold={args.threshold}")
    if args.save_baseline:
        options.append("--bench-save-baseline")
    extra = [a for a in extra if a != "--"]
    return int(pytest.main([str(REPO_ROOT / "benchmarks"), "-p", "no:cacheprovider", *options, *extra]))


def _render(args: argparse.Namespace) -> int:
    from benchmarks.report import derive, render_chart, render_markdown

    # Derive afresh: the tables follow this version of the suite, whatever wrote the JSON.
    saved = load_results(args.results)
    results = derive(saved, saved.get("comparison"))
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.md", render_markdown(results))
    render_chart(results, out / "bench.png")
    print(f"wrote {out / 'bench.md'} and {out / 'bench.png'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    comparison = compare(load_results(args.current), load_results(args.baseline), args.threshold)
    print(format_comparison(comparison))
    return 1 if comparison["regressions"] else 0


def _save(args: argparse.Namespace) -> int:
    load_results(args.results)  # refuse to save anything that is not a result file
    target = args.to or args.results.parent / "baseline.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.results, target)
    print(f"saved {args.results} as the baseline {target}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TOOLS:
        return _run(argv)
    args = _tools_parser().parse_args(argv)
    handler = {"render": _render, "compare": _compare, "save-baseline": _save}[args.command]
    try:
        return handler(args)
    except (OSError, ValueError) as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
