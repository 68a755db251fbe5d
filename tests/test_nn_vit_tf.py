"""The Yat vision transformer as TensorFlow modules (yat_core.nn.tf), its attention and embedding, against the core.

The reference for every number is the core in NumPy float64: :func:`yat_core.mlp.mlp_forward`
and its training loop for the models, :func:`yat_core.attention.yat_attention` on the
module's own projections for :class:`~yat_core.nn.tf.YatMultiHeadAttention`. The
helpers are shared with ``test_nn_vit_keras``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_interchange import random_params  # noqa: E402
from test_nn_vit_keras import (  # noqa: E402
    MASK_CASES,
    VIT_SHAPES,
    assert_model_equals_the_core,
    attention_inputs,
    core_attention,
    images,
    trains_spec_like_the_core,
)

from yat_core.attention import yat_embed_attend  # noqa: E402
from yat_core.nn import tf as ytf  # noqa: E402
from yat_core.spec import vit_softmax_spec, vit_spec  # noqa: E402


def projections(module):
    """The module's projections as ``{query_kernel, query_bias, ...}`` NumPy arrays (Keras's layout)."""
    return {
        f"{p}_{part}": getattr(getattr(module, f"{p}_dense"), part).numpy()
        for p in ("query", "key", "value", "output")
        for part in ("kernel", "bias")
    }


def test_vit_equals_the_core():
    model = assert_model_equals_the_core(ytf, vit_spec())
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["_Patches", "Linear", "_PositionEmbedding"] + ["YatMultiHeadAttention", "YatNMN"] * 2 + [
        "_TokenMean",
        "Linear",
    ], kinds
    assert model.name == "yat_vit" and model.layout == (28, 28, 1)
    assert tuple(model.layers[3].query_dense.kernel.shape) == (64, 4, 16)  # Keras's layout, not the core's
    assert tuple(model.layers[3].output_dense.kernel.shape) == (4, 16, 64)
    shapes = {k: v.shape for k, v in ytf.export_params(model).items()}
    assert all(shapes[k] == v for k, v in VIT_SHAPES.items()), shapes
    assert len(model.trainable_variables) == len(vit_spec().param_shapes)


def test_vit_softmax_uses_the_tensorflow_baseline_and_equals_the_core():
    model = assert_model_equals_the_core(ytf, vit_softmax_spec())
    assert type(model.layers[3]) is ytf.MultiHeadAttention


def test_vit_saved_model_round_trip(tmp_path):
    spec = vit_spec(spherical=True)
    model = ytf.import_params(ytf.build_model(spec, 0), random_params(spec, 4))
    x = np.moveaxis(images(), 1, -1)
    tf.saved_model.save(model, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_array_equal(loaded(tf.constant(x)).numpy(), model(tf.constant(x)).numpy())


@pytest.mark.parametrize(
    "options", [{}, {"use_alpha": 2.0, "spherical": True}, {"learnable_epsilon": True, "epsilon": 0.3}], ids=str
)
def test_attention_equals_the_core_with_masks(options):
    """Cross-attention (other lengths and features), a causal mask and a fully masked row, as the core has them."""
    query, value = attention_inputs()
    layer = ytf.YatMultiHeadAttention(8, 2, 3, value_input_dim=6, output_shape=7, seed=0, **options)
    core_options = {
        "alpha": {True: 1.0, 2.0: 2.0}[options.get("use_alpha", True)],
        "epsilon": options.get("epsilon", 1e-5),
        "spherical": options.get("spherical", False),
    }
    for case, mask in MASK_CASES.items():
        causal = "causal" in mask
        core_mask = {"mask": mask["mask"]} if "mask" in mask else {}
        want, want_weights = core_attention(
            projections(layer), query, value, weights=True, causal=causal, **core_mask, **core_options
        )
        for native_mask in [mask["mask"], mask["mask"].astype(np.int32)] if "mask" in mask else [None]:
            out, weights = layer(
                query, value, attention_mask=native_mask, use_causal_mask=causal, return_attention_scores=True
            )
            np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=case)
            np.testing.assert_allclose(weights.numpy(), want_weights, atol=1e-6, err_msg=case)
            plain = layer.call(query, value, attention_mask=native_mask, use_causal_mask=causal)
            np.testing.assert_allclose(plain.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=case)
    weights = layer(
        query, value, attention_mask=MASK_CASES["mask-with-an-empty-row"]["mask"], return_attention_scores=True
    )[1]
    assert np.all(weights.numpy()[:, :, 0] == 0) and np.all(np.isfinite(weights.numpy()))


def test_attention_gradients_are_finite_through_a_fully_masked_row():
    query, value = attention_inputs()
    layer = ytf.YatMultiHeadAttention(8, 2, 3, value_input_dim=6, learnable_epsilon=True, seed=0)
    mask = MASK_CASES["mask-with-an-empty-row"]["mask"]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer.call(query, value, attention_mask=mask) ** 2)
    grads = tape.gradient(loss, layer.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)


def test_attention_variables_are_keras_multi_head_attentions():
    layer = ytf.YatMultiHeadAttention(
        8, 2, 4, value_dim=3, value_input_dim=6, learnable_epsilon=True, seed=0, name="mha"
    )
    shapes = {v.name: tuple(v.shape) for v in layer.trainable_variables}
    assert shapes == {
        "mha/query/kernel:0": (8, 2, 4),
        "mha/query/bias:0": (2, 4),
        "mha/key/kernel:0": (6, 2, 4),
        "mha/key/bias:0": (2, 4),
        "mha/value/kernel:0": (6, 2, 3),
        "mha/value/bias:0": (2, 3),
        "mha/attention_output/kernel:0": (2, 3, 8),
        "mha/attention_output/bias:0": (8,),
        "mha/alpha:0": (),
        "mha/epsilon_raw:0": (),
    }, shapes
    assert ytf.count_params(ytf.YatMultiHeadAttention(8, 2, 4, use_bias=False, use_alpha=False)) == 4 * 64
    with pytest.raises(TypeError, match="use_bias must be a bool"):
        ytf.YatMultiHeadAttention(8, 2, 4, use_bias=0.5)
    with pytest.raises(ValueError, match="epsilon"):
        ytf.YatMultiHeadAttention(8, 2, 4, epsilon=-1.0)


def test_attention_saved_model_round_trip(tmp_path):
    query, value = attention_inputs()
    mask = MASK_CASES["mask-with-an-empty-row"]["mask"]
    layer = ytf.YatMultiHeadAttention(8, 2, 3, value_input_dim=6, seed=1)
    before = layer(query, value, attention_mask=mask).numpy()
    tf.saved_model.save(layer, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_array_equal(loaded(query, value, attention_mask=mask).numpy(), before)


def test_softmax_baseline_masks_as_keras_does():
    """The baseline: TensorFlow's softmax of q.k/sqrt(d); causal; a fully masked row averages the values (Keras's rule)."""
    query, value = attention_inputs()
    layer = ytf.MultiHeadAttention(8, 2, 3, value_input_dim=6, seed=0)
    p = {k: v.astype(np.float64) for k, v in projections(layer).items()}
    q, k, v = (
        np.einsum("btd,dhk->bhtk", x.astype(np.float64), p[f"{n}_kernel"]) + p[f"{n}_bias"].reshape(1, 2, 1, 3)
        for x, n in ((query, "query"), (value, "key"), (value, "value"))
    )
    mask = MASK_CASES["mask-with-an-empty-row"]["mask"]
    scores = np.where(mask[:, None], q @ k.swapaxes(-1, -2) / np.sqrt(3), -1e9)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out, got = layer(query, value, attention_mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(got.numpy(), weights, atol=1e-6)
    want = np.einsum("bhts,bhsk->bthk", weights, v)
    want = np.einsum("bthk,hko->bto", want, p["output_kernel"]) + p["output_bias"]
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    causal = layer(query, query[:, :4, :6], use_causal_mask=True, return_attention_scores=True)[1].numpy()
    assert np.all(np.triu(causal[0, 0], 1) == 0)


def test_embed_looks_up_and_attends():
    embed = ytf.YatEmbed(10, 4, learnable_epsilon=True, epsilon=0.1, seed=0, name="embed")
    assert sorted(v.name for v in embed.trainable_variables) == [
        "embed/alpha:0",
        "embed/embeddings:0",
        "embed/epsilon_raw:0",
    ]
    ids = np.array([[1, 0, 9], [3, 3, 2]])
    table = embed.embeddings.numpy()
    np.testing.assert_array_equal(embed(tf.constant(ids)).numpy(), table[ids])
    assert np.all(np.abs(table) <= 0.05)
    query = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    want = yat_embed_attend(query.astype(np.float64), table.astype(np.float64), alpha=1.0, epsilon=0.1)
    np.testing.assert_allclose(embed.attend(query).numpy(), want, rtol=1e-5, atol=1e-6)
    constant = ytf.YatEmbed(10, 4, use_alpha=2.0, spherical=True, seed=1)
    want = yat_embed_attend(
        query.astype(np.float64), constant.embeddings.numpy().astype(np.float64), alpha=2.0, spherical=True
    )
    np.testing.assert_allclose(constant.attend(query).numpy(), want, rtol=1e-5, atol=1e-6)
    assert ytf.count_params(constant) == 40
    with pytest.raises(TypeError, match="integer"):
        embed(tf.constant([[1.0, 2.0]]))


@pytest.fixture
def tf_keras() -> None:
    """The runner's optimizer is tf.keras, which needs Keras on its tensorflow backend in this process."""
    keras = sys.modules.get("keras")
    active = keras.backend.backend() if keras is not None else os.environ.get("KERAS_BACKEND", "tensorflow")
    if active != "tensorflow":
        pytest.skip(f"Keras runs on {active!r} in this test process; tf.keras optimizers need 'tensorflow'")


@pytest.mark.parametrize("spec", [vit_spec(), vit_softmax_spec()], ids=["yat", "softmax"])
def test_runner_trains_the_vit_like_the_core(tf_keras, spec):
    """The XLA-compiled step trains both transformers as the core does: losses, and parameters to 1e-5."""
    assert trains_spec_like_the_core("tf", spec).framework == "tf"
