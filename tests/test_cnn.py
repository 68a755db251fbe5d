"""A network of convolutions as data: the model spec, the core's CNN on every backend, its gradients."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import BACKEND_NAMES, namespace_for, to_numpy

from yat_core import cli
from yat_core.config import TrainConfig
from yat_core.mlp import init_mlp_numpy, mlp_forward, mlp_loss, mlp_value_and_grad, model_input
from yat_core.optim import AdamWConfig
from yat_core.spec import LayerSpec, ModelSpec, cnn_relu_spec, cnn_spec, count_params
from yat_core.train import train


def small_cnn(**yat_options) -> ModelSpec:
    """Every spatial kind at a size a test can afford: 8x8 inputs, groups, a transposed conv, both pools."""
    return ModelSpec(
        (
            LayerSpec("yat_conv", 1, 4, kernel_size=(3, 3), padding=(1, 1), **yat_options),
            LayerSpec("max_pool", 4, 4, kernel_size=(2, 2)),
            LayerSpec("yat_conv_transpose", 4, 4, kernel_size=(2, 2), stride=(2, 2), groups=2, **yat_options),
            LayerSpec("yat_conv", 4, 6, kernel_size=(3, 3), stride=(2, 2), groups=2, **yat_options),
            LayerSpec("avg_pool", 6, 6, kernel_size=(1, 1)),
            LayerSpec("flatten", 6, 6 * 3 * 3),
            LayerSpec("yat", 54, 8, **yat_options),
            LayerSpec("linear", 8, 3),
        ),
        input_shape=(1, 8, 8),
    )


def batch(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), rng.integers(0, 3, n).astype(np.int64)


def test_the_mnist_cnn_has_the_documented_shape_and_size():
    spec = cnn_spec()
    assert spec.input_shape == (1, 28, 28) and count_params(spec) == 225037
    assert [layer.kind for layer in spec.layers] == [
        "yat_conv",
        "max_pool",
        "yat_conv",
        "max_pool",
        "flatten",
        "yat",
        "linear",
    ]


def test_initial_weights_use_the_receptive_field_for_conv_fans():
    params = init_mlp_numpy(cnn_spec(), 0, np.float64)
    # Xavier-normal over fan_in + fan_out = 1*9 + 32*9 for the first conv.
    assert params["0.kernel"].std() == pytest.approx(np.sqrt(2.0 / (9 + 288)), rel=0.15)
    assert np.all(np.abs(params["6.bias"]) <= 1 / np.sqrt(128))


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_the_cnn_forward_is_the_same_on_every_backend(name):
    spec = small_cnn()
    params = init_mlp_numpy(spec, 1, np.float32)
    images, _ = batch()
    ref_params = {k: v.astype(np.float64) for k, v in params.items()}
    ref = mlp_forward(ref_params, model_input(ref_params, images, spec), spec)
    xp = namespace_for(name)
    got_params = {k: xp.asarray(v) for k, v in params.items()}
    got = to_numpy(mlp_forward(got_params, model_input(got_params, xp.asarray(images), spec, xp=xp), spec, xp=xp))
    assert got.shape == (5, 3) and got.dtype == np.float32, name
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5, err_msg=f"{name}: CNN logits vs float64 numpy")


@pytest.mark.parametrize(
    "options",
    [{}, {"learnable_epsilon": True, "alpha": 2.0}, {"spherical": True}],
    ids=["default", "learnable-eps", "spherical"],
)
def test_the_analytic_cnn_gradient_equals_torch_autograd(options):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as txp

    spec = small_cnn(**options)
    params = init_mlp_numpy(spec, 2, np.float64)
    images, labels = batch(seed=3)
    loss, grads = mlp_value_and_grad(params, images, labels, spec)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    t_loss = mlp_loss(leaves, torch.from_numpy(images), torch.from_numpy(labels), spec, xp=txp)
    t_grads = torch.autograd.grad(t_loss, list(leaves.values()))
    assert float(loss) == pytest.approx(float(t_loss.detach()), rel=1e-12)
    for (name, value), t_grad in zip(params.items(), t_grads):
        np.testing.assert_allclose(grads[name], t_grad.numpy(), rtol=1e-7, atol=1e-12, err_msg=name)
        assert grads[name].shape == value.shape


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_the_conv_relu_baseline_runs_on_every_backend_with_analytic_gradients(name):
    """The core runs the baseline's plain convolutions too: logits on every backend, the
    analytic gradient (NumPy) equal to the backend's autodiff."""
    spec = cnn_relu_spec()
    params = init_mlp_numpy(spec, 4, np.float64)
    rng = np.random.default_rng(5)
    images, labels = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([0, 4, 9])
    loss, grads = mlp_value_and_grad(params, images, labels, spec)
    xp = namespace_for(name)
    got_params = {k: xp.asarray(v.astype(np.float32)) for k, v in params.items()}
    got = to_numpy(mlp_forward(got_params, model_input(got_params, xp.asarray(images), spec, xp=xp), spec, xp=xp))
    ref = mlp_forward(params, model_input(params, images, spec), spec)
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5, err_msg=f"{name}: baseline logits")
    if name == "torch":
        import array_api_compat.torch as txp
        import torch

        leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        t_loss = mlp_loss(leaves, torch.from_numpy(images), torch.from_numpy(labels), spec, xp=txp)
        t_grads = torch.autograd.grad(t_loss, list(leaves.values()))
        assert float(loss) == pytest.approx(float(t_loss.detach()), rel=1e-12)
        for (key, _), t_grad in zip(params.items(), t_grads):
            np.testing.assert_allclose(grads[key], t_grad.numpy(), rtol=1e-7, atol=1e-12, err_msg=key)


