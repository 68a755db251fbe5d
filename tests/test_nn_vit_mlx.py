"""yat_core.nn.mlx: the Yat vision transformer, its softmax baseline, YatMultiHeadAttention and YatEmbed.

The reference for every number is the core in NumPy float64 (:func:`yat_core.mlp.mlp_forward`,
its analytic gradients, :func:`yat_core.attention.yat_attention`) at the same float32
weights. MLX computes in float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
mlx_nn = pytest.importorskip("mlx.nn")

from mlx.utils import tree_flatten  # noqa: E402
from test_interchange import (  # noqa: E402
    TRAINED_ATOL,
    assert_matches_core,
    assert_trains_like_the_core,
    core_logits,
    random_params,
    tiny_data,
)

from yat_core.attention import softmax_attention, yat_attention, yat_embed_attend  # noqa: E402
from yat_core.mlp import init_mlp_numpy  # noqa: E402
from yat_core.nn import mlx as ymlx  # noqa: E402
from yat_core.optim import AdamWConfig  # noqa: E402
from yat_core.product import softplus  # noqa: E402
from yat_core.runners import make_runner  # noqa: E402
from yat_core.spec import LayerSpec, ModelSpec, count_params, vit_softmax_spec, vit_spec  # noqa: E402
from yat_core.train import TrainConfig, train  # noqa: E402

#: MLX's attribute path of each core parameter of an attention layer (nn.MultiHeadAttention's names).
ATTENTION_PATHS = {
    f"{p}_{kind}": f"{proj}.{attr}"
    for p, proj in (("q", "query_proj"), ("k", "key_proj"), ("v", "value_proj"), ("o", "out_proj"))
    for kind, attr in (("kernel", "weight"), ("bias", "bias"))
}


def core_name(spec: ModelSpec, key: str) -> str:
    """``"layers.3.query_proj.weight"`` -> ``"3.q_kernel"``; ``"layers.2.weight"`` of a position table -> ``"2.table"``."""
    _, index, attr = key.split(".", 2)
    layer = spec.layers[int(index)]
    if layer.kind in ("yat_attention", "attention") and attr in ATTENTION_PATHS.values():
        attr = next(name for name, path in ATTENTION_PATHS.items() if path == attr)
    elif attr == "weight":
        attr = "table" if layer.kind == "pos_embed" else "kernel"
    return f"{index}.{attr}"


def mlx_loss_and_grads(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """MLX's own loss and gradients (``nn.value_and_grad``) under the core's names."""

    def loss_fn(m: Any, inputs: mx.array, labels: mx.array) -> mx.array:
        return mlx_nn.losses.cross_entropy(m(inputs), labels, reduction="mean")

    loss, grads = mlx_nn.value_and_grad(model, loss_fn)(model, mx.array(x), mx.array(y))
    return loss.item(), {core_name(model.spec, key): np.array(g) for key, g in tree_flatten(grads)}


def pixels(n: int, seed: int = 0, shape: tuple[int, ...] = (1, 28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(np.float32)


# ------------------------------------------------------------------ the models


@pytest.mark.parametrize(
    ("make", "attention"), [(vit_spec, "YatMultiHeadAttention"), (vit_softmax_spec, "MultiHeadAttention")]
)
def test_build_model_of_the_vit_is_the_core_model(make, attention):
    spec = make()
    model = ymlx.build_model(spec, 3)
    assert ymlx.count_params(model) == count_params(spec)
    assert type(model.layers[3]).__name__ == type(model.layers[5]).__name__ == attention
    if attention == "MultiHeadAttention":  # the softmax baseline is MLX's own class, with biases
        assert type(model.layers[3]) is mlx_nn.MultiHeadAttention and "bias" in model.layers[3].query_proj
    exported, expected = ymlx.export_params(model), init_mlp_numpy(spec, 3)
    assert list(exported) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    x = pixels(5)
    logits = ymlx.predict(model, x)
    np.testing.assert_allclose(logits, core_logits(expected, x, spec), rtol=1e-5, atol=1e-6)
    # Its own call takes MLX's channels-last (n, 28, 28, 1), and flat pixels in the core's order.
    for native in (x.transpose(0, 2, 3, 1), x.reshape(5, 784)):
        np.testing.assert_array_equal(np.array(model(mx.array(native))), logits)


#: Two channels, a non-square image and non-square patches (6x8 in 3x2 patches: 2 rows of 4), so that a
#: patch flattened in another order, or the grid read column-major, would change the tokens.
CHANNELS_SPEC = ModelSpec(
    (
        LayerSpec("patches", 2, 12, kernel_size=(3, 2)),  # (8, 12)
        LayerSpec("linear", 12, 8),
        LayerSpec("pos_embed", 8, 8, tokens=8),
        LayerSpec("yat_attention", 8, 8, heads=2, residual=True),
        LayerSpec("attention", 8, 8, heads=4, bias=None),
        LayerSpec("linear", 8, 8, residual=True, activation="relu"),
        LayerSpec("token_mean", 8, 8),
        LayerSpec("yat", 8, 3),
    ),
    input_shape=(2, 6, 8),
)
VIT_CASES = {
    "channels": CHANNELS_SPEC,
    "vit": vit_spec(),
    "softmax": vit_softmax_spec(),
    "vit-options": vit_spec(learnable_epsilon=True, epsilon=0.5, alpha=2.0),
    "vit-spherical-no-bias": vit_spec(spherical=True, bias=None),
}


@pytest.mark.parametrize("case", VIT_CASES)
def test_values_and_gradients_match_the_core(case):
    spec = VIT_CASES[case]
    params = random_params(spec, 1)
    # random_params' weights (std 0.3) make the Yat scores' softmax nearly one-hot; a tenth keeps it soft.
    params = {k: v if k.endswith(("alpha", "epsilon_raw")) else v / np.float32(10) for k, v in params.items()}
    model = ymlx.import_params(ymlx.YatModel(spec), params)
    assert ymlx.count_params(model) == count_params(spec)
    x = pixels(4, shape=spec.input_shape)
    np.testing.assert_allclose(ymlx.predict(model, x), core_logits(params, x, spec), rtol=1e-5, atol=1e-6)
    assert_matches_core(mlx_loss_and_grads, model, params, spec, case, n=4)


def test_parameter_names_and_layouts():
    model = ymlx.build_model(vit_spec(), 0)
    shapes = {k: v.shape for k, v in tree_flatten(model.parameters())}
    assert {k: s for k, s in shapes.items() if k.startswith(("layers.2.", "layers.3."))} == {
        "layers.2.weight": (16, 64),  # the position table
        **{f"layers.3.{path}": (64, 64) if path.endswith("weight") else (64,) for path in ATTENTION_PATHS.values()},
        "layers.3.alpha": (),
    }
    assert {core_name(model.spec, k): s for k, s in shapes.items()} == vit_spec().param_shapes
    assert {k: v.shape for k, v in ymlx.export_params(model).items()} == vit_spec().param_shapes


def test_import_refuses_a_bad_mapping_and_changes_nothing():
    spec = vit_spec()
    model = ymlx.build_model(spec, 0)
    before = ymlx.export_params(model)
    params = random_params(spec, 2)
    params["3.q_kernel"] = np.zeros((64, 32), np.float32)
    with pytest.raises(ValueError, match=r"3\.q_kernel has shape \(64, 32\), expected \(64, 64\)"):
        ymlx.import_params(model, params)
    after = ymlx.export_params(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------ training


def test_runner_trains_the_vit_like_the_core():
    receipt = assert_trains_like_the_core("mlx", model="vit")
    assert receipt["params"] == count_params(vit_spec())


def test_runner_trains_the_softmax_vit_like_the_core():
    # assert_trains_like_the_core's run, for the baseline spec (nn.MultiHeadAttention in the compiled step).
    spec, data, runners = vit_softmax_spec(), tiny_data(), []
    settings = dict(model="vit", epochs=1, batch_size=32, eval_batch=25, optimizer=AdamWConfig(weight_decay=0.5))

    def keep(spec: ModelSpec, cfg: TrainConfig) -> Any:
        runners.append(make_runner(spec, cfg))
        return runners[-1]

    receipts = [
        train(TrainConfig(**where, **settings), data=data, spec=spec, runner_factory=keep, progress=False, log=None)
        for where in ({"framework": "mlx"}, {"backend": "numpy"})
    ]
    assert receipts[0]["backend"] == "mlx" and receipts[0]["params"] == count_params(spec)
    np.testing.assert_allclose(
        receipts[0]["history"][0]["step_loss"], receipts[1]["history"][0]["step_loss"], rtol=1e-5
    )
    assert receipts[0]["final_test_loss"] == pytest.approx(receipts[1]["final_test_loss"], rel=1e-5)
    ours, theirs = runners[0].export_params(), runners[1].export_params()
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=TRAINED_ATOL["vit"], err_msg=name)


# ------------------------------------------------------------------ YatMultiHeadAttention on its own


def layer_and_inputs(
    seed: int = 0, tq: int = 5, tk: int = 5, **options: Any
) -> tuple[ymlx.YatMultiHeadAttention, list[mx.array]]:
    """A layer of dims 8, 2 heads, and queries (2, tq, 8), keys and values (2, tk, 8)."""
    mx.random.seed(seed)
    layer = ymlx.YatMultiHeadAttention(8, 2, **options)
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(0, 1, (2, t, 8)).astype(np.float32) for t in (tq, tk, tk)]
    return layer, [mx.array(a) for a in arrays]


def core_layer(layer: Any, queries: Any, keys: Any, values: Any, **attention: Any) -> np.ndarray:
    """The layer's output by the core in float64: its projections, then ``yat_attention``."""
    p = {k: np.array(v).astype(np.float64) for k, v in tree_flatten(layer.parameters())}
    heads = layer.num_heads

    def project(x: Any, name: str) -> np.ndarray:
        out = np.array(x).astype(np.float64) @ p[f"{name}.weight"].T
        return out + p[f"{name}.bias"] if f"{name}.bias" in p else out

    q, k, v = (
        project(x, name).reshape(*np.shape(x)[:-1], heads, -1)
        for x, name in ((queries, "query_proj"), (keys, "key_proj"), (values, "value_proj"))
    )
    a = yat_attention(q, k, v, **attention)
    return project(a.reshape(*a.shape[:-2], -1), "out_proj")


