"""Tests for the ``yat-core`` command line (yat_core.cli), in-process and as ``python -m yat_core``.

Training runs read small IDX files written to a temporary folder; nothing touches
the network or the MNIST cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_backend, write_tiny_mnist

from yat_core.cli import BACKEND_CHOICES, main
from yat_core.data import IDX_FILES
from yat_core.receipts import HISTORY_KEYS, REQUIRED_KEYS


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    """A folder with the four IDX files of a synthetic MNIST: 300 training and 150 test images."""
    return write_tiny_mnist(tmp_path_factory.mktemp("idx"), 300, 150, seed=9)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    # No stray receipts/ folder in the repository, and no real cache or download.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YAT_CORE_CACHE", str(tmp_path / "no-cache"))


def train_args(data_dir, report, *extra: str) -> list[str]:
    return [
        "train",
        "--backend",
        "numpy",
        "--train-limit",
        "256",
        "--test-limit",
        "128",
        "--epochs",
        "1",
        "--data-dir",
        str(data_dir),
        "--report",
        str(report),
        "--quiet",
        *extra,
    ]


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, f"a traceback reached the user:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("yat-core: error: "), f"expected one error line, got:\n{err}"
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def assert_argparse_error(err: str, fragment: str) -> None:
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("yat-core train: error: ") and fragment in last, f"unexpected: {last!r}"


# ---------------------------------------------------------------- success


def test_train_in_process_writes_a_complete_receipt(idx_dir, tmp_path, capsys):
    report = tmp_path / "out" / "r.json"
    assert main(train_args(idx_dir, report)) == 0
    out, err = capsys.readouterr()
    assert err == "", f"stderr of a --quiet run: {err!r}"
    assert out.count("\n") == 1 and "final test accuracy" in out and "on 128 images" in out and str(report) in out
    receipt = json.loads(report.read_text())
    assert not [k for k in REQUIRED_KEYS if k not in receipt]
    assert all(k in h for h in receipt["history"] for k in HISTORY_KEYS)
    assert receipt["backend"] == "numpy" and receipt["framework"] is None
    assert (receipt["n_train"], receipt["n_test"], receipt["params"], receipt["epochs"]) == (256, 128, 235148, 1)
    assert receipt["steps_per_epoch"] == 2 and receipt["data"]["source"] == f"folder {idx_dir}"
    assert sorted(p.name for p in report.parent.iterdir()) == ["r.json"]


def test_train_as_a_module_exits_zero(idx_dir, tmp_path):
    report = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "yat_core", *train_args(idx_dir, report)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "YAT_CORE_TORCH_COMPILE": "0"},
    )
    assert proc.returncode == 0, f"python -m yat_core train failed:\n{proc.stderr}"
    assert "final test accuracy" in proc.stdout and "Traceback" not in proc.stderr
    assert json.loads(report.read_text())["n_test"] == 128


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_train_export_writes_parameters_that_fit_the_seed_model(backend, idx_dir, tmp_path, capsys):
    require_backend(backend)
    report, export = tmp_path / "r.json", tmp_path / "params.npz"
    args = train_args(idx_dir, report, "--export", str(export), "--train-limit", "64", "--test-limit", "16")
    args[args.index("--backend") + 1] = backend
    status = main(args)
    err = capsys.readouterr().err
    assert status == 0, f"{backend}: train --export failed: {err}"
    with np.load(export) as saved:
        shapes = {k: saved[k].shape for k in saved.files}
    assert shapes["0.alpha"] == () and shapes["0.kernel"] == (256, 784), f"{backend}: exported {shapes}"
    assert json.loads(report.read_text())["export"] == str(export)


def test_backends_lists_the_four_backends(capsys):
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(BACKEND_CHOICES) == ["numpy", "torch", "jax", "mlx"]
    assert lines[0].split()[1] == "installed"
    assert all(line.split()[1] == "installed" or "pip install 'yat-core[" in line for line in lines)


# ---------------------------------------------------------------- argparse errors (exit status 2)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        pytest.param(("--backend", "nope"), "argument --backend: invalid choice: 'nope'", id="unknown-backend"),
        pytest.param(("--epochs", "0"), "argument --epochs: must be >= 1, got 0", id="epochs-0"),
        pytest.param(("--lr", "-1"), "argument --lr: must be > 0, got -1.0", id="lr-negative"),
        pytest.param(("--batch-size", "x"), "argument --batch-size: expected an integer, got 'x'", id="batch-not-int"),
        pytest.param(("--weight-decay", "-0.1"), "argument --weight-decay: must be >= 0", id="wd-negative"),
    ],
)
def test_bad_flags_exit_2_without_traceback(change, fragment, idx_dir, tmp_path, capsys):
    report = tmp_path / "r.json"
    args = train_args(idx_dir, report)
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert_argparse_error(capsys.readouterr().err, fragment)
    assert not report.exists()


# ---------------------------------------------------------------- user errors (exit status 1, one line)


def test_empty_data_dir_names_the_missing_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    report = tmp_path / "r.json"
    assert main(train_args(empty, report)) == 1
    assert_one_line_error(capsys.readouterr().err, str(empty / "train-images-idx3-ubyte"), "missing")
    assert not report.exists()


def test_missing_data_dir(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(train_args(tmp_path / "nowhere", report)) == 1
    assert_one_line_error(capsys.readouterr().err, "nowhere", "not found")
    assert not report.exists()


@pytest.mark.parametrize("corruption", ["truncated", "bad-magic"])
def test_corrupt_idx_file_is_named(corruption, idx_dir, tmp_path, capsys):
    data_dir = tmp_path / "data"
    shutil.copytree(idx_dir, data_dir)
    victim = data_dir / IDX_FILES["train_labels"]
    if corruption == "truncated":
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        victim.write_bytes(b"garbage!" + victim.read_bytes()[8:])
    report = tmp_path / "r.json"
    assert main(train_args(data_dir, report)) == 1
    assert_one_line_error(capsys.readouterr().err, str(victim))
    assert not report.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "something was left behind"


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        pytest.param(("--gradients", "autodiff"), "NumPy has no autodiff", id="numpy-autodiff"),
        pytest.param(("--device", "cuda"), "cpu only", id="numpy-cuda"),
        pytest.param(
            ("--keras-backend", "jax"),
            "--keras-backend applies to --framework keras only",
            id="keras-backend-without-keras",
        ),
    ],
)
def test_impossible_requests_end_in_one_line(extra, fragment, idx_dir, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(train_args(idx_dir, report, *extra)) == 1
    assert_one_line_error(capsys.readouterr().err, fragment)
    assert not report.exists()


def test_unavailable_torch_device_ends_in_one_line(idx_dir, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    report = tmp_path / "r.json"
    args = train_args(idx_dir, report, "--device", "mps")
    args[args.index("--backend") + 1] = "torch"
    assert main(args) == 1
    assert_one_line_error(capsys.readouterr().err, "mps")
    assert not report.exists()


def test_error_as_a_module_exits_nonzero_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    report = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "yat_core", *train_args(empty, report)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    assert_one_line_error(proc.stderr, "missing")
    assert not report.exists()
