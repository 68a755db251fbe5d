"""The ``yat-core`` command line: ``train``, ``data`` and ``backends``.

User errors (bad flags, missing data, an absent framework) end in one line on
stderr and a non-zero exit status; only bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from yat_core.errors import BackendUnavailableError, YatError

__all__ = ["main", "build_parser", "select_keras_backend"]

BACKEND_CHOICES = ("numpy", "torch", "jax", "mlx")
#: ``--framework`` choices: the framework-native layers of :mod:`yat_core.nn`.
FRAMEWORK_CHOICES = ("torch", "nnx", "linen", "mlx", "keras", "tf")
KERAS_BACKENDS = ("jax", "torch", "tensorflow")
DEFAULT_KERAS_BACKEND = "jax"
#: Distributions whose versions a Keras receipt adds, per Keras backend.
_KERAS_BACKEND_DISTRIBUTIONS = {"jax": ("jax", "jaxlib"), "torch": ("torch",),
                                "tensorflow": ("tensorflow", "tensorflow-cpu")}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and the tests)."""
    parser = argparse.ArgumentParser(
        prog="yat-core", description="Train and verify the Yat (ⵟ-product) MLP on any array backend."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = commands.add_parser("train", help="train the seed model on MNIST and write a JSON receipt")
    which = t.add_mutually_exclusive_group()
    which.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                       help="array backend for the core model (default: the first installed of jax, torch, "
                            "mlx, numpy)")
    which.add_argument("--framework", choices=FRAMEWORK_CHOICES, default=None,
                       help="train the framework's native model with its own optimizer instead of the core "
                            "on a backend")
    t.add_argument("--keras-backend", choices=KERAS_BACKENDS, default=None,
                   help=f"backend of --framework keras (default: {DEFAULT_KERAS_BACKEND}; "
                        "sets KERAS_BACKEND for this run)")
    t.add_argument("--device", default=None, help="device, e.g. cpu, cuda, cuda:1, gpu (default: the backend's)")
    t.add_argument("--gradients", choices=("autodiff", "analytic"), default=None,
                   help="the framework's autodiff or the core's analytic backward pass "
                        "(default: the faster on that backend; both agree to rounding)")
    t.add_argument("--epochs", type=_positive_int, default=3)
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=_positive_float, default=3e-4)
    t.add_argument("--weight-decay", type=_non_negative_float, default=0.01)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    t.add_argument("--data-dir", default=None,
                   help="folder with the four MNIST IDX files (raw or .gz); default: cache, then download")
    t.add_argument("--train-limit", type=_positive_int, default=None, help="train on the first N images only")
    t.add_argument("--test-limit", type=_positive_int, default=None, help="evaluate on the first N test images only")
    t.add_argument("--report", default=None, help="receipt path (default: receipts/train-<backend>-<time>.json)")
    t.add_argument("--export", default=None, metavar="PATH",
                   help="also write the trained parameters to PATH as .npz (core names and layouts; "
                        "any framework's import_params reads it)")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")

    d = commands.add_parser("data", help="fetch MNIST into the cache (or check a folder) and verify it")
    d.add_argument("--data-dir", default=None, help="check this folder's IDX files instead of the cache")

    commands.add_parser("backends", help="list the backends and whether their framework is installed")
    return parser


def select_keras_backend(name: str) -> None:
    """Make Keras start on backend ``name``; call before anything imports Keras.

    Keras reads ``KERAS_BACKEND`` once, when it is first imported, so a process
    that already imported it with another backend cannot switch.

    Raises
    ------
    BackendUnavailableError
        If Keras is already imported with a different backend.

    Examples
    --------
    >>> select_keras_backend("jax")  # doctest: +SKIP
    >>> os.environ["KERAS_BACKEND"]  # doctest: +SKIP
    'jax'
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        active = keras.config.backend()
        if active != name:
            raise BackendUnavailableError(
                f"Keras was already imported in this process with backend {active!r}; it cannot switch to "
                f"{name!r}. Run in a fresh process (e.g. KERAS_BACKEND={name} yat-core train ...)"
            )
    os.environ["KERAS_BACKEND"] = name


def _check_train_args(args: argparse.Namespace) -> None:
    # Combinations argparse cannot express; the messages name the flags.
    if args.keras_backend is not None and args.framework != "keras":
        raise ValueError("--keras-backend applies to --framework keras only")
    if args.gradients is not None and args.framework is not None:
        raise ValueError("--gradients applies to --backend runs; a --framework run uses the framework's autodiff")
    if args.export is not None:
        # Refuse an impossible destination before training, not after.
        target = Path(args.export)
        if target.is_dir():
            raise ValueError(f"--export {target}: is a folder; give a file name, e.g. {target / 'weights.npz'}")
        parent = next((p for p in target.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ValueError(f"--export {target}: {parent} is not a folder")


def _runner_factory(args: argparse.Namespace, keep: list[Any]) -> tuple[Callable[..., Any], str]:
    """The runner factory for ``train`` (remembering each runner in ``keep``) and the run's name."""
    from yat_core.backends import get_backend
    from yat_core.train import CoreRunner, default_backend

    if args.framework is None:
        backend = args.backend or default_backend()

        def make_core(spec: Any, config: Any) -> Any:
            return CoreRunner(get_backend(config.backend, config.device, config.gradients), spec, config)

        make, name = make_core, backend
    else:
        from yat_core.nn import get_framework

        if args.framework == "keras":
            select_keras_backend(args.keras_backend or DEFAULT_KERAS_BACKEND)
        module = get_framework(args.framework)
        make, name = module.make_runner, args.framework

    def factory(spec: Any, config: Any) -> Any:
        runner = make(spec, config)
        keep.append(runner)
        return runner

    return factory, name