def causal(tq: int, tk: int) -> np.ndarray:
    """MLX's causal rule: query i sees keys j <= i + tk - tq."""
    return np.arange(tq)[:, None] + (tk - tq) >= np.arange(tk)[None, :]


def test_the_layer_is_the_core_attention_between_its_projections():
    layer, (q, k, v) = layer_and_inputs(learnable_epsilon=True, epsilon=0.3, spherical=True)
    layer.alpha = mx.array(1.5)
    out = np.array(layer(q, k, v))
    ref = core_layer(layer, q, k, v, alpha=1.5, epsilon=softplus(np.array(layer.epsilon_raw, np.float64)))
    ref_spherical = core_layer(
        layer, q, k, v, alpha=1.5, epsilon=softplus(np.array(layer.epsilon_raw, np.float64)), spherical=True
    )
    np.testing.assert_allclose(out, ref_spherical, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, ref, atol=1e-3)  # the option is used


def test_cross_attention_with_mlx_s_size_arguments():
    mx.random.seed(1)
    layer = ymlx.YatMultiHeadAttention(
        8, 2, query_input_dims=3, key_input_dims=5, value_input_dims=6, value_dims=4, value_output_dims=7, alpha=False
    )
    rng = np.random.default_rng(1)
    q, k, v = (mx.array(rng.normal(0, 1, shape).astype(np.float32)) for shape in ((2, 4, 3), (2, 6, 5), (2, 6, 6)))
    out = np.array(layer(q, k, v))
    assert out.shape == (2, 4, 7)
    np.testing.assert_allclose(out, core_layer(layer, q, k, v), rtol=1e-5, atol=1e-6)
    assert "value_dims=4" in repr(layer) and "alpha=False" in repr(layer)


