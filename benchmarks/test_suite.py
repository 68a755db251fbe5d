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
from benchmarks.conftest import default_out_dir, networks_of
from benchmarks.devices import Target
from benchmarks.epochs import epoch_command, summarise_receipt
from benchmarks.floor import matmul_rates, merge_floor, with_floor
from benchmarks.flops import epoch_flops, forward_flops_per_sample, step_matmuls, train_flops_per_sample
from benchmarks.nmn_runners import NmnUnavailable, channels_last, nmn_layers
from benchmarks.processes import run_measured
from benchmarks.profiles import ENV_VAR, NETWORKS, get_profile
from benchmarks.regress import compare, metrics
from benchmarks.report import derive, render_markdown, summarise, summarise_cnn, write_outputs
from benchmarks.steps import StepBench, model_spec, rounds_for, step_cases, warm_up
from benchmarks.targets import CNN_STEP_LIMIT, evaluate_targets
from benchmarks.worker import UNAVAILABLE
from yat_core.mlp import relu_spec, seed_spec
from yat_core.spec import LayerSpec, ModelSpec, cnn_relu_spec, cnn_spec


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


@pytest.mark.parametrize("network", NETWORKS)
def test_worker_reports_nmn_unavailable_for_numpy(tmp_path: Path, network: str) -> None:
    report = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "benchmarks.worker", "--model", "nmn", "--network", network, "--backend", "numpy"]
    result = run_measured([*cmd, "--report", str(report)], timeout_s=120)
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


# -- the Yat CNN: plans, cases, commands, nmn's model, reports, targets --------------------------
def _cnn_results(with_mlp: bool = True) -> dict[str, Any]:
    """:func:`_sample_results` plus CNN records: torch meets the criterion, jax's step is too slow
    against Conv + ReLU, mlx is slower than nmn in the loop, numpy has no nmn layer."""
    results = _sample_results() if with_mlp else {**_sample_results(), "steps": [], "epochs": [], "floor": None}
    results["networks"] = ["mlp", "cnn"] if with_mlp else ["cnn"]
    steps_ms = {  # backend: (yat, relu, nmn) ms per training step at batch 128
        "numpy": (40.0, 30.0, None),
        "torch": (12.0, 10.0, 30.0),
        "jax": (20.0, 10.0, 40.0),
        "mlx": (14.0, 10.0, 12.0),
    }
    epoch_s = {"numpy": (20.0, 15.0, None), "torch": (6.0, 5.0, 15.0), "jax": (9.0, 5.0, 20.0), "mlx": (7.0, 5.0, 6.0)}
    for backend, times in steps_ms.items():
        for model, ms in zip(("yat", "relu", "nmn"), times):
            if ms is None:
                continue
            results["steps"].append(
                {
                    "backend": backend,
                    "device": "cpu",
                    "network": "cnn",
                    "model": model,
                    "kind": "train_step",
                    "batch": 128,
                    "first_call_s": 1.0,
                    "median_s": ms / 1e3,
                    "min_s": 0.9 * ms / 1e3,
                    "mean_s": ms / 1e3,
                    "stddev_s": 0.0,
                    "rounds": 7,
                }
            )
    for backend, times in epoch_s.items():
        for model, s in zip(("yat", "relu", "nmn"), times):
            rec: dict[str, Any] = {"backend": backend, "device": "cpu", "network": "cnn", "model": model}
            if s is None:
                rec.update(status="n/a", reason="nmn has no layer for the numpy backend")
            else:
                rec.update(
                    status="ok",
                    epochs=3,
                    steady_s=s,
                    steady_min_s=s,
                    samples_per_s=60_000 / s,
                    epoch_s=[2 * s, s, s],
                    warmup_epoch_s=2 * s,
                    first_step_s=1.0,
                    wall_s=10.0,
                    peak_rss_mb=600.0,
                    test_acc=0.9,
                    extrapolated=True,
                    total_s=8.0,
                    train_epochs_s=4 * s,
                    eval_s=0.5,
                    outside_train_s=2.0,
                )
            results["epochs"].append(rec)
    return results


