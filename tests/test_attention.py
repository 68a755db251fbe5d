"""Yat attention and the Yat embedding in the core: values against a loop reference, gradients
against torch autograd and finite differences, masked rows, the hard cases, every namespace, errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from conftest import namespace_for, to_numpy

from yat_core.attention import (
    AttentionGrads,
    softmax_attention,
    softmax_attention_vjp,
    yat_attention,
    yat_attention_vjp,
    yat_attention_weights,
    yat_embed,
    yat_embed_attend,
)
from yat_core.product import softplus, yat_product

# ---------------------------------------------------------------- the reference


def reference_attention(q, k, v, mask=None, causal=False, alpha=1.0, epsilon=1e-5, spherical=False):
    """One score at a time, in float64: the definition written out, with no shared code."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    *batch, tq, heads, d = q.shape
    tk, dv = k.shape[-3], v.shape[-1]
    out = np.zeros((*batch, tq, heads, dv))
    allowed = np.ones((*batch, heads, tq, tk), bool)
    if mask is not None:
        allowed = allowed & np.broadcast_to(mask, allowed.shape)
    if causal:
        allowed = allowed & (np.arange(tq)[:, None] >= np.arange(tk)[None, :])
    for idx in np.ndindex(*batch, heads, tq):
        *b, h, i = idx
        scores, keep = [], []
        for j in range(tk):
            qi, kj = q[(*b, i, h)], k[(*b, j, h)]
            if spherical:
                qi = qi / max(np.linalg.norm(qi), 1e-12)
                kj = kj / max(np.linalg.norm(kj), 1e-12)
            dot = float(qi @ kj)
            dist = max(float(np.sum((qi - kj) ** 2)) if not spherical else 2.0 - 2.0 * dot, 0.0)
            scores.append(alpha * dot * dot / ((dist + epsilon) * math.sqrt(d)))
            keep.append(bool(allowed[(*b, h, i, j)]))
        kept = [s for s, m in zip(scores, keep) if m]
        if not kept:
            continue
        top = max(kept)
        weights = [math.exp(s - top) if m else 0.0 for s, m in zip(scores, keep)]
        total = sum(weights)
        out[(*b, i, h)] = sum(wt / total * v[(*b, j, h)] for j, wt in enumerate(weights))
    return out


def _qkv(batch=(2,), tq=3, tk=4, heads=2, d=3, dv=2, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(*batch, tq, heads, d)) * scale,
        rng.normal(size=(*batch, tk, heads, d)) * scale,
        rng.normal(size=(*batch, tk, heads, dv)),
    )


