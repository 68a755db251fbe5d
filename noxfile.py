"""Sessions: ``tests`` (unit and integration), ``parity`` (numeric verification), ``bench``.

Each session installs what it needs into its own virtualenv, with the framework
versions pinned by ``constraints.txt``. Pass options to pytest after ``--``, e.g.
``nox -s parity -- --parity-profile=thorough`` or ``nox -s bench -- --quick``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "parity"]
nox.options.error_on_missing_interpreters = True

CONSTRAINTS = ("-c", "constraints.txt")
# Every framework the project supports; the parity session fails if one is missing.
ALL_EXTRAS = ".[torch,jax,mlx,flax,keras,tf,test]"


def _install(session: nox.Session, target: str) -> None:
    session.install("-e", target, *CONSTRAINTS)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests, every framework installed (about 5-10 min on 2 cores)."""
    _install(session, ALL_EXTRAS)
    session.run("pytest", "tests", "-q", *session.posargs)
    # The benchmark suite's own logic (FLOP count, regression check, report), seconds.
    session.run("pytest", "benchmarks/test_suite.py", "-q", "-p", "no:cacheprovider")


@nox.session
def parity(session: nox.Session) -> None:
    """Numeric parity of every backend against the float64 oracle; fails on any skip."""
    _install(session, ALL_EXTRAS)
    session.run("python", "-m", "pytest", "verification", "-p", "no:cacheprovider",
                "--require-all-backends", "--parity-profile=ci", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Step and epoch timings per backend, baselines, report in results/bench/.

    ``-- --quick`` is the short CI profile (results/bench-quick/);
    ``-- --compare results/bench/baseline.json`` fails on slowdowns.
    """
    _install(session, ".[torch,jax,mlx,flax,bench,nmn]")
    session.run("python", "-m", "benchmarks", *session.posargs)
