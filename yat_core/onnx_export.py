"""ONNX export of any :class:`~yat_core.spec.ModelSpec`, and a check with ``onnxruntime``.

:func:`export_onnx` builds the graph directly from the framework-neutral spec and a
parameter mapping in the core's names and layouts (what :func:`yat_core.mlp.init_mlp_numpy`
and every framework's ``export_params`` return): no framework is involved, so a model
trained anywhere exports the same way. Every layer kind is written with standard ONNX
operators (``MatMul``, ``Conv``, ``ConvTranspose``, ``MaxPool``, ``Softmax``, ...),
following :mod:`yat_core.mlp` term by term::

    dot  = x @ w.T                        (Conv / ConvTranspose for the convolutions)
    dist = relu(|x|^2 + |w|^2 - 2 dot)    (|patch|^2: a ones-kernel convolution of x*x)
    y    = alpha * (dot + bias)^2 / (dist + epsilon)

The graph takes ``input``: float32 of shape ``(N, *spec.input_shape)`` with a dynamic
batch ``N``, pixels scaled to [0, 1] as :func:`yat_core.mlp.model_input` gives them:
flat ``(N, 784)`` for the MLP, channels first ``(N, 1, 28, 28)`` for the CNN and the
vision transformer. It returns ``logits`` ``(N, classes)``. Parameters are float32
initialisers under their core names; a learnable epsilon is stored as its value
``softplus(epsilon_raw)`` (``<layer>.epsilon``), evaluated once in float64, since the
graph is for inference.

:func:`check_onnx` runs the file with ``onnxruntime`` and holds it to the core's own
forward pass. Both need the ``onnx`` extra (``pip install 'yat-core[onnx]'``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from yat_core._io import atomic_write
from yat_core._lazy import require
from yat_core.conv import conv_pads
from yat_core.errors import YatError
from yat_core.product import SPHERICAL_NORM_EPS
from yat_core.spec import ATTENTION_KINDS, LEARNABLE, PROJECTIONS, LayerSpec, ModelSpec

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "RTOL",
    "CORE_ERROR_FACTOR",
    "OnnxCheck",
    "OnnxMismatchError",
    "build_onnx",
    "export_onnx",
    "check_onnx",
    "onnx_logits",
]

#: The opset written by default (ONNX 1.12+, onnxruntime 1.12+ read it); 13 is the oldest accepted.
DEFAULT_OPSET = 17
_MIN_OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: :func:`check_onnx`'s least tolerance on ``|onnx - exact| / max(1, |exact|)``. The parity suite
#: holds every float32 backend within 1e-6 of the float64 oracle on these models at their initial
#: weights; onnxruntime's kernels sum in other orders (blocked GEMM, its own convolutions) and
#: approximate ``exp`` to a few ulp, and 1e-5 leaves a factor of ten for that, far below any logit
#: gap that decides a class.
RTOL = 1e-5
#: Trained weights make larger logits and sharper softmaxes, and the float32 error grows with them
#: (the core's own float32 logits of a trained vision transformer are 1.6e-5 from exact): the
#: tolerance is then this many times the core's own float32 error on the same inputs. Two float32
#: evaluations in different summation orders have errors of one distribution; their maxima over
#: 100,000 logits differ by a small factor (0.4 to 1.1 measured), and a wrong formula gives errors
#: of 1e-3 and more.
CORE_ERROR_FACTOR = 4.0


class OnnxMismatchError(YatError):
    """The ONNX model's predictions differ from the core's beyond the tolerance."""


class OnnxCheck(NamedTuple):
    """What :func:`check_onnx` measured on ``n`` inputs (errors relative to ``max(1, |exact|)``)."""

    n: int
    same_argmax: int  # rows whose predicted class is the core's float32 one
    near_ties: int  # rows whose disagreement is a tie at the tolerance (top-two exact logits within it)
    max_abs: float  # max |onnx - exact|
    max_rel: float  # max |onnx - exact| / max(1, |exact|)
    core_rel: float  # the same for the core's own float32 forward pass
    tolerance: float  # max(rtol, CORE_ERROR_FACTOR * core_rel)

    @property
    def ok(self) -> bool:
        """Every class agrees (a tie at the tolerance excepted) and every logit is within the tolerance."""
        return self.same_argmax + self.near_ties == self.n and self.max_rel <= self.tolerance

    def summary(self) -> str:
        """One line for the command line and the error messages."""
        ties = f" ({self.near_ties} near-ties)" if self.near_ties else ""
        return (
            f"same class as the core on {self.same_argmax:,}/{self.n:,} inputs{ties}; logits within "
            f"{self.max_rel:.3e} of exact (float64), relative to max(1, |logit|) (the core's float32: "
            f"{self.core_rel:.3e}; tolerance {self.tolerance:.3e})"
        )


class _Graph:
    """Nodes and initialisers under construction, with unique intermediate names."""

    def __init__(self, onnx: Any, opset: int) -> None:
        self.onnx, self.helper, self.opset = onnx, onnx.helper, opset
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._count = 0
        self._consts: dict[tuple[Any, ...], str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.array(value, order="C"), name))  # keeps 0-d
        return name

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """A shared constant initialiser (float32 scalars, int64 shapes and axes)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.name("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, *inputs: str, hint: str = "", **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: bool) -> str:
        # ReduceSum takes its axes as an input from opset 13, the others from opset 18.
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, x, self.const(axes, np.int64), keepdims=int(keepdims))
        return self.op(op_type, x, axes=axes, keepdims=int(keepdims))

    def reshape(self, x: str, shape: list[int]) -> str:
        # 0 copies the input's dimension: the batch stays dynamic.
        return self.op("Reshape", x, self.const(shape, np.int64))

    def row_norm(self, sq: str) -> str:
        # As the core's _row_norm: the square floored before the root.
        floor = self.const(SPHERICAL_NORM_EPS**2)
        return self.op("Sqrt", self.op("Where", self.op("Greater", sq, floor), sq, floor))


