"""The torch training step compiled ahead of time and kept on disk (``yat_core.backends._torch_aot``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from yat_core.mlp import LayerSpec, MLPSpec, init_mlp_numpy
from yat_core.optim import AdamWConfig, adamw_init

torch = pytest.importorskip("torch")

from yat_core.backends import _torch_aot  # noqa: E402
from yat_core.backends.torch import TorchBackend, _CompiledStep  # noqa: E402

TINY = MLPSpec((LayerSpec("yat", 784, 8), LayerSpec("linear", 8, 10)))


def _inputs(batch: int = 32) -> tuple[Any, ...]:
    backend = TorchBackend("cpu")
    params = {k: backend.asarray(v) for k, v in init_mlp_numpy(TINY, 0, np.float32).items()}
    rng = np.random.default_rng(0)
    images = backend.asarray(rng.integers(0, 256, (64, 784), dtype=np.uint8))
    labels = backend.asarray(rng.integers(0, 10, 64).astype(np.int32))
    return params, adamw_init(params, xp=backend.xp), images, labels, backend.asarray(np.arange(batch, dtype=np.int32))


def _step_fn(lr: float = 1e-3) -> Any:
    return TorchBackend("cpu", gradients="analytic")._step_fn(TINY, AdamWConfig(lr=lr))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(_torch_aot, "_folder", lambda: tmp_path)
    return tmp_path


def test_the_key_names_the_step_and_the_call():
    args = _inputs()
    key = _torch_aot.step_key(_step_fn(), args)
    assert key is not None and key == _torch_aot.step_key(_step_fn(), _inputs()), "a fresh closure of one step"
    assert key != _torch_aot.step_key(_step_fn(lr=2e-3), args), "the optimizer's settings are part of the step"
    assert key != _torch_aot.step_key(_step_fn(), _inputs(batch=16)), "so is the batch shape"
    other = MLPSpec((LayerSpec("yat", 784, 9), LayerSpec("linear", 9, 10)))
    assert key != _torch_aot.step_key(TorchBackend("cpu")._step_fn(other, AdamWConfig(lr=1e-3)), args)
    unkeyable = object()
    assert _torch_aot.step_key(lambda *a: unkeyable, args) is None


def _run(step: Any, args: tuple[Any, ...]) -> dict[str, Any]:
    params, _, loss = step(*args)
    return {**params, "loss": loss}


def _assert_same(a: dict[str, Any], b: dict[str, Any], atol: float = 0.0) -> None:
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), rtol=0, atol=atol, err_msg=name)


def test_a_saved_step_is_loaded_by_a_later_one_and_computes_the_same(folder):
    first = _CompiledStep(_step_fn())
    compiled = _run(first, _inputs())
    assert first.source == "compiled" and len(list(folder.glob("*.pt2"))) == 1
    later = _CompiledStep(_step_fn())  # as in a later process: a new closure of the same step
    loaded = _run(later, _inputs())
    assert later.source == "loaded"
    _assert_same(loaded, compiled)
    _assert_same(loaded, _run(_eager(), _inputs()), atol=1e-6)
    # Other shapes (an epoch's last batch) still run eagerly, beside the loaded step.
    small = _inputs(batch=4)
    _assert_same(_run(later, small), _run(_eager(), small), atol=0)


def _eager() -> Any:
    return torch.no_grad()(_step_fn())


def test_an_unreadable_file_is_compiled_again_and_replaced(folder):
    _run(_CompiledStep(_step_fn()), _inputs())
    (saved,) = folder.glob("*.pt2")
    saved.write_bytes(b"not a compiled step")
    again = _CompiledStep(_step_fn())
    _run(again, _inputs())
    assert again.source == "compiled" and saved.read_bytes() != b"not a compiled step"
    after = _CompiledStep(_step_fn())
    _run(after, _inputs())
    assert after.source == "loaded"


def test_without_inductor_caches_the_step_goes_to_torch_compile(folder):
    from torch._inductor import config as inductor_config

    with inductor_config.patch(force_disable_caches=True):
        step = _CompiledStep(_step_fn())
        _run(step, _inputs())
    assert step.source == "torch.compile" and not list(folder.glob("*.pt2"))


def test_a_loss_differentiated_by_autograd_is_left_to_torch_compile(folder):
    def loss(w: Any, x: Any) -> Any:
        return (w * x).sum()

    compiled = _CompiledStep(loss, grad=True)
    w = torch.ones(3, requires_grad=True)
    (grad,) = torch.autograd.grad(compiled(w, torch.arange(3.0)), [w])
    assert compiled.source == "torch.compile" and grad.tolist() == [0.0, 1.0, 2.0]
    assert not list(folder.glob("*.pt2"))


def test_prepare_runs_before_a_compile_only(folder):
    calls: list[str] = []
    _, source = _torch_aot.precompiled(_step_fn(), _inputs(), prepare=lambda: calls.append("prepare"))
    assert source == "compiled" and calls == ["prepare"]
    _, source = _torch_aot.precompiled(_step_fn(), _inputs(), prepare=lambda: calls.append("again"))
    assert source == "loaded" and calls == ["prepare"]


_LATER_PROCESS = """
import sys
import torch
from tests.test_torch_aot import _inputs, _step_fn
from yat_core.backends.torch import _CompiledStep

