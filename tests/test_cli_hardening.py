"""Hostile and careless command lines: every numeric flag is bounded, every output path is checked
before any work, and a run whose loss turns non-finite stops with a receipt that says so.

Each case ends in one line naming the flag, a non-zero exit, no traceback and nothing
written. Training runs read a tiny synthetic MNIST from a temporary folder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_mnist

from yat_core.cli import main
from yat_core.config import EPOCHS_MAX, SEED_MAX, SIZE_MAX, TrainConfig
from yat_core.optim import AdamWConfig


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    """The four IDX files of a synthetic MNIST: 300 training and 150 test images."""
    return write_tiny_mnist(tmp_path_factory.mktemp("idx"), 300, 150, seed=3)


@pytest.fixture
def work(monkeypatch, tmp_path) -> Path:
    """An empty working folder (default receipts land here); no real cache or download."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("YAT_CORE_CACHE", str(tmp_path / "no-cache"))
    return folder


def train_args(data_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--backend",
        "numpy",
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        "--epochs",
        "1",
        "--data-dir",
        str(data_dir),
        "--quiet",
        *extra,
    ]


def compare_args(data_dir: Path, *extra: str) -> list[str]:
    return ["compare", "--backends", "numpy", "--frameworks", "--epochs", "1", "--data-dir", str(data_dir), *extra]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def argparse_exit(args: list[str], capsys) -> str:
    """Run ``args``; assert argparse's exit status 2 and one error line without a traceback; return it."""
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"yat-core {args[0]}: error: argument "), f"unexpected: {last!r}"
    return last


def one_line_error(args: list[str], capsys) -> str:
    """Run ``args``; assert exit status 1 and exactly one ``yat-core: error:`` line on stderr; return it."""
    status = main(args)
    err = capsys.readouterr().err
    assert status == 1, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("yat-core: error: "), f"expected one error line, got:\n{err}"
    return lines[0]


# ---------------------------------------------------------------- item 3: numeric flags, one validator each


_BAD_NUMBERS = [
    pytest.param("--lr", "inf", "argument --lr: must be a finite number, got inf", id="lr-inf"),
    pytest.param("--lr", "nan", "argument --lr: must be a finite number, got nan", id="lr-nan"),
    pytest.param("--lr", "1e999", "argument --lr: must be a finite number, got inf", id="lr-overflow"),
    pytest.param("--lr", "0", "argument --lr: must be > 0, got 0.0", id="lr-zero"),
    pytest.param("--seed", "-1", "argument --seed: must be >= 0, got -1", id="seed-negative"),
    pytest.param("--seed", str(2**32), f"argument --seed: must be <= {SEED_MAX}, got {2**32}", id="seed-2**32"),
    pytest.param("--seed", str(2**63), f"argument --seed: must be <= {SEED_MAX}", id="seed-2**63"),
    pytest.param("--seed", "1.5", "argument --seed: expected an integer, got '1.5'", id="seed-float"),
    pytest.param("--epochs", "0", "argument --epochs: must be >= 1, got 0", id="epochs-0"),
    pytest.param("--epochs", str(EPOCHS_MAX + 1), f"argument --epochs: must be <= {EPOCHS_MAX}", id="epochs-huge"),
    pytest.param("--batch-size", "-5", "argument --batch-size: must be >= 1, got -5", id="batch-negative"),
    pytest.param("--batch-size", str(2**63), f"argument --batch-size: must be <= {SIZE_MAX}", id="batch-huge"),
    pytest.param("--train-limit", "0", "argument --train-limit: must be >= 1, got 0", id="train-limit-0"),
    pytest.param("--test-limit", "1e3", "argument --test-limit: expected an integer, got '1e3'", id="test-limit-e"),
    pytest.param("--test-limit", str(10**30), f"argument --test-limit: must be <= {SIZE_MAX}", id="test-limit-huge"),
]


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize(("flag", "value", "expected"), _BAD_NUMBERS)
def test_numeric_flags_are_bounded_in_train_and_compare(command, flag, value, expected, idx_dir, work, capsys):
    args = (train_args if command == "train" else compare_args)(idx_dir, flag, value)
    assert expected in argparse_exit(args, capsys)
    assert files_under(work) == []


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-0.5"])
def test_weight_decay_is_finite_and_non_negative(value, idx_dir, work, capsys):
    line = argparse_exit(train_args(idx_dir, f"--weight-decay={value}"), capsys)  # "=": -inf is not a flag
    assert "argument --weight-decay: must be" in line and value.lstrip("-") in line
    assert files_under(work) == []


def test_the_seed_bound_is_what_every_framework_accepts():
    # The documented range must hold for each seeding the runners and models use.
    np.random.default_rng(SEED_MAX)
    with pytest.raises(ValueError):
        np.random.default_rng(-1)
    torch = pytest.importorskip("torch")
    torch.manual_seed(SEED_MAX)
    jax = pytest.importorskip("jax")
    jax.random.key(SEED_MAX)
    with pytest.raises(OverflowError):
        jax.random.key(2**63)  # what made the NNX runner crash