OPTION_CASES = {
    "plain": {},
    "alpha-eps": {"alpha": 1.7, "epsilon": 0.05},
    "causal": {"causal": True},
    "mask-per-key": {"mask": np.array([True, False, True, True])},
    "mask-full-and-causal": {"mask": np.array([[True] * 4, [False] * 4, [True, True, False, True]]), "causal": True},
    "spherical": {"spherical": True, "alpha": 2.0, "epsilon": 0.2},
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_values_equal_the_loop_reference(case):
    q, k, v = _qkv()
    opts = OPTION_CASES[case]
    got = yat_attention(q, k, v, **opts)
    np.testing.assert_allclose(got, reference_attention(q, k, v, **opts), rtol=1e-12, atol=1e-14, err_msg=case)


def test_weights_are_a_softmax_over_the_allowed_keys():
    q, k, _ = _qkv(batch=(), tq=3, tk=3)
    mask = np.array([[True, True, True], [False, True, True], [False, False, False]])
    a = yat_attention_weights(q, k, mask=mask)
    assert a.shape == (2, 3, 3)
    np.testing.assert_allclose(a.sum(axis=-1), [[1.0, 1.0, 0.0]] * 2, rtol=1e-12)
    assert np.all(a[:, ~mask] == 0.0)


def test_a_key_equal_to_the_query_has_the_clamped_distance():
    q = np.array([[[0.3, -1.2, 2.0]]])
    k = np.concatenate([q, np.zeros_like(q)], axis=0)  # the query itself, then the zero vector
    a = yat_attention_weights(q, k, epsilon=10.0)
    dot = float(np.sum(q * q))
    s0 = dot * dot / (10.0 * math.sqrt(3))  # distance 0 (clamped, never negative); the zero key scores 0
    np.testing.assert_allclose(a[0, 0], [1.0 / (1.0 + math.exp(-s0)), 1.0 / (1.0 + math.exp(s0))], rtol=1e-12)


# ---------------------------------------------------------------- gradients


def _torch_grads(q, k, v, g, opts, alpha=None, raw_eps=None):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as txp

    leaves = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (q, k, v)]
    kw = dict(opts)
    extra = []
    if alpha is not None:
        kw["alpha"] = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
        extra.append(kw["alpha"])
    if raw_eps is not None:
        raw = torch.tensor(raw_eps, dtype=torch.float64, requires_grad=True)
        kw["epsilon"] = softplus(raw, xp=txp)
        extra.append(raw)
    if "mask" in kw:
        kw["mask"] = torch.asarray(kw["mask"])
    out = yat_attention(*leaves, xp=txp, **kw)
    torch.sum(out * torch.tensor(g)).backward()
    return [leaf.grad.numpy() for leaf in leaves + extra]


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_vjp_equals_torch_autograd(case):
    q, k, v = _qkv(seed=1)
    g = np.random.default_rng(2).normal(size=(*q.shape[:-1], v.shape[-1]))
    opts = OPTION_CASES[case]
    want = _torch_grads(q, k, v, g, opts)
    got = yat_attention_vjp(q, k, v, g, **opts)
    assert got.alpha is None and got.epsilon is None
    for name, a, b in zip("qkv", got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{case} d/d{name}")


def test_vjp_of_learnable_alpha_and_epsilon_equals_torch_autograd():
    q, k, v = _qkv(seed=3)
    g = np.random.default_rng(4).normal(size=(*q.shape[:-1], v.shape[-1]))
    want = _torch_grads(q, k, v, g, {"causal": True}, alpha=0.9, raw_eps=-1.0)
    eps = softplus(np.asarray(-1.0))
    got = yat_attention_vjp(q, k, v, g, causal=True, alpha=np.asarray(0.9), epsilon=eps)
    d_raw = got.epsilon / (1.0 + np.exp(1.0))  # d softplus(raw) / d raw = sigmoid(raw)
    for name, a, b in zip(("q", "k", "v", "alpha", "epsilon_raw"), (*got[:4], d_raw), want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"d/d{name}")


def test_vjp_matches_finite_differences():
    q, k, v = _qkv(batch=(), tq=2, tk=3, heads=1, d=2, dv=2, seed=5)
    g = np.random.default_rng(6).normal(size=(2, 1, 2))
    mask = np.array([[True, True, False], [True, True, True]])
    got = yat_attention_vjp(q, k, v, g, mask=mask, epsilon=0.3)
    h = 1e-6
    for name, arr, grad in (("q", q, got.q), ("k", k, got.k), ("v", v, got.v)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(*arr.shape):
            up, down = arr.copy(), arr.copy()
            up[idx] += h
            down[idx] -= h
            args = {"q": q, "k": k, "v": v}
            f = []
            for a in (up, down):
                args[name] = a
                f.append(np.sum(g * yat_attention(args["q"], args["k"], args["v"], mask=mask, epsilon=0.3)))
            num[idx] = (f[0] - f[1]) / (2 * h)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8, err_msg=f"d/d{name}")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_fully_masked_row_has_zero_output_and_finite_gradients_under_autodiff(framework):
    q, k, v = _qkv(batch=(1,), tq=2, tk=3, heads=1, seed=7, scale=30.0)  # large norms: saturated scores
    mask = np.array([[False, False, False], [True, True, True]])
    g = np.ones((1, 2, 1, 2))
    if framework == "torch":
        grads = _torch_grads(q, k, v, g, {"mask": mask})
        out = yat_attention(q, k, v, mask=mask)
    else:
        jax = pytest.importorskip("jax")
        jnp = pytest.importorskip("jax.numpy")
        jax.config.update("jax_enable_x64", True)
        try:

            def loss(q, k, v):
                return jnp.sum(jnp.asarray(g) * yat_attention(q, k, v, mask=jnp.asarray(mask)))

            grads = [np.asarray(a) for a in jax.grad(loss, argnums=(0, 1, 2))(*(jnp.asarray(a) for a in (q, k, v)))]
            out = np.asarray(yat_attention(*(jnp.asarray(a) for a in (q, k, v)), mask=jnp.asarray(mask)))
        finally:
            jax.config.update("jax_enable_x64", False)
    assert np.all(out[:, 0] == 0.0) and np.all(np.isfinite(out))
    for grad in grads:
        assert np.all(np.isfinite(grad)), f"{framework}: non-finite gradient"
    assert np.all(grads[0][:, 0] == 0.0), "the masked query has a gradient"
    analytic = yat_attention_vjp(q, k, v, g, mask=mask)
    for name, a, b in zip("qkv", analytic, grads):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f"{framework} d/d{name}")


