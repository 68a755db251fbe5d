"""Test cases: small frozen specs that Hypothesis draws and that rebuild their arrays.

A case is a handful of numbers and names (shape, seed, value scale, kind of data,
options), never arrays: the arrays are regenerated from the seed with NumPy, so a
failure message can print the case as one line and ``python -m verification.repro``
can rebuild exactly the same inputs. Hypothesis shrinks the spec (smaller shapes,
simpler options), which keeps falsifying examples readable.

All generated arrays are float32: the oracle reads the same float32 values in
float64, so the rounding of the inputs is never counted as a backend's error.
"""

from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as st

from yat_core.mlp import LayerSpec, MLPSpec, init_mlp_numpy
from yat_core.product import softplus_inverse

__all__ = [
    "DATA_KINDS",
    "HARD_KINDS",
    "YatCase",
    "YatInputs",
    "MLPCase",
    "MLPInputs",
    "yat_inputs",
    "mlp_inputs",
    "yat_cases",
    "mlp_cases",
    "parse_case",
    "mnist_like",
]

F32 = np.float32
#: Distributions of the entries: standard normal, MNIST-like pixels against Xavier
#: kernels, random signs over six decades of magnitude, small integers (exact sums).
DATA_KINDS = ("normal", "mnist", "lognormal", "integer")
#: Modifiers applied to some rows: the hard cases of the error model.
HARD_KINDS = ("none", "equal", "near", "zero", "orthogonal", "large")
OPTION_KINDS = ("none", "array", "const")
EPSILON_KINDS = ("default", "const", "learnable")
#: Epsilon values drawn for the "const" and "learnable" kinds.
EPSILON_VALUES = (1e-6, 1e-5, 1e-3, 0.1, 1.0)
#: Probability of a non-zero MNIST pixel (the training set's mean is 19.1 %).
MNIST_DENSITY = 0.19
#: Factor applied to the rows of the "large" hard case.
LARGE_FACTOR = 1e3


@dataclass(frozen=True)
class YatCase:
    """One input set of :func:`yat_core.yat_product`, as a reproducible spec.

    ``scale_x`` and ``scale_w`` are base-10 exponents of the magnitude of the
    entries of ``x`` and ``w``. ``hard`` modifies some rows: ``x`` rows copied from
    (``equal``) or within a few ulps to a relative 1e-1 of (``near``) kernel rows,
    zero rows, rows with disjoint supports (``orthogonal``), rows scaled by 1e3
    (``large``).
    """

    batch: int
    n_in: int
    n_out: int
    seed: int = 0
    data: str = "normal"
    scale_x: int = 0
    scale_w: int = 0
    hard: str = "none"
    bias: str = "none"
    alpha: str = "none"
    epsilon: str = "default"
    eps_value: float = 1e-5
    spherical: bool = False

    def __post_init__(self) -> None:
        _check_choice("data", self.data, DATA_KINDS)
        _check_choice("hard", self.hard, HARD_KINDS)
        _check_choice("bias", self.bias, OPTION_KINDS)
        _check_choice("alpha", self.alpha, OPTION_KINDS)
        _check_choice("epsilon", self.epsilon, EPSILON_KINDS)
        if min(self.batch, self.n_in, self.n_out) < 1:
            raise ValueError(f"shapes must be >= 1, got {self}")

    @property
    def shape(self) -> str:
        """``batch x in -> out``, for messages."""
        return f"({self.batch}, {self.n_in}) x ({self.n_out}, {self.n_in})"


class YatInputs(NamedTuple):
    """The arrays and options of one :class:`YatCase` (arrays float32 NumPy).

    ``epsilon`` is a Python float when constant, None when learnable (then
    ``epsilon_raw`` holds the raw parameter, ``epsilon = softplus(raw)``). ``g`` is
    the upstream gradient used by the gradient checks.
    """

    x: np.ndarray
    w: np.ndarray
    bias: np.ndarray | float | None
    alpha: np.ndarray | float | None
    epsilon: float | None
    epsilon_raw: np.ndarray | None
    spherical: bool
    g: np.ndarray


