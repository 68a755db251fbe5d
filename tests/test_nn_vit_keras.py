"""The Yat vision transformer in Keras 3 (yat_core.nn.keras), its attention and embedding layers, against the core.

Keras fixes its backend when it is first imported, so, as in ``test_nn_cnn_keras``, the
checks run in fresh processes: this file is also a script, ``python
tests/test_nn_vit_keras.py BACKEND OUT_DIR``, that runs the checks of :data:`CHECKS`
under ``KERAS_BACKEND=BACKEND`` and writes one JSON record per check. The default
backend (jax) runs every check; torch runs the :data:`QUICK` ones (the models' numbers
and their training against the core). The pytest process never imports Keras here.

The reference for every number is the core in NumPy float64: :func:`yat_core.mlp.mlp_forward`
and its training loop for the models, :func:`yat_core.attention.yat_attention` on the
layer's own projections for :class:`~yat_core.nn.keras.YatMultiHeadAttention`.
``test_nn_vit_tf`` imports the framework-free helpers of the first section.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers, also when run as a script

from keras_processes import BackendProcesses, Checks, assert_check, run_checks  # noqa: E402
from test_interchange import TRAINED_ATOL, core_logits, random_params, tiny_data  # noqa: E402

from yat_core.attention import yat_attention, yat_attention_weights, yat_embed_attend  # noqa: E402
from yat_core.mlp import init_mlp_numpy  # noqa: E402
from yat_core.optim import AdamWConfig  # noqa: E402
from yat_core.spec import ModelSpec, count_params, vit_softmax_spec, vit_spec  # noqa: E402

BACKENDS = ("jax", "torch")
#: Seconds one backend's process may take.
SUBPROCESS_TIMEOUT = 600

# ================================================================ framework-free, shared with test_nn_vit_tf

#: The vision transformer's parameters in the core's names and layouts (one block; the second is 5., 6.).
VIT_SHAPES = {
    "1.kernel": (64, 49),
    "2.table": (16, 64),
    "3.q_kernel": (64, 64),
    "3.q_bias": (64,),
    "3.o_kernel": (64, 64),
    "3.alpha": (),
    "4.kernel": (64, 64),
}


def images(n: int = 4, seed: int = 0) -> np.ndarray:
    """Float32 images in [0, 1], in the core's layout ``(n, 1, 28, 28)``."""
    return np.random.default_rng(seed).random((n, 1, 28, 28)).astype(np.float32)


def assert_logits(got: Any, want: np.ndarray, what: str) -> None:
    """Float32 against the float64 reference: within 1e-5 relative to the largest logit."""
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=what)


def assert_model_equals_the_core(module: Any, spec: ModelSpec) -> Any:
    """``build_model``'s initial values are the core's; with other values its logits are the core's; export round-trips."""
    model = module.build_model(spec, 5)
    fresh = module.export_params(model)
    expected = init_mlp_numpy(spec, 5)
    assert list(fresh) == list(expected) == list(spec.param_shapes)
    for name, value in expected.items():
        np.testing.assert_array_equal(fresh[name], value, err_msg=f"initial {name}")
    params = random_params(spec, 3)
    module.import_params(model, params)
    exported = module.export_params(model)
    for name, value in params.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=f"round trip {name}")
    x = images()
    assert_logits(module.predict(model, x), core_logits(params, x, spec), f"{spec.layers[3].kind} model")
    assert module.count_params(model) == count_params(spec)
    return model


def trains_spec_like_the_core(framework: str, spec: ModelSpec, **config: Any) -> Any:
    """``assert_trains_like_the_core``'s run (3 AdamW steps, weight decay 0.5) for any ``spec``; the native runner.

    The shared helper trains ``MODELS[model][0]``; the softmax baseline needs its spec given.
    """
    from yat_core.runners import make_runner
    from yat_core.train import TrainConfig, train

    settings = dict(model="vit", epochs=1, batch_size=32, eval_batch=25, optimizer=AdamWConfig(weight_decay=0.5))
    runners: list[Any] = []

    def keep(spec: ModelSpec, cfg: TrainConfig) -> Any:
        runners.append(make_runner(spec, cfg))
        return runners[-1]

    data = tiny_data()
    native = train(
        TrainConfig(framework=framework, **settings, **config),
        spec=spec,
        data=data,
        runner_factory=keep,
        progress=False,
        log=None,
    )
    core = train(
        TrainConfig(backend="numpy", **settings), spec=spec, data=data, runner_factory=keep, progress=False, log=None
    )
    assert native["params"] == count_params(spec) and native["steps_per_epoch"] == 3
    np.testing.assert_allclose(native["history"][0]["step_loss"], core["history"][0]["step_loss"], rtol=1e-5)
    assert native["final_test_loss"] == pytest.approx(core["final_test_loss"], rel=1e-5)
    ours, theirs = runners[0].export_params(), runners[1].export_params()
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=TRAINED_ATOL["vit"], err_msg=f"{framework}: {name}")
    return runners[0]


