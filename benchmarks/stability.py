"""Stability: the same user command, run fresh several times per backend, beside the floors of the same run.

``python -m benchmarks.stability [--runs 5] [--backends torch jax] [--quick]``

Each round runs, per backend, one fresh ``python -m yat_core train --backend B --epochs 3``
process (the user's command, defaults, this environment unchanged) and one fresh
process of its same-shape Linear + ReLU twin in the same loop
(``python -m benchmarks.worker --model relu``); rounds interleave the backends, so a
slow spell of the machine falls on all of them. From each receipt: the steady epoch
(median of the epochs after the first) and the time to the first step; and the
end-to-end time of a 3-epoch run, from the spawn to the receipt (the receipt file's
modification time, the issue's measure) and to the process's exit.

The floors are measured in the same run, before and after the rounds (the faster of
the two counts: other processes only slow a measurement down), in a child process
with ``OPENBLAS_CORETYPE`` removed from its environment (for that measurement alone:
it caps OpenBLAS at older kernels on machines that set it). Each backend's *own* floor
is the epoch's matrix-product FLOPs over its own library's rate on the step's shapes;
the *machine* floor uses the fastest library's.

The verdicts follow issue 13's bars: jax's steady epoch within 1.25x its own floor
with the slowest run within 10 % of the fastest; torch's within 1.5x its own floor
and a 3-epoch run within 5 s end to end; the fastest backend within 1.5x the machine
floor; the Yat steady epoch within 1.1x the Linear + ReLU one on torch and jax. On a
shared or virtual machine other tenants move every figure: the report gives the
spread of each so that a reader can judge.

Outputs: ``results/bench-stability/`` (``-quick`` for ``--quick``): ``stability.json``
and ``stability.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks import RESULTS_DIR
from benchmarks.devices import Target, installed_backends
from benchmarks.epochs import epoch_command, summarise_receipt
from benchmarks.floor import merge_floor
from benchmarks.processes import python_env, run_measured, scratch_path
from benchmarks.profiles import get_profile
from yat_core._io import atomic_write_text
from yat_core.receipts import machine_info, write_json_atomic

__all__ = ["BARS", "run_rounds", "summarise", "verdicts", "render", "main"]

#: Issue 13's bars: (what, limit).
BARS = {
    "jax_own_floor": 1.25,
    "jax_spread": 0.10,
    "torch_own_floor": 1.5,
    "torch_end_to_end_s": 5.0,
    "fastest_machine_floor": 1.5,
    "yat_over_relu": 1.1,
}
#: The floor's library per backend (each backend's own matrix products).
OWN_LIBRARY = {"numpy": "numpy", "torch": "torch", "jax": "jax", "mlx": "mlx"}


def _run_one(target: Target, model: str, quick: bool) -> dict[str, Any]:
    report = scratch_path(f"stability-{target.backend}-{model}")
    # The full profile's seed-MLP plan is the user's run (3 full epochs); quick: 2 short epochs, extrapolated.
    cmd = epoch_command(target, model, get_profile("quick" if quick else "full"), str(report))
    try:
        proc = run_measured(cmd, timeout_s=900.0)
        payload = json.loads(report.read_text()) if report.exists() else None
        receipt_s = report.stat().st_mtime - proc.started_at if payload is not None else None
    finally:
        report.unlink(missing_ok=True)
    if proc.returncode != 0 or payload is None:
        return {"status": "error", "reason": (proc.stderr or proc.stdout).strip()[-1000:]}
    summary = summarise_receipt(payload)
    return {"status": "ok", **summary, "receipt_s": receipt_s, "wall_s": proc.wall_s, "threads": payload.get("threads")}


def measure_floor_child(repeats: int) -> dict[str, Any] | None:
    """The matmul floor measured in a child process without ``OPENBLAS_CORETYPE``."""
    env = python_env()
    env.pop("OPENBLAS_CORETYPE", None)
    code = (
        "import json, sys\nfrom benchmarks.floor import measure_floor\n"
        f"json.dump(measure_floor(repeats={repeats}), sys.stdout)\n"
    )
    proc = run_measured([sys.executable, "-c", code], timeout_s=600.0, env=env)
    if proc.returncode != 0:
        print(f"floor measurement failed: {proc.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout)


def run_rounds(backends: Sequence[str], runs: int, quick: bool, command: str = "", log: Any = print) -> dict[str, Any]:
    """Time ``runs`` interleaved rounds of every backend (Yat and Linear + ReLU), floors before and after."""
    repeats = 5 if quick else 20
    floor = measure_floor_child(repeats)
    records: dict[str, dict[str, list[dict[str, Any]]]] = {b: {"yat": [], "relu": []} for b in backends}
    for r in range(1, runs + 1):
        for backend in backends:
            for model in ("yat", "relu"):
                rec = _run_one(Target(backend, "cpu"), model, quick)
                records[backend][model].append(rec)
                steady = rec.get("steady_s")
                log(f"round {r}/{runs} {backend} {model}: " + (f"{steady:.3f} s/epoch" if steady else rec["reason"]))
    floor = merge_floor(floor, measure_floor_child(repeats))
    return {
        "suite": "stability",
        "quick": quick,
        "runs": runs,
        "records": records,
        "floor": floor,
        "machine": machine_info(),
        "command": command,
    }


def _floor_s(floor: dict[str, Any] | None, library: str) -> float | None:
    rates = (floor or {}).get("rates", {}).get("cpu", {})
    if library not in rates:
        return None
    return floor["flops_per_epoch"] / (rates[library]["model_gflops"] * 1e9)  # type: ignore[index]


def summarise(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per backend: medians, extremes and spread of the runs, and ratios to floors and to Linear + ReLU.

    Examples
    --------
    >>> runs = [{"status": "ok", "steady_s": s, "first_step_s": 1.0, "wall_s": 4.0, "test_acc": 0.95}
    ...         for s in (0.30, 0.33, 0.31)]
    >>> relu = [{"status": "ok", "steady_s": 0.3, "first_step_s": 1.0, "wall_s": 4.0, "test_acc": 0.97}]
    >>> floor = {"flops_per_epoch": 60e9, "rates": {"cpu": {"jax": {"model_gflops": 250.0},
    ...          "numpy": {"model_gflops": 300.0}}}}
    >>> s = summarise({"records": {"jax": {"yat": runs, "relu": relu}}, "floor": floor})["jax"]
    >>> round(s["steady_s"], 2), round(s["spread"], 2), round(s["x_own_floor"], 2), round(s["x_machine_floor"], 2)
    (0.31, 0.1, 1.29, 1.55)
    """
    floor = result.get("floor")
    rates = (floor or {}).get("rates", {}).get("cpu", {})
    best = max(rates, key=lambda lib: rates[lib]["model_gflops"]) if rates else None
    machine_s = _floor_s(floor, best) if best else None
    out: dict[str, dict[str, Any]] = {}
    for backend, models in result["records"].items():
        ok = [r for r in models["yat"] if r.get("status") == "ok"]
        relu = [r for r in models["relu"] if r.get("status") == "ok"]
        if not ok:
            out[backend] = {"status": "error", "reason": models["yat"][0].get("reason") if models["yat"] else "no run"}
            continue
        steady = [r["steady_s"] for r in ok]
        own_s = _floor_s(floor, OWN_LIBRARY.get(backend, backend))
        median = statistics.median(steady)
        relu_median = statistics.median(r["steady_s"] for r in relu) if relu else None
        out[backend] = {
            "status": "ok",
            "runs": len(ok),
            "steady_s": median,
            "steady_runs_s": steady,
            "spread": max(steady) / min(steady) - 1,
            "first_step_s": statistics.median(r["first_step_s"] for r in ok),
            "wall_s": statistics.median(r["wall_s"] for r in ok),
            # Records of runs made before the receipt time was kept count their exit instead.
            "receipt_s": statistics.median(r.get("receipt_s") or r["wall_s"] for r in ok),
            "test_acc": statistics.median(r["test_acc"] for r in ok),
            "own_floor_s": own_s,
            "x_own_floor": median / own_s if own_s else None,
            "machine_floor_s": machine_s,
            "machine_floor_library": best,
            "x_machine_floor": median / machine_s if machine_s else None,
            "relu_steady_s": relu_median,
            "yat_over_relu": median / relu_median if relu_median else None,
            "threads": ok[0].get("threads"),
        }
    return out