def test_profiles_plan_each_network() -> None:
    quick, full = get_profile("quick"), get_profile("full")
    assert quick.plan("mlp").batch_sizes == quick.batch_sizes and quick.plan("mlp").train_limit == quick.train_limit
    assert quick.plan("cnn").kinds == ("train_step",) and quick.plan("cnn").batch_sizes == (128,)
    assert 128 in full.plan("cnn").batch_sizes and set(full.plan("cnn").kinds) == {
        "forward",
        "forward_backward",
        "train_step",
    }
    assert full.plan("cnn").timed_epochs >= 2
    assert full.as_dict()["cnn"]["train_limit"] == full.plan("cnn").train_limit  # recorded in every result
    with pytest.raises(ValueError, match="unknown network"):
        quick.plan("rnn")


def test_step_cases_time_nmn_on_the_training_step_where_it_has_layers() -> None:
    quick, full = get_profile("quick"), get_profile("full")
    torch_cases = step_cases(quick, ("cnn",), "torch")
    assert [(c.model, c.kind, c.batch) for c in torch_cases] == [
        ("yat", "train_step", 128),
        ("relu", "train_step", 128),
        ("nmn", "train_step", 128),
    ]
    assert all(c.model != "nmn" for c in step_cases(full, NETWORKS, "numpy"))
    cases = step_cases(full, NETWORKS, "jax")
    assert {c.kind for c in cases if c.model == "nmn"} == {"train_step"}
    assert {c.batch for c in cases if c.network == "cnn"} == set(full.plan("cnn").batch_sizes)
    assert {c.batch for c in cases if c.network == "mlp"} == set(full.batch_sizes)
    assert len({c.id for c in cases}) == len(cases)  # unique pytest ids
    assert [c.network for c in step_cases(quick, ("mlp",), "torch")] == ["mlp"] * len(step_cases(quick, ("mlp",)))


def test_model_specs_of_the_cnn() -> None:
    assert model_spec("yat", "cnn") == cnn_spec() and model_spec("nmn", "cnn") == cnn_spec()
    assert model_spec("relu", "cnn") == cnn_relu_spec() and model_spec("relu") == relu_spec()
    with pytest.raises(ValueError, match="network"):
        model_spec("yat", "rnn")


@pytest.mark.parametrize("model", ["yat", "relu"])
@pytest.mark.parametrize("kind", ["forward", "forward_backward", "train_step"])
def test_cnn_step_bench_runs_on_numpy(kind: str, model: str) -> None:
    run = StepBench("numpy", "cpu", model, kind, batch=2, network="cnn").build()
    out = run()
    if kind == "forward":
        assert out.shape == (2, 10)


def test_nmn_step_bench_is_the_training_step_only() -> None:
    with pytest.raises(ValueError, match="train_step"):
        StepBench("torch", "cpu", "nmn", "forward", batch=2, network="cnn").build()
    with pytest.raises(NmnUnavailable, match="numpy"):
        StepBench("numpy", "cpu", "nmn", "train_step", batch=2, network="cnn").build()


def test_epoch_commands_of_the_cnn() -> None:
    quick = get_profile("quick")
    plan = quick.plan("cnn")
    target = Target("torch", "cpu")
    yat = epoch_command(target, "yat", quick, "r.json", "cnn")
    assert yat[1:5] == ["-m", "yat_core", "train", "--quiet"] and yat[yat.index("--model") + 1] == "cnn"
    assert yat[yat.index("--epochs") + 1] == str(plan.epochs)
    assert yat[yat.index("--train-limit") + 1] == str(plan.train_limit)
    assert yat[yat.index("--test-limit") + 1] == str(plan.test_limit)
    nmn = epoch_command(target, "nmn", quick, "r.json", "cnn")
    assert nmn[1:5] == ["-m", "benchmarks.worker", "--model", "nmn"] and nmn[nmn.index("--network") + 1] == "cnn"
    # The seed MLP's commands stay the ones users type (no --model, no --network).
    mlp = epoch_command(target, "yat", quick, "r.json")
    assert "--model" not in mlp and "--test-limit" not in mlp
    assert "--network" not in epoch_command(target, "relu", quick, "r.json", "mlp")