def core_attention(
    projections: dict[str, np.ndarray],
    query: np.ndarray,
    value: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    causal: bool = False,
    weights: bool = False,
    **options: Any,
) -> Any:
    """Keras-layout projections ``{query_kernel (D, H, d), query_bias (H, d), ..., output_kernel (H, d, D)}``
    around the core's :func:`yat_attention` in float64: the layer's expected output (and weights)."""
    p = {k: np.asarray(v, np.float64) for k, v in projections.items()}

    def project(x: np.ndarray, name: str) -> np.ndarray:
        out = np.einsum("btd,dhk->bthk", x.astype(np.float64), p[f"{name}_kernel"])
        return out + p[f"{name}_bias"] if f"{name}_bias" in p else out

    q, k, v = project(query, "query"), project(value, "key"), project(value, "value")
    core_mask = None if mask is None else np.asarray(mask, bool)[:, None]  # (B, 1, T, S)
    a = yat_attention(q, k, v, mask=core_mask, causal=causal, **options)
    out = np.einsum("bthk,hko->bto", a, p["output_kernel"]) + p.get("output_bias", 0.0)
    return (out, yat_attention_weights(q, k, mask=core_mask, causal=causal, **options)) if weights else out


MASK_CASES = {
    "causal": {"causal": True},
    # Query 0 may attend to nothing (a fully masked row); the others to keys 0 and 2.
    "mask-with-an-empty-row": {"mask": np.array([[False] * 4] + [[True, False, True, False]] * 4)[None].repeat(2, 0)},
}


def attention_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Query ``(2, 5, 8)`` and value ``(2, 4, 6)`` (cross-attention: other lengths and features)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, 5, 8)).astype(np.float32), rng.normal(size=(2, 4, 6)).astype(np.float32)


# ================================================================ the checks (run in the subprocess)

CHECKS = Checks()
check = CHECKS.register
#: The checks every backend runs; the default backend (jax) runs every check.
QUICK = ("vit-equals-the-core", "vit-softmax-is-keras-multi-head-attention", "vit-trains-like-the-core")


def _checks_of(backend: str) -> list[str]:
    return list(CHECKS) if backend == BACKENDS[0] else [name for name in CHECKS if name in QUICK]


@check("vit-equals-the-core")
def _(ctx: SimpleNamespace) -> None:
    model = assert_model_equals_the_core(ctx.knn, vit_spec())
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Patches", "Linear", "AddPositionEmbedding"] + ["SelfAttention", "Residual"] * 2 + [
        "GlobalAveragePooling1D",
        "Linear",
    ], kinds
    assert model.name == "yat_vit" and model.layout == (28, 28, 1)
    attention = model.layers[3].attention
    assert isinstance(attention, ctx.knn.YatMultiHeadAttention) and model.layers[3].residual
    assert tuple(attention.query_dense.kernel.shape) == (64, 4, 16)  # MultiHeadAttention's layout, not the core's
    assert tuple(attention.output_dense.kernel.shape) == (4, 16, 64)
    shapes = {k: v.shape for k, v in ctx.knn.export_params(model).items()}
    assert all(shapes[k] == v for k, v in VIT_SHAPES.items()), shapes


@check("vit-softmax-is-keras-multi-head-attention")
def _(ctx: SimpleNamespace) -> None:
    """The baseline's attention is Keras's own MultiHeadAttention, holding the core's projections exactly."""
    model = assert_model_equals_the_core(ctx.knn, vit_softmax_spec())
    attention = model.layers[3].attention
    assert type(attention) is ctx.keras.layers.MultiHeadAttention, type(attention)


@check("vit-trains-like-the-core")
def _(ctx: SimpleNamespace) -> None:
    for spec in (vit_spec(), vit_softmax_spec()):
        runner = trains_spec_like_the_core("keras", spec, keras_backend=ctx.backend)
        assert runner.backend == ctx.backend


@check("keras-file-round-trip")
def _(ctx: SimpleNamespace) -> None:
    spec = vit_spec(learnable_epsilon=True, epsilon=0.5)
    model = ctx.knn.import_params(ctx.knn.build_model(spec, 0), random_params(spec, 4))
    path = Path(tempfile.mkdtemp()) / "vit.keras"
    model.save(path)
    loaded = ctx.keras.saving.load_model(path)
    assert isinstance(loaded, ctx.knn.YatSequential) and ctx.knn.model_spec(loaded) == spec
    x = images()
    np.testing.assert_array_equal(ctx.knn.predict(loaded, x), ctx.knn.predict(model, x))


