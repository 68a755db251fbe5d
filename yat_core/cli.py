"""The ``yat-core`` command line: ``train``, ``compare``, ``report``, ``export-onnx``, ``data`` and ``backends``.

User errors (bad flags, missing data, an absent framework) end in one line on
stderr and a non-zero exit status; only bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from yat_core._io import check_writable
from yat_core.backends import BACKENDS, GRADIENT_MODES
from yat_core.config import DEVICES_MAX, EPOCHS_MAX, SEED_MAX, SIZE_MAX, float_problem, int_problem
from yat_core.errors import YatError
from yat_core.runners import DEFAULT_KERAS_BACKEND, FRAMEWORK_RUNNERS, KERAS_BACKENDS
from yat_core.spec import MODELS

__all__ = ["main", "build_parser"]

# The choices come from the registries; importing them loads no framework.
BACKEND_CHOICES = tuple(BACKENDS)
FRAMEWORK_CHOICES = tuple(FRAMEWORK_RUNNERS)


def _int_option(low: int, high: int) -> Any:
    """An argparse type: an integer in ``[low, high]`` (argparse's error names the flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        problem = int_problem(value, low, high)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _float_option(*, positive: bool) -> Any:
    """An argparse type: a finite number, > 0 when ``positive``, else >= 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        problem = float_problem(value, positive=positive)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _path_option(text: str) -> str:
    """An argparse type: a path that is not empty (an empty one would silently mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; give a file or folder name")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"a path cannot hold a NUL character, got {text!r}")
    return text


# One implementation of every numeric flag's bounds (yat_core.config), for train and compare alike.
_EPOCHS = _int_option(1, EPOCHS_MAX)
_SIZE = _int_option(1, SIZE_MAX)
_SEED = _int_option(0, SEED_MAX)
_LR = _float_option(positive=True)
_WEIGHT_DECAY = _float_option(positive=False)
_BOUNDS_HELP = (
    f"epochs 1..{EPOCHS_MAX:,}; batch size and limits 1..{SIZE_MAX:,} (larger than the training set: the whole "
    f"set); seed 0..{SEED_MAX:,} (what every framework accepts); lr finite > 0; weight decay finite >= 0"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and the tests)."""
    parser = argparse.ArgumentParser(
        prog="yat-core",
        description="Train, compare and report Yat (ⵟ-product) models on any array backend or framework.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = commands.add_parser(
        "train", help="train the seed model on MNIST and write a JSON receipt", epilog=f"Bounds: {_BOUNDS_HELP}."
    )
    which = t.add_mutually_exclusive_group()
    which.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="array backend for the core model (default: the first installed of jax, torch, mlx, numpy)",
    )
    which.add_argument(
        "--framework",
        choices=FRAMEWORK_CHOICES,
        default=None,
        help="train the framework's native model with its own optimizer instead of the core on a backend",
    )
    t.add_argument(
        "--keras-backend",
        choices=KERAS_BACKENDS,
        default=None,
        help=f"backend of --framework keras (default: {DEFAULT_KERAS_BACKEND}; sets KERAS_BACKEND for this run)",
    )
    _add_recipe_arguments(t, device_help="device, e.g. cpu, cuda, cuda:1, gpu (default: the backend's)")
    t.add_argument("--weight-decay", type=_WEIGHT_DECAY, default=0.01, help="AdamW weight decay, >= 0 (default: 0.01)")
    t.add_argument(
        "--gradients",
        choices=GRADIENT_MODES,
        default=None,
        help="the framework's autodiff or the core's analytic backward pass "
        "(default: the faster on that backend; both agree to rounding)",
    )
    t.add_argument(
        "--report",
        type=_path_option,
        default=None,
        help="receipt path (default: receipts/train-<backend>-<time>.json)",
    )
    t.add_argument(
        "--export",
        type=_path_option,
        default=None,
        metavar="PATH",
        help="also write the trained parameters to PATH, atomically: PATH.safetensors (with the model, so "
        "the file alone rebuilds it in any framework) or PATH.npz (parameters only); core names and layouts",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    _add_jax_parallel_arguments(t)

    d = commands.add_parser("data", help="fetch MNIST into the cache (or check a folder) and verify it")
    d.add_argument("--data-dir", default=None, help="check this folder's IDX files instead of the cache")

    commands.add_parser("backends", help="list the backends and whether their framework is installed")
    _add_compare_parsers(commands)
    _add_onnx_parser(commands)
    return parser


def _add_recipe_arguments(parser: argparse.ArgumentParser, *, device_help: str) -> None:
    """The recipe's arguments, shared by ``train`` and ``compare``: model, epochs, sizes, AdamW, seed, data."""
    parser.add_argument(
        "--model",
        choices=tuple(MODELS),
        default="mlp",
        help="mlp: the seed model (784-256-128-10); cnn: the Yat CNN (two 3x3 Yat convolutions with "
        "max-pooling, Yat 1600->128, Linear 10); vit: the Yat vision transformer",
    )
    parser.add_argument("--device", default=None, help=device_help)
    parser.add_argument("--epochs", type=_EPOCHS, default=3, help=f"training epochs, 1..{EPOCHS_MAX:,} (default: 3)")
    parser.add_argument(
        "--batch-size",
        type=_SIZE,
        default=128,
        help="samples per step (default: 128); larger than the training set: one step of the whole set",
    )
    parser.add_argument(
        "--lr",
        type=_LR,
        default=None,
        help="AdamW learning rate, > 0 (default: the model's: "
        + ", ".join(f"{name} {recipe.lr:g}" for name, recipe in MODELS.items())
        + ")",
    )
    parser.add_argument("--seed", type=_SEED, default=0, help=f"0..{SEED_MAX:,}, the range every framework accepts")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder with the four MNIST IDX files (raw or .gz); default: cache, then download",
    )
    parser.add_argument("--train-limit", type=_SIZE, default=None, help="train on the first N images only")
    parser.add_argument("--test-limit", type=_SIZE, default=None, help="evaluate on the first N test images only")


def _add_jax_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--devices`` and the ``jax.distributed`` options (:mod:`yat_core.parallel.jax`)."""
    g = parser.add_argument_group(
        "several devices and processes (JAX)",
        "JAX runs split every batch over --devices N devices of each process; processes started with "
        "--coordinator HOST:PORT --num-processes P --process-id I (one per machine, I = 0..P-1) join into one "
        "mesh; process 0 prints and writes the receipt. PyTorch runs use torchrun instead.",
    )
    g.add_argument(
        "--devices",
        type=_int_option(1, DEVICES_MAX),
        default=1,
        metavar="N",
        help="devices of this process each batch is split over (default: 1); on CPU, N host devices",
    )
    g.add_argument(
        "--coordinator", default=None, metavar="HOST:PORT", help="process 0's address, the same for every process"
    )
    g.add_argument("--num-processes", type=_int_option(1, DEVICES_MAX), default=None, metavar="P")
    g.add_argument("--process-id", type=_int_option(0, DEVICES_MAX - 1), default=None, metavar="I")


def _start_jax_processes(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` from the flags, before anything starts JAX; nothing without them."""
    given = [args.coordinator is not None, args.num_processes is not None, args.process_id is not None]
    if not any(given):
        return
    if not all(given):
        raise ValueError("several JAX processes need all three of --coordinator, --num-processes and --process-id")
    from yat_core.parallel.jax import initialize_processes

    initialize_processes(args.coordinator, args.num_processes, args.process_id)


def _add_onnx_parser(commands: Any) -> None:
    o = commands.add_parser(
        "export-onnx",
        help="write a trained model as ONNX (input: float32 (N, *input shape), pixels in [0, 1]) and check it "
        "with onnxruntime on the MNIST test images",
    )
    o.add_argument(
        "--weights",
        type=_path_option,
        required=True,
        metavar="FILE",
        help="parameters in the core's names: .safetensors (holds its model) or .npz (needs --model)",
    )
    o.add_argument("--out", type=_path_option, required=True, metavar="PATH", help="the .onnx file to write")
    o.add_argument(
        "--model",
        choices=tuple(MODELS),
        default=None,
        help="the model the weights are for (required for .npz; for .safetensors, checked against the file's)",
    )
    o.add_argument(
        "--baseline", action="store_true", help="the model's ReLU / softmax baseline instead of the Yat model"
    )
    o.add_argument("--opset", type=_SIZE, default=None, help="ONNX opset (default: 17; at least 13)")
    o.add_argument(
        "--check-images",
        type=_int_option(0, SIZE_MAX),
        default=10_000,
        metavar="N",
        help="compare onnxruntime with the core on the first N MNIST test images (default: all 10,000; 0: skip)",
    )
    o.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (default: cache, then download)")


def _add_compare_parsers(commands: Any) -> None:
    c = commands.add_parser(
        "compare",
        help="train one recipe in every framework and backend (each in its own process) and compare the receipts",
        epilog=f"Bounds: {_BOUNDS_HELP}.",
    )
    _add_recipe_arguments(c, device_help="device for every run (default: each one's own)")
    c.add_argument(
        "--frameworks",
        nargs="*",
        choices=FRAMEWORK_CHOICES,
        default=None,
        metavar="NAME",
        help=f"frameworks whose native model to train (default: all of {', '.join(FRAMEWORK_CHOICES)}; "
        "the flag alone: none); one not installed is a row that says so",
    )
    c.add_argument(
        "--backends",
        nargs="*",
        choices=BACKEND_CHOICES,
        default=None,
        metavar="NAME",
        help=f"backends to train the core model on (default: all of {', '.join(BACKEND_CHOICES)}; the flag alone: none)",
    )
    c.add_argument(
        "--keras-backends",
        nargs="+",
        choices=KERAS_BACKENDS,
        default=[DEFAULT_KERAS_BACKEND],
        metavar="NAME",
        help=f"one Keras run per backend named (default: {DEFAULT_KERAS_BACKEND}; choices: {', '.join(KERAS_BACKENDS)})",
    )
    c.add_argument(
        "--out",
        type=_path_option,
        default=None,
        help="folder for the report, with the runs' receipts and logs in its runs/ (default: results/compare-<model>)",
    )

    r = commands.add_parser("report", help="rebuild the comparison tables and loss-curve plot from receipts alone")
    r.add_argument("receipts", nargs="+", metavar="RECEIPT", help="training receipts (JSON) to compare")
    r.add_argument(
        "--out",
        type=_path_option,
        default=None,
        help="write report.md, report.json and loss_curves.png into this folder (default: print)",
    )
    r.add_argument("--mixed-models", action="store_true", help="allow receipts of different models in one report")


def _distinct(outputs: Sequence[tuple[str, Path]], inputs: Sequence[tuple[str, Path]] = ()) -> None:
    """Refuse two outputs (or an output and an input) that are one file: one would overwrite the other."""
    seen: list[tuple[str, Path]] = []
    for flag, path in [*inputs, *outputs]:
        resolved = Path(os.path.realpath(path))  # not Path.resolve: a symlink loop is a RuntimeError there
        for other_flag, other in seen:
            if resolved == other:
                raise ValueError(f"{flag} {path}: the same file as {other_flag}; one would overwrite the other")
        seen.append((flag, resolved))


def _check_train_outputs(args: argparse.Namespace, default_report: Path) -> Path:
    """The receipt path, after checking it and --export for writability and distinctness."""
    report = check_writable("--report", args.report if args.report is not None else default_report, folder=False)
    outputs = [("--report", report)]
    if args.export is not None:
        export = check_writable("--export", args.export, folder=False)
        if export.suffix.lower() not in (".safetensors", ".npz"):
            raise ValueError(f"--export {export}: name the file *.safetensors or *.npz (the suffix picks the format)")
        outputs.append(("--export", export))
    _distinct(outputs)
    return report


def _config(args: argparse.Namespace) -> Any:
    from yat_core.optim import AdamWConfig
    from yat_core.train import TrainConfig

    config = TrainConfig(
        model=args.model,
        backend=args.backend,
        framework=args.framework,
        keras_backend=args.keras_backend,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=AdamWConfig(lr=MODELS[args.model].lr if args.lr is None else args.lr, weight_decay=args.weight_decay),
        seed=args.seed,
        device=args.device,
        gradients=args.gradients,
        dtype=args.dtype,
        data_dir=args.data_dir,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        devices=getattr(args, "devices", 1),
    )
    config.validate()
    return config


def _check_torchrun(config: Any) -> None:
    """Refuse a run that cannot join the torchrun launch that started this process (several processes)."""
    from yat_core.parallel import torchrun_launch

    launch = torchrun_launch()
    if launch is None or launch.world_size == 1:
        return
    name = config.framework or config.resolved_backend()
    if config.framework != "torch" and not (config.framework is None and name == "torch"):
        raise ValueError(
            f"torchrun started {launch.world_size} processes, but only --backend torch and --framework torch train "
            f"data-parallel under torchrun, not {'--framework' if config.framework else '--backend'} {name}; "
            "JAX runs use --devices (README: Training on several devices and machines)"
        )


def _cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    from yat_core.receipts import default_receipt_path, write_json_atomic
    from yat_core.runners import Runner, make_runner
    from yat_core.train import TrainingStopped, train
    from yat_core.weights import save_weights

    config = _config(args)
    _check_torchrun(config)
    _start_jax_processes(args)
    name = args.framework or config.resolved_backend()
    stem = f"train-{name}" if config.model == "mlp" else f"train-{config.model}-{name}"
    report = _check_train_outputs(args, default_receipt_path(stem))
    runners: list[Runner] = []

    log = None if args.quiet else print

    def factory(spec: Any, cfg: Any) -> Runner:
        runners.append(make_runner(spec, cfg))
        # Announced once the runner exists (a refused backend or dtype prints only its error), by rank 0 of several.
        if log and runners[-1].is_main_process:
            what = f"framework {name!r} (native model)" if args.framework else f"backend {name!r}"
            log(
                f"yat-core: training the {'seed model' if config.model == 'mlp' else config.model} with {what} "
                f"({config.epochs} epochs, batch {config.batch_size}, AdamW lr {config.optimizer.lr}, "
                f"seed {config.seed})"
            )
        return runners[-1]

    try:
        # An overflow is reported once, as a stopped run, not as a screen of NumPy warnings.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            receipt = train(config, progress=not args.quiet, log=log, runner_factory=factory)
    except TrainingStopped as stop:
        if not runners[-1].is_main_process:
            raise
        # The run's record is kept: its receipt says where and why it stopped; no weights are exported.
        path = write_json_atomic(report, stop.receipt)
        raise TrainingStopped(f"{stop}; receipt: {path}", stop.receipt) from None
    if not runners[-1].is_main_process:
        return 0  # one rank of several (torchrun): rank 0 writes the receipt and the weights
    if args.export:
        # Hold every framework's export to the model it trained.
        spec = MODELS[config.model][0]()
        try:
            receipt["export"] = str(save_weights(args.export, runners[-1].export_params(), spec))
        except (YatError, ValueError, OSError) as exc:
            # The receipt still records the run, and why its weights were not written.
            receipt["export"], receipt["export_error"] = None, str(exc)
            path = write_json_atomic(report, receipt)
            raise ValueError(f"--export {args.export}: not written ({exc}); receipt: {path}") from None
    path = write_json_atomic(report, receipt)
    print(
        f"final test accuracy {100 * receipt['final_test_acc']:.2f}% on {receipt['n_test']:,} images; "
        f"{receipt['total_s']:.1f} s in all; receipt: {path}"
        + (f"; parameters: {receipt['export']}" if args.export else "")
    )
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from yat_core.data import load_mnist

    data = load_mnist(args.data_dir, progress=True)
    print(f"MNIST ok: {len(data.train_labels):,} training and {len(data.test_labels):,} test images from {data.source}")
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    from yat_core.backends import available_backends

    installed = set(available_backends())
    for name, entry in BACKENDS.items():
        status = "installed" if name in installed else f"missing: pip install 'yat-core[{entry.extra}]'"
        print(f"{name:6s} {status}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from yat_core.compare import RUNS, compare, plan_runs

    flags = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    flags += ["--dtype", args.dtype]
    for name in ("lr", "device", "data_dir", "train_limit", "test_limit"):
        if getattr(args, name) is not None:
            flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    runs = plan_runs(args.model, args.backends, args.frameworks, args.keras_backends)
    if not runs:
        raise ValueError("nothing to compare: --backends and --frameworks are both empty")
    out = check_writable(
        "--out", args.out if args.out is not None else Path("results") / f"compare-{args.model}", folder=True
    )
    print(
        f"yat-core: comparing the {args.model} in {len(runs)} runs, one process each; receipts in {out / RUNS}",
        flush=True,
    )
    markdown = compare(runs, flags, out, log=lambda line: print(line, flush=True))
    print()
    print(markdown, end="")
    print(f"\nreport: {out / 'report.md'}, {out / 'report.json'}; rebuild it with: yat-core report {out / RUNS}/*.json")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from yat_core.report import REPORT_JSON, REPORT_MD, REPORT_PNG, report_receipts

    if args.out is not None:
        out = check_writable("--out", args.out, folder=True)
        # A receipt named like a report file in --out would be overwritten by the report.
        _distinct(
            [("--out", out / name) for name in (REPORT_MD, REPORT_JSON, REPORT_PNG)],
            [("RECEIPT", Path(p)) for p in args.receipts],
        )
    print(report_receipts(args.receipts, args.out, mixed_models=args.mixed_models), end="")
    if args.out is not None:
        print(f"\nreport: {Path(args.out) / 'report.md'}, {Path(args.out) / 'report.json'}")
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from yat_core.onnx_export import DEFAULT_OPSET, check_onnx, export_onnx
    from yat_core.weights import load_weights

    recipe = MODELS[args.model] if args.model is not None else None
    wanted = None if recipe is None else (recipe.relu() if args.baseline else recipe.yat())
    if wanted is None and Path(args.weights).suffix.lower() != ".safetensors":
        raise ValueError(f"--weights {args.weights}: an .npz file does not name its model; give --model")
    if args.check_images < 0:
        raise ValueError(f"--check-images must be >= 0, got {args.check_images}")
    _distinct([("--out", check_writable("--out", args.out, folder=False))], [("--weights", Path(args.weights))])
    stored, params = load_weights(args.weights, wanted)
    spec = stored or wanted  # a .safetensors file holds its model; an .npz file's is --model's
    if spec is None:  # pragma: no cover - refused above
        raise ValueError(f"--weights {args.weights}: no model for these weights; give --model")
    path = export_onnx(spec, params, args.out, opset=args.opset or DEFAULT_OPSET)
    print(f"wrote {path} (input {list(('N', *spec.input_shape))} float32, output logits [N, {spec.n_classes}])")
    if args.check_images:
        from yat_core.data import load_mnist

        data = load_mnist(args.data_dir, progress=False)
        result = check_onnx(path, spec, params, data.test_images[: args.check_images])
        print(f"onnxruntime vs the core on {result.n:,} MNIST test images: {result.summary()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler = {
        "train": _cmd_train,
        "compare": _cmd_compare,
        "report": _cmd_report,
        "data": _cmd_data,
        "backends": _cmd_backends,
        "export-onnx": _cmd_export_onnx,
    }[args.command]
    try:
        return handler(args)
    except (YatError, ValueError, OSError) as exc:
        print(f"yat-core: error: {exc or exc.__class__.__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("yat-core: interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The ``yat-core`` command: :func:`main`, then a prompt exit with its status.

    Once the command has finished (its files written and closed), the exit handlers
    run as usual and the process then ends without Python's module-by-module teardown:
    after ``torch.compile`` that teardown (Dynamo's, inductor's and SymPy's objects)
    took about 1 s of a 6 s training run here, time in which the user waits for
    nothing. A command that fails with a traceback exits the usual way.
    """
    code = main()
    atexit._run_exitfuncs()  # logging's flush, jax.distributed's shutdown, temporary folders
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing left to flush
            stream.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