def test_model_choice_and_output_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YAT_BENCH_MODEL", raising=False)
    assert networks_of(None) == ("mlp", "cnn") and networks_of("mlp") == ("mlp",)
    monkeypatch.setenv("YAT_BENCH_MODEL", "cnn")
    assert networks_of(None) == ("cnn",)
    with pytest.raises(pytest.UsageError):
        networks_of("rnn")
    assert default_out_dir("full", ("mlp", "cnn")) == Path("results/bench")
    assert default_out_dir("full", ("cnn",)) == Path("results/bench-cnn")
    assert default_out_dir("quick", ("mlp",)) == Path("results/bench-quick-mlp")
    from benchmarks.__main__ import _run_parser

    args, extra = _run_parser().parse_known_args(["--quick", "--model", "cnn"])
    assert (args.profile, args.model, extra) == ("quick", "cnn", [])
    assert _run_parser().parse_known_args([])[0].model == "all"


def test_nmn_builds_the_cnn_from_its_spec() -> None:
    assert [layer.kind for layer in nmn_layers(cnn_spec())][0] == "yat_conv"
    assert channels_last(cnn_spec().input_shape) == (28, 28, 1)
    with pytest.raises(NmnUnavailable, match="'conv'"):
        nmn_layers(cnn_relu_spec())  # nmn builds Yat models only
    with pytest.raises(NmnUnavailable, match="spherical"):
        nmn_layers(seed_spec(spherical=True))
    transpose = ModelSpec(
        (
            LayerSpec("yat_conv_transpose", 1, 2, kernel_size=(2, 2)),
            LayerSpec("flatten", 2, 2 * 29 * 29),
            LayerSpec("linear", 2 * 29 * 29, 10),
        ),
        input_shape=(1, 28, 28),
    )
    with pytest.raises(NmnUnavailable, match="yat_conv_transpose"):
        nmn_layers(transpose)


def test_cnn_summary_ratios_and_criterion() -> None:
    rows = {r["backend"]: r for r in summarise_cnn(_cnn_results())}
    torch, jax, mlx, numpy = rows["torch"], rows["jax"], rows["mlx"], rows["numpy"]
    assert torch["step_x_relu"] == pytest.approx(1.2) and torch["step_nmn_over_yat"] == pytest.approx(2.5)
    assert torch["epoch_x_relu"] == pytest.approx(1.2) and torch["epoch_nmn_over_yat"] == pytest.approx(2.5)
    assert torch["meets"] is True and torch["yat_step_ms"] == pytest.approx(12.0)
    assert jax["meets"] is False and jax["meets_step_limit"] is False and jax["faster_than_nmn"] is True
    assert mlx["meets"] is False and mlx["meets_step_limit"] is True and mlx["faster_than_nmn"] is False
    assert numpy["meets"] is True and not numpy["nmn_applies"] and numpy["nmn_s_per_epoch"] is None
    # The seed MLP's summary keeps its own rows (records without "network" are the MLP's).
    assert {r["backend"] for r in summarise(_cnn_results())} == {"jax", "torch"}


def test_cnn_criterion_unjudged_until_measured() -> None:
    results = _cnn_results()
    results["epochs"] = [e for e in results["epochs"] if not (e.get("network") == "cnn" and e["model"] == "nmn")]
    rows = {r["backend"]: r for r in summarise_cnn(results)}
    assert rows["torch"]["meets"] is None  # nmn not measured in the loop: not judged
    assert rows["numpy"]["meets"] is True  # no nmn layer for NumPy: the 1.5x criterion alone


def test_cnn_targets() -> None:
    targets = {t["name"]: t for t in evaluate_targets(_cnn_results())}
    step = targets["cnn jax Yat step / Conv+ReLU step"]
    assert step["limit"] == CNN_STEP_LIMIT and step["measured"] == pytest.approx(2.0) and step["met"] is False
    assert targets["cnn torch Yat step / Conv+ReLU step"]["met"] is True
    nmn = targets["cnn mlx nmn / Yat, same loop"]
    assert nmn["at_least"] and nmn["measured"] == pytest.approx(6 / 7) and nmn["met"] is False
    assert targets["cnn torch nmn / Yat, same loop"]["met"] is True
    assert "cnn numpy nmn / Yat, same loop" not in targets
    # The seed MLP's targets read only the MLP's records.
    assert targets["torch Yat step / ReLU step"]["measured"] == pytest.approx(3.0)


