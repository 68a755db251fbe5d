"""pytest wiring of the parity suite: profiles, the zero-skip rule, the report.

Options (``python -m pytest verification --help``, group "parity"):

``--parity-profile {ci,thorough}``
    Hypothesis budget and training length (default ``ci``, or ``$YAT_PARITY_PROFILE``).
``--require-all-backends``
    A backend that is not installed is a failure, not a skip; any other skip too.
``--parity-results DIR``
    Where the report goes (default ``results/parity`` in the repository root).
``--no-parity-report``
    Write nothing.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from verification import backends, profiles
from verification.results import STORE

# One Keras backend for the whole session, chosen before anything imports Keras: the
# TensorFlow runner trains with tf.keras's optimizer, which needs this one.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "results" / "parity"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "yat-core parity suite")
    group.addoption(
        "--parity-profile",
        choices=sorted(profiles.PROFILES),
        default=os.environ.get("YAT_PARITY_PROFILE", "ci"),
        help="Hypothesis budget and training length (default: ci)",
    )
    group.addoption(
        "--require-all-backends",
        action="store_true",
        help="fail instead of skipping when a backend is not installed (nox -s parity)",
    )
    group.addoption(
        "--parity-results", default=str(DEFAULT_RESULTS), help="folder for parity.json, parity.md and loss_curves.png"
    )
    group.addoption("--no-parity-report", action="store_true", help="do not write the report")


def pytest_configure(config: pytest.Config) -> None:
    profile = profiles.select(config.getoption("--parity-profile"))
    STORE.meta.update(
        {
            "profile": profile.name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "device": backends.device(),  # of the PyTorch and JAX entries ($YAT_PARITY_DEVICE)
            "require_all_backends": bool(config.getoption("--require-all-backends")),
            "args": list(config.invocation_params.args),
        }
    )
    config._parity_t0 = time.perf_counter()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def require_backend(request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """``require_backend(name)`` loads a backend, or skips (fails under
    ``--require-all-backends``) naming what to install."""
    strict = request.config.getoption("--require-all-backends")

    def ensure(name: str) -> Any:
        name = backends.split_gradient_id(name)[0] if name not in backends.PROVIDERS else name
        try:
            return backends.load(name)
        except backends.ProviderMissing as exc:
            if strict:
                pytest.fail(f"{exc} (--require-all-backends)", pytrace=False)
            pytest.skip(str(exc))

    return ensure


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """Under ``--require-all-backends`` every skip is a failure: nothing may go unchecked."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and item.config.getoption("--require-all-backends"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but --require-all-backends forbids skips: {report.longrepr}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if config.getoption("--no-parity-report") or not session.testscollected or config.option.collectonly:
        return
    from verification import report

    STORE.meta["duration_s"] = round(time.perf_counter() - config._parity_t0, 1)  # type: ignore[attr-defined]
    STORE.meta["exit_status"] = int(exitstatus)
    STORE.meta["versions"] = report.versions()
    written = report.write(STORE, Path(config.getoption("--parity-results")))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"parity report: {', '.join(str(p) for p in written)}")
