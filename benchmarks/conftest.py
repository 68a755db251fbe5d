"""pytest wiring of the benchmark suite: options, parametrisation, and the report at the end.

Options (all also settable in the environment where noted)::

    --bench-profile {quick,full}   what to time (env YAT_BENCH_PROFILE; default quick)
    --bench-model {all,mlp,cnn}    the networks to time: the seed MLP, the Yat CNN, or both
                                   (env YAT_BENCH_MODEL; default all)
    --bench-out DIR                where to write bench.json/.md/.png (default results/bench, or
                                   results/bench-quick; a one-network run adds -mlp or -cnn)
    --bench-backends a,b           time only these backends (env YAT_BENCH_BACKENDS)
    --bench-devices cpu,cuda       time only on these device kinds (env YAT_BENCH_DEVICES;
                                   default: the CPU and every GPU a backend sees)
    --bench-compare PATH           compare with a saved bench.json; slowdowns fail the run
    --bench-threshold FRACTION     what counts as slower (default 0.10)
    --bench-save-baseline          also copy this run to <out>/baseline.json
    --bench-in-process             time the steps of every backend in this process
                                   (default: one child pytest process per backend)

Tests run in this order: the matmul floor (of the seed MLP, measured when it is
timed), the step timings, the epoch timings; the floor is measured once more at the
end and the faster measurement kept.
A child process (``--bench-child=BACKEND/DEVICE``) runs only that backend's step
tests and hands its records back in a JSON file; it writes no report.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import QUICK_RESULTS_DIR, RESULTS_DIR
from benchmarks.devices import Target, discover
from benchmarks.profiles import NETWORKS, PROFILES, Profile, get_profile
from benchmarks.regress import DEFAULT_THRESHOLD
from yat_core._io import atomic_write_text

_COLLECTOR = pytest.StashKey["Any"]()
_REPORT = pytest.StashKey["list[str]"]()
_TABLES = pytest.StashKey["list[str]"]()
_ORDER = ("test_floor", "test_steps", "test_epochs")
#: Environment variable of ``--bench-model``.
MODEL_ENV_VAR = "YAT_BENCH_MODEL"
#: ``--bench-model`` choices: every network, or one.
MODEL_CHOICES = ("all", *NETWORKS)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("yat-core benchmarks")
    group.addoption(
        "--bench-profile",
        choices=tuple(PROFILES),
        default=None,
        help="benchmark profile (default: $YAT_BENCH_PROFILE or quick)",
    )
    group.addoption(
        "--bench-model",
        choices=MODEL_CHOICES,
        default=None,
        help="networks to time: the seed MLP, the Yat CNN or all (default: $YAT_BENCH_MODEL or all)",
    )
    group.addoption("--bench-out", default=None, help="folder for bench.json, bench.md, bench.png")
    group.addoption(
        "--bench-backends", default=None, help="comma-separated backends to time (default: every installed one)"
    )
    group.addoption(
        "--bench-devices",
        default=None,
        help="comma-separated device kinds to time on: cpu, cuda, gpu (default: every one a backend sees)",
    )
    group.addoption(
        "--bench-compare",
        default=None,
        metavar="PATH",
        help="saved bench.json to compare with; slowdowns beyond the threshold fail the run",
    )
    group.addoption(
        "--bench-threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="fraction slower that counts as a regression (default 0.10)",
    )
    group.addoption("--bench-save-baseline", action="store_true", help="also save this run as <out>/baseline.json")
    group.addoption(
        "--bench-in-process",
        action="store_true",
        help="time every backend's steps in this process instead of one process per backend",
    )
    group.addoption(
        "--bench-child", default=None, metavar="BACKEND/DEVICE", help="(internal) run only this target's step tests"
    )
    group.addoption(
        "--bench-child-out", default=None, metavar="PATH", help="(internal) where a child writes its step records"
    )


def _profile(config: pytest.Config) -> Profile:
    return get_profile(config.getoption("--bench-profile"))


def networks_of(choice: str | None) -> tuple[str, ...]:
    """The networks a ``--bench-model`` choice times (None: ``$YAT_BENCH_MODEL``, else all).

    Examples
    --------
    >>> networks_of("cnn"), networks_of("all")
    (('cnn',), ('mlp', 'cnn'))
    """
    choice = choice or os.environ.get(MODEL_ENV_VAR) or "all"
    if choice not in MODEL_CHOICES:
        raise pytest.UsageError(f"--bench-model must be one of {', '.join(MODEL_CHOICES)}, got {choice!r}")
    return NETWORKS if choice == "all" else (choice,)


def _networks(config: pytest.Config) -> tuple[str, ...]:
    return networks_of(config.getoption("--bench-model"))


def default_out_dir(profile: str, networks: tuple[str, ...]) -> Path:
    """Where a run writes unless told: one folder per profile, and per network when only one is timed
    (so a CNN-only run never overwrites the results of a run of both).

    Examples
    --------
    >>> str(default_out_dir("full", ("mlp", "cnn"))), str(default_out_dir("quick", ("cnn",)))
    ('results/bench', 'results/bench-quick-cnn')
    """
    base = RESULTS_DIR if profile == "full" else QUICK_RESULTS_DIR
    return base if set(networks) == set(NETWORKS) else base.with_name(f"{base.name}-{'-'.join(networks)}")


def _out_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("--bench-out")
    if chosen:
        return Path(chosen)
    return Path(config.rootpath) / default_out_dir(_profile(config).name, _networks(config))


def _wanted_backends(config: pytest.Config) -> tuple[str, ...] | None:
    text = config.getoption("--bench-backends") or os.environ.get("YAT_BENCH_BACKENDS")
    return tuple(b.strip() for b in text.split(",") if b.strip()) if text else None


def wanted_devices(config: pytest.Config) -> tuple[str, ...] | None:
    """The device kinds of ``--bench-devices`` (or ``$YAT_BENCH_DEVICES``); None: every one."""
    from benchmarks.devices import parse_devices

    try:
        return parse_devices(config.getoption("--bench-devices") or os.environ.get("YAT_BENCH_DEVICES"))
    except ValueError as exc:
        raise pytest.UsageError(f"--bench-devices: {exc}") from None


def targets(config: pytest.Config) -> list[Target]:
    """What this run times: the child's one target, or every backend and device wanted and present."""
    child = _child_target(config)
    return [child] if child else discover(_wanted_backends(config), wanted_devices(config))


