"""The yat-core benchmark suite: step timing, epoch timing, baselines and the FLOP floor.

Run it (``nox -s bench`` runs the full profile)::

    python -m benchmarks            # full profile: the judged numbers, ~10 min on 2 quiet cores
    python -m benchmarks --quick    # quick profile: a smoke run for CI, ~2 min
    pytest benchmarks --bench-profile=full   # the same under plain pytest

It writes ``bench.json``, ``bench.md`` and ``bench.png`` into ``results/bench``
(``results/bench-quick`` for the quick profile). ``python -m benchmarks render |
compare | save-baseline`` work on saved runs; see ``benchmarks/README.md``.

The library modules import no framework at import time; each framework is
imported only when a backend that needs it is timed.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "RESULTS_DIR", "QUICK_RESULTS_DIR"]

#: The repository root (the parent of this package): subprocesses run from here.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where the full profile writes its results (named in the README).
RESULTS_DIR = Path("results") / "bench"
#: Where the quick profile writes, so a CI smoke run never overwrites the judged results.
QUICK_RESULTS_DIR = Path("results") / "bench-quick"
