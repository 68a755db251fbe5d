"""Weights that travel: a model trained in one framework, loaded into every other.

Each framework trains the seed model for one epoch with its own runner (its own optimizer,
the shared batch order) and exports its parameters to ``.npz``; every framework then
loads every export and predicts all 10,000 MNIST test images. A pair passes when the
predicted classes are identical and the logits differ by no more than the error
model allows two float32 evaluations of the same weights to differ (each within
:func:`~verification.error_model.mlp_forward_bounds` of the float64 oracle).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from verification.error_model import FLOAT32, mlp_forward_bounds, total_bound
from verification.trajectory import mnist
from yat_core.mlp import seed_spec
from yat_core.nn import get_framework
from yat_core.nn.interchange import load_npz, save_npz

__all__ = ["FRAMEWORKS", "trained_exports", "test_inputs", "cross_predictions", "logit_bound"]

FRAMEWORKS = ("torch", "nnx", "linen", "mlx", "keras", "tf")


def test_inputs() -> tuple[np.ndarray, np.ndarray]:
    """All MNIST test images as float32 pixels in [0, 1], and their labels."""
    data = mnist()
    x = data.test_images.reshape(len(data.test_images), -1).astype(np.float32) / np.float32(255)
    return x, data.test_labels.astype(np.int64)


def trained_exports(folder: Path) -> dict[str, Path]:
    """Train the seed model in every framework; the ``.npz`` export of each."""
    from yat_core.config import TrainConfig
    from yat_core.runners import make_runner
    from yat_core.train import train

    get_framework("keras")
    import keras

    keras_backend = keras.config.backend()
    paths = {}
    for name in FRAMEWORKS:
        config = TrainConfig(framework=name, epochs=1, seed=1, keras_backend=keras_backend if name == "keras" else None)
        runners: list[Any] = []

        def keep(spec: Any, cfg: TrainConfig, runners: list[Any] = runners) -> Any:
            runners.append(make_runner(spec, cfg))
            return runners[-1]

        train(config, data=mnist(), runner_factory=keep, progress=False, log=None)
        paths[name] = save_npz(folder / f"{name}.npz", runners[0].export_params())
    return paths


def cross_predictions(paths: dict[str, Path], x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """``[source][target]``: the logits of ``target``'s model holding ``source``'s weights."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for source, path in paths.items():
        params = load_npz(path)
        out[source] = {}
        for target in FRAMEWORKS:
            module = get_framework(target)
            model = module.import_params(module.build_model(seed_spec(), 0), params)
            out[source][target] = np.asarray(module.predict(model, x), dtype=np.float64)
    return out


def logit_bound(path: Path, x: np.ndarray) -> np.ndarray:
    """How far one float32 evaluation of these weights may be from the float64 logits."""
    params = load_npz(path)
    return total_bound(lambda prec: mlp_forward_bounds(params, x, seed_spec(), prec)[1][-1], FLOAT32)


def run() -> dict[str, Any]:
    """The whole matrix as JSON-ready data (also what the parity report shows)."""
    x, labels = test_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        paths = trained_exports(Path(tmp))
        logits = cross_predictions(paths, x)
        bounds = {source: logit_bound(path, x) for source, path in paths.items()}
    rows = []
    for source, by_target in logits.items():
        own = by_target[source]
        for target, got in by_target.items():
            diff = np.abs(got - own)
            rows.append(
                {
                    "source": source,
                    "target": target,
                    "same_argmax": int(np.sum(got.argmax(1) == own.argmax(1))),
                    "n": len(x),
                    "max_logit_diff": float(diff.max()),
                    "max_diff_over_bound": float(np.max(diff / (2.0 * bounds[source]))),
                    "test_acc": float(np.mean(got.argmax(1) == labels)),
                }
            )
    return {"frameworks": list(FRAMEWORKS), "epochs": 1, "pairs": rows}