def test_backends_train_the_cnn_along_the_same_trajectory(tiny_mnist):
    spec = ModelSpec(
        (
            LayerSpec("yat_conv", 1, 4, kernel_size=(5, 5), stride=(3, 3)),
            LayerSpec("max_pool", 4, 4, kernel_size=(2, 2)),
            LayerSpec("flatten", 4, 64),
            LayerSpec("linear", 64, 10),
        ),
        input_shape=(1, 28, 28),
    )
    losses = {}
    for name in ("numpy", "torch", "jax"):
        namespace_for(name)
        config = TrainConfig(backend=name, epochs=1, batch_size=50, gradients=None if name == "numpy" else "autodiff")
        receipt = train(config, data=tiny_mnist, spec=spec, progress=False, log=None)
        losses[name] = receipt["history"][0]["step_loss"]
        assert receipt["params"] == count_params(spec) and receipt["input_shape"] == [1, 28, 28]
    for name in ("torch", "jax"):
        np.testing.assert_allclose(losses[name], losses["numpy"], rtol=2e-5, err_msg=name)


def test_cli_trains_the_cnn_and_records_it(tmp_path, capsys):
    from yat_core.data import IDX_FILES, write_idx

    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 64).astype(np.uint8),
        "test_images": rng.integers(0, 256, (16, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 16).astype(np.uint8),
    }
    for key, name in IDX_FILES.items():
        write_idx(tmp_path / name, arrays[key])
    report = tmp_path / "r.json"
    argv = [
        "train",
        "--model",
        "cnn",
        "--backend",
        "numpy",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--data-dir",
        str(tmp_path),
        "--report",
        str(report),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    receipt = json.loads(report.read_text())
    assert receipt["model_name"] == "cnn" and receipt["params"] == 225037 and receipt["config"]["model"] == "cnn"
    assert [layer["kind"] for layer in receipt["model"]][:2] == ["yat_conv", "max_pool"]
    assert receipt["lr"] == 1e-3  # the CNN's own learning rate when --lr is not given


def test_the_learning_rate_defaults_to_the_models_and_an_explicit_one_wins():
    assert TrainConfig().optimizer.lr == 3e-4 and TrainConfig(model="cnn").optimizer.lr == 1e-3
    assert TrainConfig(model="cnn", optimizer=AdamWConfig(lr=0.02)).optimizer.lr == 0.02
    args = cli.build_parser().parse_args(["train", "--model", "cnn", "--lr", "0.005"])
    assert cli._config(args).optimizer.lr == 0.005
    assert cli._config(cli.build_parser().parse_args(["train", "--model", "cnn"])).optimizer.lr == 1e-3


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match=r"--model must be one of mlp, cnn"):
        TrainConfig(model="vgg").validate()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"padding": "same", "stride": (2, 2)}, r"padding='same' needs stride 1"),
        ({"kind": "yat_conv_transpose", "stride": (2, 2), "output_padding": (2, 0)}, r"output_padding .* smaller"),
        ({"kind": "yat_conv_transpose", "padding": "same"}, r"padding must be ints"),
        ({"stride": (1,)}, r"stride needs 2 entries"),
    ],
    ids=["same-strided", "output-padding", "transpose-same", "stride-rank"],
)
def test_conv_geometry_is_refused_when_the_layer_is_described(options, match):
    args = {"kind": "yat_conv", "in_features": 2, "out_features": 2, "kernel_size": (3, 3), **options}
    with pytest.raises(ValueError, match=match):
        LayerSpec(**args)