def test_hypothesis_vjp_equals_torch_autograd_over_shapes_and_masks():
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    pytest.importorskip("torch")

    @hypothesis.settings(max_examples=40, derandomize=True, deadline=None, database=None)
    @hypothesis.given(
        tq=st.integers(1, 5),
        tk=st.integers(1, 5),
        heads=st.integers(1, 3),
        d=st.integers(1, 4),
        causal=st.booleans(),
        spherical=st.booleans(),
        mask_seed=st.one_of(st.none(), st.integers(0, 2**16)),
        seed=st.integers(0, 2**16),
    )
    def check(tq, tk, heads, d, causal, spherical, mask_seed, seed):
        q, k, v = _qkv(batch=(2,), tq=tq, tk=tk, heads=heads, d=d, dv=2, seed=seed)
        opts: dict[str, Any] = {"causal": causal, "spherical": spherical, "epsilon": 0.1}
        if mask_seed is not None:
            opts["mask"] = np.random.default_rng(mask_seed).random((2, 1, tq, tk)) < 0.6
        g = np.random.default_rng(seed + 1).normal(size=(2, tq, heads, 2))
        want = _torch_grads(q, k, v, g, opts)
        got = yat_attention_vjp(q, k, v, g, **opts)
        for name, a, b in zip("qkv", got, want):
            assert np.all(np.isfinite(a)), name
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10, err_msg=f"d/d{name} {opts}")
        np.testing.assert_allclose(yat_attention(q, k, v, **opts), reference_attention(q, k, v, **opts), atol=1e-12)

    check()


# ---------------------------------------------------------------- every namespace

NAMESPACES = ("numpy", "torch", "jax", "mlx")


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_float32_on_every_namespace_equals_float64(namespace):
    xp = namespace_for(namespace)
    q, k, v = _qkv(seed=8)
    mask = np.array([True, True, False, True])
    want = reference_attention(q, k, v, mask=mask, causal=True)
    args = [xp.asarray(a.astype("float32")) for a in (q, k, v)]
    got = yat_attention(*args, mask=xp.asarray(mask), causal=True, xp=xp)
    assert str(got.dtype).endswith("float32")
    np.testing.assert_allclose(to_numpy(got), want, rtol=2e-5, atol=2e-6, err_msg=namespace)
    g = np.random.default_rng(9).normal(size=want.shape)
    grads = yat_attention_vjp(*args, xp.asarray(g.astype("float32")), mask=xp.asarray(mask), causal=True, xp=xp)
    ref = yat_attention_vjp(q, k, v, g, mask=mask, causal=True)
    assert isinstance(grads, AttentionGrads)
    for name, a, b in zip("qkv", grads[:3], ref[:3]):
        scale = float(np.max(np.abs(b)))
        np.testing.assert_allclose(to_numpy(a), b, atol=2e-5 * scale, err_msg=f"{namespace} d/d{name}")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"k": np.ones((2, 4, 2, 5))}, ValueError, "same head size"),
        ({"k": np.ones((2, 4, 3, 3))}, ValueError, "same number of heads"),
        ({"v": np.ones((2, 5, 2, 2))}, ValueError, "v must have k's batch, token and head axes"),
        ({"mask": np.ones((3, 3), bool)}, ValueError, "does not broadcast"),
        ({"mask": np.ones((3, 4))}, TypeError, "mask must be a boolean array"),
        ({"epsilon": 0.0}, ValueError, "epsilon must be a finite number > 0"),
        ({"q": np.ones((2, 3, 2, 3), np.float32)}, TypeError, "must share a dtype"),
        ({"q": np.ones((3, 3))}, ValueError, r"q must have shape \(..., tokens, heads, head_size\)"),
        ({"q": np.ones((2, 3, 2, 3), int)}, TypeError, "real floating"),
        ({"alpha": np.ones(2)}, ValueError, "alpha must be a scalar"),
        ({"causal": 1}, TypeError, "must be bools"),
    ],
)
def test_bad_input_is_a_clear_error(change, error, match):
    q, k, v = _qkv()
    args: dict[str, Any] = {"q": q, "k": k, "v": v, **change}
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(error, match=match):
        yat_attention(q, k, v, **args)


