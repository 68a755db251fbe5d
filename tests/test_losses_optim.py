"""Tests for yat_core.losses (cross-entropy, accuracy) and yat_core.optim (AdamW)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import namespace_for, to_numpy

from yat_core.losses import count_correct, cross_entropy_grad, log_softmax, one_hot, softmax_cross_entropy
from yat_core.optim import AdamWConfig, AdamWState, adamw_init, adamw_update

# ---------------------------------------------------------------- cross-entropy


def reference_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean of ``logsumexp(z) - z[label]`` in float64 (NumPy's pairwise logaddexp)."""
    z = np.asarray(logits, dtype=np.float64)
    lse = np.logaddexp.reduce(z, axis=-1)
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


@pytest.mark.parametrize("seed", range(4))
def test_cross_entropy_equals_log_sum_exp_formula(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(16, 10))
    labels = rng.integers(0, 10, 16)
    got = float(softmax_cross_entropy(logits, labels))
    assert got == pytest.approx(reference_cross_entropy(logits, labels), rel=1e-13), f"seed {seed}"


def test_cross_entropy_of_uniform_logits_is_log_classes():
    assert float(softmax_cross_entropy(np.zeros((2, 4)), np.array([0, 3]))) == pytest.approx(math.log(4), rel=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cross_entropy_is_finite_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0], [1e4, 1e4, -1e4]], dtype=dtype)
    labels = np.array([1, 1, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = softmax_cross_entropy(logits, labels)
        lsm = log_softmax(logits)
    assert loss.dtype == dtype
    assert np.isfinite(loss), f"{dtype.__name__} logits ±1e4: loss {loss}"
    # row 0: 2e4, row 1: 0 (exp(5 - 1e4) underflows), row 2: log 2
    assert float(loss) == pytest.approx((2e4 + 0.0 + math.log(2)) / 3, rel=1e-6)
    assert float(loss) == pytest.approx(reference_cross_entropy(logits, labels), rel=1e-6)
    assert np.all(np.isfinite(lsm))


def test_log_softmax_rows_are_normalised():
    z = np.random.default_rng(0).normal(size=(5, 7))
    np.testing.assert_allclose(np.exp(log_softmax(z)).sum(axis=-1), 1.0, rtol=1e-14)


def test_one_hot():
    out = one_hot(np.array([2, 0], dtype=np.uint8), 3, np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0]])


def test_cross_entropy_grad_matches_finite_differences():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 5))
    labels = np.array([0, 4, 2, 2])
    grad = cross_entropy_grad(logits, labels)
    h = 1e-6
    fd = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        p, m = logits.copy(), logits.copy()
        p[idx] += h
        m[idx] -= h
        fd[idx] = (float(softmax_cross_entropy(p, labels)) - float(softmax_cross_entropy(m, labels))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int32, np.int64])
def test_count_correct(label_dtype):
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 0.0]])
    labels = np.array([1, 2, 2, 0], dtype=label_dtype)
    n = count_correct(logits, labels)
    assert int(n) == 2, f"labels {label_dtype.__name__}: {int(n)} correct, expected 2"
    assert np.issubdtype(np.asarray(n).dtype, np.integer)


def test_losses_on_every_backend_match_numpy(backend_name):
    xp = namespace_for(backend_name)
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4, size=(32, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 32).astype(np.int32)
    lx, ly = xp.asarray(logits), xp.asarray(labels)
    loss = float(to_numpy(softmax_cross_entropy(lx, ly, xp=xp)))
    assert loss == pytest.approx(reference_cross_entropy(logits, labels), rel=1e-5), backend_name
    np.testing.assert_allclose(
        to_numpy(cross_entropy_grad(lx, ly, xp=xp)),
        cross_entropy_grad(logits, labels),
        rtol=1e-5,
        atol=1e-7,
        err_msg=f"{backend_name}: cross_entropy_grad",
    )
    assert int(to_numpy(count_correct(lx, ly, xp=xp))) == int(np.sum(np.argmax(logits, -1) == labels)), backend_name


# ---------------------------------------------------------------- AdamW


