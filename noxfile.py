"""Sessions: ``lint`` (ruff, mypy), ``tests`` (unit, integration, doctests), ``parity``, ``docs``, ``bench``.

Each session installs what it needs into its own virtualenv, with the framework
versions pinned by ``constraints.txt``. Pass options to pytest after ``--``, e.g.
``nox -s parity -- --parity-profile=thorough`` or ``nox -s bench -- --quick``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests", "parity", "docs"]
nox.options.error_on_missing_interpreters = True

CONSTRAINTS = ("-c", "constraints.txt")
# Every framework the project supports; the tests and parity sessions fail if one is missing.
ALL_EXTRAS = ".[torch,jax,mlx,flax,keras,tf,test,onnx,safetensors]"
PARITY_EXTRAS = ".[torch,jax,mlx,flax,keras,tf,test,nmn,onnx]"
# Doctests of the TensorFlow runner need Keras on its tensorflow backend; every other module runs on jax.
TF_DOCTESTS = ("yat_core/runners/tf.py",)


def _install(session: nox.Session, target: str) -> None:
    session.install("-e", target, *CONSTRAINTS)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) over the repository, mypy over ``yat_core`` (about 1 min)."""
    session.install("-e", ".[lint]", *CONSTRAINTS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests and the docstring examples, every framework installed (about 10 min)."""
    _install(session, ALL_EXTRAS)
    session.run("pytest", "tests", "-q", "--require-frameworks", *session.posargs)
    # The benchmark suite's own logic (FLOP count, regression check, report), seconds.
    session.run(
        "pytest",
        "benchmarks/test_suite.py",
        "benchmarks/test_attention_bench.py",
        "benchmarks/test_scaling.py",
        "benchmarks/test_stability.py",
        "benchmarks/test_parallel_bench.py",
        "-q",
        "-p",
        "no:cacheprovider",
    )
    ignore = [f"--ignore={path}" for path in TF_DOCTESTS]
    session.run(
        "pytest", "--doctest-modules", "yat_core", "-q", "-p", "no:cacheprovider", *ignore, env={"KERAS_BACKEND": "jax"}
    )
    session.run(
        "pytest", "--doctest-modules", *TF_DOCTESTS, "-q", "-p", "no:cacheprovider", env={"KERAS_BACKEND": "tensorflow"}
    )


@nox.session
def parity(session: nox.Session) -> None:
    """Numeric parity of every backend against the float64 oracle; fails on any skip.

    The published ``nmn`` package is installed too: its convolutions are compared with ours.
    """
    _install(session, PARITY_EXTRAS)
    session.run(
        "python",
        "-m",
        "pytest",
        "verification",
        "-p",
        "no:cacheprovider",
        "--require-all-backends",
        "--parity-profile=ci",
        *session.posargs,
    )


@nox.session
def docs(session: nox.Session) -> None:
    """The API reference from the docstrings (Sphinx), warnings as errors, and its pages' examples (about 2 min).

    Every framework is installed: autodoc imports each ``yat_core.nn`` module. HTML in docs/_build/html/.
    """
    _install(session, ".[all,docs]")
    env = {"KERAS_BACKEND": "jax"}
    # -E: read every page afresh, so a warning of an earlier run is never hidden by a cached page.
    strict = ("-W", "--keep-going", "-E")
    session.run("sphinx-build", *strict, "-b", "html", "docs", "docs/_build/html", *session.posargs, env=env)
    session.run("sphinx-build", *strict, "-b", "doctest", "docs", "docs/_build/doctest", env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """Step and epoch timings per backend, baselines, report in results/bench/; then the scaling sweep and
    the stability rounds (fresh 3-epoch runs per backend beside the floors) and data-parallel throughput.

    ``-- --quick`` is the short CI profile (results/bench-quick/, results/bench-scaling-quick/,
    results/bench-stability-quick/, results/bench-parallel-quick/);
    ``-- --compare results/bench/baseline.json`` fails on slowdowns.
    """
    _install(session, ".[torch,jax,mlx,flax,bench,nmn]")
    session.run("python", "-m", "benchmarks", *session.posargs)
    # How cost grows over batch size and width: results/bench-scaling[-quick]/.
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run("python", "-m", "benchmarks.scaling", *quick)
    # Issue 13's judgement: 5 fresh `yat-core train --epochs 3` per backend: results/bench-stability[-quick]/.
    session.run("python", "-m", "benchmarks.stability", *quick)
    # Data-parallel throughput, 1 against 2 processes/devices: results/bench-parallel[-quick]/.
    session.run("python", "-m", "benchmarks.parallel", *quick)
