"""The vision transformer in the core: its spec, analytic gradients against torch autograd, the
backends training it alike, and the frameworks refusing it clearly until they have native layers."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from conftest import BACKEND_NAMES, make_tiny_mnist, require_backend

from yat_core.config import TrainConfig
from yat_core.mlp import init_mlp_numpy, mlp_forward, mlp_loss, mlp_value_and_grad, model_input
from yat_core.spec import MODELS, LayerSpec, ModelSpec, count_params, vit_softmax_spec, vit_spec
from yat_core.train import train

SPECS = {
    "yat": vit_spec,
    "softmax": vit_softmax_spec,
    "yat-spherical-learnable-eps": lambda: vit_spec(spherical=True, learnable_epsilon=True, epsilon=0.1),
}


def test_the_recipe_and_its_shapes():
    recipe = MODELS["vit"]
    assert recipe.yat is vit_spec and recipe.relu is vit_softmax_spec and recipe.lr == 2e-3
    spec = vit_spec()
    assert spec.shapes()[1:4] == [(16, 49), (16, 64), (16, 64)] and spec.shapes()[-1] == (10,)
    assert count_params(spec) - count_params(vit_softmax_spec()) == 4  # alpha of 2 attention and 2 Yat layers


def test_patches_are_row_major_and_channels_first():
    spec = ModelSpec((LayerSpec("patches", 2, 8, kernel_size=(2, 2)), LayerSpec("token_mean", 8, 8)), (2, 4, 4))
    x = np.arange(32.0).reshape(1, 2, 4, 4)
    from yat_core.mlp import layer_inputs

    tokens = layer_inputs({}, x, spec)[1]
    assert tokens.shape == (1, 4, 8)
    np.testing.assert_array_equal(tokens[0, 1], [2, 3, 6, 7, 18, 19, 22, 23])  # top-right patch, channel 0 then 1


@pytest.mark.parametrize("case", list(SPECS))
def test_analytic_gradients_equal_torch_autograd(case):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as txp

    spec = SPECS[case]()
    params = init_mlp_numpy(spec, 0, np.float64)
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6)
    loss, grads = mlp_value_and_grad(params, images, labels, spec)
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    torch_loss = mlp_loss(leaves, torch.tensor(images), torch.tensor(labels), spec, xp=txp)
    torch_loss.backward()
    np.testing.assert_allclose(loss, float(torch_loss.detach()), rtol=1e-13)
    for name, leaf in leaves.items():
        want = leaf.grad.numpy()
        # The key bias of softmax attention has a zero gradient (a per-query constant shift of
        # the scores): compare to the model's gradient scale, not to that zero.
        scale = max(float(np.max(np.abs(want))), 1e-6)
        np.testing.assert_allclose(grads[name], want, rtol=0, atol=1e-10 * scale, err_msg=f"{case} d/d{name}")


def test_analytic_gradients_match_finite_differences():
    spec = ModelSpec(
        (
            LayerSpec("patches", 1, 16, kernel_size=(4, 4)),
            LayerSpec("linear", 16, 4),
            LayerSpec("pos_embed", 4, 4, tokens=4),
            LayerSpec("yat_attention", 4, 4, heads=2, residual=True, epsilon=0.5),
            LayerSpec("yat", 4, 4, residual=True, epsilon=0.5),
            LayerSpec("token_mean", 4, 4),
            LayerSpec("linear", 4, 3),
        ),
        input_shape=(1, 8, 8),
    )
    params = init_mlp_numpy(spec, 2, np.float64)
    rng = np.random.default_rng(3)
    x, labels = rng.random((3, 1, 8, 8)), rng.integers(0, 3, 3)
    _, grads = mlp_value_and_grad(params, x, labels, spec)
    h = 1e-6
    for name in ("3.q_kernel", "3.k_bias", "3.alpha", "2.table", "4.kernel", "1.kernel"):
        direction = rng.normal(size=params[name].shape)
        up = {**params, name: params[name] + h * direction}
        down = {**params, name: params[name] - h * direction}
        numeric = (mlp_loss(up, x, labels, spec) - mlp_loss(down, x, labels, spec)) / (2 * h)
        np.testing.assert_allclose(np.sum(grads[name] * direction), numeric, rtol=1e-6, atol=1e-9, err_msg=name)


def test_every_backend_takes_the_same_first_steps():
    data = make_tiny_mnist(96, 32, seed=5)
    losses: dict[str, np.ndarray] = {}
    for backend in BACKEND_NAMES:
        require_backend(backend)
        cfg = TrainConfig(model="vit", backend=backend, epochs=1, batch_size=32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            receipt = train(cfg, data=data, progress=False, log=None)
        assert receipt["model_name"] == "vit" and receipt["params"] == count_params(vit_spec())
        losses[backend] = np.asarray(receipt["history"][0]["step_loss"])
    for backend, steps in losses.items():
        np.testing.assert_allclose(steps, losses["numpy"], rtol=0, atol=2e-5, err_msg=f"{backend} vs numpy")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "yat_attention", "in_features": 6, "out_features": 6, "heads": 4}, "heads must be >= 1 and divide"),
        ({"kind": "attention", "in_features": 6, "out_features": 6}, "heads must be >= 1"),
        ({"kind": "attention", "in_features": 6, "out_features": 6, "heads": 2, "bias": 0.5}, "learnable bias or none"),
        ({"kind": "yat", "in_features": 6, "out_features": 6, "heads": 2}, "heads applies to attention layers"),
        ({"kind": "pos_embed", "in_features": 6, "out_features": 6}, "tokens"),
        ({"kind": "linear", "in_features": 6, "out_features": 6, "tokens": 3}, "tokens"),
        ({"kind": "yat", "in_features": 6, "out_features": 4, "residual": True}, "residual needs"),
        ({"kind": "max_pool", "in_features": 6, "out_features": 6, "kernel_size": (2,), "residual": True}, "residual"),
        ({"kind": "patches", "in_features": 1, "out_features": 7, "kernel_size": (7,)}, "2-D kernel_size"),
        ({"kind": "token_mean", "in_features": 6, "out_features": 3}, "keeps the features"),
        ({"kind": "transformer", "in_features": 6, "out_features": 3}, "unknown layer kind 'transformer'"),
    ],
)
def test_token_layer_options_are_checked(kwargs: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        LayerSpec(**kwargs)


def test_shapes_that_do_not_chain_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 1 \(pos_embed\): a pos_embed table of 9 tokens"):
        ModelSpec(
            (
                LayerSpec("patches", 1, 49, kernel_size=(7, 7)),
                LayerSpec("pos_embed", 49, 49, tokens=9),
                LayerSpec("token_mean", 49, 49),
            ),
            input_shape=(1, 28, 28),
        )
    with pytest.raises(ValueError, match=r"multiples of the patch"):
        ModelSpec((LayerSpec("patches", 1, 25, kernel_size=(5, 5)), LayerSpec("token_mean", 25, 25)), (1, 28, 28))


def test_forward_on_pixels_and_on_channels_first_input_agree():
    spec = vit_spec()
    params = init_mlp_numpy(spec, 0, np.float32)
    images = np.random.default_rng(4).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = model_input(params, images, spec)
    assert x.shape == (3, 1, 28, 28)
    logits = mlp_forward(params, x, spec)
    assert logits.shape == (3, 10) and np.all(np.isfinite(logits))
