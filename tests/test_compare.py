"""Tests for ``yat-core report`` (yat_core.report) and ``yat-core compare`` (yat_core.compare).

The report runs on hand-made receipts; the comparison trains the MLP on the numpy
backend for a few hundred synthetic images and fakes the other runs, so everything
takes seconds and nothing touches the network or the MNIST cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import write_tiny_mnist

import yat_core.compare as compare_mod
from yat_core.cli import main
from yat_core.compare import plan_runs
from yat_core.report import ReceiptError, build_report, init_key, load_receipt, report_receipts


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YAT_CORE_CACHE", str(tmp_path / "no-cache"))


def make_receipt(
    backend: str,
    framework: str | None,
    step_losses: list[list[float | None]],
    *,
    seed: int = 0,
    model: str = "mlp",
    epoch_s: tuple[float, ...] = (5.0, 2.0, 3.0),
    **extra: Any,
) -> dict[str, Any]:
    """A training receipt as ``yat-core train`` writes it, with the given per-step losses."""
    history = [
        {
            "epoch": e,
            "train_loss": sum(v for v in steps if v is not None) / len(steps),
            "test_loss": 1.0 / e,
            "test_acc": 0.5 + 0.1 * e,
            "epoch_s": epoch_s[e - 1],
            "samples_per_s": 8 / epoch_s[e - 1],
            "step_loss": steps,
        }
        for e, steps in enumerate(step_losses, 1)
    ]
    return {
        "kind": "train",
        "backend": backend,
        "framework": framework,
        "device": "cpu",
        "params": 1234,
        "epochs": len(history),
        "batch_size": 4,
        "lr": 3e-4,
        "weight_decay": 0.01,
        "seed": seed,
        "dtype": "float32",
        "n_train": 8,
        "n_test": 4,
        "steps_per_epoch": len(step_losses[0]),
        "model": [{"kind": "yat", "in_features": 4, "out_features": 2}],
        "model_name": model,
        "input_shape": [4],
        "total_s": sum(epoch_s[: len(history)]) + 1.0,
        "final_test_acc": history[-1]["test_acc"],
        "final_test_loss": history[-1]["test_loss"],
        "history": history,
        "versions": {"python": "3"},
        "machine": {"cores": 2},
        "git_commit": None,
        **extra,
    }


LOSSES = [[2.0, 1.5], [1.0, 0.5], [0.4, 0.3]]


def receipts() -> dict[str, dict[str, Any]]:
    """Three runs from the same weights (one differs by 0.05 at step 4) and one from another seed."""
    shifted = [row[:] for row in LOSSES]
    shifted[1][1] += 0.05
    slight = [[v + 1e-6 for v in row] for row in LOSSES]
    return {
        "numpy.json": make_receipt("numpy", None, LOSSES),
        "torch.json": make_receipt("torch", "torch", shifted),
        "keras.json": make_receipt("keras", "keras", slight, keras_backend="jax"),
        "seed1.json": make_receipt("jax", None, LOSSES, seed=1),
    }


def write_receipts(folder: Path, data: dict[str, dict[str, Any]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, receipt in data.items():
        (folder / name).write_text(json.dumps(receipt))
        paths.append(folder / name)
    return paths


# ---------------------------------------------------------------- the report


def test_report_rows_tables_and_the_largest_step_difference():
    report = build_report(receipts())
    rows = {row["label"]: row for row in report["rows"]}
    # Core backends first (registry order), then frameworks.
    assert [row["label"] for row in report["rows"]] == ["core/numpy", "core/jax", "torch", "keras/jax"]
    assert rows["keras/jax"]["backend"] == "jax" and rows["torch"]["framework"] == "torch"
    assert rows["core/numpy"]["framework"] == "core"
    assert rows["torch"]["steady_epoch_s"] == pytest.approx(2.5)  # median of epochs 2 and 3, not the first
    assert rows["torch"]["total_s"] == pytest.approx(11.0)
    assert rows["torch"]["train_loss"] == pytest.approx([1.75, 0.775, 0.35])

    groups = {tuple(g["runs"]): g for g in report["same_init"]}
    assert set(groups) == {("core/numpy", "torch", "keras/jax"), ("core/jax",)}
    largest = groups[("core/numpy", "torch", "keras/jax")]["largest"]
    assert (largest["a"], largest["b"]) in {("core/numpy", "torch"), ("torch", "keras/jax")}
    assert largest["max_abs_diff"] == pytest.approx(0.05, abs=2e-6)
    assert (largest["step"], largest["epoch"], largest["steps"]) == (4, 2, 6)
    assert groups[("core/jax",)]["largest"] is None

    markdown = report_receipts(write_receipts(Path("r"), receipts()))
    assert "| torch | torch | torch / cpu | 1,234 | 80.00% | 0.3333 | 11.0 | 2.50 |" in markdown
    assert "| core/numpy | 1.7500 | 0.7500 | 0.3500 |" in markdown
    assert "between `core/numpy` and `torch` at step 4 (epoch 2) of 6" in markdown
    assert "(1 run): nothing to compare" in markdown


def test_same_initial_weights_means_same_model_seed_dtype_and_batches():
    base = make_receipt("numpy", None, LOSSES)
    assert init_key(base) == init_key(make_receipt("torch", "torch", [[9.0, 9.0]] * 3))
    changes = (
        {"seed": 1},
        {"dtype": "float64"},
        {"batch_size": 8},
        {"n_train": 16},
        {"model": []},
        {"model_name": "x"},
    )
    for change in changes:
        assert init_key(base) != init_key({**base, **change}), change


def test_the_report_is_rebuilt_byte_identical_whatever_the_order(capsys):
    paths = write_receipts(Path("receipts"), receipts())
    assert main(["report", *map(str, paths), "--out", "one"]) == 0
    assert main(["report", *map(str, reversed(paths)), "--out", "two"]) == 0
    for name in ("report.md", "report.json"):
        assert Path("one", name).read_bytes() == Path("two", name).read_bytes(), name
    assert Path("one", "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(Path("one", "report.json").read_text())
    assert report["plot"] == "loss_curves.png" and len(report["rows"]) == 4
    assert all(len(row["sha256"]) == 64 for row in report["rows"])
    assert capsys.readouterr().out.count("# Comparison: mlp") == 2


def test_a_non_finite_loss_is_reported_not_a_crash():
    diverged = [row[:] for row in LOSSES]
    diverged[2][0] = None  # a NaN loss, written as null
    report = build_report(
        {"a.json": make_receipt("numpy", None, LOSSES), "b.json": make_receipt("torch", None, diverged)}
    )
    largest = report["same_init"][0]["largest"]
    assert largest["non_finite"] and largest["max_abs_diff"] is None and largest["step"] == 5


def test_without_matplotlib_the_report_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    markdown = report_receipts(write_receipts(Path("r"), receipts()), "out")
    assert "matplotlib is not installed" in markdown
    assert not Path("out", "loss_curves.png").exists()
    assert json.loads(Path("out", "report.json").read_text())["plot"] is None


def _bad_receipts(folder: Path) -> dict[str, tuple[Path, str]]:
    good = make_receipt("numpy", None, LOSSES)
    text = json.dumps(good)
    cases = {
        "missing": (folder / "missing.json", "file not found"),
        "truncated": (folder / "truncated.json", "not valid JSON"),
        "a list": (folder / "list.json", "not a training receipt"),
        "a benchmark": (folder / "bench.json", "not a training receipt"),
        "no history": (folder / "nohist.json", "history is empty"),
        "bad step losses": (folder / "steps.json", "step_loss"),
        "not text": (folder / "binary.json", "not UTF-8 text"),
    }
    folder.mkdir(exist_ok=True)
    (folder / "truncated.json").write_text(text[: len(text) // 2])
    (folder / "list.json").write_text("[1, 2]")
    (folder / "bench.json").write_text(json.dumps({"suite": "bench", "schema": 1}))
    (folder / "nohist.json").write_text(json.dumps({**good, "history": []}))
    steps = json.loads(text)
    steps["history"][1]["step_loss"] = ["x"]
    (folder / "steps.json").write_text(json.dumps(steps))
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00")
    return cases


@pytest.mark.parametrize(
    "case", ["missing", "truncated", "a list", "a benchmark", "no history", "bad step losses", "not text"]
)
def test_a_bad_receipt_is_refused_naming_the_file(case, capsys):
    good = write_receipts(Path("ok"), {"good.json": make_receipt("numpy", None, LOSSES)})[0]
    path, fault = _bad_receipts(Path("bad"))[case]
    with pytest.raises(ReceiptError, match=fault) as info:
        load_receipt(path)
    assert str(path) in str(info.value)
    assert main(["report", str(good), str(path), "--out", "out"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("yat-core: error: receipt ") and str(path) in err and fault in err
    assert "\n" not in err and not Path("out").exists()


def test_receipts_of_different_models_need_saying_so(capsys):
    paths = write_receipts(
        Path("r"),
        {"mlp.json": make_receipt("numpy", None, LOSSES), "cnn.json": make_receipt("numpy", None, LOSSES, model="cnn")},
    )
    assert main(["report", *map(str, paths)]) == 1
    err = capsys.readouterr().err
    assert "different models" in err and "cnn.json" in err and "mlp.json" in err and "--mixed-models" in err
    assert main(["report", *map(str, paths), "--mixed-models"]) == 0
    out = capsys.readouterr().out
    assert "# Comparison: cnn, mlp" in out and "| cnn: core/numpy |" in out and "| mlp: core/numpy |" in out
    assert out.count("(1 run): nothing to compare") == 2  # different models never started from the same weights


def test_two_runs_of_one_kind_are_told_apart_by_file():
    report = build_report(
        {"a.json": make_receipt("numpy", None, LOSSES), "b.json": make_receipt("numpy", None, LOSSES)}
    )
    assert [row["label"] for row in report["rows"]] == ["core/numpy (a)", "core/numpy (b)"]
    assert report["same_init"][0]["largest"]["max_abs_diff"] == 0.0


# ---------------------------------------------------------------- the comparison


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("idx"), 256, 64, seed=3)


def test_plan_runs_covers_every_backend_and_framework_once():
    runs = plan_runs("vit", None, None, ["jax", "tensorflow"])
    labels = [run.label for run in runs]
    assert labels[:4] == ["core/numpy", "core/torch", "core/jax", "core/mlx"]
    assert {"torch", "nnx", "linen", "mlx", "tf", "keras/jax", "keras/tensorflow"} <= set(labels)
    assert len(set(run.stem for run in runs)) == len(runs)
    keras = next(run for run in runs if run.label == "keras/tensorflow")
    assert keras.flags[-2:] == ("--keras-backend", "tensorflow") and "tensorflow" in keras.requires
    assert all(run.flags[:2] == ("--model", "vit") for run in runs)


def test_compare_trains_each_run_in_its_own_process_and_reports_failures(idx_dir, monkeypatch, capsys):
    real = compare_mod._launch
    commands: list[list[str]] = []

    def launch(command: list[str]) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        if "torch" in command:  # a framework run that breaks
            return subprocess.CompletedProcess(command, 1, "", "Traceback ...\nRuntimeError: the run broke\n")
        if "linen" in command:  # exits 0 but leaves no receipt
            return subprocess.CompletedProcess(command, 0, "", "")
        return real(command)

    monkeypatch.setattr(compare_mod, "_launch", launch)
    monkeypatch.setattr(compare_mod, "_missing", lambda run: "not installed: tensorflow" if run.label == "tf" else None)
    argv = ["compare", "--backends", "numpy", "--frameworks", "torch", "linen", "tf", "--epochs", "2"]
    argv += ["--train-limit", "128", "--test-limit", "64", "--seed", "5", "--data-dir", str(idx_dir), "--out", "cmp"]
    assert main(argv) == 0
    out = capsys.readouterr().out

    numpy_run = commands[0]
    assert numpy_run[:4] == [sys.executable, "-m", "yat_core", "train"] and len(commands) == 3
    assert all(flag in numpy_run for flag in ("--backend", "--seed", "5", "--train-limit", "--data-dir"))
    assert "[1/4] core/numpy: started" in out and "[1/4] core/numpy: test accuracy" in out
    assert "[2/4] torch: failed after" in out and "RuntimeError: the run broke" in out
    assert "[4/4] tf: skipped, not installed: tensorflow" in out

    receipt = load_receipt(Path("cmp", "runs", "mlp-backend-numpy.json"))
    assert receipt["seed"] == 5 and receipt["n_train"] == 128 and len(receipt["history"]) == 2
    assert "yat_core train" in Path("cmp", "runs", "mlp-backend-numpy.log").read_text()
    markdown = Path("cmp", "report.md").read_text()
    assert markdown in out  # printed and saved
    assert "| torch | — |" in markdown and "failed: RuntimeError: the run broke |" in markdown
    assert "| linen |" in markdown and "mlp-framework-linen.json: file not found" in markdown
    assert "failed: not installed: tensorflow |" in markdown
    assert "| core/numpy | core | numpy / cpu | 235,148 |" in markdown

    # The report of the receipt alone rebuilds the same run row.
    again = report_receipts([Path("cmp", "runs", "mlp-backend-numpy.json")])
    row = next(line for line in again.splitlines() if line.startswith("| core/numpy | core"))
    assert row.rsplit(" |", 1)[0] in markdown


def test_compare_with_nothing_selected_is_a_clear_error(capsys):
    assert main(["compare", "--backends", "--frameworks"]) == 1
    assert "nothing to compare" in capsys.readouterr().err


def test_compare_survives_a_run_that_cannot_start(monkeypatch):
    def launch(command: list[str]) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(2, "No such file or directory", command[0])

    markdown = compare_mod.compare(plan_runs("mlp", ["numpy"], []), [], "out", launch=launch, log=None)
    assert "failed: could not start:" in markdown and "No such file or directory" in markdown


def test_compare_refuses_an_out_that_is_a_file_before_any_run(tmp_path: Path) -> None:
    """The Python API checks its output folder up front, as the CLI does: no run is launched."""
    out = tmp_path / "taken"
    out.write_text("a file, not a folder")
    launched: list[list[str]] = []

    def launch(command: list[str]) -> Any:
        launched.append(command)
        raise AssertionError("no run may start")

    with pytest.raises(ValueError, match=r"^out .*taken: is a file; give a folder$"):
        compare_mod.compare(plan_runs("mlp", ["numpy"], []), [], out, launch=launch, log=None)
    assert launched == [] and out.read_text() == "a file, not a folder"
