"""Tests for yat_core.backends: the lazy registry, device handling and gradients of every shim."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKEND_NAMES, framework_installed, require_backend, to_numpy

from yat_core.backends import BACKENDS, available_backends, get_backend
from yat_core.backends._base import GRADIENT_MODES
from yat_core.errors import BackendUnavailableError, YatError
from yat_core.mlp import init_mlp_numpy, mlp_value_and_grad, seed_spec

# ---------------------------------------------------------------- registry


def test_registry_lists_the_four_backends_in_order():
    assert tuple(BACKENDS) == BACKEND_NAMES == ("numpy", "torch", "jax", "mlx")
    assert {name: entry.extra for name, entry in BACKENDS.items()} == {
        "numpy": "",
        "torch": "torch",
        "jax": "jax",
        "mlx": "mlx",
    }


def test_unknown_backend_lists_the_choices():
    with pytest.raises(BackendUnavailableError, match=r"unknown backend 'nope'; choose one of: numpy, torch, jax, mlx"):
        get_backend("nope")
    assert issubclass(BackendUnavailableError, YatError) and issubclass(BackendUnavailableError, ImportError)


def test_available_backends_are_the_installed_frameworks():
    expected = [name for name in BACKEND_NAMES if framework_installed(name)]
    assert available_backends() == expected
    assert "numpy" in expected


_MISSING_SCRIPT = r"""
import json, sys
for name in ("torch", "jax", "mlx"):
    sys.modules[name] = None  # what Python does for a package that cannot be imported
from yat_core.backends import available_backends, get_backend
from yat_core.errors import BackendUnavailableError
out = {"available": available_backends(), "errors": {}}
for name in ("torch", "jax", "mlx"):
    try:
        get_backend(name)
    except BackendUnavailableError as exc:
        out["errors"][name] = str(exc)