step = _CompiledStep(_step_fn())
params, _, loss = step(*_inputs())
print(step.source, "torch._dynamo" in sys.modules, "torch._inductor" in sys.modules, float(loss))
"""


def test_a_later_process_loads_the_step_without_dynamo_or_inductor(tmp_path, monkeypatch):
    # What a loaded step saves a fresh process: importing Dynamo and inductor (~2 s on two cores).
    import os
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    first = _CompiledStep(_step_fn())
    _, _, loss = first(*_inputs())  # compiled here, where Dynamo and inductor are loaded
    assert first.source == "compiled" and list((tmp_path / _torch_aot.FOLDER).glob("*.pt2"))
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _LATER_PROCESS],
        env=dict(os.environ),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    source, dynamo, inductor, later_loss = out.stdout.split()
    assert (source, dynamo, inductor) == ("loaded", "False", "False")
    assert float(later_loss) == float(loss)


def test_a_folder_that_cannot_be_written_gets_a_package_for_this_process_only(tmp_path, monkeypatch):
    import tempfile
    from pathlib import Path

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(_torch_aot, "_folder", lambda: blocker / "steps")
    leftovers = set(Path(tempfile.gettempdir()).glob("yat-core-step-*.pt2"))
    step = _CompiledStep(_step_fn())
    got = _run(step, _inputs())
    assert step.source == "compiled"
    _assert_same(got, _run(_eager(), _inputs()), atol=1e-6)
    assert set(Path(tempfile.gettempdir()).glob("yat-core-step-*.pt2")) == leftovers, (
        "the package is removed once loaded"
    )


def test_a_compile_keeps_the_most_recently_used_packages_and_a_load_marks_its_own(folder, monkeypatch):
    import os

    for age, name in enumerate(("old", "older", "oldest")):
        (folder / f"{name}.pt2").write_bytes(b"")
        os.utime(folder / f"{name}.pt2", (1000 - age, 1000 - age))
    monkeypatch.setattr(_torch_aot, "KEEP", 2)
    _run(_CompiledStep(_step_fn()), _inputs())
    (compiled,) = [p for p in folder.glob("*.pt2") if len(p.stem) == 64]
    assert sorted(p.name for p in folder.glob("*.pt2")) == sorted([compiled.name, "old.pt2"])
    os.utime(compiled, (0, 0))
    later = _CompiledStep(_step_fn())
    _run(later, _inputs())
    assert later.source == "loaded" and compiled.stat().st_mtime > 1000, "a load marks the package used"
