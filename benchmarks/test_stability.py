"""The stability benchmark's arithmetic and report, on synthetic runs (no timing)."""

from __future__ import annotations

import pytest

from benchmarks.stability import BARS, render, summarise, verdicts


def _run(steady: float, wall: float = 4.0, receipt: float | None = None) -> dict:
    run = {"status": "ok", "steady_s": steady, "first_step_s": 1.5, "wall_s": wall, "test_acc": 0.951}
    return run if receipt is None else {**run, "receipt_s": receipt}


def _result(jax: list[float], torch: list[float], relu: float = 0.30) -> dict:
    floor = {
        "flops_per_epoch": 60e9,
        "rates": {
            "cpu": {"numpy": {"model_gflops": 380.0}, "jax": {"model_gflops": 260.0}, "torch": {"model_gflops": 200.0}}
        },
    }
    return {
        "quick": False,
        "runs": len(jax),
        "command": "python -m benchmarks.stability",
        "machine": {"cpu": "test cpu", "cores": 2},
        "floor": floor,
        "records": {
            "jax": {"yat": [_run(s) for s in jax], "relu": [_run(relu)]},
            "torch": {"yat": [_run(s, wall=6.0, receipt=5.5) for s in torch], "relu": [_run(relu)]},
        },
    }


def test_floors_and_spread_come_from_the_runs():
    s = summarise(_result([0.28, 0.30, 0.29], [0.60, 0.40, 0.45]))
    assert s["jax"]["steady_s"] == pytest.approx(0.29)
    assert s["jax"]["own_floor_s"] == pytest.approx(60e9 / 260e9)
    assert s["jax"]["machine_floor_library"] == "numpy"
    assert s["jax"]["x_machine_floor"] == pytest.approx(0.29 / (60e9 / 380e9))
    assert s["torch"]["spread"] == pytest.approx(0.60 / 0.40 - 1)
    assert s["torch"]["yat_over_relu"] == pytest.approx(0.45 / 0.30)


def test_verdicts_judge_each_bar():
    rows = {v["bar"]: v for v in verdicts(summarise(_result([0.28, 0.30, 0.29], [0.60, 0.40, 0.45])))}
    assert rows["jax steady epoch / JAX's own floor"]["met"] is (0.29 / (60 / 260) <= BARS["jax_own_floor"])
    assert rows["jax slowest / fastest run - 1"]["met"] is True  # 0.30 / 0.28 - 1 = 7 %
    assert rows["torch 3-epoch run, spawn to receipt (s)"]["value"] == 5.5  # the receipt, not the exit (6.0 s)
    assert rows["fastest backend (jax) / machine floor"]["value"] == pytest.approx(0.29 / (60 / 380))
    assert rows["torch Yat epoch / Linear+ReLU epoch"]["met"] is False


def test_a_backend_whose_every_run_failed_is_reported_not_judged():
    result = _result([0.3], [0.5])
    result["records"]["torch"]["yat"] = [{"status": "error", "reason": "boom"}]
    summary = summarise(result)
    assert summary["torch"] == {"status": "error", "reason": "boom"}
    assert not any(v["bar"].startswith("torch steady") for v in verdicts(summary))
    assert "| torch | error: boom |" in render(result)


def test_render_lists_every_backend_and_bar():
    text = render(_result([0.28, 0.30], [0.60, 0.40]))
    assert "| jax | 2 | 0.290 | 0.280 - 0.300 | 7 % |" in text
    assert "- numpy: 380 GFLOP/s" in text
    assert text.count("| yes |") + text.count("| no |") == len(verdicts(summarise(_result([0.28, 0.30], [0.6, 0.4]))))


def test_runs_recorded_without_a_receipt_time_are_judged_by_their_exit():
    result = _result([0.3], [0.5])
    result["records"]["torch"]["yat"] = [_run(0.5, wall=4.5)]
    assert summarise(result)["torch"]["receipt_s"] == 4.5
