"""The numeric verification suite of yat-core (``nox -s parity``).

Every backend's float32 ⵟ-product, Yat MLP and gradients are checked against a
float64 NumPy oracle (:mod:`verification.oracle`) under a stated floating-point
error model (:mod:`verification.error_model`, derived in ``ERROR_MODEL.md``), on
inputs Hypothesis draws (:mod:`verification.cases`). The backends under test form
one registry (:mod:`verification.backends`); the results of a session are written
to ``results/parity/`` (:mod:`verification.report`).

Run it from the repository root::

    python -m pytest verification -p no:cacheprovider --parity-profile=ci --require-all-backends
"""

from __future__ import annotations
