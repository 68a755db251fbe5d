"""``python -m yat_core`` is the ``yat-core`` command."""

from yat_core.cli import run

run()
