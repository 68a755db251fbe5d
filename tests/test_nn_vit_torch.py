"""yat_core.nn.torch: the vision transformer (Yat and softmax), YatMultiHeadAttention and YatEmbed.

The model references are the core in NumPy float64 (:func:`yat_core.mlp.mlp_forward` and its
analytic gradients) at the same float32 weights; the layer references are
:func:`yat_core.attention.yat_attention` and :func:`~yat_core.attention.yat_embed_attend` in
NumPy float64 on the layer's own float64 weights, so they agree to rounding.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_interchange import (  # noqa: E402
    assert_matches_core,
    assert_trains_like_the_core,
    core_logits,
    random_params,
    tiny_data,
)

from yat_core.attention import yat_attention, yat_attention_weights, yat_embed_attend  # noqa: E402
from yat_core.mlp import init_mlp_numpy  # noqa: E402
from yat_core.nn import torch as ynn  # noqa: E402
from yat_core.optim import AdamWConfig  # noqa: E402
from yat_core.product import softplus  # noqa: E402
from yat_core.runners import make_runner  # noqa: E402
from yat_core.spec import ModelSpec, count_params, vit_softmax_spec, vit_spec  # noqa: E402
from yat_core.train import TrainConfig, train  # noqa: E402

VIT_SPECS = {
    "yat": vit_spec,
    "softmax": vit_softmax_spec,
    "yat-spherical-learnable-eps-constant-alpha": lambda: vit_spec(
        spherical=True, learnable_epsilon=True, epsilon=0.1, alpha=2.0
    ),
}


def pixels(n: int, spec: ModelSpec, seed: int = 0) -> np.ndarray:
    """Float32 inputs in [0, 1] in the core's layout ``(n, *input_shape)``."""
    return np.random.default_rng(seed).uniform(0, 1, (n, *spec.input_shape)).astype(np.float32)


def vit_params(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """:func:`random_params` with the kernels, biases and tables halved (N(0, 0.15)).

    Unlike any initialisation still, but at N(0, 0.3) the 64-feature layers drive the
    logits into the hundreds, where float32 rounding alone exceeds the 1e-5 they are held to.
    """
    params = random_params(spec, seed)
    half = ("kernel", "bias", "table")
    return {k: (v * np.float32(0.5)) if k.endswith(half) else v for k, v in params.items()}


def torch_loss_and_grads(model: torch.nn.Module, x: np.ndarray, y: np.ndarray):
    """PyTorch's loss and autograd gradients under the core's names.

    The gradients go through ``export_params`` of a copy of the model holding them as
    its values, so the attention layers' ``in_proj_weight`` splits into ``q_kernel``,
    ``k_kernel``, ``v_kernel`` exactly as the weights do. ``x`` is flat ``(n, 784)``,
    which the model reshapes; no logits, as ``core_logits`` takes the core's layout:
    they are checked apart.
    """
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y).long())
    loss.backward()
    holder = copy.deepcopy(model)
    with torch.no_grad():
        for held, p in zip(holder.parameters(), model.parameters()):
            held.copy_(p.grad)
    return loss.item(), ynn.export_params(holder)


# ------------------------------------------------------------------ the models


