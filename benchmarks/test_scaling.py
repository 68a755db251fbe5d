"""The scaling benchmark's logic: grid, floors, extrapolation, report (seconds; no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import pytest

from benchmarks import scaling
from benchmarks.devices import Target
from benchmarks.flops import train_flops_per_sample
from yat_core.spec import seed_spec
from yat_core.train import _chunk_length


def test_the_model_at_width_256_is_the_seed_and_hidden_layers_scale():
    assert scaling.scaled_spec(256) == seed_spec()
    layers = scaling.scaled_spec(4096).layers
    assert [(la.kind, la.in_features, la.out_features) for la in layers] == [
        ("yat", 784, 4096),
        ("yat", 4096, 2048),
        ("linear", 2048, 10),
    ]
    with pytest.raises(ValueError, match="even number"):
        scaling.scaled_spec(255)


def test_grid_full_quick_and_the_limits_of_slow_targets():
    full = scaling.PROFILES["full"]
    points = scaling.grid(full, "numpy", "cpu")
    assert len(points) == len(scaling.BATCHES) * len(scaling.WIDTHS) == 40
    assert points[:2] == [(256, 32), (256, 64)] and points[-1] == (4096, 4096)  # width-major, batch ascending
    mlx = scaling.grid(full, "mlx", "cpu")
    assert mlx and max(b for _, b in mlx) == 1024 and max(w for w, _ in mlx) == 1024
    assert scaling.grid(full, "mlx", "gpu") == points  # the limit is the CPU's only
    quick = scaling.grid(scaling.PROFILES["quick"], "torch", "cuda")
    assert len(quick) == 4


def test_quick_targets_are_numpy_and_one_other(monkeypatch):
    found = [Target("numpy", "cpu"), Target("jax", "cpu"), Target("torch", "cpu"), Target("torch", "cuda")]

    def discover(wanted=None, devices=None):
        return [t for t in found if devices is None or t.device in devices]

    monkeypatch.setattr("benchmarks.devices.discover", discover)
    assert scaling._targets(scaling.PROFILES["quick"], None) == [("numpy", "cpu"), ("jax", "cpu")]
    assert scaling._targets(scaling.PROFILES["full"], None) == [(t.backend, t.device) for t in found]
    assert scaling._targets(scaling.PROFILES["full"], None, ("cuda",)) == [("torch", "cuda")]


def test_floor_arithmetic():
    # The step's products are batch x the per-sample training FLOPs of that width's model.
    for width, batch in ((256, 32), (1024, 128), (4096, 4096)):
        expected = batch * train_flops_per_sample(scaling.scaled_spec(width))
        assert scaling.step_flops(width, batch) == expected
    flops = scaling.step_flops(512, 256)
    assert scaling.floor_step_seconds(512, 256, 100.0) == pytest.approx(flops / 100e9)
    with pytest.raises(ValueError, match="> 0"):
        scaling.floor_step_seconds(512, 256, 0.0)


def test_epoch_is_extrapolated_from_the_step_over_every_batch_of_the_epoch():
    assert scaling.steps_per_epoch(32) == 1875
    assert scaling.steps_per_epoch(4096) == math.ceil(60_000 / 4096) == 15  # the partial batch counts
    assert scaling.epoch_seconds(0.01, 4096) == pytest.approx(0.15)
    assert scaling.epoch_seconds(0.01, 100, n_samples=1000) == pytest.approx(0.1)


def test_chunk_is_the_loops_unless_it_would_outlast_the_call_budget():
    assert scaling.chunk_length(32, 1e-6, 1.0) == _chunk_length(60_000 // 32) == 25
    for batch, floor_s in ((32, 0.01), (256, 0.02), (1024, 0.3)):
        chunk = scaling.chunk_length(batch, floor_s, 0.5)
        assert (60_000 // batch) % chunk == 0
        assert chunk == 1 or chunk * floor_s <= 0.5
    assert scaling.chunk_length(4096, 2.0, 0.5) == 1


def _record(backend: str, device: str, width: int, batch: int, gflops: float, step_s: float) -> dict[str, Any]:
    floor = scaling.floor_step_seconds(width, batch, gflops)
    return {
        "backend": backend,
        "device": device,
        "width": width,
        "batch": batch,
        "status": "ok",
        "device_name": "cpu" if device == "cpu" else "NVIDIA Test GPU",
        "gflops": gflops,
        "step_s": step_s,
        "step_min_s": step_s * 0.9,
        "first_call_s": 1.0,
        "steps_per_call": 1,
        "calls": 3,
        "epoch_s": scaling.epoch_seconds(step_s, batch),
        "x_own_floor": step_s / floor,
    }


def _doc(records: list[dict[str, Any]], cuda_found: bool = False) -> dict[str, Any]:
    probed = {"torch": "cuda" if cuda_found else "cpu only", "jax": "cpu only"}
    doc = {
        "profile": {"name": "synthetic", "budget_s": 1.0, "min_calls": 3},
        "machine": {"cpu": "Test CPU", "cores": 2},
        "cuda": {"found": cuda_found, "probed": probed},
        "records": records,
        "processes": [],
    }
    return scaling.complete(doc)


def _synthetic() -> list[dict[str, Any]]:
    records = []
    for width in (256, 512):
        for batch in (32, 128, 512):
            records.append(_record("numpy", "cpu", width, batch, 100.0, 1e-5 * width / 256 * (batch + 8)))
            records.append(_record("jax", "cpu", width, batch, 50.0, 5e-4 * width / 256 * batch / 32))
    return records


def test_machine_floor_is_the_fastest_library_per_point_and_device_kind():
    records = _synthetic()
    records.append(_record("torch", "cuda", 256, 32, 5000.0, 1e-4))
    records.append({"backend": "jax", "device": "cpu", "width": 1024, "batch": 32, "status": "error", "reason": "x"})
    d = scaling.derive(records)
    cpu = d["machine_floor"]["cpu"]["256x32"]
    assert cpu["library"] == "numpy" and cpu["gflops"] == 100.0
    assert d["machine_floor"]["gpu"]["256x32"]["library"] == "torch"  # a GPU never sets the CPU's floor
    jax_row = next(r for r in d["tables"]["jax/cpu"] if (r["width"], r["batch"]) == (256, 32))
    assert jax_row["x_machine_floor"] == pytest.approx(5e-4 / scaling.floor_step_seconds(256, 32, 100.0))
    assert jax_row["x_machine_floor"] == pytest.approx(2 * jax_row["x_own_floor"])  # its library is half as fast
    failed = next(r for r in d["tables"]["jax/cpu"] if r["width"] == 1024)
    assert failed["x_machine_floor"] is None and "1024x32" not in d["machine_floor"]["cpu"]


def test_knee_is_where_a_larger_batch_stops_paying():
    rows = [{"width": 256, "batch": b, "status": "ok", "epoch_s": s} for b, s in ((32, 4.0), (64, 2.5), (128, 2.0))]
    assert scaling.knee(rows, 256) == 128
    rows.append({"width": 256, "batch": 256, "status": "ok", "epoch_s": 2.1})
    assert scaling.knee(rows, 256) == 128  # 256 is slower: scaling stopped at 128
    assert scaling.knee(rows, 256, tolerance=0.3) == 64
    assert scaling.knee(rows, 512) is None


def test_cuda_statement_says_plainly_when_there_is_no_cuda_device():
    doc = _doc(_synthetic())
    assert "no CUDA device on this machine" in scaling.cuda_statement(doc)
    present = _doc(_synthetic(), cuda_found=True)
    assert "no CUDA backend was timed" in scaling.cuda_statement(present)
    timed = _doc([*_synthetic(), _record("torch", "cuda", 256, 32, 5000.0, 1e-4)], cuda_found=True)
    line = scaling.cuda_statement(timed)
    assert "torch/cuda" in line and "NVIDIA Test GPU" in line and "no CUDA device" not in line


def test_report_renders_tables_curves_and_json_and_redraws_from_it(tmp_path):
    doc = _doc([*_synthetic(), _record("mlx", "cpu", 256, 32, 5.0, 0.05)])
    doc["processes"] = [{"target": "jax/cpu", "points": 7, "measured": 6, "reason": "worker timed out after 1 s"}]
    paths = scaling.write_outputs(doc, tmp_path)
    md = paths["markdown"].read_text()
    assert "## numpy/cpu" in md and "## jax/cpu" in md and "## Machine floor (cpu)" in md
    assert "| width \\ batch | 32 | 128 | 512 |" in md
    assert "no CUDA device on this machine" in md
    assert "mlx/cpu: grid limited to batch <= 1024 and width <= 1024" in md
    assert "6 of 7 points; worker timed out" in md
    assert "Scaling stops at batch: 128 (width 256)" in md  # numpy's synthetic s/epoch flattens from 128
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(paths["json"].read_text())
    assert saved["machine_floor"]["cpu"]["256x32"]["library"] == "numpy"
    paths["markdown"].unlink()
    assert scaling.main(["render", str(paths["json"])]) == 0
    assert paths["markdown"].read_text() == md


def test_a_target_rerun_on_its_own_replaces_that_targets_points():
    first = _doc(_synthetic())
    first["processes"] = [{"target": "jax/cpu", "points": 6, "measured": 1, "reason": "worker exit -9"}]
    rerun = {
        "records": [_record("jax", "cpu", 1024, 64, 60.0, 0.01)],
        "processes": [{"target": "jax/cpu", "points": 1, "measured": 1}],
        "started": "2026-01-01T00:00:00+00:00",
        "load_avg": {"start": [0.5, 0.5, 0.5]},
    }
    doc = scaling.complete(scaling.merge(first, rerun, "jax-rerun.json"))
    assert [(r["width"], r["batch"]) for r in doc["tables"]["jax/cpu"]] == [(1024, 64)]
    assert len(doc["tables"]["numpy/cpu"]) == 6  # other targets untouched
    md = scaling.render_markdown(doc)
    assert "jax/cpu from `jax-rerun.json`" in md and "worker exit -9" not in md


def test_a_point_on_numpy_runs_through_the_training_runner(tmp_path):
    tiny = scaling.ScalingProfile("tiny", (8,), (16,), 0.01, 2, 2, 0, 1, 0.01, 60.0)
    report = tmp_path / "points.json"
    records = scaling.worker("numpy", "cpu", [(16, 8), (18, 4)], tiny, report)
    assert [r["status"] for r in records] == ["ok", "ok"]
    r = records[0]
    assert r["calls"] == 2 and r["steps_per_call"] == 1  # NumPy has no chunked call
    assert r["epoch_s"] == pytest.approx(math.ceil(60_000 / 8) * r["step_s"])
    assert r["x_own_floor"] == pytest.approx(r["step_s"] / r["floor_step_s"])
    assert r["floor_step_s"] == pytest.approx(scaling.floor_step_seconds(16, 8, r["gflops"]))
    assert json.loads(report.read_text())["records"] == records  # written after every point
    if importlib.util.find_spec("yat_core.threads") is not None:
        assert r["threads"]  # the thread pools set up as `yat-core train` sets them, recorded


def test_a_failing_point_is_recorded_and_the_sweep_goes_on():
    tiny = scaling.ScalingProfile("tiny", (8,), (16,), 0.01, 1, 1, 0, 1, 0.01, 60.0)
    r = scaling.measure_point(scaling.Point("numpy", "cpu", 8, 16), tiny)
    assert r["status"] == "ok"
    bad = scaling.measure_point(scaling.Point("no-such-backend", "cpu", 8, 16), tiny)
    assert bad["status"] == "error" and bad["reason"]


@pytest.mark.parametrize(
    "argv",
    [["--widths", "255"], ["--batches", "0"], ["--batches", "a,b"]],
)
def test_bad_grids_are_refused_before_anything_runs(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        scaling.main(argv)
    assert exc.value.code == 2
    assert "--" in capsys.readouterr().err


def test_exit_status_is_1_when_a_point_failed_or_a_worker_stopped_early(monkeypatch, tmp_path):
    outcomes = {"whole": (_synthetic(), []), "stopped": (_synthetic(), [{"target": "jax/cpu", "reason": "exit -9"}])}
    outcomes["failed"] = ([*_synthetic(), {**_record("jax", "cpu", 1024, 32, 1.0, 1.0), "status": "error"}], [])
    monkeypatch.setattr(scaling, "write_outputs", lambda doc, out: {})
    for name, want in (("whole", 0), ("stopped", 1), ("failed", 1)):
        records, processes = outcomes[name]
        monkeypatch.setattr(scaling, "run", lambda *a, r=records, p=processes, **k: {"records": r, "processes": p})
        assert scaling.main(["--out", str(tmp_path)]) == want, name


def test_a_time_limit_bounds_every_worker_and_skips_targets_once_spent(monkeypatch):
    given: list[float] = []
    clock = iter([0.0, 0.0, 50.0, 95.0])  # the deadline's start, then before each target

    def fake_worker(backend, device, points, profile, threads=None, timeout_s=None):
        given.append(timeout_s)
        return [], {"target": f"{backend}/{device}"}

    found = [Target("numpy", "cpu"), Target("jax", "cpu"), Target("torch", "cpu")]
    monkeypatch.setattr("benchmarks.devices.discover", lambda wanted=None, devices=None: found)
    monkeypatch.setattr(scaling, "_run_worker_process", fake_worker)
    monkeypatch.setattr(scaling.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(scaling, "complete", lambda doc: doc)
    doc = scaling.run(scaling.PROFILES["full"], time_limit_s=100.0, log=lambda line: None)
    assert given == [100.0, 50.0]
    assert doc["processes"][-1]["target"] == "torch/cpu"
    assert doc["processes"][-1]["reason"] == "not run: the sweep's time limit of 100 s was spent"


def test_a_time_limit_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        scaling.main(["--time-limit", "0"])
    assert exc.value.code == 2 and "--time-limit must be > 0" in capsys.readouterr().err