def _value(params: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(params[name], dtype=np.float32)


def _softplus64(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64)
    return np.maximum(raw, 0.0) + np.log1p(np.exp(-np.abs(raw)))


class _Options(NamedTuple):
    bias: str | None  # initialiser or constant, already shaped to broadcast
    alpha: str | None
    epsilon: str


def _yat_options(g: _Graph, layer: LayerSpec, params: Mapping[str, np.ndarray], prefix: str) -> _Options:
    """The product's options as graph values; the bias as a ``(out,)`` vector or a scalar, unshaped."""
    bias = None
    if layer.kind not in ATTENTION_KINDS:
        if layer.bias == LEARNABLE:
            bias = g.init(prefix + "bias", _value(params, prefix + "bias"))
        elif layer.bias is not None:
            bias = g.const(layer.bias)
    alpha = None
    if layer.alpha == LEARNABLE:
        alpha = g.init(prefix + "alpha", _value(params, prefix + "alpha"))
    elif layer.alpha is not None:
        alpha = g.const(layer.alpha)
    if layer.learnable_epsilon:
        eps = _softplus64(params[prefix + "epsilon_raw"]).astype(np.float32)
        epsilon = g.init(prefix + "epsilon", eps)
    else:
        epsilon = g.const(layer.epsilon)
    return _Options(bias, alpha, epsilon)


def _ratio(g: _Graph, dot: str, raw_dist: str, bias: str | None, alpha: str | None, epsilon: str) -> str:
    """``alpha * (dot + bias)^2 / (max(raw_dist, 0) + epsilon)``, in the core's order of operations."""
    dist = g.op("Relu", raw_dist)
    numer = dot if bias is None else g.op("Add", dot, bias)
    ratio = g.op("Div", g.op("Mul", numer, numer), g.op("Add", dist, epsilon))
    return ratio if alpha is None else g.op("Mul", alpha, ratio)


def _distance(g: _Graph, dot: str, x_sq: str, w_sq: str) -> str:
    return g.op("Sub", g.op("Add", x_sq, w_sq), g.op("Mul", g.const(2.0), dot))


def _spherical_distance(g: _Graph, dot: str) -> str:
    return g.op("Sub", g.const(2.0), g.op("Mul", g.const(2.0), dot))


def _sum_sq(g: _Graph, x: str, axes: list[int], keepdims: bool = True) -> str:
    return g.reduce("ReduceSum", g.op("Mul", x, x), axes, keepdims)


def _dense_yat(g: _Graph, layer: LayerSpec, params: Mapping[str, np.ndarray], prefix: str, h: str) -> str:
    w = g.init(prefix + "kernel", _value(params, prefix + "kernel"))  # (out, in)
    opts = _yat_options(g, layer, params, prefix)
    if layer.spherical:
        h = g.op("Div", h, g.row_norm(_sum_sq(g, h, [-1])))
        w = g.op("Div", w, g.row_norm(_sum_sq(g, w, [-1])))
    dot = g.op("MatMul", h, g.op("Transpose", w, perm=[1, 0]))
    if layer.spherical:
        raw = _spherical_distance(g, dot)
    else:
        raw = _distance(g, dot, _sum_sq(g, h, [-1]), _sum_sq(g, w, [-1], keepdims=False))
    return _ratio(g, dot, raw, opts.bias, opts.alpha, opts.epsilon)


def _linear(g: _Graph, layer: LayerSpec, params: Mapping[str, np.ndarray], prefix: str, h: str) -> str:
    # The kernel stays (out, in) under its core name; the transpose is folded by any runtime.
    w = g.init(prefix + "kernel", _value(params, prefix + "kernel"))
    out = g.op("MatMul", h, g.op("Transpose", w, perm=[1, 0]))
    if layer.bias == LEARNABLE:
        out = g.op("Add", out, g.init(prefix + "bias", _value(params, prefix + "bias")))
    elif layer.bias is not None:
        out = g.op("Add", out, g.const(layer.bias))
    return g.op("Relu", out) if layer.activation == "relu" else out


def _geometry(layer: LayerSpec) -> dict[str, Any]:
    """ONNX's attributes for the convolution's stride, padding, dilation and groups."""
    opts = layer.conv_options
    stride, dilation = list(opts["stride"]), list(opts["dilation"])
    if layer.kind == "yat_conv_transpose":
        pads = [int(p) for p in opts["padding"]] * 2
    else:
        lo_hi = conv_pads(opts["padding"], layer.kernel_size, tuple(stride), tuple(dilation))
        pads = [lo for lo, _ in lo_hi] + [hi for _, hi in lo_hi]
    geometry = {"strides": stride, "pads": pads, "dilations": dilation, "group": layer.groups}
    if layer.kind == "yat_conv_transpose":
        geometry["output_padding"] = list(opts["output_padding"])
    return geometry


def _yat_conv(
    g: _Graph, layer: LayerSpec, params: Mapping[str, np.ndarray], prefix: str, shape: tuple[int, ...], h: str
) -> str:
    """Channels first: ``dot`` and ``|patch|^2`` from the runtime's convolution, as the core's native path."""
    d, groups, n_in, n_out = len(layer.kernel_size), layer.groups, layer.in_features, layer.out_features
    transpose = layer.kind == "yat_conv_transpose"
    out_spatial = list(layer.output_shape(shape)[1:])
    w = g.init(prefix + "kernel", _value(params, prefix + "kernel"))
    opts = _yat_options(g, layer, params, prefix)
    geometry = _geometry(layer)
    conv = "ConvTranspose" if transpose else "Conv"
    dot = g.op(conv, h, w, **geometry)  # (N, out, *out)
    # |patch|^2: the channel sum of x*x within each group, then a ones-kernel convolution of it.
    sq = g.reshape(g.op("Mul", h, h), [0, groups, n_in // groups, *shape[1:]])
    sq = g.reduce("ReduceSum", sq, [2], False)  # (N, groups, *in)
    ones = g.const(np.ones((groups, 1, *layer.kernel_size), np.float32))
    psq = g.op(conv, sq, ones, **{**geometry, "group": groups})  # (N, groups, *out)
    # |w|^2 per output filter; a transposed kernel (in, out/groups, *k) sums over its group's inputs.
    if transpose:
        wg = g.reshape(w, [groups, n_in // groups, n_out // groups, *layer.kernel_size])
        wsq = _sum_sq(g, wg, [1, *range(3, 3 + d)], keepdims=False)
    else:
        wsq = _sum_sq(g, w, list(range(1, d + 2)), keepdims=False)
    # Split the groups off the channel axis, so each group's patch norm broadcasts over its filters.
    per_channel = [groups, n_out // groups, *([1] * d)]
    dot = g.reshape(dot, [0, groups, n_out // groups, *out_spatial])
    psq = g.reshape(psq, [0, groups, 1, *out_spatial])
    wsq = g.reshape(wsq, per_channel)
    bias = opts.bias
    if bias is not None and layer.bias == LEARNABLE:
        bias = g.reshape(bias, per_channel)
    if layer.spherical:
        dot = g.op("Div", dot, g.op("Mul", g.row_norm(psq), g.row_norm(wsq)))
        raw = _spherical_distance(g, dot)
    else:
        raw = _distance(g, dot, psq, wsq)
    y = _ratio(g, dot, raw, bias, opts.alpha, opts.epsilon)
    return g.reshape(y, [0, n_out, *out_spatial])


def _conv(g: _Graph, layer: LayerSpec, params: Mapping[str, np.ndarray], prefix: str, h: str) -> str:
    w = g.init(prefix + "kernel", _value(params, prefix + "kernel"))
    inputs = [h, w]
    if layer.bias == LEARNABLE:
        inputs.append(g.init(prefix + "bias", _value(params, prefix + "bias")))
    out = g.op("Conv", *inputs, **_geometry(layer))
    if layer.bias not in (LEARNABLE, None):
        out = g.op("Add", out, g.const(layer.bias))
    return g.op("Relu", out) if layer.activation == "relu" else out


def _patches(g: _Graph, layer: LayerSpec, shape: tuple[int, ...], h: str) -> str:
    """``(N, C, H, W) -> (N, tokens, C * ph * pw)``: row-major patches, each flattened channels first."""
    (ph, pw), (c, height, width) = layer.kernel_size, shape
    rows, cols = height // ph, width // pw
    h = g.op("Transpose", g.reshape(h, [0, c, rows, ph, cols, pw]), perm=[0, 2, 4, 1, 3, 5])
    return g.reshape(h, [0, rows * cols, c * ph * pw])


def _attention(g: _Graph, layer: LayerSpec, params: Mapping[str, np.ndarray], prefix: str, h: str) -> str:
    """Multi-head self-attention on ``(N, T, D)``: projections, Yat or softmax scores, output projection."""
    heads, d_model = layer.heads, layer.in_features
    d = d_model // heads

    def project(p: str, x: str) -> str:
        w = g.init(f"{prefix}{p}_kernel", _value(params, f"{prefix}{p}_kernel"))
        out = g.op("MatMul", x, g.op("Transpose", w, perm=[1, 0]))
        if layer.bias == LEARNABLE:
            out = g.op("Add", out, g.init(f"{prefix}{p}_bias", _value(params, f"{prefix}{p}_bias")))
        return out

    # (N, T, D) -> (N, H, T, d)
    q, k, v = (
        g.op("Transpose", g.reshape(project(p, h), [0, 0, heads, d]), perm=[0, 2, 1, 3]) for p in PROJECTIONS[:3]
    )
    root = g.const(math.sqrt(d))
    if layer.kind == "attention":
        scores = g.op("Div", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), root)
    else:
        opts = _yat_options(g, layer, params, prefix)
        if layer.spherical:
            q = g.op("Div", q, g.row_norm(_sum_sq(g, q, [-1])))
            k = g.op("Div", k, g.row_norm(_sum_sq(g, k, [-1])))
        dot = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))  # (N, H, T, T)
        if layer.spherical:
            raw = _spherical_distance(g, dot)
        else:
            k_sq = g.op("Transpose", _sum_sq(g, k, [-1]), perm=[0, 1, 3, 2])
            raw = _distance(g, dot, _sum_sq(g, q, [-1]), k_sq)
        ratio = _ratio(g, dot, raw, None, None, opts.epsilon)
        scale = g.op("Reciprocal", root) if opts.alpha is None else g.op("Div", opts.alpha, root)
        scores = g.op("Mul", ratio, scale)
    weights = g.op("Softmax", scores, axis=-1)
    a = g.op("Transpose", g.op("MatMul", weights, v), perm=[0, 2, 1, 3])  # (N, T, H, d)
    return project("o", g.reshape(a, [0, 0, d_model]))


def _layer(
    g: _Graph, layer: LayerSpec, params: Mapping[str, np.ndarray], prefix: str, shape: tuple[int, ...], h: str
) -> str:
    kind = layer.kind
    if kind == "yat":
        out = _dense_yat(g, layer, params, prefix, h)
    elif kind == "linear":
        out = _linear(g, layer, params, prefix, h)
    elif kind in ("yat_conv", "yat_conv_transpose"):
        out = _yat_conv(g, layer, params, prefix, shape, h)
    elif kind == "conv":
        out = _conv(g, layer, params, prefix, h)
    elif kind in ("max_pool", "avg_pool"):
        window = list(layer.kernel_size)
        out = g.op("MaxPool" if kind == "max_pool" else "AveragePool", h, kernel_shape=window, strides=window)
    elif kind == "flatten":
        out = g.op("Flatten", h, axis=1)
    elif kind == "patches":
        out = _patches(g, layer, shape, h)
    elif kind == "pos_embed":
        out = g.op("Add", h, g.init(prefix + "table", _value(params, prefix + "table")))
    elif kind == "token_mean":
        out = g.reduce("ReduceMean", h, [1], False)
    elif kind in ATTENTION_KINDS:
        out = _attention(g, layer, params, prefix, h)
    else:  # pragma: no cover - LayerSpec refuses any other kind
        raise ValueError(f"no ONNX export for layer kind {kind!r}")
    return g.op("Add", h, out, hint=f"layer{prefix[:-1]}_residual") if layer.residual else out


def _checked(params: Mapping[str, Any], spec: ModelSpec) -> dict[str, np.ndarray]:
    from yat_core.nn.interchange import check_params

    arrays = check_params(params, spec)
    bad = [name for name, a in arrays.items() if not np.all(np.isfinite(a))]
    if bad:
        raise ValueError(f"parameters with non-finite values (NaN or inf): {', '.join(bad)}")
    return arrays


def build_onnx(spec: ModelSpec, params: Mapping[str, Any], /, *, opset: int = DEFAULT_OPSET) -> Any:
    """The ONNX model (an ``onnx.ModelProto``) of ``spec`` with ``params``, checked by ``onnx.checker``.

    Parameters
    ----------
    spec : ModelSpec
        Any model the core runs.
    params : mapping of str to array-like
        Every parameter in the core's names and layouts (checked against ``spec``;
        values must be finite). Stored as float32.
    opset : int
        The ONNX opset to write (>= 13).

    Raises
    ------
    ValueError
        For parameters that do not fit the spec or are not finite, or an opset below 13.
    yat_core.errors.BackendUnavailableError
        Without the ``onnx`` package.
    """
    onnx = require("onnx", "onnx", "ONNX export")
    if not isinstance(opset, int) or opset < _MIN_OPSET:
        raise ValueError(f"ONNX export needs opset >= {_MIN_OPSET}, got {opset!r}")
    arrays = _checked(params, spec)
    g = _Graph(onnx, opset)
    shapes = spec.shapes()
    h = INPUT_NAME
    for i, layer in enumerate(spec.layers):
        h = _layer(g, layer, arrays, f"{i}.", shapes[i], h)
    g.nodes.append(onnx.helper.make_node("Identity", [h], [OUTPUT_NAME]))
    f32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes,
        "yat_model",
        [onnx.helper.make_tensor_value_info(INPUT_NAME, f32, ["N", *spec.input_shape])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, f32, ["N", spec.n_classes])],
        initializer=g.inits,
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", opset)], producer_name="yat-core", ir_version=8
    )
    kinds = ",".join(layer.kind for layer in spec.layers)
    onnx.helper.set_model_props(model, {"yat_core.layers": kinds, "yat_core.input_shape": repr(spec.input_shape)})
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(
    spec: ModelSpec, params: Mapping[str, Any], path: str | os.PathLike[str], /, *, opset: int = DEFAULT_OPSET
) -> Path:
    """Write the ONNX model of ``spec`` with ``params`` to ``path``, atomically.

    The graph's input is ``"input"``, float32 ``(N, *spec.input_shape)`` with a dynamic
    batch (pixels in [0, 1]: flat ``(N, 784)`` for the MLP, ``(N, 1, 28, 28)`` for the CNN
    and the vision transformer); its output ``"logits"``, ``(N, classes)``.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from yat_core.mlp import init_mlp_numpy
    >>> from yat_core.spec import seed_spec
    >>> spec = seed_spec()
    >>> path = export_onnx(spec, init_mlp_numpy(spec, 0), pathlib.Path(tempfile.mkdtemp()) / "mlp.onnx")
    >>> x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    >>> onnx_logits(path, x).shape
    (4, 10)
    """
    data = build_onnx(spec, params, opset=opset).SerializeToString()
    return atomic_write(path, lambda fh: fh.write(data))


def onnx_logits(path: str | os.PathLike[str], x: np.ndarray, /, *, batch_size: int = 1000) -> np.ndarray:
    """Logits of the ONNX model at ``path`` on float32 inputs ``x``, by ``onnxruntime`` on the CPU."""
    ort = require("onnxruntime", "onnx", "the ONNX check")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise YatError(f"{path}: onnxruntime cannot load it: {exc}") from None
    x = np.ascontiguousarray(x, dtype=np.float32)
    parts = [session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def check_onnx(
    path: str | os.PathLike[str],
    spec: ModelSpec,
    params: Mapping[str, Any],
    x: np.ndarray,
    /,
    *,
    rtol: float = RTOL,
    raise_on_mismatch: bool = True,
) -> OnnxCheck:
    """Run the ONNX model at ``path`` with ``onnxruntime`` and compare it with the core's forward pass.

    The reference is :func:`yat_core.mlp.mlp_forward` on NumPy with the same ``params``:
    in float64 (the exact logits, to float64 rounding) and in float32 (the core's own
    float32 error, and its classes). Passes when every ONNX logit is within the tolerance
    of exact, relative to ``max(1, |logit|)``: ``max(rtol, CORE_ERROR_FACTOR * core
    error)`` (:data:`RTOL`, :data:`CORE_ERROR_FACTOR`: the float32 error model, measured
    on these very inputs), and every predicted class is the core's float32 one, except on
    a row whose two largest exact logits are within twice the tolerance (a tie at float32
    precision, which two correct float32 evaluations may break differently; counted in
    ``near_ties``).

    Parameters
    ----------
    path : path
        The file :func:`export_onnx` wrote.
    spec, params
        The model and its parameters (core names and layouts).
    x : array
        Inputs ``(n, *spec.input_shape)`` or flat ``(n, prod(input_shape))``; floats in
        [0, 1] or uint8 pixels (scaled by 1/255).
    rtol : float
        The least tolerance on logits.
    raise_on_mismatch : bool
        Raise :class:`OnnxMismatchError` when the check fails (else return the figures).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from yat_core.mlp import init_mlp_numpy
    >>> from yat_core.spec import vit_spec
    >>> spec = vit_spec(); params = init_mlp_numpy(spec, 0)
    >>> path = export_onnx(spec, params, pathlib.Path(tempfile.mkdtemp()) / "vit.onnx")
    >>> images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    >>> check_onnx(path, spec, params, images).ok
    True
    """
    from yat_core.mlp import mlp_forward, model_input

    checked = _checked(params, spec)
    p32 = {name: a.astype(np.float32) for name, a in checked.items()}
    p64 = {name: a.astype(np.float64) for name, a in checked.items()}
    x = model_input(p32, np.asarray(x), spec)

    def core(p: dict[str, np.ndarray], dtype: Any) -> np.ndarray:
        # In chunks: the core's convolution unfolds its input, which for 10,000 images at once is gigabytes.
        parts = [mlp_forward(p, x[i : i + 1000].astype(dtype), spec) for i in range(0, len(x), 1000)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros((0, spec.n_classes))

    exact, ref = core(p64, np.float64), core(p32, np.float32)
    got = onnx_logits(path, x).astype(np.float64)
    if got.shape != ref.shape:
        raise OnnxMismatchError(f"{path}: the ONNX model gives logits of shape {got.shape}, the core {ref.shape}")
    scale = np.maximum(1.0, np.abs(exact))
    diff = np.abs(got - exact)
    core_rel = float(np.max(np.abs(ref - exact) / scale)) if diff.size else 0.0
    tolerance = max(rtol, CORE_ERROR_FACTOR * core_rel)
    same = got.argmax(axis=1) == ref.argmax(axis=1)
    top2 = np.sort(exact, axis=1)[:, -2:]
    tie = (top2[:, -1] - top2[:, 0]) <= 2.0 * tolerance * np.maximum(1.0, np.abs(top2[:, -1]))
    result = OnnxCheck(
        n=len(ref),
        same_argmax=int(same.sum()),
        near_ties=int((~same & tie).sum()),
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float(np.max(diff / scale)) if diff.size else 0.0,
        core_rel=core_rel,
        tolerance=tolerance,
    )
    if raise_on_mismatch and not result.ok:
        raise OnnxMismatchError(f"{path}: onnxruntime disagrees with the core: {result.summary()}")
    return result