@pytest.mark.parametrize("case", VIT_SPECS)
def test_build_model_of_the_vit_is_the_core_model(case):
    spec = VIT_SPECS[case]()
    model = ynn.build_model(spec, 3)
    assert ynn.count_params(model) == count_params(spec)
    exported, expected = ynn.export_params(model), init_mlp_numpy(spec, 3)
    assert list(exported) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    x = pixels(6, spec)
    logits = ynn.predict(model, x)
    np.testing.assert_allclose(logits, core_logits(expected, x, spec), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # flat pixels are reshaped to (n, 1, 28, 28): the same numbers
        np.testing.assert_array_equal(model(torch.from_numpy(x.reshape(6, 784))).numpy(), logits)


def test_vit_children_are_torch_layers_holding_the_core_weights():
    yat, soft = ynn.build_model(vit_spec(), 0), ynn.build_model(vit_softmax_spec(), 0)
    assert [type(c).__name__ for c in yat] == [
        "_Patches",
        "_Linear",
        "_PositionTable",
        "_YatSelfAttention",
        "_ResidualYatNMN",
        "_YatSelfAttention",
        "_ResidualYatNMN",
        "_TokenMean",
        "_Linear",
    ]
    assert isinstance(yat[0], torch.nn.Unfold) and isinstance(yat[3], ynn.YatMultiHeadAttention)
    # The softmax baseline is PyTorch's own multi-head attention, batch first, its in_proj the stacked q, k, v.
    attention = soft[3]
    assert type(attention).__mro__[1] is torch.nn.MultiheadAttention and attention.batch_first
    init = init_mlp_numpy(vit_softmax_spec(), 0)
    np.testing.assert_array_equal(
        attention.in_proj_weight.detach().numpy(), np.concatenate([init[f"3.{p}_kernel"] for p in "qkv"])
    )
    np.testing.assert_array_equal(attention.out_proj.weight.detach().numpy(), init["3.o_kernel"])
    assert [name for name in yat.state_dict() if name.startswith("3.")] == [
        "3.in_proj_weight",
        "3.in_proj_bias",
        "3.alpha",
        "3.out_proj.weight",
        "3.out_proj.bias",
    ]
    assert list(yat.state_dict())[:5] == ["1.weight", "1.bias", "2.table", "3.in_proj_weight", "3.in_proj_bias"]


@pytest.mark.parametrize("case", VIT_SPECS)
def test_vit_values_and_gradients_match_the_core(case):
    spec = VIT_SPECS[case]()
    params = vit_params(spec, 1)
    model = ynn.import_params(ynn.YatModel(spec), params)
    x = pixels(6, spec, seed=1)
    np.testing.assert_allclose(ynn.predict(model, x), core_logits(params, x, spec), rtol=1e-5, atol=1e-6)
    assert_matches_core(torch_loss_and_grads, model, params, spec, case, n=6)


def test_torch_export_of_the_vit_with_a_dynamic_batch():
    spec = vit_spec()
    model = ynn.import_params(ynn.YatModel(spec), vit_params(spec, 6))
    program = torch.export.export(
        model, (torch.from_numpy(pixels(4, spec)),), dynamic_shapes=({0: torch.export.Dim("batch", min=2)},)
    )
    x = torch.from_numpy(pixels(9, spec, seed=9))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-6, atol=1e-6)


def test_export_import_round_trip_and_a_refused_mapping():
    spec = vit_spec(learnable_epsilon=True)
    params = random_params(spec, 4)
    model = ynn.import_params(ynn.YatModel(spec), params)
    exported = ynn.export_params(model)
    assert list(exported) == list(spec.param_shapes)
    for name, value in params.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    bad = dict(params, **{"3.q_kernel": np.zeros((64, 192), np.float32)})  # PyTorch's in_proj is not a core name
    with pytest.raises(ValueError, match=r"3\.q_kernel has shape \(64, 192\), expected \(64, 64\)"):
        ynn.import_params(ynn.build_model(spec, 0), bad)
    before = ynn.export_params(model)
    with pytest.raises(ValueError, match=r"missing 5\.o_bias"):
        ynn.import_params(model, {k: v for k, v in params.items() if k != "5.o_bias"})
    assert all(np.array_equal(before[k], v) for k, v in ynn.export_params(model).items())


# ------------------------------------------------------------------ training


def test_runner_trains_the_vit_like_the_core():
    receipt = assert_trains_like_the_core("torch", model="vit")
    assert receipt["framework"] == "torch" and receipt["params"] == 46478


def test_runner_trains_the_softmax_vit_like_the_core():
    # As assert_trains_like_the_core, with the baseline spec: three AdamW steps, a strong weight decay.
    settings = dict(model="vit", epochs=1, batch_size=32, eval_batch=25, optimizer=AdamWConfig(weight_decay=0.5))
    runners: list = []

    def keep(spec, cfg):
        runners.append(make_runner(spec, cfg))
        return runners[-1]

    spec, data = vit_softmax_spec(), tiny_data()
    receipts = [
        train(TrainConfig(**settings, **where), spec=spec, data=data, runner_factory=keep, progress=False, log=None)
        for where in ({"framework": "torch"}, {"backend": "numpy"})
    ]
    assert receipts[0]["params"] == 46474 and receipts[0]["steps_per_epoch"] == 3
    np.testing.assert_allclose(
        receipts[0]["history"][0]["step_loss"], receipts[1]["history"][0]["step_loss"], rtol=1e-5
    )
    assert receipts[0]["final_test_loss"] == pytest.approx(receipts[1]["final_test_loss"], rel=1e-5)
    ours, theirs = (r.export_params() for r in runners)
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=1e-5, err_msg=name)


# ------------------------------------------------------------------ YatMultiHeadAttention

