"""yat_core.nn.nnx and yat_core.nn.linen: the Yat vision transformer, Yat attention and the Yat embedding.

The model of :func:`~yat_core.spec.vit_spec` (and of its softmax baseline, built on
Flax's own multi-head attention) against the core's :func:`~yat_core.mlp.mlp_forward`
in float64 and the core's training; the attention layer on its own against
:func:`yat_core.attention.yat_attention` on its own projections, with Flax's masks;
the embedding against :func:`yat_core.attention.yat_embed_attend`. Every test runs for
both Flax APIs (``[nnx]``, ``[linen]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx, serialization
from test_interchange import TRAINED_ATOL, assert_trains_like_the_core, tiny_data

from yat_core.attention import yat_attention, yat_embed_attend
from yat_core.config import AdamWConfig, TrainConfig
from yat_core.mlp import init_mlp_numpy, mlp_forward
from yat_core.nn import linen as ylinen
from yat_core.nn import nnx as ynnx
from yat_core.product import softplus
from yat_core.runners import make_runner
from yat_core.spec import ModelSpec, count_params, vit_softmax_spec, vit_spec
from yat_core.train import train

MODULES = {"nnx": ynnx, "linen": ylinen}
SPECS = {
    "yat": vit_spec,
    "softmax": vit_softmax_spec,
    "yat-spherical-learnable-eps-const-alpha": lambda: vit_spec(
        spherical=True, learnable_epsilon=True, epsilon=0.1, alpha=2.0
    ),
}


@pytest.fixture(params=list(MODULES))
def api(request: pytest.FixtureRequest) -> str:
    return request.param


def core_input(spec: ModelSpec, n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *spec.input_shape))


def core_logits(spec: ModelSpec, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.asarray(mlp_forward({k: v.astype(np.float64) for k, v in params.items()}, x, spec))


def assert_close(out: Any, ref: np.ndarray, what: str, rtol: float = 1e-5) -> None:
    out = np.asarray(out, np.float64)
    err = float(np.max(np.abs(out - ref)))
    assert out.shape == ref.shape and err <= rtol * max(1.0, float(np.max(np.abs(ref)))), f"{what}: error {err}"


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("name", list(SPECS))
def test_vit_computes_the_cores_forward(api, name):
    spec = SPECS[name]()
    module = MODULES[api]
    model = module.build_model(spec, 0)
    assert module.count_params(model) == count_params(spec)
    x = core_input(spec)
    assert_close(module.predict(model, x.astype(np.float32)), core_logits(spec, init_mlp_numpy(spec, 0), x), name)


def test_vit_is_built_from_the_yat_attention_and_the_softmax_baseline_from_flaxs_own(api):
    yat, softmax = MODULES[api].build_model(vit_spec(), 0), MODULES[api].build_model(vit_softmax_spec(), 0)
    if api == "nnx":
        assert isinstance(yat.layers[3], ynnx.YatMultiHeadAttention) and isinstance(yat.layers[4], ynnx.YatNMN)
        assert type(softmax.layers[3]) is nnx.MultiHeadAttention and isinstance(softmax.layers[4], nnx.Linear)
        assert [yat.layers[i] is None for i in (0, 7)] == [True, True]  # patches, token mean
        shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(yat.layers[3], nnx.Param)))
        soft_shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(softmax.layers[3], nnx.Param)))
        table = yat.layers[2].table.get_value().shape
    else:
        params, soft = yat.variables["params"], softmax.variables["params"]
        assert sorted(params) == ["1", "2", "3", "4", "5", "6", "8"]  # no patches (0), no token mean (7)
        shapes, soft_shapes = jax.tree.map(jnp.shape, params["3"]), jax.tree.map(jnp.shape, soft["3"])
        table = params["2"]["table"].shape
    projections = {
        **{p: {"kernel": (64, 4, 16), "bias": (4, 16)} for p in ("query", "key", "value")},
        "out": {"kernel": (4, 16, 64), "bias": (64,)},
    }
    assert shapes == {**projections, "alpha": ()} and soft_shapes == projections and table == (16, 64)


@pytest.mark.parametrize("name", ["yat", "softmax"])
def test_export_is_the_cores_names_layouts_and_bits_and_import_round_trips(api, name):
    spec = SPECS[name]()
    module = MODULES[api]
    exported = module.export_params(module.build_model(spec, 0))
    assert list(exported) == list(spec.param_shapes)
    assert {k: v.shape for k, v in exported.items()} == spec.param_shapes
    for key, value in init_mlp_numpy(spec, 0).items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    params = init_mlp_numpy(spec, 7)
    model = module.import_params(module.build_model(spec, 0), {k: v.astype(np.float64) for k, v in params.items()})
    for key, value in module.export_params(model).items():
        np.testing.assert_array_equal(value, params[key], err_msg=key)
    x = core_input(spec, seed=1)
    assert_close(module.predict(model, x.astype(np.float32)), core_logits(spec, params, x), "imported")


def test_head_split_follows_the_core(api):
    # A query kernel whose rows differ per head: a head mix-up in the (in, heads, head_dim) layout shows.
    spec = vit_spec()
    module = MODULES[api]
    params = init_mlp_numpy(spec, 0)
    params["3.q_kernel"] = params["3.q_kernel"] * np.repeat(np.arange(1.0, 5.0), 16)[:, None].astype(np.float32)
    model = module.import_params(module.build_model(spec, 0), params)
    kernel = (
        model.layers[3].query.kernel.get_value() if api == "nnx" else model.variables["params"]["3"]["query"]["kernel"]
    )
    np.testing.assert_array_equal(np.asarray(kernel)[:, 2, :], params["3.q_kernel"][32:48].T)
    x = core_input(spec, seed=2)
    assert_close(module.predict(model, x.astype(np.float32)), core_logits(spec, params, x), "scaled heads")


def _train_side_by_side(api: str, spec: ModelSpec) -> None:
    settings = dict(model="vit", epochs=1, batch_size=32, eval_batch=25, optimizer=AdamWConfig(weight_decay=0.5))
    runners: list[Any] = []

    def keep(spec: ModelSpec, cfg: TrainConfig) -> Any:
        runners.append(make_runner(spec, cfg))
        return runners[-1]

    data = tiny_data()
    native = train(
        TrainConfig(framework=api, **settings), spec=spec, data=data, runner_factory=keep, progress=False, log=None
    )
    core = train(
        TrainConfig(backend="numpy", **settings), spec=spec, data=data, runner_factory=keep, progress=False, log=None
    )
    assert native["params"] == count_params(spec) and native["steps_per_epoch"] == 3
    np.testing.assert_allclose(native["history"][0]["step_loss"], core["history"][0]["step_loss"], rtol=1e-5)
    assert native["final_test_loss"] == pytest.approx(core["final_test_loss"], rel=1e-5)
    ours, theirs = runners[0].export_params(), runners[1].export_params()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=TRAINED_ATOL["vit"], err_msg=f"{api}: {key}")


def test_runner_trains_the_vit_like_the_core(api):
    receipt = assert_trains_like_the_core(api, model="vit")
    assert receipt["framework"] == api and receipt["params"] == 46478


def test_runner_trains_the_softmax_baseline_like_the_core(api):
    # assert_trains_like_the_core's check, for the recipe's baseline spec (Flax's own attention)
    _train_side_by_side(api, vit_softmax_spec())


# ---------------------------------------------------------------- the attention layer


def make_attention(api: str, in_features: int = 8, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """The layer and its parameters as a ``{"query": {"kernel", "bias"}, ..., "alpha"}`` tree."""
    if api == "nnx":
        layer = ynnx.YatMultiHeadAttention(2, in_features, rngs=nnx.Rngs(0), **kwargs)
        return layer, nnx.to_pure_dict(nnx.state(layer, nnx.Param))
    layer = ylinen.YatMultiHeadDotProductAttention(2, **kwargs)
    variables = layer.init(jax.random.key(0), jnp.zeros((1, 3, in_features)))
    return layer.bind(variables), variables["params"]


def attend(api: str, layer: Any, *args: Any, **kwargs: Any) -> jax.Array:
    if api == "nnx":
        return nnx.jit(lambda m, *a: m(*a, **kwargs))(layer, *args)
    module, variables = layer.unbind()
    return jax.jit(lambda v, *a: module.apply(v, *a, **kwargs))(variables, *args)


def reference(params: dict[str, Any], xq: np.ndarray, xkv: np.ndarray, **options: Any) -> np.ndarray:
    """The core's attention (float64) on the layer's own projections."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    q, k, v = (
        np.einsum("...i,ihd->...hd", x, p[n]["kernel"]) + p[n]["bias"]
        for n, x in (("query", xq), ("key", xkv), ("value", xkv))
    )
    scalars = {"alpha": p["alpha"]} if "alpha" in p else {}
    if "epsilon_raw" in p:
        scalars["epsilon"] = softplus(p["epsilon_raw"])
    a = yat_attention(q, k, v, **scalars, **options)
    return np.einsum("...hd,hdo->...o", a, p["out"]["kernel"]) + p["out"]["bias"]