def _random_problem(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = {"k": rng.normal(size=(3, 4)), "b": rng.normal(size=5), "a": np.asarray(1.0)}
    grads = [
        {name: rng.normal(scale=10.0 ** rng.integers(-3, 2), size=v.shape) for name, v in params.items()}
        for _ in range(20)
    ]
    cast = lambda d: {k: np.asarray(v, dtype=dtype) for k, v in d.items()}  # noqa: E731
    return cast(params), [cast(g) for g in grads]


def test_adamw_matches_torch_optim_adamw_over_20_steps_in_float64():
    torch = pytest.importorskip("torch")
    params, grads = _random_problem()
    cfg = AdamWConfig(lr=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    tparams = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW(list(tparams.values()), lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    state = adamw_init(params)
    ours = params
    for step, g in enumerate(grads, 1):
        ours, state = adamw_update(g, state, ours, cfg)
        for name, p in tparams.items():
            p.grad = torch.tensor(g[name], dtype=torch.float64)
        opt.step()
        for name, p in tparams.items():
            np.testing.assert_allclose(
                ours[name],
                p.detach().numpy(),
                rtol=1e-12,
                atol=1e-15,
                err_msg=f"AdamW vs torch.optim.AdamW (float64), step {step}, parameter {name}",
            )
            torch_state = opt.state[p]
            np.testing.assert_allclose(
                state.mu[name],
                torch_state["exp_avg"].numpy(),
                rtol=1e-12,
                atol=1e-18,
                err_msg=f"first moment, step {step}, {name}",
            )
            np.testing.assert_allclose(
                state.nu[name],
                torch_state["exp_avg_sq"].numpy(),
                rtol=1e-12,
                atol=1e-24,
                err_msg=f"second moment, step {step}, {name}",
            )
    assert int(state.count) == 20
    # the parameters moved well beyond the tolerance: the comparison is not vacuous
    assert np.max(np.abs(ours["k"] - params["k"])) > 1e-4


def test_adamw_docstring_first_step_moves_by_lr():
    p = {"w": np.array([1.0])}
    s = adamw_init(p)
    p, s = adamw_update({"w": np.array([0.5])}, s, p, AdamWConfig(lr=0.1, weight_decay=0.0))
    assert p["w"][0] == pytest.approx(0.9, rel=1e-7)  # lr * |g| / (|g| + eps)


def test_adamw_with_zero_gradient_only_decays():
    p = {"w": np.array([2.0, -4.0])}
    s = adamw_init(p)
    new, _ = adamw_update({"w": np.zeros(2)}, s, p, AdamWConfig(lr=0.1, weight_decay=0.5))
    np.testing.assert_allclose(new["w"], p["w"] * (1 - 0.1 * 0.5), rtol=1e-15)


def test_adamw_does_not_mutate_its_inputs():
    params, grads = _random_problem(seed=3)
    state = adamw_init(params)
    state, params = adamw_update(grads[0], state, params, AdamWConfig())[::-1]
    snap = {
        "params": {k: v.copy() for k, v in params.items()},
        "grads": {k: v.copy() for k, v in grads[1].items()},
        "mu": {k: v.copy() for k, v in state.mu.items()},
        "nu": {k: v.copy() for k, v in state.nu.items()},
        "count": int(state.count),
    }
    new_params, new_state = adamw_update(grads[1], state, params, AdamWConfig())
    for group in ("params", "grads", "mu", "nu"):
        live = {"params": params, "grads": grads[1], "mu": state.mu, "nu": state.nu}[group]
        for k, v in snap[group].items():
            np.testing.assert_array_equal(live[k], v, err_msg=f"adamw_update modified input {group}[{k!r}]")
            assert live[k] is not {"params": new_params, "grads": {}, "mu": new_state.mu, "nu": new_state.nu}[
                group
            ].get(k), f"{group}[{k!r}] returned as the same object"
    assert int(state.count) == snap["count"] == 1 and int(new_state.count) == 2
    assert isinstance(new_state, AdamWState)


def test_adamw_init_state():
    params = {"w": np.ones((2, 3), np.float32), "a": np.asarray(1.0, np.float32)}
    s = adamw_init(params)
    assert int(s.count) == 0 and np.asarray(s.count).dtype == np.int32
    for k, v in params.items():
        assert s.mu[k].shape == v.shape and s.mu[k].dtype == v.dtype and not np.any(s.mu[k])
        assert s.nu[k].shape == v.shape and not np.any(s.nu[k])


def test_adamw_on_every_backend_matches_numpy_float32(backend_name):
    xp = namespace_for(backend_name)
    params, grads = _random_problem(seed=5, dtype=np.float32)
    cfg = AdamWConfig()
    ref, rs = params, adamw_init(params)
    dev = {k: xp.asarray(v) for k, v in params.items()}
    ds = adamw_init(dev, xp=xp)
    for g in grads[:5]:
        ref, rs = adamw_update(g, rs, ref, cfg)
        dev, ds = adamw_update({k: xp.asarray(v) for k, v in g.items()}, ds, dev, cfg, xp=xp)
    for k in params:
        got = to_numpy(dev[k])
        assert got.dtype == np.float32, f"{backend_name}: AdamW changed {k}'s dtype to {got.dtype}"
        np.testing.assert_allclose(got, ref[k], rtol=1e-6, atol=1e-7, err_msg=f"{backend_name}: AdamW {k}")


_BAD_CONFIGS = [
    ("lr", 0.0, r"learning rate must be > 0, got 0.0"),
    ("lr", -1e-3, r"learning rate must be > 0"),
    ("lr", math.nan, r"learning rate must be > 0"),
    ("b1", 1.0, r"b1 must be in \[0, 1\), got 1.0"),
    ("b1", -0.1, r"b1 must be in \[0, 1\)"),
    ("b2", 1.5, r"b2 must be in \[0, 1\)"),
    ("eps", 0.0, r"eps must be > 0"),
    ("weight_decay", -0.01, r"weight decay must be >= 0, got -0.01"),
    ("weight_decay", math.nan, r"weight decay must be >= 0"),
]


@pytest.mark.parametrize(("field", "value", "match"), [pytest.param(*c, id=f"{c[0]}={c[1]}") for c in _BAD_CONFIGS])
def test_adamw_config_validate_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        AdamWConfig(**{field: value}).validate()


def test_adamw_config_defaults_are_the_recipe():
    cfg = AdamWConfig()
    assert tuple(cfg) == (3e-4, 0.9, 0.999, 1e-8, 0.01)
    cfg.validate()
    AdamWConfig(b1=0.0, weight_decay=0.0).validate()
