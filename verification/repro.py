"""Rerun one check of the parity suite on one backend: the one-line reproduction
that every failure message prints.

Usage::

    python -m verification.repro CHECK BACKEND "CASE"
    python -m verification.repro headline BACKEND
    python -m verification.repro trajectory BACKEND [ci|thorough]

``CHECK`` is one of yat, yat-grad, yat-fd, mlp, mlp-grad, mlp-fd (gradients take
``name-mode`` backends such as ``torch-autodiff``), nonneg, orthogonal, equal-rows,
rows, permutation, dtype. ``CASE`` is the ``YatCase(...)`` / ``MLPCase(...)``
printed in the failure message. Exit status 0: the check passes; 1: it fails.
"""

from __future__ import annotations

import argparse
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


def _headline(backend: str) -> None:
    from verification import backends, headline

    if backend in backends.PROVIDERS:
        out = headline.forward_outputs([backend])
    else:
        out = headline.gradient_outputs([backend])
    ref = out[headline.ORACLE]
    for key in out[backend]:
        m = headline.metrics(out[backend][key], ref[key], ref[key])
        print(f"{key:>16}: headline {m['headline']:.3e}  max abs {m['max_abs']:.3e}  max rel {m['max_rel']:.3e}")
        assert m["headline"] < headline.TARGET, f"{key} above the target {headline.TARGET:g}"


def _trajectory(backend: str, profile_name: str) -> None:
    from verification import profiles, trajectory

    profile = profiles.PROFILES[profile_name]
    kwargs = dict(
        steps=profile.trajectory_steps, epochs=profile.trajectory_epochs, test_limit=profile.trajectory_test_limit
    )
    name, _, mode = backend.partition("-")
    ref = trajectory.run("numpy", "float64", gradients=None, **kwargs)
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
    parser = argparse.ArgumentParser(prog="python -m verification.repro", description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=CHECKS)
    parser.add_argument("backend")
    parser.add_argument("case", nargs="?", default=None, help="YatCase(...) or MLPCase(...); profile for trajectory")
    args = parser.parse_args(argv)
    try:
        if args.check == "headline":
            _headline(args.backend)
        elif args.check == "trajectory":
            _trajectory(args.backend, args.case or "ci")
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