def test_attention_parameters_are_flaxs_layout(api):
    _, params = make_attention(api, 8, qkv_features=6, out_features=5, learnable_epsilon=True, epsilon=0.5)
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        **{p: {"kernel": (8, 2, 3), "bias": (2, 3)} for p in ("query", "key", "value")},
        "out": {"kernel": (2, 3, 5), "bias": (5,)},
        "alpha": (),
        "epsilon_raw": (),
    }
    assert float(params["alpha"]) == 1.0 and float(
        softplus(np.asarray(params["epsilon_raw"], np.float64))
    ) == pytest.approx(0.5)
    _, bare = make_attention(api, 8, use_bias=False, use_alpha=False)
    assert sorted(bare) == ["key", "out", "query", "value"] and "bias" not in bare["query"]
    with pytest.raises(ValueError, match="num_heads=2 must divide qkv_features=5"):
        make_attention(api, 8, qkv_features=5)


def test_attention_is_the_cores_on_its_projections(api):
    layer, params = make_attention(api, 8, learnable_epsilon=True, epsilon=0.3, spherical=True)
    rng = np.random.default_rng(0)
    xq, xkv = rng.normal(size=(2, 4, 8)), rng.normal(size=(2, 6, 8))
    f32 = [jnp.asarray(x, jnp.float32) for x in (xq, xkv)]
    ref = reference(params, xq, xkv, spherical=True)
    assert_close(attend(api, layer, f32[0], f32[1]), ref, "cross attention")  # value defaults to the key input
    assert_close(attend(api, layer, f32[0], f32[1], f32[1]), ref, "query, key, value")