LAYER_OPTIONS = {
    "default": {},
    "no-bias": {"bias": False},
    "constant-alpha": {"alpha": math.sqrt(2)},
    "no-alpha": {"alpha": False},
    "spherical-learnable-epsilon": {"spherical": True, "learnable_epsilon": True, "epsilon": 0.1},
}


def _layer(seed: int = 0, **options) -> ynn.YatMultiHeadAttention:
    torch.manual_seed(seed)
    return ynn.YatMultiHeadAttention(8, 2, dtype=torch.float64, **options)


def _tokens(n: int, t: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, (n, t, 8)))


def core_mha(layer: ynn.YatMultiHeadAttention, q_in, k_in, v_in, mask=None, causal=False):
    """The core's output and per-head weights for the layer's own weights (NumPy float64)."""
    params = layer.export_params()
    spec = layer.spec

    def project(x, p):
        out = np.asarray(x) @ params[f"{p}_kernel"].T
        return out + params[f"{p}_bias"] if f"{p}_bias" in params else out

    q, k, v = (project(x, p).reshape(*x.shape[:-1], 2, 4) for x, p in zip((q_in, k_in, v_in), "qkv"))
    options = {
        "alpha": params.get("alpha", spec.alpha),
        "epsilon": softplus(params["epsilon_raw"]) if spec.learnable_epsilon else spec.epsilon,
        "spherical": spec.spherical,
        "mask": mask,
        "causal": causal,
    }
    out = project(yat_attention(q, k, v, **options).reshape(q_in.shape), "o")
    return out, yat_attention_weights(q, k, **options)


@pytest.mark.parametrize("case", LAYER_OPTIONS)
def test_layer_is_the_core_attention_with_torchs_parameters(case):
    layer = _layer(1, **LAYER_OPTIONS[case])
    names = [name for name, _ in layer.named_parameters()]
    expected = ["in_proj_weight", "in_proj_bias", "alpha", "epsilon_raw", "out_proj.weight", "out_proj.bias"]
    assert names == [n for n in expected if n in names]
    assert tuple(layer.in_proj_weight.shape) == (24, 8) and tuple(layer.out_proj.weight.shape) == (8, 8)
    assert ("in_proj_bias" in names) == ("out_proj.bias" in names) == (case != "no-bias")
    assert ("alpha" in names) == (case in ("default", "no-bias", "spherical-learnable-epsilon"))
    assert ("epsilon_raw" in names) == (case == "spherical-learnable-epsilon")
    # The core's names are row blocks of in_proj_weight, in q, k, v order.
    params = layer.export_params()
    np.testing.assert_array_equal(params["k_kernel"], layer.in_proj_weight.detach().numpy()[8:16])
    q_in, kv = _tokens(3, 5, 2), _tokens(3, 7, 3)  # cross-attention: 5 queries, 7 keys
    out, weights = layer(q_in, kv, kv, average_attn_weights=False)
    ref_out, ref_weights = core_mha(layer, q_in, kv, kv)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights.detach().numpy(), ref_weights, rtol=1e-10, atol=1e-12)
    averaged = layer(q_in, kv, kv)[1]
    np.testing.assert_allclose(averaged.detach().numpy(), ref_weights.mean(axis=1), rtol=1e-10, atol=1e-12)
    assert layer(q_in, kv, kv, need_weights=False)[1] is None


def test_masks_in_torchs_convention():
    layer, x = _layer(2), _tokens(2, 5, 4)
    padding = torch.tensor([[False, False, False, True, True], [False] * 5])  # True: a key to ignore
    pairs = torch.rand(2 * 2, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.3  # (N * heads, L, S)
    pairs[:, :, 0] = False  # every query keeps a key
    out, weights = layer(x, x, x, key_padding_mask=padding, attn_mask=pairs, average_attn_weights=False)
    allowed = ~padding.numpy()[:, None, None, :] & ~pairs.numpy().reshape(2, 2, 5, 5)
    ref_out, ref_weights = core_mha(layer, x, x, x, mask=allowed)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights.detach().numpy(), ref_weights, rtol=1e-10, atol=1e-12)
    # PyTorch's own multi-head attention zeroes the same weights for the same masks.
    theirs = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    _, their_weights = theirs(x, x, x, key_padding_mask=padding, attn_mask=pairs, average_attn_weights=False)
    np.testing.assert_array_equal(weights.detach().numpy() == 0, their_weights.detach().numpy() == 0)
    # A float mask of 0 and -inf (PyTorch's additive form) means the same; other additive values are refused.
    additive = torch.zeros(5, 5, dtype=torch.float64).masked_fill(pairs[0], -math.inf)
    torch.testing.assert_close(layer(x, x, x, attn_mask=additive)[0], layer(x, x, x, attn_mask=pairs[0])[0])
    with pytest.raises(ValueError, match="float mask that PyTorch adds to softmax scores"):
        layer(x, x, x, attn_mask=torch.full((5, 5), -1.0, dtype=torch.float64))
    with pytest.raises(TypeError, match="key_padding_mask must be a boolean tensor"):
        layer(x, x, x, key_padding_mask=padding.long())
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(L, S\) = \(5, 5\)"):
        layer(x, x, x, attn_mask=pairs[:, :4])


