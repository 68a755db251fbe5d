"""``python -m benchmarks.worker``: one training run of a baseline model, in its own process.

The Yat model is timed through the real command line (``yat-core train``); this
worker runs the two baselines through the same :func:`yat_core.train.train` loop
and writes the same receipt:

- ``--model relu``: the network's shape with ``Linear + ReLU`` (the MLP) or
  ``Conv + ReLU`` (the CNN) on the same backend;
- ``--model nmn``: the published ``nmn`` package's layers for the backend's framework.

``--network {mlp,cnn}`` picks the seed MLP or the Yat CNN (as ``yat-core train
--model`` does), with that network's learning rate.

Exit status 0 with a receipt, or 3 with ``{"status": "n/a", "reason": ...}`` when
the model cannot run here (``nmn`` not installed); anything else is a failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "UNAVAILABLE"]

#: Exit status for "this comparison does not apply here" (not a failure).
UNAVAILABLE = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("relu", "nmn"), required=True)
    p.add_argument("--network", choices=("mlp", "cnn"), default="mlp", help="the seed MLP or the Yat CNN")
    p.add_argument("--backend", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--report", required=True, help="where to write the receipt (JSON)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one baseline training and write its receipt; returns the exit status."""
    args = _parser().parse_args(argv)
    from yat_core.receipts import write_json_atomic
    from yat_core.spec import MODELS
    from yat_core.train import TrainConfig, train

    config = TrainConfig(
        model=args.network,
        backend=args.backend,
        device=args.device,
        epochs=args.epochs,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
    )
    if args.model == "relu":
        receipt = train(config, spec=MODELS[args.network].relu(), progress=False, log=None)
    else:
        from benchmarks.nmn_runners import NmnUnavailable, make_nmn_runner
        from yat_core.backends import get_backend

        # The framework loads as the backend loads it (e.g. with an opt-in BLAS for MLX),
        # so nmn's layer runs on the same framework set-up as the backend it is compared with.
        get_backend(args.backend, args.device)

        try:
            factory = make_nmn_runner(args.backend)
        except NmnUnavailable as exc:
            write_json_atomic(args.report, {"status": "n/a", "reason": str(exc)})
            return UNAVAILABLE
        receipt = train(config, runner_factory=factory, progress=False, log=None)
    write_json_atomic(args.report, receipt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