def pytest_configure(config: pytest.Config) -> None:
    from benchmarks.regress import load_results
    from benchmarks.results import Collector

    # Fail on a bad option now, not after minutes of timing.
    baseline = config.getoption("--bench-compare")
    if baseline:
        try:
            load_results(baseline)
        except (OSError, ValueError) as exc:
            raise pytest.UsageError(f"--bench-compare: cannot use {baseline}: {exc}") from None
    if config.getoption("--bench-threshold") < 0:
        raise pytest.UsageError("--bench-threshold must be >= 0")
    wanted_devices(config)
    config.stash[_COLLECTOR] = Collector(_profile(config), _networks(config))
    config.stash[_REPORT] = []
    config.stash[_TABLES] = []


def _child_target(config: pytest.Config) -> Target | None:
    label = config.getoption("--bench-child")
    if not label:
        return None
    backend, _, device = label.partition("/")
    return Target(backend, device or "cpu")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise by what this machine has and what the profile asks for."""
    from benchmarks.epochs import EPOCH_MODELS
    from benchmarks.steps import step_cases

    config, names = metafunc.config, metafunc.fixturenames
    networks = _networks(config)
    # Names prefixed "bench_" so that ordinary test parameters never collide with them.
    if "bench_target" in names:
        found = targets(config)
        if "step_case" in names:
            # A step case depends on the backend (nmn has no NumPy layer): parametrise the pairs.
            pairs = [(t, c) for t in found for c in step_cases(_profile(config), networks, t.backend)]
            metafunc.parametrize(("bench_target", "step_case"), pairs, ids=[f"{t.label}-{c.id}" for t, c in pairs])
        else:
            metafunc.parametrize("bench_target", found, ids=[t.label for t in found])
    if "bench_network" in names:
        metafunc.parametrize("bench_network", networks)
    if "epoch_model" in names:
        metafunc.parametrize("epoch_model", EPOCH_MODELS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Steps run either here (a child, or --bench-in-process) or through a child per backend.
    direct = bool(config.getoption("--bench-child") or config.getoption("--bench-in-process"))
    unwanted = {"test_steps_in_own_process" if direct else "test_step"}
    if "mlp" not in _networks(config):
        unwanted.add("test_matmul_floor")  # the floor is the seed MLP's
    deselected = [item for item in items if getattr(item, "originalname", None) in unwanted]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]

    # Floor first (a quiet machine), then steps, then epochs; unit tests of the suite itself last.
    def rank(item: pytest.Item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        return _ORDER.index(module) if module in _ORDER else len(_ORDER)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def profile(pytestconfig: pytest.Config) -> Profile:
    """The active :class:`~benchmarks.profiles.Profile`."""
    return _profile(pytestconfig)


def floor_devices(config: pytest.Config) -> tuple[str, ...]:
    """Where the matmul floor is measured: the CPU always (the machine floor), and CUDA when timed there."""
    return ("cpu", "cuda") if any(t.device == "cuda" for t in targets(config)) else ("cpu",)


@pytest.fixture(scope="session")
def floor_on(pytestconfig: pytest.Config) -> tuple[str, ...]:
    """The device kinds of this run's matmul floor (:func:`floor_devices`)."""
    return floor_devices(pytestconfig)


