"""Thread pools set up by yat-core for a run (yat_core.threads) and their record in the receipt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import make_tiny_mnist, require_backend
from threadpoolctl import threadpool_info

from yat_core.config import TrainConfig
from yat_core.runners import make_runner
from yat_core.threads import (
    LIBRARY_DEFAULT,
    YAT_CORE_DEFAULT,
    available_cores,
    configure_threads,
    restore_threads,
    thread_library,
)
from yat_core.train import train

CORES = available_cores()
USER_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "OMP_NUM_THREADS")


@pytest.fixture(autouse=True)
def no_user_thread_settings(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test starts without the user's thread variables and leaves every pool as it found it."""
    for name in (*USER_ENV, "PJRT_NPROC", "NPROC", "XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)
    yield
    restore_threads()


def numpy_blas_threads() -> list[int]:
    """The thread counts of the BLAS libraries NumPy's wheel bundles (skips where NumPy uses a system BLAS)."""
    counts = [
        lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas" and "numpy" in lib["filepath"]
    ]
    if not counts:
        pytest.skip("NumPy's BLAS is not one of its wheel's libraries here")
    return counts


def run_configure(library: str, env: dict[str, str], before: str = "") -> dict[str, Any]:
    """``configure_threads(library)`` in a fresh process started with ``env``; its record and BLAS threads before."""
    script = (
        "import json, numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from yat_core.threads import configure_threads\n"
        f"{before}\n"
        "blas = [lib['num_threads'] for lib in threadpool_info() if 'numpy' in lib['filepath']]\n"
        f"print(json.dumps({{'blas_before': blas, 'record': configure_threads({library!r})}}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in USER_ENV}
    out = subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_receipt_records_the_thread_pools():
    tiny = make_tiny_mnist(64, 16)
    receipt = train(TrainConfig(backend="numpy", epochs=1, batch_size=32), data=tiny, log=None, progress=False)
    threads = receipt["threads"]
    assert threads["library"] == "numpy" and threads["cores"] == CORES
    assert threads["numpy_blas"]["source"] == YAT_CORE_DEFAULT
    assert threads["numpy_blas"]["value"] == CORES  # the numpy backend computes with NumPy's BLAS: every core
    json.dumps(threads)  # receipts are JSON


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_numpy_blas_has_one_thread_while_another_library_trains(backend: str, monkeypatch: pytest.MonkeyPatch):
    require_backend(backend)
    before = numpy_blas_threads()
    seen: list[list[int]] = []

    def factory(spec: Any, config: TrainConfig) -> Any:
        runner = make_runner(spec, config)
        settle = runner.settle

        def settle_and_look(loss: Any) -> None:  # after every step or chunk of steps
            seen.append(numpy_blas_threads())
            settle(loss)

        monkeypatch.setattr(runner, "settle", settle_and_look)
        return runner

    receipt = train(
        TrainConfig(backend=backend, epochs=1, batch_size=32),
        data=make_tiny_mnist(70, 16),
        runner_factory=factory,
        log=None,
        progress=False,
    )
    assert seen and all(counts == [1] * len(before) for counts in seen), f"{backend}: NumPy's BLAS threads {seen}"
    assert receipt["threads"]["numpy_blas"] == {
        **receipt["threads"]["numpy_blas"],
        "value": 1,
        "source": YAT_CORE_DEFAULT,
    }
    assert numpy_blas_threads() == before, "train() gives NumPy's BLAS its threads back"


def test_the_limit_is_undone_when_a_run_fails():
    before = numpy_blas_threads()

    def failing(spec: Any, config: TrainConfig) -> Any:
        assert numpy_blas_threads() == [1] * len(before)
        raise RuntimeError("runner refused")

    with pytest.raises(RuntimeError, match="runner refused"):
        train(TrainConfig(backend="jax"), runner_factory=failing, log=None, progress=False)
    assert numpy_blas_threads() == before


def test_configure_is_idempotent_and_restore_undoes_it():
    before = numpy_blas_threads()
    first = configure_threads("jax")
    assert configure_threads("jax") == first
    assert numpy_blas_threads() == [1] * len(before)
    restore_threads()
    assert numpy_blas_threads() == before
    restore_threads()  # nothing left to undo: a no-op
    assert numpy_blas_threads() == before


def test_a_fresh_process_gets_the_defaults():
    out = run_configure("jax", {})
    assert out["record"]["numpy_blas"]["value"] == 1
    assert out["record"]["numpy_blas"]["source"] == YAT_CORE_DEFAULT
    assert out["record"]["xla"] == {"value": CORES, "source": LIBRARY_DEFAULT}


def test_the_users_blas_variable_is_respected():
    out = run_configure("jax", {"OPENBLAS_NUM_THREADS": "2"})
    blas = out["record"]["numpy_blas"]
    assert blas["source"] == "user environment (OPENBLAS_NUM_THREADS=2)"
    assert [blas["value"]] == out["blas_before"], "the user's BLAS threads are left as they are"


def test_the_users_torch_settings_are_respected():
    require_backend("torch")
    out = run_configure("torch", {"OMP_NUM_THREADS": "1"}, before="import torch; torch.set_num_interop_threads(3)")
    record = out["record"]
    assert record["torch_intra_op"] == {"value": 1, "source": "user environment (OMP_NUM_THREADS=1)"}
    assert record["torch_inter_op"]["value"] == 3
    assert record["torch_inter_op"]["source"].startswith("set in this process before the run")


def test_torch_set_num_threads_before_the_run_is_kept():
    require_backend("torch")
    import torch

    if CORES == 1:
        pytest.skip("one core: a user's setting cannot differ from the default")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = configure_threads("torch")
        assert record["torch_intra_op"] == {
            "value": 1,
            "source": "set in this process before the run (torch.set_num_threads)",
        }
        assert torch.get_num_threads() == 1
        # Whatever torch's inter-op pool did before this test, the record says what is in effect.
        assert record["torch_inter_op"]["value"] == torch.get_num_interop_threads()
    finally:
        torch.set_num_threads(previous)


def test_xla_records_the_users_pool_and_thread_flags(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PJRT_NPROC", "1")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false")
    assert configure_threads("jax")["xla"] == {
        "value": 1,
        "source": "user environment (PJRT_NPROC=1, XLA_FLAGS=--xla_cpu_multi_thread_eigen=false)",
    }


def test_setting_up_never_fails_a_run(monkeypatch: pytest.MonkeyPatch):
    import threadpoolctl

    def broken() -> None:
        raise OSError("cannot read the loaded libraries")

    monkeypatch.setattr(threadpoolctl, "ThreadpoolController", broken)
    record = configure_threads("nope")
    assert record["numpy_blas"] == {"value": None, "source": "not set up: OSError: cannot read the loaded libraries"}
    assert record["nope"]["source"] == "not set up: unknown library 'nope'"


@pytest.mark.parametrize(
    ("config", "library"),
    [
        (TrainConfig(backend="numpy"), "numpy"),
        (TrainConfig(backend="torch"), "torch"),
        (TrainConfig(framework="linen"), "jax"),
        (TrainConfig(framework="keras"), "jax"),
        (TrainConfig(framework="keras", keras_backend="tensorflow"), "tensorflow"),
        (TrainConfig(framework="tf"), "tensorflow"),
        (TrainConfig(framework="mlx"), "mlx"),
    ],
    ids=lambda v: v if isinstance(v, str) else (v.framework or v.backend),
)
def test_the_library_that_computes(config: TrainConfig, library: str):
    assert thread_library(config) == library


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_torch_runs_keep_freed_memory_for_reuse_unless_the_user_tuned_malloc():
    require_backend("torch")
    code = (
        "import json, sys\nfrom yat_core.threads import configure_threads\n"
        "json.dump(configure_threads('torch')['malloc'], sys.stdout)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    ours = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout)
    if os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
        assert ours == {"value": {"mmap_threshold": 64 << 20, "trim_threshold": 128 << 20}, "source": YAT_CORE_DEFAULT}
    else:
        assert ours["value"] is None
    env["MALLOC_TRIM_THRESHOLD_"] = "1000000"
    theirs = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout)
    assert theirs == {"value": None, "source": "user environment (MALLOC_TRIM_THRESHOLD_=1000000)"}
    assert "malloc" not in configure_threads("jax")