@dataclass(frozen=True)
class MLPCase:
    """A small Yat MLP ``Yat(in->h1) -> Yat(h1->h2) -> Linear(h2->out)`` and a batch.

    ``bias`` and ``alpha`` are ``"learnable"``, ``"const"`` or ``"none"`` for both
    Yat layers; ``epsilon`` is ``"default"``, ``"const"`` or ``"learnable"``.
    """

    batch: int
    n_in: int
    hidden1: int
    hidden2: int
    n_out: int
    seed: int = 0
    data: str = "mnist"
    bias: str = "learnable"
    alpha: str = "learnable"
    epsilon: str = "default"
    eps_value: float = 1e-5
    spherical: bool = False

    def __post_init__(self) -> None:
        _check_choice("data", self.data, ("mnist", "normal"))
        _check_choice("bias", self.bias, ("learnable", "const", "none"))
        _check_choice("alpha", self.alpha, ("learnable", "const", "none"))
        _check_choice("epsilon", self.epsilon, EPSILON_KINDS)
        if min(self.batch, self.n_in, self.hidden1, self.hidden2, self.n_out) < 1:
            raise ValueError(f"sizes must be >= 1, got {self}")

    @property
    def shape(self) -> str:
        return f"batch {self.batch}, {self.n_in}->{self.hidden1}->{self.hidden2}->{self.n_out}"

    def spec(self) -> MLPSpec:
        """The :class:`~yat_core.mlp.MLPSpec` of this case."""
        options = {
            "bias": {"learnable": "learnable", "const": 0.1, "none": None}[self.bias],
            "alpha": {"learnable": "learnable", "const": math.sqrt(2.0), "none": None}[self.alpha],
            "epsilon": 1e-5 if self.epsilon == "default" else self.eps_value,
            "learnable_epsilon": self.epsilon == "learnable",
            "spherical": self.spherical,
        }
        return MLPSpec(
            (
                LayerSpec("yat", self.n_in, self.hidden1, **options),
                LayerSpec("yat", self.hidden1, self.hidden2, **options),
                LayerSpec("linear", self.hidden2, self.n_out),
            )
        )


class MLPInputs(NamedTuple):
    """Parameters (float32, core names), inputs ``x`` (float32) and integer labels."""

    params: dict[str, np.ndarray]
    x: np.ndarray
    labels: np.ndarray
    spec: MLPSpec


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# -- array generation ---------------------------------------------------------------