def test_masks_in_mlx_s_conventions_are_the_core_s_boolean_mask():
    layer, (q, k, v) = layer_and_inputs()
    alpha = float(layer.alpha.item())
    lower = causal(5, 5)
    ref = core_layer(layer, q, k, v, alpha=alpha, mask=lower)
    additive = mlx_nn.MultiHeadAttention.create_additive_causal_mask(5)  # 0 and finfo(float32).min
    for mask in ("causal", mx.array(lower), additive, mx.where(mx.array(lower), 0.0, -mx.inf)):
        np.testing.assert_allclose(np.array(layer(q, k, v, mask=mask)), ref, rtol=1e-5, atol=1e-6)
    half = mlx_nn.MultiHeadAttention.create_additive_causal_mask(5, mx.float16)  # masked: -65504
    np.testing.assert_allclose(np.array(layer(q, k, v, mask=half)), ref, rtol=1e-5, atol=1e-6)
    # A per-batch, per-head mask broadcast to (batch, heads, queries, keys).
    per_head = np.random.default_rng(3).uniform(size=(2, 2, 5, 5)) > 0.4
    np.testing.assert_allclose(
        np.array(layer(q, k, v, mask=mx.array(per_head))),
        core_layer(layer, q, k, v, alpha=alpha, mask=per_head),
        rtol=1e-5,
        atol=1e-6,
    )
    assert not np.allclose(ref, core_layer(layer, q, k, v, alpha=alpha), atol=1e-3)  # the mask matters


