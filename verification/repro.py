"""Rerun one check of the parity suite on one backend: the one-line reproduction
that every failure message prints.

Usage::

    python -m verification.repro CHECK BACKEND "CASE"
    python -m verification.repro headline BACKEND [--model seed|cnn|cnn-relu|vit|vit-softmax]
    python -m verification.repro trajectory BACKEND [ci|thorough] [--model seed|cnn|vit]

``CHECK`` is one of yat, yat-grad, yat-fd, mlp, mlp-grad, mlp-fd (gradients take
``name-mode`` backends such as ``torch-autodiff``), nonneg, orthogonal, equal-rows,
rows, permutation, dtype. ``CASE`` is the ``YatCase(...)`` / ``MLPCase(...)``
printed in the failure message. ``headline`` takes a backend (``torch``, ``nn-keras``) or
a gradient id (``jax-autodiff``); ``trajectory`` a backend (``torch``, ``jax-analytic``) or,
for the CNN and the ViT, a framework's native model (``nn-tf``). Exit status 0: the check passes; 1: it
fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["main", "CHECKS"]


def _checks() -> dict[str, Callable[[str, Any], Any]]:
    from verification import checks, properties

    return {
        "yat": checks.check_yat,
        "yat-grad": checks.check_yat_grads,
        "yat-fd": checks.check_yat_fd,
        "mlp": checks.check_mlp,
        "mlp-grad": checks.check_mlp_grads,
        "mlp-fd": checks.check_mlp_fd,
        "nonneg": properties.check_non_negative_and_finite,
        "orthogonal": properties.check_orthogonal_zero,
        "equal-rows": lambda b, c: [properties.check_value_at_equal_rows(b, c, flag) for flag in (False, True)],
        "rows": properties.check_rows_independent,
        "permutation": properties.check_feature_permutation,
        "dtype": lambda b, c: [
            properties.check_dtype_shape_device(b, c, d, lead) for d in ("float32", "float64") for lead in ((), (2,))
        ],
    }


CHECKS = (
    "yat",
    "yat-grad",
    "yat-fd",
    "mlp",
    "mlp-grad",
    "mlp-fd",
    "nonneg",
    "orthogonal",
    "equal-rows",
    "rows",
    "permutation",
    "dtype",
    "headline",
    "trajectory",
)


def _headline(backend: str, model: str) -> None:
    from verification import backends, headline

    if backend in backends.PROVIDERS:
        out = headline.forward_outputs([backend], model)
    else:
        out = headline.gradient_outputs([backend], model)
    ref = out[headline.ORACLE]
    for key in out[backend]:
        m = headline.metrics(out[backend][key], ref[key], ref[key])
        print(f"{key:>20}: headline {m['headline']:.3e}  max abs {m['max_abs']:.3e}  max rel {m['max_rel']:.3e}")
        assert m["headline"] < headline.TARGET, f"{key} above the target {headline.TARGET:g}"


def _trajectory(backend: str, profile_name: str, model: str) -> None:
    from verification import profiles, trajectory

    steps, epochs, test_limit = profiles.PROFILES[profile_name].trajectory(model)
    kwargs = dict(steps=steps, epochs=epochs, test_limit=test_limit, model=model)
    ref = trajectory.run("numpy", "float64", gradients=None, **kwargs)
    if backend.startswith("nn-"):
        other = trajectory.run(None, "float32", gradients=None, framework=backend[3:], **kwargs)
    else:
        name, _, mode = backend.partition("-")
        other = trajectory.run(name, "float32", gradients=mode or None, **kwargs)
    for key, value in trajectory.compare_runs(ref, other).items():
        print(f"{key:>20}: {value}")


def _domain_note(check: str, case: Any) -> None:
    """Say so when a case lies outside the domain the suite's tests draw from."""
    from verification.cases import YatCase
    from verification.checks import in_float32_range, in_gradient_range

    if not isinstance(case, YatCase):
        return
    inside = in_gradient_range(case) if check in ("yat-grad", "yat-fd") else in_float32_range(case)
    if not inside:
        print(
            "note: this case is outside the checks' float32 domain (an intermediate overflows); "
            "the tests never draw it",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    # As the suite's conftest: one Keras backend, the one the TensorFlow runner needs.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    parser = argparse.ArgumentParser(prog="python -m verification.repro", description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=CHECKS)
    parser.add_argument("backend")
    parser.add_argument("case", nargs="?", default=None, help="YatCase(...) or MLPCase(...); profile for trajectory")
    parser.add_argument(
        "--model", default="seed", help="headline and trajectory: seed, cnn, vit (headline: cnn-relu, vit-softmax too)"
    )
    args = parser.parse_args(argv)
    try:
        if args.check == "headline":
            _headline(args.backend, args.model)
        elif args.check == "trajectory":
            _trajectory(args.backend, args.case or "ci", args.model)
        else:
            from verification.cases import parse_case

            if args.case is None:
                parser.error(f"{args.check} needs a case")
            case = parse_case(args.case)
            _domain_note(args.check, case)
            result = _checks()[args.check](args.backend, case)
            if result is not None:
                print(result)
    except AssertionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print("passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