@check("attention-equals-the-core-with-keras-masks")
def _(ctx: SimpleNamespace) -> None:
    """Cross-attention with every Yat option; Keras's masks (bool and 0/1) and causal flag as the core's mask."""
    # Kernels from a fixed seed: spherical scores of a query nearly parallel to a key amplify
    # float32 rounding past the tolerance for a rare draw (seen once in CI).
    ctx.keras.utils.set_random_seed(0)
    query, value = attention_inputs()
    for options in ({}, {"use_alpha": 2.0, "spherical": True}, {"learnable_epsilon": True, "epsilon": 0.3}):
        layer = ctx.knn.YatMultiHeadAttention(2, 3, output_shape=7, **options)
        layer(query, value)
        weights = {
            f"{p}_{part}": ctx.ops.convert_to_numpy(getattr(getattr(layer, f"{p}_dense"), part))
            for p in ("query", "key", "value", "output")
            for part in ("kernel", "bias")
        }
        core_options = {
            "alpha": {True: 1.0, 2.0: 2.0}[options.get("use_alpha", True)],
            "epsilon": options.get("epsilon", 1e-5),  # learnable: softplus(raw) starts at epsilon
            "spherical": options.get("spherical", False),
        }
        for case, mask in MASK_CASES.items():
            core_mask = {"mask": mask["mask"]} if "mask" in mask else {}
            want, want_weights = core_attention(
                weights, query, value, weights=True, causal="causal" in mask, **core_mask, **core_options
            )
            for keras_mask in [mask["mask"], mask["mask"].astype("int32")] if "mask" in mask else [None]:
                out, scores = layer(
                    query,
                    value,
                    attention_mask=keras_mask,
                    use_causal_mask="causal" in mask,
                    return_attention_scores=True,
                )
                what = f"{options} {case}"
                np.testing.assert_allclose(ctx.ops.convert_to_numpy(out), want, rtol=1e-5, atol=1e-5, err_msg=what)
                np.testing.assert_allclose(ctx.ops.convert_to_numpy(scores), want_weights, atol=1e-6, err_msg=what)
                plain = layer(query, value, attention_mask=keras_mask, use_causal_mask="causal" in mask)
                np.testing.assert_allclose(ctx.ops.convert_to_numpy(plain), want, rtol=1e-5, atol=1e-5, err_msg=what)
        scores = ctx.ops.convert_to_numpy(
            layer(
                query, value, attention_mask=MASK_CASES["mask-with-an-empty-row"]["mask"], return_attention_scores=True
            )[1]
        )
        assert np.all(scores[:, :, 0] == 0) and np.all(np.isfinite(scores)), "a fully masked query attends to nothing"
        causal = ctx.ops.convert_to_numpy(
            layer(query, query[:, :, :6], use_causal_mask=True, return_attention_scores=True)[1]
        )
        assert np.all(np.triu(causal[0, 0], 1) == 0), "causal: no key after the query"


@check("attention-layer-is-keras-multi-head-attention")
def _(ctx: SimpleNamespace) -> None:
    """Names and shapes of the weights, config round trip, dropout in training only, refused options."""
    keras = ctx.keras
    layer = ctx.knn.YatMultiHeadAttention(2, 4, value_dim=3, learnable_epsilon=True, name="mha")
    query, value = attention_inputs()
    layer(query, value)
    assert isinstance(layer, keras.layers.MultiHeadAttention)
    shapes = {w.path: tuple(w.shape) for w in layer.weights}
    assert shapes == {
        "mha/query/kernel": (8, 2, 4),
        "mha/query/bias": (2, 4),
        "mha/key/kernel": (6, 2, 4),
        "mha/key/bias": (2, 4),
        "mha/value/kernel": (6, 2, 3),
        "mha/value/bias": (2, 3),
        "mha/attention_output/kernel": (2, 3, 8),
        "mha/attention_output/bias": (8,),
        "mha/alpha": (),
        "mha/epsilon_raw": (),
    }, shapes
    config = layer.get_config()
    assert config["learnable_epsilon"] and config["use_alpha"] is True and config["value_dim"] == 3
    clone = ctx.knn.YatMultiHeadAttention.from_config(config)
    clone(query, value)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(
        ctx.ops.convert_to_numpy(clone(query, value)), ctx.ops.convert_to_numpy(layer(query, value))
    )
    dropping = ctx.knn.YatMultiHeadAttention(2, 4, dropout=0.5, seed=1)
    dropping(query, value)
    still = ctx.knn.YatMultiHeadAttention(2, 4)
    still(query, value)
    still.set_weights(dropping.get_weights())
    inference = ctx.ops.convert_to_numpy(dropping(query, value, training=False))
    np.testing.assert_array_equal(inference, ctx.ops.convert_to_numpy(still(query, value)))
    trained = ctx.ops.convert_to_numpy(dropping(query, value, training=True))
    assert np.all(np.isfinite(trained)) and not np.allclose(trained, inference), "dropout did nothing in training"
    with pytest.raises(ValueError, match="no flash attention"):
        ctx.knn.YatMultiHeadAttention(2, 4, flash_attention=True)
    with pytest.raises(ValueError, match="attends over one axis"):
        ctx.knn.YatMultiHeadAttention(2, 4)(np.ones((2, 3, 3, 8), "float32"), np.ones((2, 3, 3, 8), "float32"))
    with pytest.raises(ValueError, match="epsilon"):
        ctx.knn.YatMultiHeadAttention(2, 4, epsilon=0.0)