def test_causal_and_a_fully_masked_row():
    layer, x = _layer(3), _tokens(2, 4, 5)
    above = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)  # PyTorch's causal mask: True above
    causal, weights = layer(x, x, x, is_causal=True)
    np.testing.assert_allclose(causal.detach().numpy(), core_mha(layer, x, x, x, causal=True)[0], rtol=1e-10)
    torch.testing.assert_close(causal, layer(x, x, x, attn_mask=above)[0], rtol=0, atol=0)
    subsequent = torch.nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64)
    torch.testing.assert_close(causal, layer(x, x, x, attn_mask=subsequent, is_causal=True)[0], rtol=0, atol=0)
    assert torch.all(weights[:, 0, 1:] == 0) and torch.all(weights[:, :, 0] > 0)
    # Every key of sample 0 masked: zero weights, output the output projection's bias, finite gradients.
    x = x.clone().requires_grad_(True)
    padding = torch.tensor([[True] * 4, [False] * 4])
    out, weights = layer(x, x, x, key_padding_mask=padding, is_causal=True)
    assert torch.all(weights[0] == 0) and torch.all(weights[1].sum(-1) > 0.99)
    torch.testing.assert_close(out[0], layer.out_proj.bias.expand(4, 8), rtol=0, atol=0)
    out.square().sum().backward()
    grads = [x.grad, *(p.grad for p in layer.parameters())]
    assert all(torch.isfinite(g).all() for g in grads)


def test_batch_first_false_and_unbatched_inputs():
    batch_first = _layer(4)
    seq_first = _layer(4, batch_first=False)
    x, padding = _tokens(3, 5, 6), torch.tensor([[False] * 4 + [True]] * 3)
    out, weights = batch_first(x, x, x, key_padding_mask=padding)
    seq_out, seq_weights = seq_first(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), key_padding_mask=padding)
    torch.testing.assert_close(seq_out, out.transpose(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(seq_weights, weights, rtol=0, atol=0)  # weights are (N, L, S) either way
    one, one_weights = seq_first(x[1], x[1], x[1], key_padding_mask=padding[1], average_attn_weights=False)
    torch.testing.assert_close(one, out[1], rtol=1e-12, atol=1e-12)
    assert one_weights.shape == (2, 5, 5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embed_dim": 8, "num_heads": 3}, ValueError, "num_heads=3 must divide embed_dim=8"),
        ({"embed_dim": 8, "num_heads": 2, "bias": 0.5}, TypeError, "bias must be a bool"),
        ({"embed_dim": 8.0, "num_heads": 2}, TypeError, "embed_dim must be a positive integer"),
        ({"embed_dim": 8, "num_heads": 2, "epsilon": 0.0}, ValueError, "epsilon"),
        ({"embed_dim": 8, "num_heads": 2, "alpha": "big"}, ValueError, "alpha must be True"),
    ],
    ids=["heads", "constant-bias", "float-size", "epsilon", "alpha"],
)
def test_layer_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ynn.YatMultiHeadAttention(**kwargs)


def test_layer_refuses_inputs_that_do_not_fit():
    layer = ynn.YatMultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"key must have 8 features last, got shape \(2, 5, 6\)"):
        layer(torch.zeros(2, 5, 8), torch.zeros(2, 5, 6), torch.zeros(2, 5, 6))
    with pytest.raises(ValueError, match="all be batched"):
        layer(torch.zeros(2, 5, 8), torch.zeros(5, 8), torch.zeros(5, 8))


