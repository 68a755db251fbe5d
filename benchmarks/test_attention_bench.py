"""The attention benchmark's logic (nothing is timed): cases, the block's gradients, the verdicts, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import attention as ab

TINY = ab.Shape(batch=2, d_model=8, heads=2)
TINY_PROFILE = ab.AttentionProfile("quick", (4,), 1, 0.0, 2, 2, 60.0)


def test_cases_leave_out_models_a_framework_lacks() -> None:
    got = ab.cases([("numpy", "cpu"), ("torch", "cuda")], [64, 128])
    assert [c.model for c in got if c.backend == "numpy"] == ["yat", "softmax"] * 2
    assert [c.model for c in got if c.backend == "torch" and c.length == 128] == list(ab.MODELS)
    assert got[0].id == "numpy/cpu-yat-T64"
    with pytest.raises(ValueError, match="no 'nmn' attention"):
        ab.attention_fn("nmn", "numpy", np)


@pytest.mark.parametrize("model", ["yat", "softmax"])
def test_analytic_gradients_match_finite_differences(model: str) -> None:
    from yat_core.namespaces import array_namespace

    params = {k: v.astype(np.float64) for k, v in ab.init_block(TINY, seed=3).items()}
    x = ab.make_input(TINY, 5, seed=3).astype(np.float64)
    xp = array_namespace(x)
    attend = ab.attention_fn(model, "numpy", xp)
    loss, grads = ab.block_value_and_grad(params, x, model, TINY.heads, xp)
    assert float(loss) == pytest.approx(float(ab.block_loss(params, x, attend, TINY.heads, xp)), rel=1e-12)
    assert sorted(grads) == sorted(params)
    rng = np.random.default_rng(0)
    h = 1e-6
    for name, p in params.items():
        for _ in range(2):
            i = tuple(int(rng.integers(0, s)) for s in p.shape)
            plus, minus = dict(params), dict(params)
            plus[name], minus[name] = p.copy(), p.copy()
            plus[name][i] += h
            minus[name][i] -= h
            fd = (ab.block_loss(plus, x, attend, TINY.heads, xp) - ab.block_loss(minus, x, attend, TINY.heads, xp)) / (
                2 * h
            )
            assert grads[name][i] == pytest.approx(float(fd), rel=1e-5, abs=1e-9), (name, i)


def _record(model: str, step_ms: float, backend: str = "torch", length: int = 64) -> dict:
    return {
        "backend": backend,
        "device": "cpu",
        "model": model,
        "length": length,
        "status": "ok",
        "train_step": {"median_s": step_ms / 1e3},
        "forward": {"median_s": step_ms / 3e3},
        "peak_mb": 2.0,
    }


def test_verdicts() -> None:
    records = [
        _record("yat", 3.0, length=64),  # 1.5x softmax, nmn slower: meets
        _record("softmax", 2.0, length=64),
        _record("nmn", 4.0, length=64),
        _record("yat", 3.3, length=128),  # 1.65x softmax: fails
        _record("softmax", 2.0, length=128),
        _record("nmn", 9.0, length=128),
        _record("yat", 2.0, length=256),  # nmn faster than Yat: fails
        _record("softmax", 2.0, length=256),
        _record("nmn", 1.9, length=256),
        _record("yat", 2.0, length=512),  # no softmax: not judged
        _record("yat", 2.9, backend="numpy"),  # no nmn: judged on the ratio alone
        _record("softmax", 2.0, backend="numpy"),
    ]
    tables = ab.derive(records)
    assert list(tables) == ["torch/cpu", "numpy/cpu"]
    meets = {row["length"]: row["meets"] for row in tables["torch/cpu"]}
    assert meets == {64: True, 128: False, 256: False, 512: None}
    assert tables["torch/cpu"][0]["nmn_over_yat"] == pytest.approx(4.0 / 3.0)
    assert tables["numpy/cpu"][0]["meets"] is True
    summary = ab.summarize(tables)
    assert (summary["judged"], summary["met"]) == (4, 2)
    assert summary["not_met"] == ["torch/cpu T=128", "torch/cpu T=256"]
    assert summary["worst_yat_over_softmax"] == pytest.approx(1.65)


def test_worker_runs_a_numpy_case_and_the_report_is_written(tmp_path) -> None:
    record = ab.worker(ab.Case("numpy", "cpu", "yat", 4), TINY_PROFILE, TINY)
    assert record["status"] == "ok", record.get("reason")
    assert record["gradients"] == "analytic"
    for kind in ab.KINDS:
        assert record[kind]["rounds"] == 2 and record[kind]["median_s"] > 0
    assert record["peak_mb"] is not None
    failed = {**ab.Case("numpy", "cpu", "softmax", 4)._asdict(), "status": "error", "reason": "boom"}
    doc = ab.complete(
        {
            "profile": {"name": "quick"},
            "shape": TINY._asdict(),
            "memory_note": "test",
            "records": [record, failed],
        }
    )
    paths = ab.write_outputs(doc, tmp_path)
    md = paths["markdown"].read_text()
    assert "## numpy/cpu" in md and "`numpy/cpu-softmax-T4` (error): boom" in md
    assert json.loads(paths["json"].read_text())["tables"]["numpy/cpu"][0]["meets"] is None
    assert paths["chart"].stat().st_size > 0


def test_the_sgd_step_updates_the_parameters() -> None:
    run = ab.build(ab.Case("numpy", "cpu", "softmax", 4), "train_step", TINY)
    losses = [float(run()) for _ in range(3)]
    assert losses[2] < losses[1] < losses[0]  # mean(out^2) falls under plain SGD


def test_torch_models_compute_the_same_block() -> None:
    """The four attentions timed on PyTorch: Yat = nmn's Yat, softmax = the fused softmax (eager)."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    params = {k: torch.from_numpy(v) for k, v in ab.init_block(TINY).items()}
    x = torch.from_numpy(ab.make_input(TINY, 6))
    out = {}
    for model in ab.MODELS:
        try:
            attend = ab.attention_fn(model, "torch", xp)
        except ImportError:
            continue
        with torch.no_grad():
            out[model] = ab.block_forward(params, x, attend, TINY.heads, xp).numpy()
    np.testing.assert_allclose(out["softmax"], out["fused"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["yat"], out["softmax"], atol=1e-4)
    if "nmn" in out:
        np.testing.assert_allclose(out["yat"], out["nmn"], rtol=1e-5, atol=1e-6)