def _framework_facts(args: argparse.Namespace, runner: Any) -> dict[str, Any]:
    """What a receipt adds for a ``--framework`` run: the framework, Keras's backend, more versions."""
    from yat_core.receipts import versions

    if args.framework is None:
        return {"framework": None}
    facts: dict[str, Any] = {"framework": args.framework}
    module = sys.modules.get(type(runner).__module__)
    extra = tuple(getattr(module, "DISTRIBUTIONS", ()))
    if args.framework == "keras":
        facts["keras_backend"] = args.keras_backend or DEFAULT_KERAS_BACKEND
        extra += _KERAS_BACKEND_DISTRIBUTIONS[facts["keras_backend"]]
    facts["extra_versions"] = versions(*extra)
    return facts


def _export(runner: Any, path: str) -> str:
    from yat_core.mlp import seed_spec
    from yat_core.nn.interchange import check_params, save_npz

    exporter = getattr(runner, "export_params", None)
    if exporter is None:
        raise BackendUnavailableError(f"the {runner.name!r} runner cannot export its parameters")
    # `yat-core train` always trains the seed model: hold every framework's export to it.
    return str(save_npz(path, check_params(exporter(), seed_spec())))


def _cmd_train(args: argparse.Namespace) -> int:
    from yat_core.receipts import default_receipt_path, write_json_atomic
    from yat_core.train import TrainConfig, train

    _check_train_args(args)
    runners: list[Any] = []
    factory, name = _runner_factory(args, runners)
    config = TrainConfig(
        backend=name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, seed=args.seed, device=args.device, gradients=args.gradients,
        dtype=args.dtype,
        data_dir=args.data_dir, train_limit=args.train_limit, test_limit=args.test_limit,
    )
    log = None if args.quiet else print
    if log:
        what = f"framework {name!r} (native model)" if args.framework else f"backend {name!r}"
        log(f"yat-core: training the seed model with {what} "
            f"({config.epochs} epochs, batch {config.batch_size}, AdamW lr {config.lr}, seed {config.seed})")
    receipt = train(config, progress=not args.quiet, log=log, runner_factory=factory)
    runner = runners[-1]
    facts = _framework_facts(args, runner)
    receipt["versions"].update(facts.pop("extra_versions", {}))
    receipt.update(facts)
    if args.export:
        receipt["export"] = _export(runner, args.export)
    path = write_json_atomic(args.report or default_receipt_path(f"train-{name}"), receipt)
    print(f"final test accuracy {100 * receipt['final_test_acc']:.2f}% on {receipt['n_test']:,} images; "
          f"{receipt['total_s']:.1f} s in all; receipt: {path}"
          + (f"; parameters: {receipt['export']}" if args.export else ""))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from yat_core.data import load_mnist

    data = load_mnist(args.data_dir, progress=True)
    print(f"MNIST ok: {len(data.train_labels):,} training and {len(data.test_labels):,} test images "
          f"from {data.source}")
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    from yat_core.backends import BACKENDS, available_backends

    installed = set(available_backends())
    for name, entry in BACKENDS.items():
        status = "installed" if name in installed else f"missing: pip install 'yat-core[{entry.extra}]'"
        print(f"{name:6s} {status}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler = {"train": _cmd_train, "data": _cmd_data, "backends": _cmd_backends}[args.command]
    try:
        return handler(args)
    except (YatError, ValueError, OSError) as exc:
        print(f"yat-core: error: {exc or exc.__class__.__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("yat-core: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