def test_causal_with_fewer_queries_than_keys_follows_mlx():
    layer, (q, k, v) = layer_and_inputs(tq=3, tk=5)
    ref = core_layer(layer, q, k, v, alpha=1.0, mask=causal(3, 5))  # query i sees keys j <= i + 2
    np.testing.assert_allclose(np.array(layer(q, k, v, mask="causal")), ref, rtol=1e-5, atol=1e-6)
    # MLX's own attention masks the same keys: equal scores (zero queries) average the same values.
    mha = mlx_nn.MultiHeadAttention(8, 2, bias=True)
    mha.update({name: value for name, value in layer.parameters().items() if name.endswith("_proj")})
    zeros = mx.zeros_like(q)
    mha.query_proj.weight, mha.query_proj.bias = mx.zeros((8, 8)), mx.zeros(8)
    mha_out = np.array(mha(zeros, k, v, mask="causal"))
    values = np.array(layer.value_proj(v))
    means = np.stack([values[:, : i + 3].mean(axis=1) for i in range(3)], axis=1)
    np.testing.assert_allclose(mha_out, np.array(layer.out_proj(mx.array(means))), rtol=1e-5, atol=1e-6)


def test_a_fully_masked_query_gives_the_output_bias_and_finite_gradients():
    layer, (q, k, v) = layer_and_inputs()
    mask = np.ones((5, 5), bool)
    mask[2] = False  # query 2 may attend to nothing
    additive = mx.where(mx.array(mask), 0.0, -mx.inf)
    out = np.array(layer(q, k, v, mask=additive))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 2], np.broadcast_to(np.array(layer.out_proj.bias), (2, 8)), atol=1e-7)

    def loss(model: Any) -> mx.array:
        return mx.sum(model(q, k, v, mask=additive) ** 2)

    _, grads = mlx_nn.value_and_grad(layer, loss)(layer)
    assert all(np.all(np.isfinite(np.array(g))) for _, g in tree_flatten(grads))
    # Every key masked for every query: the bias everywhere, and no NaN.
    none = np.array(layer(q, k, v, mask=mx.zeros((5, 5), dtype=mx.bool_)))
    np.testing.assert_allclose(none, np.broadcast_to(np.array(layer.out_proj.bias), (2, 5, 8)), atol=1e-7)


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (mx.array([[0.0, -1.0]]), ValueError, r"the Yat score is a ratio, so other values have no meaning; got -1\.0"),
        (mx.array([[0.0, mx.inf]]), ValueError, r"got inf"),
        (mx.array([[1, 0]]), TypeError, r"boolean \(True: may attend\) or additive floats \(0 / -inf\), got dtype"),
        ("lower", ValueError, r"a string mask must be 'causal'"),
        (np.ones((5, 5), bool), TypeError, r"mask must be None, 'causal' or an mx\.array"),
    ],
    ids=["additive-bias", "plus-inf", "integer", "string", "numpy"],
)
def test_other_masks_are_refused(mask, error, match):
    layer, (q, k, v) = layer_and_inputs(tk=2)
    with pytest.raises(error, match=match):
        layer(q, k, v, mask=mask)