def test_vjp_rejects_a_gradient_of_the_wrong_shape():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="upstream gradient g must have the output's shape"):
        yat_attention_vjp(q, k, v, np.ones((2, 3, 2, 3)))


# ---------------------------------------------------------------- embedding


def test_embedding_looks_up_rows_and_attend_is_the_dense_product():
    table = np.random.default_rng(10).normal(size=(7, 4))
    ids = np.array([[0, 6, 3], [3, 3, 1]])
    np.testing.assert_array_equal(yat_embed(table, ids), table[ids])
    query = np.random.default_rng(11).normal(size=(2, 3, 4))
    got = yat_embed_attend(query, table, alpha=1.3, epsilon=0.1)
    assert got.shape == (2, 3, 7)
    np.testing.assert_array_equal(got, yat_product(query, table, alpha=1.3, epsilon=0.1))
    # a query equal to a row scores (q.q)^2 / eps there: the clamp holds the distance at 0
    np.testing.assert_allclose(yat_embed_attend(table[2], table, epsilon=1e-3)[2], np.sum(table[2] ** 2) ** 2 / 1e-3)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_embedding_on_every_namespace(namespace):
    xp = namespace_for(namespace)
    table = np.arange(12.0, dtype="float32").reshape(4, 3)
    ids = np.array([3, 0, 3], dtype="int32")
    np.testing.assert_array_equal(to_numpy(yat_embed(xp.asarray(table), xp.asarray(ids), xp=xp)), table[ids])


@pytest.mark.parametrize(
    ("table", "ids", "error", "match"),
    [
        (np.ones((4, 3)), np.array([0.0, 1.0]), TypeError, "embedding ids must be an integer array"),
        (np.ones((4, 3)), np.array([0, 4]), ValueError, r"ids must lie in \[0, 4\), got 4"),
        (np.ones((4, 3)), np.array([-1, 2]), ValueError, r"ids must lie in \[0, 4\), got -1"),
        (np.ones(4), np.array([0]), ValueError, "table must be 2-D"),
    ],
    ids=["float-ids", "too-large", "negative", "table-rank"],
)
def test_embedding_bad_ids_are_a_clear_error(table, ids, error, match):
    with pytest.raises(error, match=match):
        yat_embed(table, ids)


# ---------------------------------------------------------------- the softmax baseline


@pytest.mark.parametrize("case", ["plain", "causal", "mask-full-and-causal"])
def test_softmax_attention_and_its_vjp_equal_torch(case):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as txp

    q, k, v = _qkv(seed=12)
    opts = {key: val for key, val in OPTION_CASES[case].items()}
    g = np.random.default_rng(13).normal(size=(*q.shape[:-1], v.shape[-1]))
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    mask = opts.get("mask")
    topts = {**opts, "mask": torch.asarray(mask)} if mask is not None else opts
    out = softmax_attention(*leaves, xp=txp, **topts)
    torch.sum(out * torch.tensor(g)).backward()
    # torch's own attention where every query sees a key (it gives NaN on a fully masked row)
    if mask is None:
        heads_first = [t.detach().transpose(-3, -2) for t in leaves]
        want = torch.nn.functional.scaled_dot_product_attention(*heads_first, is_causal=opts.get("causal", False))
        np.testing.assert_allclose(out.detach().numpy(), want.transpose(-3, -2).numpy(), rtol=1e-12, atol=1e-14)
    else:
        assert np.all(out.detach().numpy()[:, 1] == 0.0)  # the fully masked query
    got = softmax_attention_vjp(q, k, v, g, **opts)
    assert got.alpha is None and got.epsilon is None
    for name, a, leaf in zip("qkv", got, leaves):
        np.testing.assert_allclose(a, leaf.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"{case} d/d{name}")