def test_markdown_shows_the_cnn_criterion() -> None:
    text = render_markdown(derive(_cnn_results()))
    assert "## Yat CNN: against Conv + ReLU and nmn's conv layers" in text
    assert "| Yat / Conv+ReLU |" in text and "nmn / Yat (same loop)" in text and "meets (<= 1.5x" in text
    assert "| torch/cpu | 12.0 | 10.0 | 30.0 | 1.20x |" in text
    assert "**no**: 2.00x > 1.5x" in text and "**no**: nmn faster in the loop" in text
    assert "yes (no nmn layer here)" in text and "Criterion met on 2 of 4" in text
    assert "| cnn jax Yat step / Conv+ReLU step | <= 1.5 x | 2.00 x | **not met** |" in text
    assert "| cnn torch nmn / Yat, same loop | >= 1 x | 2.50 x | met |" in text
    assert "### Yat CNN" in text and "CNN: nmn YatConv2D + YatNMN" in text
    # An MLP-only run shows no CNN section or targets.
    mlp_only = render_markdown(derive(_sample_results()))
    assert "Yat CNN" not in mlp_only and "cnn torch" not in mlp_only


def test_cnn_only_outputs(tmp_path: Path) -> None:
    results = derive(_cnn_results(with_mlp=False))
    assert results["summary"] == [] and len(results["cnn_summary"]) == 4
    paths = write_outputs(results, tmp_path / "cnn")
    text = paths["markdown"].read_text()
    assert "## Yat CNN" in text and "(seed MLP)" not in text and "jax s/epoch" not in text
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    both = write_outputs(derive(_cnn_results()), tmp_path / "both")
    assert both["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regression_metrics_name_the_cnn() -> None:
    names = metrics(_cnn_results())
    assert "step torch/cpu cnn yat train_step b=128 (min)" in names
    assert "epoch torch/cpu cnn nmn s/epoch (min)" in names
    assert "step torch/cpu yat train_step b=128 (min)" in names  # the MLP's names as before


# -- devices: a run limited to some device kinds; GPU rows against the GPU's floor -------------------


def test_device_kinds_limit_the_targets() -> None:
    from benchmarks.devices import discover, parse_devices

    assert discover(("numpy",), ("cpu",)) == [Target("numpy", "cpu")]
    assert discover(("numpy",), ("cuda",)) == []  # NumPy has no GPU
    assert parse_devices(" cpu,cuda ") == ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device kind 'tpu'"):
        parse_devices("cpu,tpu")


def test_bench_devices_option_is_checked_before_timing(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--quick", "--bench-devices=tpu", "-q"]) == pytest.ExitCode.USAGE_ERROR
    assert "unknown device kind 'tpu'" in capsys.readouterr().err


def _with_cuda_rows(results: dict[str, Any]) -> dict[str, Any]:
    results = copy.deepcopy(results)
    results["floor"]["rates"]["cuda"] = {
        "torch": {"model_gflops": 900.0, "square_gflops": 48_000.0},
        "jax": {"model_gflops": 930.0, "square_gflops": 47_000.0},
    }
    results["floor"] = with_floor(results["floor"])
    results["epochs"].append({**results["epochs"][3], "device": "cuda", "steady_s": 0.3})
    return results


def test_gpu_rows_are_judged_against_the_gpu_floor() -> None:
    results = _with_cuda_rows(_sample_results())
    rows = {(r["backend"], r["device"]): r for r in summarise(results)}
    cuda_floor_s = 60.42624 / 930.0  # jax's rate on the step's shapes is the faster on CUDA
    assert rows[("torch", "cuda")]["x_floor"] == pytest.approx(0.3 / cuda_floor_s)
    assert rows[("torch", "cpu")]["x_floor"] == pytest.approx(0.9 / (60.42624 / 240.0))
    text = render_markdown(derive(results))
    assert "Floor on cpu: 60.4 GFLOP per epoch at 240 GFLOP/s" in text
    assert "Floor on cuda: 60.4 GFLOP per epoch at 930 GFLOP/s" in text
    assert "At the GPU's matrix rate (torch, one 2048³ product: 48,000 GFLOP/s)" in text


def test_chart_leaves_out_the_step_panel_when_no_step_was_timed(tmp_path: Path) -> None:
    results = _with_cuda_rows(_sample_results())
    with_steps = write_outputs(derive(results), tmp_path / "a")["chart"]
    results["steps"] = []
    without = write_outputs(derive(results), tmp_path / "b")["chart"]
    import matplotlib.image

    assert matplotlib.image.imread(without).shape[0] < matplotlib.image.imread(with_steps).shape[0]