def test_flax_masks_causal_and_a_fully_masked_row(api):
    make = nnx if api == "nnx" else nn
    layer, params = make_attention(api, 8)
    x = np.random.default_rng(1).normal(size=(2, 5, 8))
    x32 = jnp.asarray(x, jnp.float32)
    causal = np.tril(np.ones((5, 5), bool))
    ref = reference(params, x, x, mask=causal)
    # Flax's causal mask (float, (batch, 1, q, k)), the causal option, and both together agree with the core's.
    flax_causal = make.make_causal_mask(jnp.ones((2, 5)))
    assert flax_causal.dtype == jnp.float32 and flax_causal.shape == (2, 1, 5, 5)
    assert_close(attend(api, layer, x32, mask=flax_causal), ref, "make_causal_mask")
    assert_close(attend(api, layer, x32, is_causal=True), ref, "is_causal")
    assert_close(attend(api, layer, x32, mask=flax_causal, is_causal=True), ref, "both")
    # Padding: the second sample's last two tokens are padding; as queries they see no key at all.
    valid = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    pad = make.make_attention_mask(jnp.asarray(valid), jnp.asarray(valid))  # float, (batch, 1, q, k)
    no_keys = valid[:, None, :, None] & valid[:, None, None, :]
    ref = reference(params, x, x, mask=no_keys)
    out = np.asarray(attend(api, layer, x32, mask=pad))
    assert np.all(np.isfinite(out))
    assert_close(out, ref, "padding mask")
    # A fully masked query attends to nothing: what is left is the output projection's bias.
    np.testing.assert_allclose(out[1, 3:], np.broadcast_to(np.asarray(params["out"]["bias"]), (2, 8)), atol=1e-7)