def test_largest_seed_and_a_batch_larger_than_the_set_train(idx_dir, work, capsys):
    report = work / "r.json"
    args = train_args(idx_dir, "--seed", str(SEED_MAX), "--batch-size", "100000", "--report", str(report))
    assert main(args) == 0, capsys.readouterr().err
    receipt = json.loads(report.read_text())
    assert (receipt["seed"], receipt["steps_per_epoch"], receipt["stopped"]) == (SEED_MAX, 1, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"seed": 2**63}, rf"--seed must be <= {SEED_MAX}, got {2**63}", id="seed-2**63"),
        pytest.param({"seed": -1}, r"--seed must be >= 0, got -1", id="seed-negative"),
        pytest.param({"epochs": True}, r"--epochs must be an integer, got True", id="epochs-bool"),
        pytest.param({"batch_size": 2.5}, r"--batch-size must be an integer, got 2.5", id="batch-float"),
        pytest.param({"epochs": EPOCHS_MAX + 1}, rf"--epochs must be <= {EPOCHS_MAX}", id="epochs-huge"),
        pytest.param({"optimizer": AdamWConfig(lr=math.inf)}, r"learning rate must be a finite number", id="lr-inf"),
        pytest.param(
            {"optimizer": AdamWConfig(weight_decay=math.inf)}, r"weight decay must be a finite number", id="wd-inf"
        ),
    ],
)
def test_train_config_validate_applies_the_same_bounds(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(backend="numpy", **kwargs).validate()


def test_adamw_config_refuses_infinite_hyperparameters():
    for field in ("lr", "eps", "weight_decay"):
        with pytest.raises(ValueError, match="must be finite, got inf"):
            AdamWConfig(**{field: math.inf}).validate()


def test_a_diverging_run_stops_with_a_receipt_that_says_so(idx_dir, work, capsys):
    report, export = work / "r.json", work / "w.npz"
    args = train_args(idx_dir, "--lr", "1e30", "--batch-size", "8", "--report", str(report), "--export", str(export))
    line = one_line_error(args, capsys)
    assert "training stopped: non-finite loss" in line and "at epoch 1 step " in line and str(report) in line
    receipt = json.loads(report.read_text())
    assert receipt["stopped"].startswith("non-finite loss") and receipt["stopped"] in line
    assert receipt["final_test_acc"] is None and receipt["history"][-1]["test_acc"] is None
    step = int(receipt["stopped"].rsplit(" ", 1)[1])
    assert receipt["history"][-1]["step_loss"][step - 1] is None  # NaN is written as null
    assert files_under(work) == ["r.json"], "weights of a diverged run, or a temporary file, were left"


# ---------------------------------------------------------------- item 4: output paths, checked before any work


@pytest.mark.parametrize("flag", ["--report", "--export"])
def test_an_empty_output_path_is_an_error_not_the_default(flag, idx_dir, work, capsys):
    assert "empty path" in argparse_exit(train_args(idx_dir, flag, ""), capsys)
    assert files_under(work) == []


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        pytest.param("report-is-a-folder", "--report {p}: is a folder", id="report-is-a-folder"),
        pytest.param("export-is-a-folder", "--export {p}: is a folder", id="export-is-a-folder"),
        pytest.param("parent-is-a-file", "--report {p}: {work}/file is not a folder", id="parent-is-a-file"),
        pytest.param("same-path-twice", "--export {p}: the same file as --report", id="same-path-twice"),
        pytest.param("same-via-dotdot", "--export {p}: the same file as --report", id="same-via-dotdot"),
    ],
)
def test_train_refuses_an_unusable_output_before_training(case, fragment, idx_dir, work, capsys):
    (work / "folder.npz").mkdir()
    (work / "file").write_text("x")
    extra, p = {
        "report-is-a-folder": (["--report", str(work / "folder.npz")], work / "folder.npz"),
        "export-is-a-folder": (["--report", str(work / "r.json"), "--export", "folder.npz"], "folder.npz"),
        "parent-is-a-file": (["--report", str(work / "file" / "r.json")], work / "file" / "r.json"),
        "same-path-twice": (["--report", "w.npz", "--export", "w.npz"], "w.npz"),
        "same-via-dotdot": (["--report", "w.npz", "--export", "folder.npz/../w.npz"], "folder.npz/../w.npz"),
    }[case]
    line = one_line_error(train_args(idx_dir, *extra), capsys)
    assert fragment.format(p=p, work=work) in line, line
    assert files_under(work) == ["file", "folder.npz"]


def test_an_unwritable_folder_is_found_before_training(idx_dir, work, capsys, monkeypatch):
    # Simulated: the tests may run as root, for whom every folder is writable.
    locked = work / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode))
    line = one_line_error(train_args(idx_dir, "--report", str(locked / "sub" / "r.json")), capsys)
    assert f"--report {locked / 'sub' / 'r.json'}: the folder {locked} is not writable" in line
    assert files_under(work) == ["locked"]


def test_the_default_receipt_folder_is_checked_too(idx_dir, work, capsys):
    (work / "receipts").write_text("a file where the default receipt folder goes")
    line = one_line_error(train_args(idx_dir), capsys)
    assert line.startswith("yat-core: error: --report receipts/train-numpy-") and "receipts is not a folder" in line
    assert files_under(work) == ["receipts"]


def test_compare_out_that_is_a_file_is_refused_before_any_run(idx_dir, work, capsys):
    (work / "taken").write_text("x")
    assert "--out taken: is a file; give a folder" in one_line_error(compare_args(idx_dir, "--out", "taken"), capsys)
    assert "empty path" in argparse_exit(compare_args(idx_dir, "--out", ""), capsys)
    assert files_under(work) == ["taken"]


def test_report_out_never_overwrites_a_receipt_it_reads(work, capsys):
    out = work / "out"
    out.mkdir()
    receipt = out / "report.json"
    receipt.write_text("{}")
    line = one_line_error(["report", str(receipt), "--out", str(out)], capsys)
    assert f"--out {receipt}: the same file as RECEIPT" in line
    assert receipt.read_text() == "{}" and files_under(work) == ["out", "out/report.json"]


def test_export_onnx_out_must_differ_from_its_weights(work, capsys):
    line = one_line_error(["export-onnx", "--weights", "w.npz", "--model", "mlp", "--out", "./w.npz"], capsys)
    assert "--out w.npz: the same file as --weights" in line
    assert files_under(work) == []