def test_under_compile_a_refused_additive_mask_gives_nan():
    # mx.compile cannot read values, so a refused mask turns the output into NaN instead of raising.
    layer, (q, k, v) = layer_and_inputs()
    compiled = mx.compile(lambda x, mask: layer(x, x, x, mask=mask))
    good = mlx_nn.MultiHeadAttention.create_additive_causal_mask(5)
    np.testing.assert_allclose(np.array(compiled(q, good)), np.array(layer(q, q, q, mask=good)), rtol=1e-6, atol=1e-7)
    assert np.all(np.isnan(np.array(compiled(q, good - 1.0))))


def test_layer_parameters_names_shapes_and_options():
    layer = ymlx.YatMultiHeadAttention(8, 2, learnable_epsilon=True, epsilon=0.1)
    ours = {k: v.shape for k, v in tree_flatten(layer.parameters())}
    theirs = {k: v.shape for k, v in tree_flatten(mlx_nn.MultiHeadAttention(8, 2, bias=True).parameters())}
    assert ours == {**theirs, "alpha": (), "epsilon_raw": ()}  # MLX's own names, plus the Yat options
    assert float(softplus(np.array(layer.epsilon_raw, np.float64))) == pytest.approx(0.1, rel=1e-6)
    plain = ymlx.YatMultiHeadAttention(8, 2, bias=False, alpha=2.0)
    assert sorted(k for k, _ in tree_flatten(plain.parameters())) == [
        f"{p}.weight" for p in ("key_proj", "out_proj", "query_proj", "value_proj")
    ]
    assert list(layer.export_params()) == list(
        LayerSpec("yat_attention", 8, 8, heads=2, learnable_epsilon=True).param_shapes
    )
    with pytest.raises(ValueError, match="num_heads=3 must divide dims=8"):
        ymlx.YatMultiHeadAttention(8, 3)
    with pytest.raises(TypeError, match="bias must be a bool"):
        ymlx.YatMultiHeadAttention(8, 2, bias=0.5)
    with pytest.raises(ValueError, match="has no core names"):
        ymlx.YatMultiHeadAttention(8, 2, value_dims=4).export_params()


def test_layer_import_export_round_trip():
    spec = LayerSpec("yat_attention", 8, 8, heads=2, learnable_epsilon=True)
    values = {k[2:]: v for k, v in random_params(ModelSpec((spec, LayerSpec("token_mean", 8, 8)), (4, 8)), 0).items()}
    layer = ymlx.YatMultiHeadAttention.from_spec(spec).import_params(values)
    assert all(np.array_equal(layer.export_params()[k], values[k]) for k in values)
    assert np.array_equal(np.array(layer.key_proj.weight), values["k_kernel"])  # (out, in), as the core's


def test_save_and_load_weights_and_compile_give_identical_outputs(tmp_path):
    layer, (q, k, v) = layer_and_inputs(learnable_epsilon=True)
    layer.alpha = mx.array(0.7)
    expected = np.array(layer(q, k, v, mask="causal"))
    path = str(tmp_path / "attention.safetensors")
    layer.save_weights(path)
    fresh, _ = layer_and_inputs(seed=5, learnable_epsilon=True)
    assert not np.allclose(np.array(fresh(q, k, v, mask="causal")), expected)
    fresh.load_weights(path)
    np.testing.assert_array_equal(np.array(fresh(q, k, v, mask="causal")), expected)
    compiled = mx.compile(lambda a, b, c: fresh(a, b, c, mask="causal"))
    np.testing.assert_allclose(np.array(compiled(q, k, v)), expected, rtol=1e-6, atol=1e-7)


