"""Tests of the benchmark library itself: counts, statistics, reports, regression mode.

Fast (a few seconds, NumPy only); they run with every profile.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main as bench_main
from benchmarks.epochs import summarise_receipt
from benchmarks.floor import matmul_rates, merge_floor, with_floor
from benchmarks.flops import epoch_flops, forward_flops_per_sample, step_matmuls, train_flops_per_sample
from benchmarks.processes import run_measured
from benchmarks.profiles import ENV_VAR, get_profile
from benchmarks.regress import compare, metrics
from benchmarks.report import derive, render_markdown, summarise, write_outputs
from benchmarks.steps import StepBench, rounds_for, warm_up
from benchmarks.targets import evaluate_targets
from benchmarks.worker import UNAVAILABLE
from yat_core.mlp import relu_spec, seed_spec


def _sample_results() -> dict[str, Any]:
    """A small, hand-made result document with every section the reports read."""
    floor = with_floor(
        {
            "flops_per_sample": 1_007_104,
            "flops_per_epoch": 60_426_240_000,
            "n_samples": 60_000,
            "batch": 128,
            "rates": {
                "cpu": {
                    "numpy": {"model_gflops": 200.0, "square_gflops": 250.0},
                    "torch": {"model_gflops": 240.0, "square_gflops": 230.0},
                }
            },
            "errors": {},
        }
    )
    steps = [
        {
            "backend": b,
            "device": "cpu",
            "model": m,
            "kind": "train_step",
            "batch": 128,
            "first_call_s": 0.5,
            "median_s": t,
            "min_s": t * 0.9,
            "mean_s": t,
            "stddev_s": 0.0,
            "rounds": 10,
        }
        for b, m, t in (
            ("jax", "yat", 1.2e-3),
            ("jax", "relu", 1.0e-3),
            ("torch", "yat", 3e-3),
            ("torch", "relu", 1e-3),
        )
    ]

    def epoch(backend: str, model: str, steady: float, **extra: Any) -> dict[str, Any]:
        return {
            "backend": backend,
            "device": "cpu",
            "model": model,
            "status": "ok",
            "epochs": 3,
            "steady_s": steady,
            "steady_min_s": steady,
            "samples_per_s": 60_000 / steady,
            "epoch_s": [2.0, steady, steady],
            "warmup_epoch_s": 2.0,
            "first_step_s": 1.5,
            "wall_s": 5.0,
            "peak_rss_mb": 500.0,
            "test_acc": 0.95,
            "extrapolated": False,
            **extra,
        }

    epochs = [
        epoch("jax", "yat", 0.4),
        epoch("jax", "relu", 0.35),
        epoch("jax", "nmn", 0.8, nmn_module="nmn.linen"),
        epoch("torch", "yat", 0.9),
        epoch("torch", "relu", 0.5),
        {"backend": "torch", "device": "cpu", "model": "nmn", "status": "n/a", "reason": "nmn is not installed"},
    ]
    return {
        "suite": "yat-core benchmarks",
        "schema": 1,
        "profile": get_profile("full").as_dict(),
        "started": "t0",
        "finished": "t1",
        "git_commit": "abc",
        "load_avg": {"start": [0.1], "end": [0.2]},
        "machine": {"cpu": "test cpu", "cores": 2, "os": "test"},
        "versions": {"python": "3"},
        "floor": floor,
        "steps": steps,
        "epochs": epochs,
    }


# -- FLOP counts --------------------------------------------------------------------------
def test_flop_counts_match_the_design() -> None:
    spec = seed_spec()
    assert forward_flops_per_sample(spec) == 469_504  # DESIGN.md: forward 469.5 kFLOP per sample
    assert train_flops_per_sample(spec) == 2 * 469_504 + 2 * (256 * 128 + 128 * 10)
    assert epoch_flops(spec) == 60_426_240_000
    assert epoch_flops(relu_spec()) == epoch_flops(spec)  # same shapes, same matmuls


@pytest.mark.parametrize("batch", [1, 32, 128])
def test_step_matmuls_cover_the_training_flops(batch: int) -> None:
    spec = seed_spec()
    shapes = step_matmuls(spec, batch)
    assert sum(s.flops for s in shapes) == batch * train_flops_per_sample(spec)
    assert len(shapes) == 3 + 3 + 2  # forward, weight gradients, input gradients of layers 2-3


def test_matmul_rate_is_positive_for_numpy() -> None:
    rates = matmul_rates("numpy", spec=seed_spec(), repeats=2, square=False)
    assert rates["model_gflops"] > 0


def test_merge_floor_keeps_the_faster_rate() -> None:
    a = _sample_results()["floor"]
    b = copy.deepcopy(a)
    b["rates"]["cpu"]["numpy"]["model_gflops"] = 300.0
    merged = merge_floor(a, b)
    assert merged["floor"]["cpu"]["library"] == "numpy"
    assert merged["floor"]["cpu"]["gflops"] == 300.0
    assert merge_floor(None, a) is a


# -- profiles and statistics ---------------------------------------------------------------
def test_profile_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "full")
    assert get_profile().name == "full"
    assert get_profile("quick").name == "quick"
    with pytest.raises(ValueError, match="unknown benchmark profile"):
        get_profile("slow")


def test_full_profile_times_every_batch_size_and_two_epochs() -> None:
    full = get_profile("full")
    assert full.batch_sizes == (1, 32, 128, 1024)
    assert full.timed_epochs >= 2 and full.train_limit is None


def test_rounds_are_bounded() -> None:
    assert rounds_for(1e-6, 1.0, 5, 100) == 100
    assert rounds_for(10.0, 1.0, 5, 100) == 5


def test_summarise_receipt_extrapolates_short_epochs() -> None:
    receipt = {
        "history": [
            {"epoch_s": 1.0, "test_acc": 0.5},
            {"epoch_s": 0.1, "test_acc": 0.6},
            {"epoch_s": 0.3, "test_acc": 0.7},
        ],
        "n_train": 6000,
        "first_step_s": 0.5,
        "total_s": 2.0,
        "params": 10,
        "device": "cpu",
    }
    s = summarise_receipt(receipt)
    assert s["steady_s"] == pytest.approx(2.0)  # median 0.2 s per 6,000 images -> 2 s per 60,000
    assert s["steady_min_s"] == pytest.approx(1.0)
    assert s["extrapolated"] and s["test_acc"] == 0.7


# -- step benchmarks on the reference backend ------------------------------------------------
@pytest.mark.parametrize("kind", ["forward", "forward_backward", "train_step"])
def test_step_bench_runs_on_numpy(kind: str) -> None:
    run = StepBench("numpy", "cpu", "yat", kind, batch=4).build()
    first, typical = warm_up(run, 1)
    assert first > 0 and typical > 0


def test_step_bench_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        StepBench("numpy", "cpu", "yat", "backward_only", batch=4).build()


# -- processes ----------------------------------------------------------------------------
def test_run_measured_reports_wall_time_and_memory() -> None:
    result = run_measured([sys.executable, "-c", "import time; time.sleep(0.2); print('hi')"], timeout_s=30)
    assert result.returncode == 0 and result.stdout.strip() == "hi"
    assert result.wall_s >= 0.2
    assert result.peak_rss_mb is None or result.peak_rss_mb > 1


def test_run_measured_kills_on_timeout() -> None:
    result = run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)
    assert result.timed_out and result.returncode != 0


def test_worker_reports_nmn_unavailable_for_numpy(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    result = run_measured(
        [sys.executable, "-m", "benchmarks.worker", "--model", "nmn", "--backend", "numpy", "--report", str(report)],
        timeout_s=120,
    )
    assert result.returncode == UNAVAILABLE, result.stderr
    assert json.loads(report.read_text())["status"] == "n/a"


# -- reports, targets, regression mode -----------------------------------------------------------
def test_summary_ratios() -> None:
    rows = {(r["backend"], r["device"]): r for r in summarise(_sample_results())}
    jax = rows[("jax", "cpu")]
    assert jax["x_relu"] == pytest.approx(0.4 / 0.35)
    assert jax["x_nmn"] == pytest.approx(0.5)
    assert jax["x_floor"] == pytest.approx(0.4 / (60.42624 / 240.0))
    assert rows[("torch", "cpu")]["x_nmn"] is None  # nmn absent: n/a, not an error


def test_targets_are_evaluated_from_the_results() -> None:
    targets = {t["name"]: t for t in evaluate_targets(_sample_results())}
    assert targets["jax s/epoch"]["met"] is True
    assert targets["torch s/epoch"]["met"] is False
    assert targets["torch Yat step / ReLU step"]["measured"] == pytest.approx(3.0)
    assert targets["mlx s/epoch"]["met"] is None  # not measured
    assert targets["jax 3-epoch run, end to end"]["met"] is True


def test_markdown_has_the_issue_columns() -> None:
    text = render_markdown(derive(_sample_results()))
    assert "| backend/device | s/epoch | samples/s | x floor | x ReLU baseline | x nmn |" in text
    assert "| torch/cpu | 0.900 |" in text and "n/a" in text
    assert "## Step timing" in text and "## The floor" in text


def test_write_outputs(tmp_path: Path) -> None:
    paths = write_outputs(derive(_sample_results()), tmp_path / "out")
    assert json.loads(paths["json"].read_text())["summary"]
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["markdown"].read_text().startswith("# yat-core benchmarks")


def test_compare_flags_slowdowns_only_beyond_the_threshold() -> None:
    base = _sample_results()
    current = copy.deepcopy(base)
    current["epochs"][0]["steady_min_s"] *= 1.5  # jax yat: 50% slower
    current["steps"][0]["min_s"] *= 1.05  # jax yat step: within the threshold
    current["steps"][1]["min_s"] *= 0.5  # jax relu step: faster
    result = compare(current, base, threshold=0.10)
    assert [r["metric"] for r in result["regressions"]] == ["epoch jax/cpu yat s/epoch (min)"]
    assert [r["metric"] for r in result["improvements"]] == ["step jax/cpu relu train_step b=128 (min)"]
    assert result["compared"] == len(metrics(base))


def test_compare_command_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _sample_results()
    slow = copy.deepcopy(base)
    slow["epochs"][3]["steady_min_s"] *= 2
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    assert bench_main(["compare", str(tmp_path / "base.json"), str(tmp_path / "base.json")]) == 0
    assert bench_main(["compare", str(tmp_path / "slow.json"), str(tmp_path / "base.json")]) == 1
    assert "SLOWER: epoch torch/cpu yat" in capsys.readouterr().out
    assert bench_main(["save-baseline", str(tmp_path / "base.json")]) == 0
    assert (tmp_path / "baseline.json").exists()
    assert bench_main(["render", str(tmp_path / "base.json"), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "bench.png").exists()


def test_compare_refuses_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    assert bench_main(["compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2


def test_run_arguments_map_to_pytest_options() -> None:
    from benchmarks.__main__ import _run_parser

    args, extra = _run_parser().parse_known_args(["--quick", "--compare", "b.json", "-k", "jax"])
    assert (args.profile, args.compare, extra) == ("quick", "b.json", ["-k", "jax"])
    assert _run_parser().parse_known_args([])[0].profile == "full"
