"""Shared fixtures for the core tests: backends, a synthetic MNIST, tiny model specs.

Tests parametrised with ``backend_name`` get readable ids (``[torch]``,
``[mlx-float32]``, ...) and skip cleanly when that framework is not installed.
Nothing here touches the network or the real MNIST cache.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

# torch.compile costs ~20 s per graph on a 2-core machine: every test runs torch
# eagerly except the one that sets this back to "1" (tests/test_train.py).
os.environ["YAT_CORE_TORCH_COMPILE"] = "0"

#: How a skip for an absent framework reads (pytest.importorskip, require_backend, the tests' own).
FRAMEWORK_SKIP = re.compile(r"could not import|No module named|is not installed|needs [\w.]+$")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-frameworks",
        action="store_true",
        help="fail the run when a test is skipped because a framework is missing (nox -s tests)",
    )


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)


def _note_framework_skip(config: pytest.Config, report: Any) -> None:
    if report.skipped and config.getoption("--require-frameworks") and FRAMEWORK_SKIP.search(_skip_reason(report)):
        config.stash.setdefault(_SKIPPED_FRAMEWORKS, []).append(f"{report.nodeid}: {_skip_reason(report)}")


_SKIPPED_FRAMEWORKS = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    _note_framework_skip(item.config, outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    _note_framework_skip(collector.config, outcome.get_result())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``--require-frameworks`` a framework that is absent is a failure, not a skip."""
    missing = session.config.stash.get(_SKIPPED_FRAMEWORKS, [])
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"--require-frameworks: {len(missing)} skip(s) for an absent framework:", red=True)
            for line in missing[:20]:
                reporter.write_line(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


#: Backend name -> the import that must succeed for it to run.
BACKEND_FRAMEWORKS = {"numpy": "numpy", "torch": "torch", "jax": "jax", "mlx": "mlx.core"}
BACKEND_NAMES = tuple(BACKEND_FRAMEWORKS)


def framework_installed(name: str) -> bool:
    """Whether backend ``name``'s framework can be found (without importing it)."""
    module = BACKEND_FRAMEWORKS[name]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_backend(name: str) -> None:
    """Skip the calling test cleanly when backend ``name``'s framework is absent."""
    pytest.importorskip(BACKEND_FRAMEWORKS[name], reason=f"backend {name!r} needs {BACKEND_FRAMEWORKS[name]}")


@pytest.fixture(params=BACKEND_NAMES)
def backend_name(request: pytest.FixtureRequest) -> str:
    """Each backend in turn (``[numpy]``, ``[torch]``, ``[jax]``, ``[mlx]``); skipped if absent."""
    require_backend(request.param)
    return request.param


def namespace_for(name: str) -> Any:
    """The array namespace the core uses for backend ``name``."""
    require_backend(name)
    if name == "numpy":
        import array_api_compat.numpy as xp
    elif name == "torch":
        import array_api_compat.torch as xp
    elif name == "jax":
        import jax.numpy as xp
    else:
        from yat_core.namespaces.mlx import namespace as mlx_namespace

        xp = mlx_namespace()
    return xp


def to_numpy(a: Any) -> np.ndarray:
    """Any backend's array as a NumPy array (float64 kept, bfloat16 not expected)."""
    from yat_core.namespaces import to_numpy as _to_numpy

    return np.asarray(_to_numpy(a))


def make_tiny_mnist(n_train: int = 300, n_test: int = 100, seed: int = 0) -> SimpleNamespace:
    """MNIST-shaped synthetic data: uint8 images (n, 28, 28) and uint8 labels 0..9."""
    rng = np.random.default_rng(seed)
    return SimpleNamespace(
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n_train).astype(np.uint8),
        test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, n_test).astype(np.uint8),
        source="synthetic",
    )


def write_tiny_mnist(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """:func:`make_tiny_mnist` as the four IDX files of an MNIST folder (``--data-dir``); returns ``folder``."""
    from yat_core.data import IDX_FILES, write_idx

    data = make_tiny_mnist(n_train, n_test, seed)
    for key, name in IDX_FILES.items():
        write_idx(folder / name, getattr(data, key))
    return folder


@pytest.fixture(scope="session")
def tiny_mnist() -> SimpleNamespace:
    """300 training and 100 test images of random pixels (never the real data set)."""
    data = make_tiny_mnist()
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        getattr(data, name).setflags(write=False)  # shared by every test: nobody may change it
    return data


def tiny_spec(
    in_features: int = 6,
    hidden: tuple[int, ...] = (5, 4),
    classes: int = 3,
    *,
    relu_layer: bool = False,
    **yat_options: Any,
):
    """A small Yat MLP: ``Yat(in->h1) -> Yat(h1->h2) -> [Linear+ReLU(h2->h2)] -> Linear(->classes)``.

    ``yat_options`` (``bias``, ``alpha``, ``epsilon``, ``learnable_epsilon``,
    ``spherical``) apply to every Yat layer.
    """
    from yat_core.mlp import LayerSpec, MLPSpec

    sizes = (in_features, *hidden)
    layers = [LayerSpec("yat", a, b, **yat_options) for a, b in zip(sizes, sizes[1:])]
    if relu_layer:
        layers.append(LayerSpec("linear", sizes[-1], sizes[-1], activation="relu"))
    layers.append(LayerSpec("linear", sizes[-1], classes))
    return MLPSpec(tuple(layers))


@pytest.fixture
def make_spec():
    """The :func:`tiny_spec` builder, for tests that want several variants."""
    return tiny_spec