def test_the_softmax_baseline_is_mlx_s_attention_of_the_core_s_weights():
    # nn.MultiHeadAttention with bias=True is the core's "attention" layer: same projections, same score.
    layer, (q, k, v) = layer_and_inputs()
    mha = mlx_nn.MultiHeadAttention(8, 2, bias=True)
    mha.update({name: value for name, value in layer.parameters().items() if name.endswith("_proj")})
    p = {key: np.array(val).astype(np.float64) for key, val in tree_flatten(layer.parameters())}
    proj = [
        (np.array(x).astype(np.float64) @ p[f"{n}.weight"].T + p[f"{n}.bias"]).reshape(2, 5, 2, 4)
        for x, n in ((q, "query_proj"), (k, "key_proj"), (v, "value_proj"))
    ]
    a = softmax_attention(*proj).reshape(2, 5, 8)
    ref = a @ p["out_proj.weight"].T + p["out_proj.bias"]
    np.testing.assert_allclose(np.array(mha(q, k, v)), ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ YatEmbed


def test_embed_looks_up_rows_and_attends_as_the_core():
    mx.random.seed(0)
    layer = ymlx.YatEmbed(10, 4, alpha=1.5, epsilon=0.2)
    table = np.array(layer.weight)
    assert table.shape == (10, 4) and sorted(k for k, _ in tree_flatten(layer.parameters())) == ["weight"]
    ids = mx.array([[1, 9, 1], [0, 3, 3]])
    np.testing.assert_array_equal(np.array(layer(ids)), table[np.array(ids)])
    query = np.random.default_rng(0).normal(0, 1, (2, 3, 4)).astype(np.float32)
    ref = yat_embed_attend(query.astype(np.float64), table.astype(np.float64), alpha=1.5, epsilon=0.2)
    np.testing.assert_allclose(np.array(layer.attend(mx.array(query))), ref, rtol=1e-5, atol=1e-6)
    assert repr(layer) == "YatEmbed(10, 4, alpha=1.5, epsilon=0.2, learnable_epsilon=False, spherical=False)"


def test_embed_options_parameters_and_gradients():
    mx.random.seed(1)
    layer = ymlx.YatEmbed(6, 3, learnable_epsilon=True, spherical=True)
    assert {k: v.shape for k, v in tree_flatten(layer.parameters())} == {
        "weight": (6, 3),
        "alpha": (),
        "epsilon_raw": (),
    }
    layer.alpha = mx.array(2.0)
    query = np.random.default_rng(1).normal(0, 1, (5, 3)).astype(np.float32)
    eps = softplus(np.array(layer.epsilon_raw, np.float64))
    ref = yat_embed_attend(
        query.astype(np.float64), np.array(layer.weight, np.float64), alpha=2.0, epsilon=eps, spherical=True
    )
    np.testing.assert_allclose(np.array(layer.attend(mx.array(query))), ref, rtol=1e-5, atol=1e-6)

    def loss(model: Any) -> mx.array:  # tied: the lookup and the output layer share the table
        return mx.sum(model.attend(model(mx.array([0, 2]))))

    _, grads = mlx_nn.value_and_grad(layer, loss)(layer)
    assert {k for k, _ in tree_flatten(grads)} == {"weight", "alpha", "epsilon_raw"}
    assert all(np.all(np.isfinite(np.array(g))) for _, g in tree_flatten(grads))


def test_embed_refuses_non_integer_ids():
    layer = ymlx.YatEmbed(6, 3)
    with pytest.raises(TypeError, match="embedding ids must be an integer array, got mlx.core.float32"):
        layer(mx.array([0.0, 1.0]))
