"""The checks: compare a backend with the oracle under the error model, or fail loudly.

Every check takes a backend name (a :data:`~verification.backends.PROVIDERS` key,
``name-mode`` for gradients), a case, and optionally an implementation to use in
place of the registered one (the fault-injection tests pass a deliberately wrong
one). A failure raises :class:`AssertionError` whose message names the backend,
the inputs (shape, seed, the full case) and a one-line reproduction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from verification import backends
from verification.cases import MLPCase, YatCase, mlp_inputs, yat_inputs
from verification.error_model import (
    FLOAT32,
    ORACLE64,
    Precision,
    YatBound,
    mlp_forward_bounds,
    mlp_grad_bounds,
    precision_for,
    total_bound,
    yat_bound,
    yat_vjp_bound,
)
from verification.error_model import (
    PRECISIONS as _PRECISIONS,
)
from verification.oracle import YatOracle, mlp_forward64, mlp_loss_grad64, yat_forward64, yat_oracle, yat_vjp64
from verification.results import STORE, Example, summarise_error

__all__ = [
    "repro_command",
    "yat_reference",
    "in_float32_range",
    "in_gradient_range",
    "check_yat",
    "check_yat_grads",
    "check_mlp",
    "check_yat_fd",
    "check_mlp_fd",
    "check_mlp_grads",
    "compare",
    "OracleImpl",
]

#: Largest magnitude an intermediate may reach for a case to count as in float32
#: range (a quarter of float32's maximum, so the bound's own slack stays finite).
FLOAT32_LIMIT = float(np.finfo(np.float32).max) / 4


def repro_command(check: str, backend: str, case: Any) -> str:
    """The one-line command that reruns ``check`` on ``backend`` for ``case``."""
    return f'python -m verification.repro {check} {backend} "{case!r}"'


class YatReference(NamedTuple):
    inputs: Any
    oracle: YatOracle
    bound: np.ndarray  # forward bound in float32 (backend + oracle)


@functools.lru_cache(maxsize=64)
def yat_reference(case: YatCase) -> YatReference:
    """Inputs, oracle and float32 forward bound of ``case`` (cached: every backend
    checks the same examples)."""
    inp = yat_inputs(case)
    return YatReference(inp, yat_oracle(inp), _forward_bound(case, FLOAT32.name))


@functools.lru_cache(maxsize=64)
def _model(case: YatCase, prec_name: str) -> tuple[YatBound, YatBound]:
    """The forward model of ``case`` for a backend in ``prec_name``, and for the oracle."""
    o = yat_oracle(yat_inputs(case))
    return yat_bound(o, _PRECISIONS[prec_name]), yat_bound(o, ORACLE64)


def _forward_bound(case: YatCase, prec_name: str) -> np.ndarray:
    fb, fb64 = _model(case, prec_name)
    with np.errstate(all="ignore"):
        return np.nan_to_num(fb.y + fb64.y, nan=np.inf)


def in_float32_range(case: YatCase) -> bool:
    """Whether every intermediate of ``case`` fits float32 (else no float32 code can
    be right, and the case is outside the domain of the checks)."""
    ref = yat_reference(case)
    o = ref.oracle
    peaks = [np.abs(o.n) + 1.0, o.d, np.abs(o.y) + ref.bound]
    if not o.spherical:
        peaks += [np.sum(o.x * o.x, axis=-1), np.sum(o.w * o.w, axis=-1)]
    peaks.append(np.square(np.abs(o.n) + 1.0))
    return all(np.all(np.isfinite(p)) and float(np.max(p, initial=0.0)) < FLOAT32_LIMIT for p in peaks)


def in_gradient_range(case: YatCase) -> bool:
    """:func:`in_float32_range`, and the backward pass's intermediates and results too.

    Autodiff of ``n^2 / d`` forms ``1 / d^2`` (JAX's rule for a division); past
    ``d = 2^63`` that underflows to 0 and the distance term of the gradient is lost
    outright, an error no per-operation model bounds; and ``g n^2 / d^2`` overflows
    where the computed ``d`` can be small. Such cases are outside the gradient
    checks' domain (the backends really return wrong or infinite gradients there).
    """
    if not in_float32_range(case):
        return False
    o = yat_reference(case).oracle
    fb = _model(case, FLOAT32.name)[0]
    g = np.abs(yat_reference(case).inputs.g.astype(np.float64)) * np.abs(o.alpha)
    # The backward pass's own intermediates, as large as the model lets them be computed
    # (cancellation can make the computed d far smaller than the exact one): d^2,
    # g n / d, g n^2 and g n^2 / d^2.
    n_hi = np.abs(o.n) + fb.n
    peaks = [np.max(fb.d_hi) ** 2, np.max(2.0 * g * n_hi / fb.d_lo), np.max(g * fb.r_hi), np.max(g * fb.r_hi / fb.d_lo)]
    if not all(np.isfinite(p) and p < FLOAT32_LIMIT for p in peaks):
        return False
    grads = yat_vjp64(o, yat_reference(case).inputs.g)
    return all(np.all(np.isfinite(v)) and float(np.max(np.abs(v), initial=0.0)) < FLOAT32_LIMIT for v in grads.values())


def _impl(name: str, impl: Any) -> Any:
    return backends.load(name) if impl is None else impl


def _meta_problems(got: np.ndarray, shape: tuple[int, ...], dtype: Any) -> list[str]:
    problems = []
    if got.shape != shape:
        problems.append(f"shape {got.shape}, expected {shape}")
    if got.dtype != np.dtype(dtype):
        problems.append(f"dtype {got.dtype}, expected {np.dtype(dtype)}")
    return problems


def compare(
    check: str,
    backend: str,
    case: Any,
    got: np.ndarray,
    ref: np.ndarray,
    bound: np.ndarray,
    *,
    what: str,
    dtype: Any,
    record: bool = True,
) -> Example:
    """Assert ``|got - ref| <= bound`` elementwise (and shape, dtype, finiteness).

    Records the example in the session store, then raises :class:`AssertionError`
    with the worst element, the inputs and a reproduction line if anything is off.
    """
    got = np.asarray(got)
    problems = _meta_problems(got, np.shape(ref), dtype)
    if problems:
        raise AssertionError(_message(check, backend, case, what, "; ".join(problems)))
    err = np.abs(got.astype(np.float64) - ref)
    example = summarise_error(check, backend, case, err, bound, ref)
    if record:
        STORE.add(example)
    bad = ~(err <= bound)  # NaN counts as bad
    if np.any(bad):
        ratio = np.where(np.isfinite(err), err / bound, np.inf)
        idx = np.unravel_index(int(np.argmax(np.where(bad, ratio, -1.0))), err.shape) if err.ndim else ()
        detail = (
            f"{int(bad.sum())} of {bad.size} elements outside the error model; worst at {[int(i) for i in idx]}: "
            f"got {got[idx]!r}, oracle {ref[idx]!r}, |error| {err[idx]:.3e} > bound {bound[idx]:.3e} "
            f"(ratio {ratio[idx]:.3g})"
        )
        raise AssertionError(_message(check, backend, case, what, detail))
    return example


def _message(check: str, backend: str, case: Any, what: str, detail: str) -> str:
    return (
        f"{what} on backend {backend!r}: {detail}\n"
        f"  inputs: {case.shape}, seed {case.seed}\n"
        f"  case: {case!r}\n"
        f"  reproduce: {repro_command(check, backend, case)}"
    )


# -- the product ---------------------------------------------------------------------------


def check_yat(backend: str, case: YatCase, *, impl: Any = None, dtype: Any = np.float32) -> Example:
    """``yat_product`` of ``backend`` against the oracle under the error model."""
    ref = yat_reference(case)
    prec = precision_for(backend, dtype)
    bound = _forward_bound(case, prec.name)
    got = _impl(backend, impl).yat(ref.inputs, dtype)
    what = f"yat_product ({np.dtype(dtype)})"
    example = compare("yat", backend, case, got, ref.oracle.y, bound, what=what, dtype=dtype)
    _check_interval(backend, case, got, ref.oracle, prec, what)
    return example


def _check_interval(backend: str, case: YatCase, got: np.ndarray, o: YatOracle, prec: Precision, what: str) -> None:
    """The model's interval is one-sided where the symmetric bound is not: |y| as
    computed lies in [y_lo, y_hi] (y_lo >= 0), so for example a negative output is
    wrong however large the bound."""
    fb, fb64 = _model(case, prec.name)
    sign = np.sign(o.alpha) if o.alpha_given else 1.0
    signed = np.asarray(got, dtype=np.float64) * (sign if sign != 0 else 1.0)
    outside = (signed < fb.y_lo - fb64.y) | (signed > fb.y_hi + fb64.y)
    if np.any(outside):
        idx = np.unravel_index(int(np.argmax(outside)), outside.shape)
        raise AssertionError(
            _message(
                "yat",
                backend,
                case,
                what,
                (
                    f"{int(outside.sum())} of {outside.size} elements outside the model's interval; first at "
                    f"{[int(i) for i in idx]}: got {got[idx]!r}, interval [{fb.y_lo[idx]:.6e}, {fb.y_hi[idx]:.6e}] (times sign of alpha)"
                ),
            )
        )


@functools.lru_cache(maxsize=32)
def _yat_grad_reference(case: YatCase, prec_name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    ref = yat_reference(case)
    o, g = ref.oracle, ref.inputs.g
    fb, fb64 = _model(case, prec_name)
    grads = yat_vjp64(o, g)
    mine, oracle = yat_vjp_bound(o, fb, g, _PRECISIONS[prec_name]), yat_vjp_bound(o, fb64, g, ORACLE64)
    with np.errstate(all="ignore"):
        return grads, {k: np.nan_to_num(mine[k] + oracle[k], nan=np.inf) for k in mine}


def check_yat_grads(grad_id: str, case: YatCase, *, impl: Any = None, dtype: Any = np.float32) -> list[Example]:
    """Gradients of ``sum(g * y)`` of ``grad_id`` (``name-mode``) against the oracle's."""
    name, mode = backends.split_gradient_id(grad_id)
    ref_grads, bounds = _yat_grad_reference(case, precision_for(name, dtype).name)
    got = _impl(name, impl).yat_grads(yat_reference(case).inputs, mode, dtype)
    if sorted(got) != sorted(ref_grads):
        raise AssertionError(
            _message("yat-grad", grad_id, case, "gradients", f"returned {sorted(got)}, expected {sorted(ref_grads)}")
        )
    return [
        compare(
            "yat-grad",
            grad_id,
            case,
            got[key],
            ref_grads[key],
            bounds[key],
            what=f"d/d{key} ({np.dtype(dtype)})",
            dtype=dtype,
        )
        for key in sorted(ref_grads)
    ]


# -- the MLP --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _mlp_reference(case: MLPCase, prec_name: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    inp = mlp_inputs(case)
    acts, b32 = mlp_forward_bounds(inp.params, inp.x, inp.spec, _PRECISIONS[prec_name])
    _, b64 = mlp_forward_bounds(inp.params, inp.x, inp.spec, ORACLE64)
    return acts[-1], b32[-1] + b64[-1]


def check_mlp(backend: str, case: MLPCase, *, impl: Any = None) -> Example:
    """``mlp_forward`` logits against the oracle, under the error model composed
    layer by layer (each layer's input error is the previous layer's bound)."""
    logits, bound = _mlp_reference(case, precision_for(backend, np.float32).name)
    inp = mlp_inputs(case)
    got = _impl(backend, impl).mlp_forward(inp.params, inp.x, inp.spec, np.float32)
    return compare("mlp", backend, case, got, logits, bound, what="mlp_forward logits (float32)", dtype=np.float32)


# -- finite differences -------------------------------------------------------------------------


class FDResult(NamedTuple):
    fd: float  # Richardson-extrapolated directional derivative
    fd_error: float  # its error estimate
    analytic: float  # <gradient, direction>
    tolerance: float


def _directional_fd(
    loss: Callable[[dict[str, np.ndarray]], float],
    theta: dict[str, np.ndarray],
    v: dict[str, np.ndarray],
    rounding: float,
    h_max: float,
) -> tuple[float, float]:
    """Central differences with Richardson extrapolation over steps from ``h_max`` down
    by factors of sqrt(10); the pair whose extrapolation changes least is kept.
    Returns (value, error estimate); the estimate includes the rounding of ``loss``."""

    def central(h: float) -> float:
        plus = {k: theta[k] + h * v[k] for k in theta}
        minus = {k: theta[k] - h * v[k] for k in theta}
        return (loss(plus) - loss(minus)) / (2.0 * h)

    steps = [h_max * 10.0 ** (-i / 2) for i in range(9)]
    values = [central(h) for h in steps]
    best = (np.nan, np.inf)
    for i in range(len(steps) - 1):
        coarse, fine = values[i], values[i + 1]
        extrapolated = fine + (fine - coarse) / ((steps[i] / steps[i + 1]) ** 2 - 1.0)
        estimate = abs(fine - coarse) + 2.0 * rounding / steps[i + 1]
        if estimate < best[1]:
            best = (extrapolated, estimate)
    return best


def _fd_step(v: dict[str, np.ndarray], lengths: list[float]) -> float:
    """Largest step keeping every move of the inputs well inside the scale on which the
    function changes: ``sqrt(d)`` for the distance, the row norms in spherical mode."""
    reach = max(float(np.max(np.abs(v[k]), initial=0.0)) for k in v)
    return min(1e-2, 1e-2 * min(lengths) / reach) if reach > 0 else 1e-2


def _direction(theta: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, a in theta.items():
        scale = float(np.sqrt(np.mean(a * a))) or 1.0
        out[k] = rng.standard_normal(np.shape(a)) * scale
    return out


def _fd_assert(check: str, grad_id: str, case: Any, res: FDResult, dtype: Any) -> FDResult:
    if not abs(res.analytic - res.fd) <= res.tolerance:
        detail = (
            f"directional derivative {res.analytic!r} vs finite differences {res.fd!r} "
            f"(|diff| {abs(res.analytic - res.fd):.3e} > tolerance {res.tolerance:.3e})"
        )
        what = f"{np.dtype(dtype)} gradient vs finite differences of the oracle"
        raise AssertionError(_message(check, grad_id, case, what, detail))
    return res


def _yat_theta(inp: Any) -> dict[str, np.ndarray]:
    theta = {"x": inp.x.astype(np.float64), "w": inp.w.astype(np.float64)}
    for key in ("bias", "alpha"):
        if isinstance(getattr(inp, key), np.ndarray):
            theta[key] = getattr(inp, key).astype(np.float64)
    if inp.epsilon_raw is not None:
        theta["epsilon_raw"] = inp.epsilon_raw.astype(np.float64)
    return theta


def check_yat_fd(grad_id: str, case: YatCase, *, impl: Any = None, dtype: Any = np.float32) -> FDResult:
    """The backend's gradient (in ``dtype``) against finite differences of the oracle.

    The directional derivative along a random direction ``v`` is compared; the
    tolerance is the finite-difference error estimate plus the gradient error
    model's bound projected on ``|v|``.
    """
    name, mode = backends.split_gradient_id(grad_id)
    inp = yat_reference(case).inputs
    theta = _yat_theta(inp)
    constants = {k: getattr(inp, k) for k in ("bias", "alpha") if k not in theta}
    g = inp.g.astype(np.float64)

    def forward(t: dict[str, np.ndarray]) -> YatOracle:
        options = {k: t[k] for k in ("bias", "alpha") if k in t}
        return yat_forward64(
            t["x"],
            t["w"],
            **options,
            **constants,
            epsilon=inp.epsilon,
            epsilon_raw=t.get("epsilon_raw"),
            spherical=inp.spherical,
        )

    def loss(t: dict[str, np.ndarray]) -> float:
        return float(np.sum(g * forward(t).y))

    o = forward(theta)
    rounding = float(np.sum(np.abs(g) * yat_bound(o, ORACLE64).y)) + 1e-15 * float(np.sum(np.abs(g * o.y)))
    v = _direction(theta, case.seed)
    lengths = [float(np.sqrt(np.min(o.d)))]
    if o.spherical:
        lengths += [float(np.min(o.x_norm)), float(np.min(o.w_norm))]
    fd, fd_err = _directional_fd(loss, theta, v, rounding, _fd_step(v, lengths))
    grads = _impl(name, impl).yat_grads(inp, mode, dtype)
    analytic = float(sum(np.sum(grads[k].astype(np.float64) * v[k]) for k in theta))
    bounds = _yat_grad_reference(case, precision_for(name, dtype).name)[1]
    backend_err = float(sum(np.sum(bounds[k] * np.abs(v[k])) for k in theta))
    return _fd_assert("yat-fd", grad_id, case, FDResult(fd, fd_err, analytic, 2.0 * fd_err + backend_err), dtype)


@functools.lru_cache(maxsize=16)
def _mlp_grad_reference(
    case: MLPCase, prec_name: str = "float32"
) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    inp = mlp_inputs(case)
    loss, grads, _ = mlp_loss_grad64(inp.params, inp.x, inp.labels, inp.spec)
    bounds = total_bound(lambda p: mlp_grad_bounds(inp.params, inp.x, inp.labels, inp.spec, p), _PRECISIONS[prec_name])
    return loss, grads, bounds


def check_mlp_grads(grad_id: str, case: MLPCase, *, impl: Any = None) -> list[Example]:
    """Every float32 parameter gradient of the MLP loss against the oracle's, under
    the error model carried through the forward and the backward pass."""
    name, mode = backends.split_gradient_id(grad_id)
    inp = mlp_inputs(case)
    _, ref, bounds = _mlp_grad_reference(case, precision_for(name, np.float32).name)
    _, got = _impl(name, impl).mlp_loss_grad(inp.params, inp.x, inp.labels, inp.spec, mode, np.float32)
    if sorted(got) != sorted(ref):
        raise AssertionError(
            _message("mlp-grad", grad_id, case, "MLP gradients", f"returned {sorted(got)}, expected {sorted(ref)}")
        )
    return [
        compare(
            "mlp-grad", grad_id, case, got[k], ref[k], bounds[k], what=f"d loss / d {k} (float32)", dtype=np.float32
        )
        for k in sorted(ref)
    ]


def check_mlp_fd(grad_id: str, case: MLPCase, *, impl: Any = None, dtype: Any = np.float32) -> FDResult:
    """The backend's MLP loss gradient (in ``dtype``) against finite differences of the oracle loss."""
    name, mode = backends.split_gradient_id(grad_id)
    inp = mlp_inputs(case)
    theta = {k: v.astype(np.float64) for k, v in inp.params.items()}

    def loss(t: dict[str, np.ndarray]) -> float:
        return mlp_loss_grad64(t, inp.x, inp.labels, inp.spec)[0]

    value, _, bounds = _mlp_grad_reference(case, precision_for(name, dtype).name)
    v = _direction(theta, case.seed)
    saved = mlp_forward64(theta, inp.x, inp.spec)[1]
    lengths = [float(np.sqrt(np.min(o.d))) for o in saved if o is not None]
    lengths += [float(np.min(n)) for o in saved if o is not None and o.spherical for n in (o.x_norm, o.w_norm)]
    # float64 loss error: about k u magnitudes, k <= 1024
    fd, fd_err = _directional_fd(loss, theta, v, 1e-12 * (abs(value) + 1.0), _fd_step(v, lengths))
    _, grads = _impl(name, impl).mlp_loss_grad(inp.params, inp.x, inp.labels, inp.spec, mode, dtype)
    analytic = float(sum(np.sum(grads[k].astype(np.float64) * v[k]) for k in theta))
    backend_err = float(sum(np.sum(bounds[k] * np.abs(v[k])) for k in theta))
    return _fd_assert("mlp-fd", grad_id, case, FDResult(fd, fd_err, analytic, 2.0 * fd_err + backend_err), dtype)


class OracleImpl:
    """The oracle's own gradients, in the shape of a backend (to check it against
    finite differences like any other)."""

    name = "oracle"

    def yat_grads(self, inp: Any, mode: str, dtype: Any = np.float64) -> dict[str, np.ndarray]:
        return yat_vjp64(yat_oracle(inp), inp.g)

    def mlp_loss_grad(
        self,
        params: dict[str, np.ndarray],
        x: np.ndarray,
        labels: np.ndarray,
        spec: Any,
        mode: str,
        dtype: Any = np.float64,
    ) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads, _ = mlp_loss_grad64(params, x, labels, spec)
        return loss, grads