def verdicts(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each bar of :data:`BARS` that the summary can judge: the figure, the limit, met or not."""
    rows: list[dict[str, Any]] = []

    def add(what: str, value: float | None, limit: float) -> None:
        if value is not None:
            rows.append({"bar": what, "value": value, "limit": limit, "met": value <= limit})

    jax, torch = summary.get("jax", {}), summary.get("torch", {})
    add("jax steady epoch / JAX's own floor", jax.get("x_own_floor"), BARS["jax_own_floor"])
    add("jax slowest / fastest run - 1", jax.get("spread"), BARS["jax_spread"])
    add("torch steady epoch / torch's own floor", torch.get("x_own_floor"), BARS["torch_own_floor"])
    add("torch 3-epoch run, spawn to receipt (s)", torch.get("receipt_s"), BARS["torch_end_to_end_s"])
    timed = {b: s for b, s in summary.items() if s.get("status") == "ok" and s.get("x_machine_floor")}
    if timed:
        fastest = min(timed, key=lambda b: timed[b]["steady_s"])
        add(
            f"fastest backend ({fastest}) / machine floor",
            timed[fastest]["x_machine_floor"],
            BARS["fastest_machine_floor"],
        )
    for name, s in (("torch", torch), ("jax", jax)):
        add(f"{name} Yat epoch / Linear+ReLU epoch", s.get("yat_over_relu"), BARS["yat_over_relu"])
    return rows


def _f(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def render(result: dict[str, Any]) -> str:
    """The Markdown report of a stability run."""
    summary = summarise(result)
    lines = [
        "# Stability of `yat-core train --epochs 3`, fresh processes" + (" (quick profile)" if result["quick"] else ""),
        "",
        f"{result['runs']} interleaved rounds per backend; machine: {result['machine'].get('cpu', '?')}, "
        f"{result['machine'].get('cores', '?')} cores. Command: `{result['command']}`.",
        "",
        "| backend | runs | steady s/epoch (median) | min - max | spread | x own floor | x machine floor "
        "| Linear+ReLU s/epoch | Yat / ReLU | first step s | spawn to receipt s | spawn to exit s | test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, s in summary.items():
        if s["status"] != "ok":
            lines.append(f"| {backend} | error: {s['reason']} |" + " |" * 11)
            continue
        lines.append(
            f"| {backend} | {s['runs']} | {_f(s['steady_s'])} | {_f(min(s['steady_runs_s']))} - "
            f"{_f(max(s['steady_runs_s']))} | {100 * s['spread']:.0f} % | {_f(s['x_own_floor'], '.2f')}x | "
            f"{_f(s['x_machine_floor'], '.2f')}x | {_f(s['relu_steady_s'])} | {_f(s['yat_over_relu'], '.2f')}x | "
            f"{_f(s['first_step_s'], '.2f')} | {_f(s['receipt_s'], '.2f')} | {_f(s['wall_s'], '.2f')} | "
            f"{100 * s['test_acc']:.2f} % |"
        )
    floor = result.get("floor") or {}
    rates = floor.get("rates", {}).get("cpu", {})
    lines += ["", "Matrix-product rates on the step's shapes (fp32, best of both measurements):", ""]
    lines += [f"- {lib}: {r['model_gflops']:.0f} GFLOP/s" for lib, r in rates.items()] or ["- not measured"]
    lines += ["", "| bar | figure | limit | met |", "|---|---|---|---|"]
    lines += [
        f"| {v['bar']} | {v['value']:.3f} | {v['limit']} | {'yes' if v['met'] else 'no'} |" for v in verdicts(summary)
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stability", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes per backend and model (default 5)")
    p.add_argument("--backends", nargs="+", default=None, help="default: every installed backend but numpy")
    p.add_argument("--quick", action="store_true", help="2 rounds of 2 short epochs (a smoke run)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    backends = args.backends or [b for b in installed_backends() if b != "numpy"]
    runs = 2 if args.quick and args.runs == 5 else args.runs
    command = " ".join(["python -m benchmarks.stability", *(sys.argv[1:] if argv is None else argv)])
    result = run_rounds(backends, runs, args.quick, command)
    out = RESULTS_DIR.parent / ("bench-stability-quick" if args.quick else "bench-stability")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "stability.json", {**result, "summary": summarise(result)})
    markdown = render(result)
    atomic_write_text(out / "stability.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
