"""The yat-core benchmark suite: step timing, epoch timing, baselines and the FLOP floor.

It times the seed MLP and the Yat CNN (``--model {all,mlp,cnn}``, default both), each
against its same-shape ReLU twin and nmn's layers of the same framework. Run it
(``nox -s bench`` runs the full profile)::

    python -m benchmarks            # full profile: the judged numbers
    python -m benchmarks --quick    # quick profile: a smoke run for CI
    python -m benchmarks --model cnn          # the Yat CNN only
    pytest benchmarks --bench-profile=full   # the same under plain pytest

It writes ``bench.json``, ``bench.md`` and ``bench.png`` into ``results/bench``
(``results/bench-quick`` for the quick profile; ``-mlp`` or ``-cnn`` appended when
only one network is timed). ``python -m benchmarks render |
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