def test_gradients_through_a_fully_masked_row_are_finite(api):
    layer, params = make_attention(api, 8)
    mask = jnp.asarray(np.array([[True] * 4, [False] * 4, [True] * 4, [True, False, False, False]]))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 8)), jnp.float32)
    if api == "nnx":
        grads = nnx.grad(lambda m: jnp.sum(m(x, mask=mask) ** 2))(layer)
        leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    else:
        module, variables = layer.unbind()
        grads = jax.grad(lambda v: jnp.sum(module.apply(v, x, mask=mask) ** 2))(variables)
        leaves = jax.tree.leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)


def test_nnx_split_merge_and_linen_serialization_keep_the_outputs(api):
    layer, _ = make_attention(api, 8, learnable_epsilon=True)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 8)), jnp.float32)
    before = np.asarray(attend(api, layer, x, is_causal=True))
    if api == "nnx":
        graphdef, state = nnx.split(layer)
        restored = jax.tree.map(lambda a: jnp.array(np.asarray(a)), state)  # a host copy, as a checkpoint holds it
        again = nnx.merge(graphdef, restored)
        assert isinstance(again, ynnx.YatMultiHeadAttention)
    else:
        module, variables = layer.unbind()
        again = module.bind(serialization.from_bytes(variables, serialization.to_bytes(variables)))
    np.testing.assert_array_equal(np.asarray(attend(api, again, x, is_causal=True)), before)


# ---------------------------------------------------------------- the embedding


def make_embed(api: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    if api == "nnx":
        embed = ynnx.YatEmbed(7, 4, rngs=nnx.Rngs(0), **kwargs)
        return embed, nnx.to_pure_dict(nnx.state(embed, nnx.Param))
    module = ylinen.YatEmbed(7, 4, **kwargs)
    variables = module.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))
    return module.bind(variables), variables["params"]


def test_embed_looks_up_rows_and_refuses_float_ids(api):
    embed, params = make_embed(api)
    assert jax.tree.map(jnp.shape, params) == {"embedding": (7, 4), "alpha": ()}
    ids = jnp.array([[6, 0, 3]])
    out = embed(ids)
    assert out.shape == (1, 3, 4)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(params["embedding"])[[6, 0, 3]])
    with pytest.raises(TypeError, match="embedding ids must be an integer array, got float32"):
        embed(jnp.array([1.0, 2.0]))


@pytest.mark.parametrize(
    "options",
    [{}, {"use_alpha": 2.0, "spherical": True}, {"use_alpha": False, "learnable_epsilon": True, "epsilon": 0.2}],
)
def test_embed_attend_is_the_cores(api, options):
    embed, params = make_embed(api, **options)
    table = np.asarray(params["embedding"], np.float64)
    query = np.random.default_rng(4).normal(size=(3, 2, 4))
    alpha = float(params["alpha"]) if "alpha" in params else options.get("use_alpha") or None
    epsilon = softplus(np.asarray(params["epsilon_raw"], np.float64)) if "epsilon_raw" in params else 1e-5
    ref = yat_embed_attend(query, table, alpha=alpha, epsilon=epsilon, spherical=options.get("spherical", False))
    out = embed.attend(jnp.asarray(query, jnp.float32))
    assert out.shape == (3, 2, 7)
    assert_close(out, ref, f"attend {options}")
    assert sorted(params) == sorted(["embedding"] + [n for n in ("alpha", "epsilon_raw") if n in params])


def test_embed_attend_trains_alpha_and_the_table_under_jit(api):
    embed, _ = make_embed(api)
    query = jnp.ones((2, 4))
    if api == "nnx":
        grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m.attend(query))))(embed)
        alpha, table = grads["alpha"][...], grads["embedding"][...]
    else:
        module, variables = embed.unbind()
        grads = jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, query, method="attend"))))(variables)
        alpha, table = grads["params"]["alpha"], grads["params"]["embedding"]
    assert float(jnp.abs(alpha)) > 0 and bool(jnp.any(table != 0)) and bool(jnp.all(jnp.isfinite(table)))
