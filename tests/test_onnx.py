"""ONNX export (yat_core.onnx_export): every layer kind and option, checked with onnxruntime.

Random initial weights (nudged off their initial values, so that alpha, biases and a
learnable epsilon are not at their defaults), a few inputs each; the core's float32
forward pass is the reference.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_tiny_mnist

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from yat_core.cli import main
from yat_core.errors import BackendUnavailableError, YatError
from yat_core.mlp import init_mlp_numpy, mlp_forward
from yat_core.nn.interchange import save_npz
from yat_core.onnx_export import (
    INPUT_NAME,
    RTOL,
    OnnxMismatchError,
    build_onnx,
    check_onnx,
    export_onnx,
    onnx_logits,
)
from yat_core.spec import (
    LayerSpec,
    ModelSpec,
    cnn_relu_spec,
    cnn_spec,
    relu_spec,
    seed_spec,
    vit_softmax_spec,
    vit_spec,
)


def _geometry_spec() -> ModelSpec:
    """Convolutions with awkward geometry: groups, dilation, 'same' padding, strides, output padding,
    a transposed convolution that crops, average pooling, constant and absent options."""
    layers = [
        LayerSpec("yat_conv", 2, 4, kernel_size=(3, 3), padding="same", groups=2, dilation=(2, 1), alpha=1.5),
        LayerSpec(
            "yat_conv_transpose",
            4,
            6,
            kernel_size=(3, 2),
            stride=(2, 2),
            padding=(1, 0),
            output_padding=(1, 0),
            dilation=(1, 2),
            groups=2,
        ),
        LayerSpec("avg_pool", 6, 6, kernel_size=(2, 2)),
        LayerSpec("conv", 6, 3, kernel_size=(2, 2), stride=(2, 1), padding=(1, 1), bias=0.25, activation="relu"),
        LayerSpec(
            "yat_conv_transpose", 3, 2, kernel_size=(2, 2), padding=(2, 2), spherical=True, learnable_epsilon=True
        ),
    ]
    shape: tuple[int, ...] = (2, 8, 8)
    for layer in layers:
        shape = layer.output_shape(shape)
    n = math.prod(shape)
    layers += [LayerSpec("flatten", shape[0], n), LayerSpec("yat", n, 5, bias=0.5, alpha=None)]
    return ModelSpec(tuple(layers), input_shape=(2, 8, 8))


SPECS = {
    "mlp": seed_spec,
    "mlp-relu": relu_spec,
    "cnn": cnn_spec,
    "cnn-relu": cnn_relu_spec,
    "vit": vit_spec,
    "vit-softmax": vit_softmax_spec,
    "mlp-constant-alpha": lambda: seed_spec(alpha=2.0, epsilon=1e-3),
    "mlp-no-bias-no-alpha": lambda: seed_spec(bias=None, alpha=None),
    "mlp-constant-bias": lambda: seed_spec(bias=0.5),
    "mlp-spherical": lambda: seed_spec(spherical=True),
    "mlp-learnable-epsilon": lambda: seed_spec(learnable_epsilon=True, epsilon=1e-2),
    "cnn-spherical-learnable-epsilon": lambda: cnn_spec(spherical=True, learnable_epsilon=True),
    "cnn-no-bias-constant-alpha": lambda: cnn_spec(bias=None, alpha=0.5),
    "vit-spherical-learnable-epsilon": lambda: vit_spec(spherical=True, learnable_epsilon=True),
    "vit-constant-alpha-no-bias": lambda: vit_spec(alpha=1.5, bias=None),
    "conv-geometry": _geometry_spec,
}


def _params(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    params = init_mlp_numpy(spec, seed)
    return {k: v + rng.normal(0.0, 0.05, v.shape).astype(np.float32) for k, v in params.items()}


def _inputs(spec: ModelSpec, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *spec.input_shape), dtype=np.float32)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_onnxruntime_matches_the_core(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]()
    params = _params(spec)
    path = export_onnx(spec, params, tmp_path / "model.onnx")
    x = _inputs(spec, 6)
    result = check_onnx(path, spec, params, x)
    assert result.ok and result.same_argmax == 6 and result.near_ties == 0, result.summary()
    # Normwise too, so that small logits cannot hide behind max(1, |logit|).
    ref, got = mlp_forward(params, x, spec), onnx_logits(path, x)
    assert np.abs(ref).max() > 0
    assert np.abs(got - ref).max() <= RTOL * np.abs(ref).max(), name


def test_uint8_pixels_are_scaled_as_the_core_does(tmp_path: Path) -> None:
    spec = relu_spec()
    params = _params(spec)
    path = export_onnx(spec, params, tmp_path / "relu.onnx")
    images = np.random.default_rng(2).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert check_onnx(path, spec, params, images).ok  # uint8 pixels scaled by 1/255, as the core does


@pytest.mark.parametrize("opset", [13, 18, 21])
def test_opsets(opset: int, tmp_path: Path) -> None:
    spec = vit_spec()  # ReduceMean's axes move from an attribute to an input at opset 18
    params = _params(spec)
    path = export_onnx(spec, params, tmp_path / "vit.onnx", opset=opset)
    assert onnx.load(str(path)).opset_import[0].version == opset
    assert check_onnx(path, spec, params, _inputs(spec, 3)).ok


def test_dynamic_batch_and_names(tmp_path: Path) -> None:
    spec = cnn_spec()
    params = _params(spec)
    path = export_onnx(spec, params, tmp_path / "cnn.onnx")
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert model.graph.input[0].name == INPUT_NAME
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, 28, 28]
    stored = {init.name: tuple(init.dims) for init in model.graph.initializer}
    assert {name: stored.get(name) for name in spec.param_shapes} == spec.param_shapes  # core names and layouts
    for n in (1, 7):
        x = _inputs(spec, n, seed=n)
        np.testing.assert_allclose(onnx_logits(path, x), mlp_forward(params, x, spec), rtol=0, atol=1e-6)


def test_learnable_epsilon_is_stored_as_its_value(tmp_path: Path) -> None:
    spec = seed_spec(learnable_epsilon=True, epsilon=0.25)
    model = build_onnx(spec, init_mlp_numpy(spec, 0))
    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert float(values["0.epsilon"]) == pytest.approx(0.25, rel=1e-6)
    assert "0.epsilon_raw" not in values


def test_a_mismatch_is_caught(tmp_path: Path) -> None:
    spec = seed_spec()
    path = export_onnx(spec, _params(spec, seed=0), tmp_path / "a.onnx")
    with pytest.raises(OnnxMismatchError, match="a.onnx"):
        check_onnx(path, spec, _params(spec, seed=1), _inputs(spec, 4))
    result = check_onnx(path, spec, _params(spec, seed=1), _inputs(spec, 4), raise_on_mismatch=False)
    assert not result.ok and result.max_rel > result.tolerance >= RTOL


def test_bad_parameters_are_refused_and_the_old_file_kept(tmp_path: Path) -> None:
    spec = seed_spec()
    params = init_mlp_numpy(spec, 0)
    target = export_onnx(spec, params, tmp_path / "m.onnx")
    before = target.read_bytes()
    missing = dict(params)
    del missing["1.alpha"]
    with pytest.raises(ValueError, match=r"missing 1\.alpha"):
        export_onnx(spec, missing, target)
    nan = {**params, "0.bias": np.full(256, np.nan, np.float32)}
    with pytest.raises(ValueError, match=r"non-finite.*0\.bias"):
        export_onnx(spec, nan, target)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(spec, params, target, opset=11)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


def test_unreadable_onnx_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(YatError, match="bad.onnx"):
        onnx_logits(bad, np.zeros((1, 784), np.float32))


def test_missing_onnx_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(BackendUnavailableError, match=r"yat-core\[onnx\]"):
        build_onnx(seed_spec(), init_mlp_numpy(seed_spec(), 0))


def test_importing_the_cli_loads_no_onnx() -> None:
    code = "import sys, yat_core, yat_core.cli, yat_core.onnx_export; print([m for m in ('onnx', 'onnxruntime') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture()
def idx_dir(tmp_path: Path) -> Path:
    return write_tiny_mnist(tmp_path / "idx", 20, 40, seed=3)


def test_cli_exports_and_checks(tmp_path: Path, idx_dir: Path, capsys) -> None:
    spec = vit_spec()
    weights = save_npz(tmp_path / "vit.npz", _params(spec))
    out = tmp_path / "vit.onnx"
    args = ["export-onnx", "--model", "vit", "--weights", str(weights), "--out", str(out)]
    assert main([*args, "--data-dir", str(idx_dir), "--check-images", "30"]) == 0
    printed = capsys.readouterr().out
    assert "on 30 MNIST test images: same class as the core on 30/30 inputs" in printed
    assert out.is_file()


def test_cli_refuses_bad_weights(tmp_path: Path, capsys) -> None:
    weights = save_npz(tmp_path / "mlp.npz", init_mlp_numpy(seed_spec(), 0))
    out = str(tmp_path / "x.onnx")
    assert main(["export-onnx", "--weights", str(weights), "--out", out]) == 1
    assert "does not name its model; give --model" in capsys.readouterr().err
    assert main(["export-onnx", "--model", "cnn", "--weights", str(weights), "--out", out, "--check-images", "0"]) == 1
    assert "mlp.npz" in capsys.readouterr().err
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(weights.read_bytes()[:500])
    assert main(["export-onnx", "--model", "mlp", "--weights", str(truncated), "--out", out]) == 1
    assert "cut.npz" in capsys.readouterr().err
    assert not Path(out).exists()