@check("embed-is-keras-embedding-with-attend")
def _(ctx: SimpleNamespace) -> None:
    embed = ctx.knn.YatEmbed(10, 4, mask_zero=True, use_alpha=True, learnable_epsilon=True, epsilon=0.1, name="embed")
    ids = np.array([[1, 0, 9], [3, 3, 2]])
    h = ctx.ops.convert_to_numpy(embed(ids))
    table = ctx.ops.convert_to_numpy(embed.embeddings)
    assert {w.path: tuple(w.shape) for w in embed.weights} == {
        "embed/embeddings": (10, 4),
        "embed/alpha": (),
        "embed/epsilon_raw": (),
    }
    np.testing.assert_array_equal(h, table[ids])
    assert ctx.ops.convert_to_numpy(embed.compute_mask(ids)).tolist() == (ids != 0).tolist()
    query = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    want = yat_embed_attend(query.astype(np.float64), table.astype(np.float64), alpha=1.0, epsilon=0.1)
    np.testing.assert_allclose(ctx.ops.convert_to_numpy(embed.attend(query)), want, rtol=1e-5, atol=1e-6)
    constant = ctx.knn.YatEmbed(10, 4, use_alpha=2.0, spherical=True)
    constant.build()
    want = yat_embed_attend(
        query.astype(np.float64),
        ctx.ops.convert_to_numpy(constant.embeddings).astype(np.float64),
        alpha=2.0,
        spherical=True,
    )
    np.testing.assert_allclose(ctx.ops.convert_to_numpy(constant.attend(query)), want, rtol=1e-5, atol=1e-6)
    assert constant.count_params() == 40
    with pytest.raises(TypeError, match="integer"):
        embed(np.array([[1.0, 2.0]], np.float32))
    clone = ctx.knn.YatEmbed.from_config(embed.get_config())
    assert clone.get_config() == embed.get_config()


def main(backend: str, out: Path) -> None:
    """The subprocess: run the checks of ``backend`` under that Keras backend; write ``out/results.json``."""
    import keras
    from keras import ops

    from yat_core.nn import keras as knn

    ctx = SimpleNamespace(backend=backend, keras=keras, knn=knn, ops=ops)
    run_checks(CHECKS, _checks_of(backend), ctx, out)


# ================================================================ the pytest side


@pytest.fixture(scope="module")
def keras_vit_run(tmp_path_factory: pytest.TempPathFactory) -> BackendProcesses:
    """Every backend's check process, started together on first use."""
    return BackendProcesses(__file__, BACKENDS, tmp_path_factory.mktemp, SUBPROCESS_TIMEOUT)


@pytest.mark.parametrize(("backend", "check"), [(b, name) for b in BACKENDS for name in _checks_of(b)])
def test_keras_vit(backend: str, check: str, keras_vit_run: BackendProcesses) -> None:
    """One check of :data:`CHECKS`, run in the backend's own process."""
    assert_check(keras_vit_run, backend, check)


def test_core_attention_reference_is_the_core_on_merged_heads() -> None:
    """The reference's Keras-layout projections are the core's ``(out, in)`` kernels reshaped (a layout slip shows)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4))
    wq, wk, wv, wo = (rng.normal(size=(4, 4)) for _ in range(4))  # core layout (out, in), 2 heads of 2
    keras_layout = {
        "query_kernel": wq.T.reshape(4, 2, 2),
        "key_kernel": wk.T.reshape(4, 2, 2),
        "value_kernel": wv.T.reshape(4, 2, 2),
        "output_kernel": wo.T.reshape(2, 2, 4),
    }
    heads = [(x @ w.T).reshape(2, 3, 2, 2) for w in (wq, wk, wv)]
    want = yat_attention(*heads).reshape(2, 3, 4) @ wo.T
    np.testing.assert_allclose(core_attention(keras_layout, x, x), want, rtol=1e-12)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
