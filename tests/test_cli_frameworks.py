"""``yat-core train --framework``, ``--keras-backend`` and ``--export``.

Training runs use a tiny MNIST-format folder (96 training, 48 test images), so
each takes seconds; no test touches the network or the real data set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import write_tiny_mnist

from yat_core import cli, runners
from yat_core.errors import BackendUnavailableError
from yat_core.mlp import init_mlp_numpy, seed_spec
from yat_core.nn.interchange import check_params, load_npz
from yat_core.train import TrainConfig

#: The import each framework needs, and the modules to hide to simulate its absence.
HIDE = {
    "torch": ("torch",),
    "nnx": ("flax", "flax.nnx"),
    "linen": ("flax", "flax.linen"),
    "mlx": ("mlx", "mlx.nn"),
}
REQUIRES = {"torch": "torch", "nnx": "flax.nnx", "linen": "flax.linen", "mlx": "mlx.nn"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist-tiny"), 96, 48)


def train_args(data_dir: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data-dir",
        str(data_dir),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--quiet",
        "--report",
        str(tmp_path / "receipt.json"),
        *extra,
    ]


# ------------------------------------------------------------------ flag checks


def test_framework_and_backend_are_mutually_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--backend", "numpy", "--framework", "torch"])
    assert info.value.code == 2
    assert "not allowed with argument --backend" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--framework", "caffe"], ["--keras-backend", "numpy"]])
def test_unknown_choices_are_usage_errors(flag, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *flag])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--framework", "torch", "--keras-backend", "jax"], "--keras-backend applies to --framework keras only"),
        (["--keras-backend", "torch"], "--keras-backend applies to --framework keras only"),
        (["--framework", "nnx", "--gradients", "analytic"], "--gradients applies to --backend runs"),
    ],
)
def test_flag_combinations_that_cannot_work_are_one_line_errors(argv, message, capsys):
    assert cli.main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# ------------------------------------------------------------------ missing framework


@pytest.mark.parametrize("name", list(HIDE))
def test_missing_framework_is_one_line_naming_the_extra(name, monkeypatch, capsys, tmp_path):
    for module in HIDE[name]:
        monkeypatch.setitem(sys.modules, module, None)
    # A data folder that does not exist: the framework must be refused before any data is read.
    assert cli.main(["train", "--framework", name, "--data-dir", str(tmp_path / "absent")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"framework {name!r} needs" in err and f"pip install 'yat-core[{name}]'" in err


def test_missing_framework_in_a_fresh_process(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None; from yat_core.cli import main; "
        f"raise SystemExit(main(['train', '--framework', 'torch', '--data-dir', {str(tmp_path)!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "yat-core: error: framework 'torch' needs torch, which is not installed here; "
        "install it with: pip install 'yat-core[torch]'"
    ]


# ------------------------------------------------------------------ keras backend selection


def test_select_keras_backend_sets_the_environment(monkeypatch):
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    runners.select_keras_backend("torch")
    assert os.environ["KERAS_BACKEND"] == "torch"


def test_select_keras_backend_refuses_to_switch_an_imported_keras(monkeypatch):
    imported = SimpleNamespace(config=SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", imported)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    runners.select_keras_backend("jax")  # the same backend: nothing to switch
    with pytest.raises(BackendUnavailableError, match="already imported in this process with backend 'jax'"):
        runners.select_keras_backend("tensorflow")
    assert os.environ["KERAS_BACKEND"] == "jax"


def test_keras_defaults_to_the_jax_backend(monkeypatch):
    """No --keras-backend: KERAS_BACKEND is set to jax before the Keras runner module loads."""
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    seen = {}

    def fake_load_entry(registry: Any, name: str, kind: str) -> SimpleNamespace:
        seen[name] = os.environ["KERAS_BACKEND"]
        return SimpleNamespace(RUNNER_CLASS=lambda spec, config: SimpleNamespace(name=name))

    monkeypatch.setattr(runners, "load_entry", fake_load_entry)
    runner = runners.make_runner(seed_spec(), TrainConfig(framework="keras"))
    assert (runner.name, seen) == ("keras", {"keras": "jax"})


# ------------------------------------------------------------------ training runs


@pytest.mark.parametrize("name", list(REQUIRES))
def test_train_framework_writes_receipt_and_export(name, data_dir, tmp_path, capsys):
    pytest.importorskip(REQUIRES[name])
    export = tmp_path / "weights.npz"
    assert cli.main(train_args(data_dir, tmp_path, "--framework", name, "--export", str(export))) == 0
    assert f"parameters: {export}" in capsys.readouterr().out
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert (receipt["backend"], receipt["framework"], receipt["params"]) == (name, name, 235148)
    assert (receipt["config"]["framework"], receipt["config"]["backend"]) == (name, None)
    assert receipt["gradients"] == "autodiff"
    assert (receipt["n_train"], receipt["n_test"], receipt["steps_per_epoch"]) == (96, 48, 3)
    assert receipt["export"] == str(export)
    distribution = {"torch": "torch", "nnx": "flax", "linen": "flax", "mlx": "mlx"}[name]
    assert distribution in receipt["versions"]
    params = check_params(load_npz(export), seed_spec())
    init = init_mlp_numpy(seed_spec(), 0)
    assert not np.array_equal(params["0.kernel"], init["0.kernel"]), "the export holds untrained weights"
    assert np.max(np.abs(params["0.kernel"] - init["0.kernel"])) < 0.01  # three small AdamW steps


def test_train_backend_exports_the_core_parameters(data_dir, tmp_path):
    export = tmp_path / "core.npz"
    assert cli.main(train_args(data_dir, tmp_path, "--backend", "numpy", "--export", str(export))) == 0
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert receipt["backend"] == "numpy" and receipt["framework"] is None
    assert "keras_backend" not in receipt
    params = check_params(load_npz(export), seed_spec())
    assert params["2.bias"].dtype == np.float32


@pytest.mark.parametrize("where", ["under-a-file", "a-folder"])
def test_an_impossible_export_path_fails_before_training(where, data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    target = blocker / "sub" / "w.npz" if where == "under-a-file" else tmp_path
    assert cli.main(train_args(data_dir, tmp_path, "--backend", "numpy", "--export", str(target))) == 1
    err = capsys.readouterr().err
    assert err.startswith("yat-core: error: --export") and err.count("\n") == 1
    assert not (tmp_path / "receipt.json").exists(), "it trained before refusing the export path"


@pytest.mark.slow
def test_keras_backend_choice_reaches_keras(data_dir, tmp_path):
    """A fresh process, KERAS_BACKEND unset: ``--keras-backend torch`` must be what Keras runs on."""
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    argv = train_args(
        data_dir, tmp_path, "--framework", "keras", "--keras-backend", "torch", "--export", str(tmp_path / "k.npz")
    )
    result = subprocess.run(
        [sys.executable, "-m", "yat_core", *argv], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    receipt = json.loads((tmp_path / "receipt.json").read_text())
    assert (receipt["framework"], receipt["keras_backend"]) == ("keras", "torch")
    assert "keras" in receipt["versions"] and "torch" in receipt["versions"]
    assert "torch" in receipt["device"]
    check_params(load_npz(tmp_path / "k.npz"), seed_spec())