# array_api_compat's namespace helpers, reached through the causal mask's device, are lru_cache-wrapped.
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`-wrapped function")
def test_state_dict_save_load_export_and_compile():
    layer = ynn.YatMultiHeadAttention(8, 2, learnable_epsilon=True, spherical=False)
    x, padding = torch.randn(3, 5, 8), torch.tensor([[False] * 4 + [True]] * 3)
    expected = layer(x, x, x, key_padding_mask=padding, is_causal=True)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    loaded = ynn.YatMultiHeadAttention(8, 2, learnable_epsilon=True)
    loaded.load_state_dict(torch.load(buffer))
    for got, want in zip(loaded(x, x, x, key_padding_mask=padding, is_causal=True), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert list(loaded.state_dict()) == ["in_proj_weight", "in_proj_bias", "alpha", "epsilon_raw"] + [
        "out_proj.weight",
        "out_proj.bias",
    ]

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = layer

        def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
            return self.attention(x, x, x, key_padding_mask=padding, need_weights=False, is_causal=True)[0]

    # A key padding mask fixes the batch size of the exported program (the core checks the mask's shape
    # with NumPy, which reads the sizes); the model, which passes none, exports with a dynamic batch.
    program = torch.export.export(SelfAttention(), (x, padding))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x, padding), expected[0], rtol=1e-6, atol=1e-6)
    assert list(program.graph_signature.parameters) == [f"attention.{name}" for name, _ in layer.named_parameters()]
    # aot_eager traces what inductor would (Dynamo, then AOT autograd) without compiling C++.
    torch._dynamo.reset()
    compiled = torch.compile(SelfAttention(), backend="aot_eager", fullgraph=True)
    out = compiled(x, padding)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    eager = SelfAttention()(x, padding)
    eager.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    for got, p in zip(compiled_grads, layer.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ YatEmbed

EMBED_OPTIONS = {
    "default": {},
    "constant-alpha": {"alpha": 0.5},
    "no-alpha": {"alpha": False},
    "spherical-learnable-epsilon": {"spherical": True, "learnable_epsilon": True, "epsilon": 0.2},
}


@pytest.mark.parametrize("case", EMBED_OPTIONS)
def test_embed_looks_up_rows_and_attends_as_the_core(case):
    torch.manual_seed(0)
    emb = ynn.YatEmbed(11, 6, dtype=torch.float64, **EMBED_OPTIONS[case])
    names = [name for name, _ in emb.named_parameters()]
    assert names[0] == "weight" and tuple(emb.weight.shape) == (11, 6)
    assert ("alpha" in names) == (case in ("default", "spherical-learnable-epsilon"))
    assert ("epsilon_raw" in names) == (case == "spherical-learnable-epsilon")
    ids = torch.tensor([[3, 0, 10], [3, 3, 7]])
    rows = emb(ids)
    assert rows.shape == (2, 3, 6)
    torch.testing.assert_close(rows, emb.weight[ids], rtol=0, atol=0)
    torch.testing.assert_close(rows, torch.nn.functional.embedding(ids, emb.weight), rtol=0, atol=0)
    query = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (4, 2, 6)))
    scores = emb.attend(query)
    spec = emb.spec
    table = emb.weight.detach().numpy()
    alpha = emb.alpha.item() if emb.alpha is not None else spec.alpha
    epsilon = softplus(emb.epsilon_raw.detach().numpy()) if spec.learnable_epsilon else spec.epsilon
    ref = yat_embed_attend(query.numpy(), table, alpha=alpha, epsilon=epsilon, spherical=spec.spherical)
    assert scores.shape == (4, 2, 11)
    np.testing.assert_allclose(scores.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    # Both uses train the same table.
    (emb(ids).sum() + scores.sum()).backward()
    assert emb.weight.grad is not None and torch.isfinite(emb.weight.grad).all()


def test_embed_refuses_ids_that_are_not_integers_and_keeps_state_dict():
    emb = ynn.YatEmbed(5, 3)
    with pytest.raises(TypeError, match="embedding ids must be an integer array, got torch.float32"):
        emb(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="embedding_dim must be a positive integer"):
        ynn.YatEmbed(5, 3.5)
    assert list(emb.state_dict()) == ["weight", "alpha"]
    other = ynn.YatEmbed(5, 3)
    other.load_state_dict(emb.state_dict())
    torch.testing.assert_close(other.attend(torch.ones(2, 3)), emb.attend(torch.ones(2, 3)), rtol=0, atol=0)
    assert repr(ynn.YatEmbed(5, 3, alpha=2.0)) == (
        "YatEmbed(5, 3, alpha=2.0, epsilon=1e-05, learnable_epsilon=False, spherical=False)"
    )