print(json.dumps(out))
"""


def test_missing_frameworks_name_the_pip_extra_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-c", _MISSING_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["available"] == ["numpy"]
    for name, extra in (("torch", "torch"), ("jax", "jax"), ("mlx", "mlx")):
        msg = out["errors"].get(name, "")
        assert f"backend '{name}' needs {name}, which is not installed here" in msg, f"{name}: {msg!r}"
        assert msg.endswith(f"pip install 'yat-core[{extra}]'"), f"{name}: {msg!r}"


def _fake_import(monkeypatch, missing: str, raise_name: str):
    real = importlib.import_module

    def fake(module, package=None):
        if module == missing or module.startswith(missing + "."):
            raise ModuleNotFoundError(f"No module named {raise_name!r}", name=raise_name)
        return real(module, package)

    monkeypatch.setattr(importlib, "import_module", fake)


def test_missing_framework_simulated_in_process(monkeypatch):
    _fake_import(monkeypatch, "torch", "torch")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'yat-core\[torch\]'") as info:
        get_backend("torch")
    assert "backend 'torch' needs torch, which is not installed here" in str(info.value)
    assert "torch" not in available_backends()


def test_framework_with_a_broken_dependency_says_what_failed(monkeypatch):
    _fake_import(monkeypatch, "jax", "jaxlib")
    with pytest.raises(BackendUnavailableError, match=r"it failed to import jaxlib.*pip install 'yat-core\[jax\]'"):
        get_backend("jax")


# ---------------------------------------------------------------- construction, devices, gradient modes


def test_default_gradient_modes(backend_name):
    backend = get_backend(backend_name)
    assert backend.name == backend_name and backend.framework == backend_name
    expected = {"numpy": "analytic", "torch": "analytic", "jax": "analytic", "mlx": "autodiff"}[backend_name]
    assert backend.gradients == expected, f"{backend_name}: default gradients {backend.gradients!r}"
    assert "cpu" in backend.device_name().lower(), f"{backend_name}: device {backend.device_name()!r}"


def test_numpy_backend_rejects_autodiff_and_gpu():
    with pytest.raises(BackendUnavailableError, match=r"NumPy has no autodiff"):
        get_backend("numpy", gradients="autodiff")
    with pytest.raises(BackendUnavailableError, match=r"the numpy backend runs on the cpu only, not 'cuda'"):
        get_backend("numpy", device="cuda")
    with pytest.raises(BackendUnavailableError, match=r"NumPy has no autodiff"):
        get_backend("numpy").value_and_grad(lambda p: 0.0)
    assert get_backend("numpy", device="cpu", gradients="analytic").gradients == "analytic"


@pytest.mark.parametrize("name", ["torch", "jax", "mlx"])
def test_unknown_gradient_mode_is_rejected(name):
    require_backend(name)
    with pytest.raises(BackendUnavailableError, match=r"gradients must be one of autodiff, analytic, got 'bogus'"):
        get_backend(name, gradients="bogus")


@pytest.mark.parametrize("name", ["torch", "jax", "mlx"])
@pytest.mark.parametrize("device", ["nope", "cuda:7"], ids=["unknown", "absent-gpu"])
def test_unusable_device_is_backend_unavailable(name, device):
    require_backend(name)
    if device.startswith("cuda") and name == "torch":
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has 8 GPUs")
    with pytest.raises(BackendUnavailableError, match=r"nope|cuda|GPU|gpu"):
        get_backend(name, device=device)


def test_torch_device_type_that_is_not_available_is_backend_unavailable():
    # torch.device("mps") parses on every build; asking for it where there is no MPS
    # must fail at get_backend (documented: "a device the framework cannot use"),
    # not later inside the training loop with a RuntimeError and a traceback.
    torch = pytest.importorskip("torch")
    if torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    with pytest.raises(BackendUnavailableError, match="mps"):
        get_backend("torch", device="mps")


def test_torch_vector_isa_probe_is_kept_for_later_processes(monkeypatch, tmp_path):
    # Inductor probes the CPU's vector ISAs in child processes, in every process; the backend
    # records the outcome once and, when every ISA the CPU claims passed, lets later ones skip it.
    pytest.importorskip("torch")
    import platform

    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("the probe record is kept on x86-64 Linux only")
    from torch._inductor import config as inductor_config
    from torch._inductor import cpu_vec_isa

    from yat_core.backends import torch as torch_backend

    monkeypatch.setattr("torch._inductor.runtime.cache_dir_utils.cache_dir", lambda: str(tmp_path))
    # inductor's own patch restores the setting (monkeypatch's undo would hide it from later reads).
    with inductor_config.patch({"cpp.vec_isa_ok": None}):
        torch_backend._vec_isa_probe_cached()
        (record,) = tmp_path.glob("yat-core-vec-isa-*.json")
        saved = json.loads(record.read_text())
        assert saved["valid"] == [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
        assert inductor_config.cpp.vec_isa_ok is (True if saved["valid"] == saved["claimed"] else None)

        # A record where an ISA failed its probe: inductor keeps probing.
        record.write_text(json.dumps({**saved, "valid": saved["valid"][1:]}))
        inductor_config.cpp.vec_isa_ok = None
        torch_backend._vec_isa_probe_cached()
        assert inductor_config.cpp.vec_isa_ok is None or not saved["claimed"]
        # A user's own setting is left alone.
        inductor_config.cpp.vec_isa_ok = False
        torch_backend._vec_isa_probe_cached()
        assert inductor_config.cpp.vec_isa_ok is False
    assert inductor_config.cpp.vec_isa_ok is not False  # restored for the tests after this one


def test_jax_malformed_device_index_is_backend_unavailable():
    require_backend("jax")
    with pytest.raises(BackendUnavailableError, match=r"cpu:x"):
        get_backend("jax", device="cpu:x")


def test_jax_device_index_out_of_range():
    require_backend("jax")
    with pytest.raises(BackendUnavailableError, match=r"jax sees \d+ cpu device\(s\); 'cpu:99' does not exist"):
        get_backend("jax", device="cpu:99")


def test_jax_products_run_in_full_float32_off_the_cpu_unless_the_user_chose():
    # JAX's own default on NVIDIA GPUs is TensorFloat-32: the backend traces its steps at "highest".
    require_backend("jax")
    import jax
    import jax.numpy as jnp

    from yat_core.backends.jax import matmul_precision, traced_at

    assert matmul_precision("cpu") is None and get_backend("jax", "cpu").precision is None
    assert matmul_precision("gpu") == "highest"
    with jax.default_matmul_precision("tensorfloat32"):
        assert matmul_precision("gpu") is None  # the user's setting stands

    def product(a, b):
        return a @ b

    args = (jnp.ones((2, 3)), jnp.ones((3, 2)))
    assert "HIGHEST" in jax.jit(traced_at("highest", product)).lower(*args).as_text()
    assert "HIGHEST" not in jax.jit(traced_at(None, product)).lower(*args).as_text()


@pytest.mark.parametrize("shape", [(), (1,), (3,), (2, 3)], ids=["0d", "1d-1", "1d", "2d"])
def test_asarray_keeps_shape_and_dtype(backend_name, shape):
    # Scalar parameters (alpha, epsilon_raw) are 0-d: a backend must not turn them into shape (1,),
    # or exported parameters no longer fit the spec (check_params rejects them).
    backend = get_backend(backend_name)
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + 0.5
    on = backend.asarray(a)
    assert tuple(on.shape) == shape, f"{backend_name}: asarray of shape {shape} gave {tuple(on.shape)}"
    back = backend.to_numpy(on)
    assert back.dtype == np.float32 and back.shape == shape and np.array_equal(back, a), backend_name


def test_explicit_cpu_device(backend_name):
    backend = get_backend(backend_name, device="cpu")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    on = backend.asarray(a)
    back = backend.to_numpy(on)
    assert back.dtype == np.float32 and np.array_equal(back, a), f"{backend_name}: host round trip"


# ---------------------------------------------------------------- gradients agree with the float64 reference

MODES = [
    pytest.param(name, mode, id=f"{name}-{mode}")
    for name in BACKEND_NAMES
    for mode in GRADIENT_MODES
    if not (name == "numpy" and mode == "autodiff")
]
SPECS = {"seed": {}, "seed-learnable-eps-spherical": {"learnable_epsilon": True, "spherical": True, "epsilon": 1e-3}}


@pytest.fixture(scope="module")
def grad_batch():
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8).reshape(16, 784)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    return images, labels


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize(("name", "mode"), MODES)
def test_loss_and_grad_match_numpy_float64(name, mode, spec_name, grad_batch):
    require_backend(name)
    spec = seed_spec(**SPECS[spec_name])
    images, labels = grad_batch
    init = init_mlp_numpy(spec, 0, np.float32)
    ref_loss, ref_grads = mlp_value_and_grad({k: v.astype(np.float64) for k, v in init.items()}, images, labels, spec)
    backend = get_backend(name, gradients=mode)
    assert backend.gradients == mode
    params = {k: backend.asarray(v) for k, v in init.items()}
    # JAX under jax.jit, as its training step runs (eager JAX dispatches op by op: slow);
    # MLX eagerly here (mx.compile of the training step is covered by tests/test_train.py).
    fn = backend.loss_and_grad(spec)
    fn = backend.compile(fn) if name == "jax" else fn
    loss, grads = fn(params, backend.asarray(images), backend.asarray(labels))
    label = f"{name}-{mode} float32 vs numpy float64 analytic ({spec_name}, batch 16)"
    assert float(to_numpy(loss)) == pytest.approx(float(ref_loss), rel=1e-5), label
    assert set(grads) == set(init), f"{label}: gradient names {sorted(grads)}"
    for k, ref in ref_grads.items():
        got = to_numpy(grads[k])
        assert got.dtype == np.float32 and got.size == ref.size, f"{label}: {k} {got.dtype} {got.shape}"
        # Shapes are held separately (test_asarray_keeps_shape_and_dtype): compare the values here.
        got = got.reshape(ref.shape)
        scale = float(np.max(np.abs(ref))) or 1.0
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 + 1e-5 * scale, err_msg=f"{label}: grad {k}")


def test_eval_step_sums_loss_and_counts_correct(backend_name, grad_batch):
    from yat_core.losses import count_correct, softmax_cross_entropy
    from yat_core.mlp import mlp_forward

    spec = seed_spec()
    images, labels = grad_batch
    init = init_mlp_numpy(spec, 0, np.float32)
    logits = mlp_forward({k: v.astype(np.float64) for k, v in init.items()}, images / 255.0, spec)
    backend = get_backend(backend_name)
    params = {k: backend.asarray(v) for k, v in init.items()}
    loss_sum, correct = backend.eval_step(spec)(params, backend.asarray(images), backend.asarray(labels))
    assert float(to_numpy(loss_sum)) == pytest.approx(16 * float(softmax_cross_entropy(logits, labels)), rel=1e-5)
    assert int(to_numpy(correct)) == int(count_correct(logits, labels)), backend_name