def mnist_like(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Sparse pixels ``k/255`` with about 19 % non-zero, like flattened MNIST."""
    pixels = rng.integers(1, 256, size=shape) * (rng.random(shape) < MNIST_DENSITY)
    return (pixels / 255.0).astype(F32)


def _entries(rng: np.random.Generator, kind: str, shape: tuple[int, ...], exponent: int) -> np.ndarray:
    """Entries of ``kind`` (not "mnist") with magnitude about ``10**exponent``."""
    if kind == "normal":
        values = rng.standard_normal(shape) * 10.0**exponent
    elif kind == "lognormal":
        values = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-3, 3, size=shape) * 10.0**exponent
    else:  # integer: exactly representable, and so are all sums below 2^24
        values = rng.integers(-8, 9, size=shape).astype(np.float64)
    return values.astype(F32)


def _x_entries(rng: np.random.Generator, case: YatCase) -> np.ndarray:
    shape = (case.batch, case.n_in)
    return mnist_like(rng, shape) if case.data == "mnist" else _entries(rng, case.data, shape, case.scale_x)


def _w_entries(rng: np.random.Generator, case: YatCase) -> np.ndarray:
    shape = (case.n_out, case.n_in)
    if case.data == "mnist":  # Xavier-normal kernels, as init_mlp_numpy draws them
        return (rng.standard_normal(shape) * math.sqrt(2.0 / (case.n_in + case.n_out))).astype(F32)
    return _entries(rng, case.data, shape, case.scale_w)


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(n, size=max(1, n // 2), replace=False)


def _apply_hard(rng: np.random.Generator, hard: str, x: np.ndarray, w: np.ndarray) -> None:
    """Modify some rows of ``x`` and ``w`` in place to build the hard cases."""
    rows_x, rows_w = _rows(rng, x.shape[0]), _rows(rng, w.shape[0])
    if hard == "equal":
        x[rows_x] = w[rng.integers(0, w.shape[0], size=rows_x.size)]
    elif hard == "near":
        for i in rows_x:
            row = w[rng.integers(0, w.shape[0])].astype(np.float64)
            if rng.random() < 0.5:  # relative perturbation from 1e-7 to 1e-1
                row = row * (1.0 + 10.0 ** rng.uniform(-7, -1) * rng.standard_normal(row.shape))
                x[i] = row.astype(F32)
            else:  # a few entries moved by a few ulps
                row32 = row.astype(F32)
                picks = rng.choice(row32.size, size=min(row32.size, 3), replace=False)
                for _ in range(int(rng.integers(1, 4))):
                    row32[picks] = np.nextafter(row32[picks], F32(np.inf))
                x[i] = row32
    elif hard == "zero":
        x[rows_x] = 0.0
        w[rows_w[: max(1, rows_w.size // 2)]] = 0.0
    elif hard == "orthogonal":
        support = rng.random(x.shape[1]) < 0.5
        x[np.ix_(rows_x, support)] = 0.0
        w[np.ix_(rows_w, ~support)] = 0.0
    elif hard == "large":
        x[rows_x] *= F32(LARGE_FACTOR)
        w[rows_w] *= F32(LARGE_FACTOR)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _bias(
    rng: np.random.Generator, kind: str, x: np.ndarray, w: np.ndarray, spherical: bool
) -> np.ndarray | float | None:
    """A bias on the scale of the dot products it is added to (of the unit rows in
    spherical mode); half the units cancel the first row's dot product exactly."""
    if kind == "none":
        return None
    if spherical:
        x, w = _unit_rows(x), _unit_rows(w)
    dot = x.astype(np.float64) @ w.astype(np.float64).T
    spread = float(np.std(dot)) or float(np.max(np.abs(dot))) or 1.0
    if kind == "const":
        return 0.1 * spread  # not a float32 number in general: the backend rounds it
    bias = rng.standard_normal(w.shape[0]) * spread
    # Half the units cancel the first row's dot product: the numerator's hard case.
    cancel = rng.random(w.shape[0]) < 0.5
    bias[cancel] = -dot[0, cancel]
    return bias.astype(F32)


@functools.lru_cache(maxsize=64)
def yat_inputs(case: YatCase) -> YatInputs:
    """The arrays of ``case``, regenerated from its seed (cached; treat as read-only)."""
    rng = np.random.default_rng(case.seed)
    x, w = _x_entries(rng, case), _w_entries(rng, case)
    _apply_hard(rng, case.hard, x, w)
    bias = _bias(rng, case.bias, x, w, case.spherical)
    alpha: np.ndarray | float | None = None
    if case.alpha == "array":
        alpha = np.asarray(rng.uniform(0.25, 4.0), dtype=F32)
    elif case.alpha == "const":
        alpha = math.sqrt(2.0)
    eps_value = 1e-5 if case.epsilon == "default" else case.eps_value
    epsilon_raw = None
    if case.epsilon == "learnable":
        epsilon_raw = np.asarray(softplus_inverse(eps_value), dtype=F32)
    g = rng.standard_normal((case.batch, case.n_out)).astype(F32)
    for a in (x, w, g):
        a.setflags(write=False)
    epsilon = None if epsilon_raw is not None else eps_value
    return YatInputs(x, w, bias, alpha, epsilon, epsilon_raw, case.spherical, g)


@functools.lru_cache(maxsize=32)
def mlp_inputs(case: MLPCase) -> MLPInputs:
    """Parameters (Xavier init of the seed), inputs and labels of ``case`` (cached)."""
    spec = case.spec()
    rng = np.random.default_rng(case.seed)
    params = init_mlp_numpy(spec, case.seed, F32)
    for name in params:
        if name.endswith(".alpha"):  # away from 1.0, so a missing alpha shows
            params[name] = np.asarray(rng.uniform(0.5, 2.0), dtype=F32)
    if case.data == "mnist":
        x = mnist_like(rng, (case.batch, case.n_in))
    else:
        x = rng.standard_normal((case.batch, case.n_in)).astype(F32)
    labels = rng.integers(0, case.n_out, size=case.batch).astype(np.int64)
    return MLPInputs(params, x, labels, spec)


# -- Hypothesis strategies ------------------------------------------------------------


@st.composite
def yat_cases(
    draw: st.DrawFn,
    *,
    max_batch: int = 64,
    max_in: int = 1024,
    max_out: int = 256,
    data: tuple[str, ...] = DATA_KINDS,
    hard: tuple[str, ...] = HARD_KINDS,
    spherical: tuple[bool, ...] = (False, True),
) -> YatCase:
    """Cases over the issue's domain: batch 1..64, in 1..1024, out 1..256, values
    from 1e-8 to 1e6, every hard case and every option."""
    kind = draw(st.sampled_from(data))
    scaled = kind in ("normal", "lognormal")
    return YatCase(
        batch=draw(st.integers(1, max_batch)),
        n_in=draw(st.integers(1, max_in)),
        n_out=draw(st.integers(1, max_out)),
        seed=draw(st.integers(0, 2**32 - 1)),
        data=kind,
        scale_x=draw(st.integers(-8, 6)) if scaled else 0,
        scale_w=draw(st.integers(-8, 6)) if scaled else 0,
        hard=draw(st.sampled_from(hard)),
        bias=draw(st.sampled_from(OPTION_KINDS)),
        alpha=draw(st.sampled_from(OPTION_KINDS)),
        epsilon=draw(st.sampled_from(EPSILON_KINDS)),
        eps_value=draw(st.sampled_from(EPSILON_VALUES)),
        spherical=draw(st.sampled_from(spherical)),
    )


@st.composite
def mlp_cases(draw: st.DrawFn, *, max_batch: int = 64, max_in: int = 1024, max_hidden: int = 256) -> MLPCase:
    """Small Yat MLPs with every option, on MNIST-like or normal inputs."""
    return MLPCase(
        batch=draw(st.integers(1, max_batch)),
        n_in=draw(st.integers(1, max_in)),
        hidden1=draw(st.integers(1, max_hidden)),
        hidden2=draw(st.integers(1, max_hidden)),
        n_out=draw(st.integers(1, 16)),
        seed=draw(st.integers(0, 2**32 - 1)),
        data=draw(st.sampled_from(("mnist", "normal"))),
        bias=draw(st.sampled_from(("learnable", "const", "none"))),
        alpha=draw(st.sampled_from(("learnable", "const", "none"))),
        epsilon=draw(st.sampled_from(EPSILON_KINDS)),
        eps_value=draw(st.sampled_from(EPSILON_VALUES)),
        spherical=draw(st.booleans()),
    )


def parse_case(text: str) -> YatCase | MLPCase:
    """Rebuild a case from its ``repr`` (``YatCase(batch=3, ...)``), literals only.

    Examples
    --------
    >>> parse_case(repr(YatCase(2, 3, 4, seed=7))) == YatCase(2, 3, 4, seed=7)
    True
    """
    node = ast.parse(text.strip(), mode="eval").body
    classes = {"YatCase": YatCase, "MLPCase": MLPCase}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes):
        raise ValueError(f"expected YatCase(...) or MLPCase(...), got {text!r}")
    args = [ast.literal_eval(a) for a in node.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    return classes[node.func.id](*args, **kwargs)
