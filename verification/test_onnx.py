"""The ONNX export of every model kind, run by onnxruntime, against the float64 oracle.

Inputs: the first 128 MNIST test images (pixels in [0, 1], float32; flat for the MLP,
channels first for the CNN and the vision transformers), each model's initial weights
(seed 0, float32). The exported file's logits from ``onnxruntime`` are held to the
headline's target, ``max |onnx - oracle| / max(1, |oracle|) < 1e-6``, as every float32
backend is (``test_headline.py``); for the MLP also to the float32 error model of
:func:`verification.error_model.mlp_forward_bounds`; and the predicted class must be the
oracle's on every image. On all 10,000 test images the classes must match the core's
float32 forward pass (:func:`yat_core.onnx_export.check_onnx`).

Needs the ``onnx`` extra; ``--require-all-backends`` turns its absence into a failure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from verification.error_model import FLOAT32, mlp_forward_bounds, total_bound
from verification.headline import TARGET, metrics
from verification.oracle import mlp_forward64
from verification.results import STORE
from verification.trajectory import mnist
from yat_core.mlp import init_mlp_numpy
from yat_core.spec import ModelSpec, cnn_relu_spec, cnn_spec, seed_spec, vit_softmax_spec, vit_spec

MODELS = {
    "mlp": seed_spec,
    "cnn": cnn_spec,
    "vit": vit_spec,
    "cnn-relu": cnn_relu_spec,
    "vit-softmax": vit_softmax_spec,
}
N = 128


@pytest.fixture(scope="module")
def onnx_export():
    pytest.importorskip("onnx", reason="onnx is not installed; install it with: pip install 'yat-core[onnx]'")
    pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed; install it with: pip install 'yat-core[onnx]'"
    )
    from yat_core import onnx_export

    return onnx_export


def _images(spec: ModelSpec, n: int | None = None) -> np.ndarray:
    images = mnist().test_images[:n]
    return (images.astype(np.float32) / np.float32(255)).reshape(len(images), *spec.input_shape)


@pytest.mark.parametrize("model", list(MODELS))
def test_onnxruntime_logits_match_the_float64_oracle(model: str, onnx_export, tmp_path: Path) -> None:
    spec = MODELS[model]()
    params = init_mlp_numpy(spec, 0, np.float32)
    path = onnx_export.export_onnx(spec, params, tmp_path / f"{model}.onnx")
    x = _images(spec, N)
    got = onnx_export.onnx_logits(path, x)
    ref = mlp_forward64(params, x, spec)[0][-1]
    m = metrics(got, ref, ref)
    entry: dict[str, float | int] = {**m, "n": N, "same_argmax": int(np.sum(got.argmax(1) == ref.argmax(1)))}
    if model == "mlp":
        bound = total_bound(lambda prec: mlp_forward_bounds(params, x, spec, prec)[1][-1], FLOAT32)
        entry["max_diff_over_bound"] = float(np.max(np.abs(got - ref) / bound))
    STORE.meta.setdefault("onnx", {})[model] = entry
    assert entry["same_argmax"] == N, f"{model}: onnxruntime's class differs from the oracle's on some images {entry}"
    assert m["headline"] < TARGET, (
        f"{model}: onnxruntime's logits differ from the float64 oracle by {m['headline']:.3e} "
        f"(max abs {m['max_abs']:.3e}) >= {TARGET:g} relative to max(1, |ref|); first {N} MNIST test images, seed 0"
    )
    if "max_diff_over_bound" in entry:
        assert entry["max_diff_over_bound"] <= 1.0, f"{model}: logits beyond the float32 error model {entry}"


@pytest.mark.parametrize("model", ["mlp", "cnn", "vit"])
def test_onnxruntime_classes_match_the_core_on_every_test_image(model: str, onnx_export, tmp_path: Path) -> None:
    spec = MODELS[model]()
    params = init_mlp_numpy(spec, 0, np.float32)
    path = onnx_export.export_onnx(spec, params, tmp_path / f"{model}.onnx")
    result = onnx_export.check_onnx(path, spec, params, mnist().test_images)
    STORE.meta.setdefault("onnx_all_test_images", {})[model] = result._asdict()
    assert result.n == 10_000 and result.ok, result.summary()