@pytest.fixture(scope="session")
def collector(pytestconfig: pytest.Config) -> Any:
    """The run's :class:`~benchmarks.results.Collector`."""
    return pytestconfig.stash[_COLLECTOR]


@pytest.fixture(scope="session")
def child_tables(pytestconfig: pytest.Config) -> list[str]:
    """pytest-benchmark tables printed by the per-backend child processes, shown at the end."""
    return pytestconfig.stash[_TABLES]


@pytest.fixture(scope="session")
def mnist() -> Any:
    """MNIST, fetched into the cache before any timed run needs it (downloads are never timed)."""
    from yat_core.data import load_mnist

    return load_mnist(progress=False)


def _final_floor(config: pytest.Config, collector: Any) -> None:
    # A second measurement at the end: other processes only slow a measurement down,
    # so the faster of the two is kept.
    from benchmarks.floor import measure_floor

    if not collector.has_measurements() or "mlp" not in _networks(config):
        return
    try:
        collector.add_floor(measure_floor(repeats=_profile(config).floor_repeats, devices=floor_devices(config)))
    except Exception as exc:  # the report must still be written
        config.stash[_REPORT].append(f"floor measurement at the end failed: {exc}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the reports of everything measured, compare with a baseline, save one."""
    from benchmarks.regress import compare, format_comparison, load_results
    from benchmarks.report import derive, write_outputs

    config = session.config
    collector = config.stash[_COLLECTOR]
    child_out = config.getoption("--bench-child-out")
    if child_out:
        # A child hands its records to the parent, which writes the reports.
        atomic_write_text(child_out, json.dumps(collector.data["steps"]))
        return
    if not collector.has_measurements():
        return
    _final_floor(config, collector)
    document = collector.document()
    comparison = None
    baseline_path = config.getoption("--bench-compare")
    if baseline_path:
        comparison = compare(document, load_results(baseline_path), config.getoption("--bench-threshold"))
    results = derive(document, comparison)
    out_dir = _out_dir(config)
    paths = write_outputs(results, out_dir)
    lines = config.stash[_REPORT]
    lines += [f"benchmark results: {p}" for p in paths.values()]
    if config.getoption("--bench-save-baseline"):
        baseline = out_dir / "baseline.json"
        shutil.copyfile(paths["json"], baseline)
        lines.append(f"saved as the baseline: {baseline}")
    if comparison is not None:
        lines.append(format_comparison(comparison))
        if comparison["regressions"]:
            lines.append(
                f"REGRESSION CHECK FAILED: {len(comparison['regressions'])} metric(s) more than "
                f"{100 * comparison['threshold']:.0f}% slower than {baseline_path}"
            )
            if session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
    lines.append(_summary_table(results))


def _summary_table(results: dict[str, Any]) -> str:
    from benchmarks.report import cnn_tables, epoch_table

    lines = []
    if results["summary"]:
        lines += ["Seed MLP:", *epoch_table(results["summary"])]
    if results.get("cnn_summary"):
        lines += [""] if lines else []
        lines += ["Yat CNN (issue 9: Yat / Conv+ReLU step <= 1.5x, faster than nmn in the loop):"]
        lines += cnn_tables(results["cnn_summary"])
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tables = config.stash.get(_TABLES, [])
    if tables:
        terminalreporter.section("pytest-benchmark, one process per backend")
        for table in tables:
            terminalreporter.write_line(table)
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("yat-core benchmarks")
        for line in lines:
            terminalreporter.write_line(line)
