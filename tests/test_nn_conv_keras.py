"""The Keras Yat convolutions of yat_core.nn.keras on every Keras backend (jax, torch, tensorflow), against the core.

Keras fixes its backend when it is first imported, so, as in ``test_nn_keras``, each
backend runs in a fresh process: this file is also a script, ``python
tests/test_nn_conv_keras.py BACKEND OUT_DIR``, that runs every check of :data:`CHECKS`
under ``KERAS_BACKEND=BACKEND`` and writes one JSON record per check; the pytest
side starts the three processes at once and reports each check as its own test
(``test_keras_conv[jax-core-2d-same-stride2]``). The pytest process never imports
Keras here.

The reference for every number is the core (:func:`yat_core.conv.yat_conv`,
:func:`yat_core.conv.yat_conv_transpose`) in NumPy float64, with the geometry of each
case written out by hand from Keras's rules (so the layers' own mapping of Keras's
padding to the core's is checked, not reused). Besides the numbers the layers are
held to ``keras.layers.Conv*D`` / ``Conv*DTranspose``: output shapes and kernel
shapes equal to Keras's own layers for the same arguments, Keras's own convolution
aligned with the Yat ``dot`` term, ``data_format`` both ways, ``get_config`` /
``from_config`` and ``.keras`` files. ``test_nn_conv_tf`` imports :data:`CASES` and
the helpers of the first section (framework-free).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from keras_processes import BackendProcesses, Checks, assert_check, run_checks

from yat_core.conv import yat_conv, yat_conv_transpose
from yat_core.product import softplus

BACKENDS = ("jax", "torch", "tensorflow")
#: Seconds one backend's process may take (it runs every check once).
SUBPROCESS_TIMEOUT = 300
#: Float32 against the float64 core, relative to max(1, |reference|).
RTOL = 1e-5

# ================================================================ framework-free, shared with test_nn_conv_tf


def case(
    rank: int,
    transposed: bool,
    in_channels: int,
    spatial: tuple[int, ...],
    args: dict[str, Any],
    core: dict[str, Any],
    *,
    pre_pad: tuple[tuple[int, int], ...] | None = None,
    crop: tuple[int, ...] | None = None,
) -> SimpleNamespace:
    """A layer (``args`` in Keras's names) and the core call that computes it, written out by hand.

    ``core`` holds the core's geometry (stride, padding, dilation, groups[,
    output_padding]); ``pre_pad`` zero-pads the input first (one-sided ``"same"``);
    ``crop`` drops that many outputs at the end of each spatial dimension.
    """
    return SimpleNamespace(
        rank=rank,
        transposed=transposed,
        in_channels=in_channels,
        spatial=spatial,
        args=args,
        core=core,
        pre_pad=pre_pad,
        crop=crop,
    )


#: The layers checked against the core. Geometry by Keras's rules: a direct ``"same"`` pads
#: ``total = max((ceil(i/s)-1)*s + k - i, 0)`` as ``(total//2, total - total//2)``; a transposed
#: ``"same"`` pads the zero-inserted input ``left = min(ceil(t/2), k-1)``, ``right = t - left`` with
#: ``t = s + k - 2``, which is the core's ``padding = k-1-left``, ``output_padding = right-left``
#: (negative: computed as 0 and the last output cropped).
CASES: dict[str, SimpleNamespace] = {
    "1d-valid": case(1, False, 3, (9,), {"filters": 4, "kernel_size": 3}, {}),
    "1d-same-dilated-constant-bias": case(
        1,
        False,
        3,
        (9,),
        {"filters": 4, "kernel_size": 3, "padding": "same", "dilation_rate": 2, "use_bias": 0.5},
        {"padding": 2, "dilation": 2},
    ),
    "2d-stride-groups-int-padding": case(
        2,
        False,
        6,
        (7, 6),
        {"filters": 9, "kernel_size": (3, 2), "strides": (2, 1), "groups": 3, "padding": 1},
        {"stride": (2, 1), "padding": 1, "groups": 3},
    ),
    "2d-same-stride2": case(  # 7 -> pads (1, 1); 6 -> pads (0, 1), one-sided
        2,
        False,
        3,
        (7, 6),
        {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
        {"stride": 2},
        pre_pad=((1, 1), (0, 1)),
    ),
    "2d-spherical-learnable-epsilon-no-alpha": case(
        2,
        False,
        3,
        (5, 5),
        {
            "filters": 4,
            "kernel_size": 2,
            "spherical": True,
            "learnable_epsilon": True,
            "epsilon": 0.1,
            "use_alpha": False,
        },
        {},
    ),
    "2d-stride-and-dilation": case(
        2,
        False,
        2,
        (9, 8),
        {"filters": 3, "kernel_size": 3, "strides": 2, "dilation_rate": 2, "padding": 2},
        {"stride": 2, "dilation": 2, "padding": 2},
    ),
    "3d-groups-no-bias": case(
        3, False, 4, (4, 5, 3), {"filters": 4, "kernel_size": 2, "groups": 2, "use_bias": False}, {"groups": 2}
    ),
    "1d-transpose-valid-stride": case(
        1, True, 3, (5,), {"filters": 4, "kernel_size": 3, "strides": 2}, {"stride": 2, "padding": 0}
    ),
    "2d-transpose-same-k3-s2": case(  # t = 3: left 2, right 1 -> padding 0, output_padding -1: crop 1
        2,
        True,
        3,
        (4, 5),
        {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
        {"stride": 2, "padding": 0},
        crop=(1, 1),
    ),
    "2d-transpose-same-k4-s2": case(  # t = 4: left 2, right 2 -> padding 1
        2,
        True,
        3,
        (4, 3),
        {"filters": 4, "kernel_size": 4, "strides": 2, "padding": "same"},
        {"stride": 2, "padding": 1},
    ),
    "2d-transpose-same-k2x3-s1": case(  # k 2: t = 1, left 1, right 0 -> crop 1; k 3: t = 2 -> padding 1
        2,
        True,
        2,
        (4, 4),
        {"filters": 3, "kernel_size": (2, 3), "padding": "same"},
        {"padding": (0, 1)},
        crop=(1, 0),
    ),
    "2d-transpose-valid-output-padding": case(
        2,
        True,
        3,
        (4, 4),
        {"filters": 4, "kernel_size": 3, "strides": 2, "output_padding": 1},
        {"stride": 2, "padding": 0, "output_padding": 1},
    ),
    "2d-transpose-int-padding-groups-dilated": case(
        2,
        True,
        4,
        (4, 5),
        {"filters": 6, "kernel_size": 3, "strides": 2, "padding": 1, "output_padding": 1, "groups": 2},
        {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2},
    ),
    "3d-transpose-same-learnable-epsilon": case(  # k 2, s 2: t = 2, left 1, right 1 -> padding 0
        3,
        True,
        2,
        (3, 2, 3),
        {"filters": 3, "kernel_size": 2, "strides": 2, "padding": "same", "learnable_epsilon": True, "epsilon": 0.2},
        {"stride": 2, "padding": 0},
    ),
}


def layer_spec_args(c: SimpleNamespace) -> dict[str, Any]:
    """The layer's options as the core's LayerSpec spells them (for the parameter shapes)."""
    a = c.args
    return {
        "bias": a.get("use_bias", True),
        "alpha": a.get("use_alpha", True),
        "epsilon": a.get("epsilon", 1e-5),
        "learnable_epsilon": a.get("learnable_epsilon", False),
        "spherical": a.get("spherical", False),
    }


def case_inputs(c: SimpleNamespace, seed: int = 0) -> np.ndarray:
    """Channels-last float32 inputs ``(2, *spatial, in_channels)``."""
    return np.random.default_rng(seed).normal(size=(2, *c.spatial, c.in_channels)).astype(np.float32)


def case_params(shapes: dict[str, tuple[int, ...]], seed: int = 1) -> dict[str, np.ndarray]:
    """Random float32 parameters in the core's names and layout (alpha and epsilon away from their defaults)."""
    rng = np.random.default_rng(seed)
    values = {
        "kernel": rng.normal(0.0, 0.5, shapes["kernel"]),
        "bias": rng.uniform(-0.5, 0.5, shapes.get("bias", (0,))),
        "alpha": np.array(1.3),
        "epsilon_raw": np.array(-1.0),
    }
    return {name: values[name].astype(np.float32) for name in shapes}


def core_reference(c: SimpleNamespace, x: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """The case's output from the core in float64, channels last (the hand-written geometry)."""
    a = c.args
    p = {k: v.astype(np.float64) for k, v in params.items()}
    options = {
        "bias": p.get("bias") if a.get("use_bias", True) is True else (a["use_bias"] or None),
        "alpha": p.get("alpha") if a.get("use_alpha", True) is True else (a["use_alpha"] or None),
        "epsilon": softplus(p["epsilon_raw"]) if a.get("learnable_epsilon") else a.get("epsilon", 1e-5),
        "spherical": a.get("spherical", False),
    }
    h = np.moveaxis(x.astype(np.float64), -1, 1)
    if c.pre_pad is not None:
        h = np.pad(h, [(0, 0), (0, 0), *c.pre_pad])
    fn = yat_conv_transpose if c.transposed else yat_conv
    y = fn(h, p["kernel"], **c.core, **options)
    if c.crop is not None:
        y = y[(slice(None), slice(None), *(slice(0, int(m) - k) for m, k in zip(y.shape[2:], c.crop)))]
    return np.moveaxis(y, 1, -1)


def assert_close(got: np.ndarray, want: np.ndarray, what: str, rtol: float = RTOL) -> None:
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    err = float(np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want))))
    assert err <= rtol, f"{what}: max error {err:.2e} relative to max(1, |reference|) > {rtol:.0e}"


def keras_transposed_size(i: int, k: int, s: int, d: int, padding: str, output_padding: int | None) -> int:
    """Keras's output size of a transposed convolution (``Conv*DTranspose.compute_output_shape``)."""
    span = d * (k - 1) + 1
    if output_padding is None:
        return i * s + max(span - s, 0) if padding == "valid" else i * s
    return (i - 1) * s + span + output_padding - (2 * (span // 2) if padding == "same" else 0)


#: Geometries whose output shape is held to Keras's own layers: (rank, transposed, kernel, strides, padding,
#: output_padding, dilation). Keras refuses strides > 1 with dilation > 1, so those are not among them.
SHAPE_GRID = [
    (rank, transposed, k, s, padding, op, d)
    for rank in (1, 2, 3)
    for transposed in (False, True)
    for k in (1, 2, 3)
    for s, d in ((1, 1), (2, 1), (3, 1), (1, 2))
    for padding in ("valid", "same")
    for op in ((None, 0, s - 1) if transposed and s > 1 else (None,))
    if rank == 2 or (k == 3 and d == 1)
]


# ================================================================ the checks (run in the subprocess)

CHECKS = Checks()
check = CHECKS.register

#: ``keras.layers.Conv2D``'s arguments that the Yat convolutions take under the same names.
CONV_ARGUMENTS = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "data_format",
    "dilation_rate",
    "groups",
    "use_bias",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "bias_constraint",
)


def _np(ctx: SimpleNamespace, value: Any) -> np.ndarray:
    return np.asarray(ctx.keras.ops.convert_to_numpy(value))


#: Initialisers for layers whose values are replaced (random draws cost a compilation per shape on eager JAX).
ZEROS = {"kernel_initializer": "zeros", "bias_initializer": "zeros"}


def _layer(ctx: SimpleNamespace, c: SimpleNamespace, **extra: Any) -> Any:
    """The case's layer, built for its input (values: zeros, or ``import_params``'s)."""
    cls = ctx.knn._CONV_CLASSES[(c.transposed, c.rank)]
    layer = cls(**{**ZEROS, **c.args, **extra})
    shape = (None, *c.spatial, c.in_channels)
    if layer.data_format == "channels_first":
        shape = (None, c.in_channels, *c.spatial)
    layer.build(shape)
    return layer


def _random_layer(ctx: SimpleNamespace, c: SimpleNamespace, **extra: Any) -> Any:
    """The case's layer holding :func:`case_params`."""
    layer = _layer(ctx, c, **extra)
    return layer.import_params(case_params({k: v.shape for k, v in layer.export_params().items()}))


def _apply(ctx: SimpleNamespace, layer: Any, x: np.ndarray) -> np.ndarray:
    """The built layer's output as NumPy; on jax through ``jax.jit`` (one compilation, not one per operation)."""
    if ctx.backend != "jax":
        return _np(ctx, layer(x))
    import jax

    forward = jax.jit(lambda values, h: layer.stateless_call(values, [], h)[0])
    return np.asarray(forward([v.value for v in layer.trainable_variables], x))


def _grid(ctx: SimpleNamespace) -> list[tuple]:
    # Eager JAX compiles every operation for every new shape: a sample of the grid there (the geometry is
    # the layers' own Python, the same on every backend; torch and tensorflow run all of it).
    return SHAPE_GRID[::6] if ctx.backend == "jax" else SHAPE_GRID


def _keras_class(ctx: SimpleNamespace, transposed: bool, rank: int) -> Any:
    return getattr(ctx.keras.layers, f"Conv{rank}D{'Transpose' if transposed else ''}")


def _core_check(name: str) -> Callable[[SimpleNamespace], None]:
    def run(ctx: SimpleNamespace) -> None:
        c = CASES[name]
        layer = _layer(ctx, c)
        params = case_params({k: v.shape for k, v in layer.export_params().items()})
        layer.import_params(params)
        x = case_inputs(c)
        want = core_reference(c, x, params)
        assert_close(_apply(ctx, layer, x), want, f"{name} channels_last")
        first = _layer(ctx, c, data_format="channels_first").import_params(params)
        got = _apply(ctx, first, np.moveaxis(x, -1, 1))
        assert_close(np.moveaxis(got, 1, -1), want, f"{name} channels_first")
        assert tuple(layer.compute_output_shape(x.shape)) == want.shape, name

    return run


for _name in CASES:
    CHECKS[f"core-{_name}"] = _core_check(_name)


@check("shapes-equal-keras-layers")
def _(ctx: SimpleNamespace) -> None:
    """Output and kernel shapes equal Keras's own layers' for the same arguments, both data formats."""
    problems = []
    for rank, transposed, k, s, padding, op, d in _grid(ctx):
        extra = {"output_padding": op} if transposed else {}
        args = {"filters": 2, "kernel_size": k, "strides": s, "padding": padding, "dilation_rate": d, **extra}
        for data_format in ("channels_last", "channels_first"):
            spatial = (7, 6, 5)[:rank]
            shape = (1, *spatial, 3) if data_format == "channels_last" else (1, 3, *spatial)
            ours = ctx.knn._CONV_CLASSES[(transposed, rank)](**args, **ZEROS, data_format=data_format)
            ours.build(shape)
            theirs = _keras_class(ctx, transposed, rank)(**args, **ZEROS, data_format=data_format)
            theirs.build(shape)
            what = f"{rank}d transposed={transposed} {args} {data_format}"
            got = _apply(ctx, ours, np.ones(shape, np.float32)).shape
            if ctx.backend == "tensorflow":
                # Keras's own layers fail on TensorFlow's CPU kernels for channels_first and for some "same"
                # transposes (oneDNN): Keras's shape inference stands for them.
                want = tuple(theirs.compute_output_shape(shape))
            else:
                want = tuple(theirs(np.ones(shape, np.float32)).shape)
            if tuple(ours.kernel.shape) != tuple(theirs.kernel.shape):
                problems.append(f"{what}: kernel {tuple(ours.kernel.shape)} vs {tuple(theirs.kernel.shape)}")
            if tuple(ours.compute_output_shape(shape)) != tuple(got):
                problems.append(f"{what}: compute_output_shape {ours.compute_output_shape(shape)} vs {tuple(got)}")
            if tuple(got) != tuple(want):
                problems.append(f"{what}: output {tuple(got)} vs Keras {tuple(want)}")
            if transposed and data_format == "channels_last":
                size = keras_transposed_size(spatial[0], k, s, d, padding, op)
                if got[1] != size:
                    problems.append(f"{what}: size {got[1]} vs the rule {size}")
    assert not problems, "\n".join(problems[:20])


@check("keras-convolution-is-the-dot-term")
def _(ctx: SimpleNamespace) -> None:
    """Keras's own convolution, with the same kernel, is aligned with the Yat ``dot`` term.

    With no bias or alpha and a huge epsilon, ``y * epsilon = dot^2 / (1 + dist/epsilon)``:
    so every output position sees the same patch as Keras's layer does (the padding
    and cropping of ``"same"`` and of the transposed convolutions included).
    """
    eps, problems = 1e8, []
    for rank, transposed, k, s, padding, op, d in _grid(ctx):
        if rank != 2 or d != 1:
            continue
        if ctx.backend == "tensorflow" and transposed and padding == "same" and op == 0 and k == 2:
            continue  # Keras's own Conv2DTranspose fails on TensorFlow's CPU (oneDNN) here
        extra = {"output_padding": op} if transposed else {}
        args = {"filters": 2, "kernel_size": k, "strides": s, "padding": padding, **extra}
        x = np.random.default_rng(k + s).normal(size=(2, 7, 6, 3)).astype(np.float32)
        ours = ctx.knn._CONV_CLASSES[(transposed, 2)](**args, **ZEROS, use_bias=False, use_alpha=False, epsilon=eps)
        ours.build(x.shape)
        ours.kernel.assign(np.random.default_rng(s).normal(size=tuple(ours.kernel.shape)).astype(np.float32))
        y = _apply(ctx, ours, x).astype(np.float64)
        theirs = _keras_class(ctx, transposed, 2)(**args, **ZEROS, use_bias=False)
        theirs.build(x.shape)
        theirs.kernel.assign(ours.kernel.value)
        dot = _apply(ctx, theirs, x).astype(np.float64)
        err = float(np.max(np.abs(y * eps - dot**2)) / max(1.0, float(np.max(dot**2))))
        if y.shape != dot.shape or err > 1e-4:
            problems.append(f"transposed={transposed} {args}: {y.shape} vs {dot.shape}, error {err:.1e}")
    assert not problems, "\n".join(problems)


@check("arguments-and-kernel-layout-are-keras")
def _(ctx: SimpleNamespace) -> None:
    import inspect

    for (transposed, rank), cls in ctx.knn._CONV_CLASSES.items():
        ours = inspect.signature(cls.__init__).parameters
        theirs = inspect.signature(_keras_class(ctx, transposed, rank).__init__).parameters
        names = [n for n in CONV_ARGUMENTS if n != "groups" or not transposed]
        assert all(n in ours and n in theirs for n in names), (cls.__name__, [n for n in names if n not in ours])
        assert ("output_padding" in theirs) == transposed
    layer = ctx.knn.YatConv2D(8, (3, 2), groups=2, **ZEROS)
    layer.build((None, 9, 9, 4))
    assert tuple(layer.kernel.shape) == (3, 2, 2, 8)  # (*k, in/groups, filters), as Conv2D
    assert layer.export_params()["kernel"].shape == (8, 2, 3, 2)  # the core's (filters, in/groups, *k)
    t = ctx.knn.YatConv2DTranspose(6, (3, 2), **ZEROS)
    t.build((None, 9, 9, 4))
    assert tuple(t.kernel.shape) == (3, 2, 6, 4)  # (*k, filters, in), as Conv2DTranspose
    assert t.export_params()["kernel"].shape == (4, 6, 3, 2)  # the core's (in, filters/groups, *k)
    assert [layer.strides, layer.dilation_rate, layer.padding, layer.data_format] == [
        (1, 1),
        (1, 1),
        "valid",
        "channels_last",
    ]


@check("export-import-round-trip")
def _(ctx: SimpleNamespace) -> None:
    for name in (
        "2d-stride-groups-int-padding",
        "2d-transpose-int-padding-groups-dilated",
        "3d-transpose-same-learnable-epsilon",
    ):
        c = CASES[name]
        layer = _random_layer(ctx, c)
        exported = layer.export_params()
        assert list(exported) == list(layer._built_spec().param_shapes), name
        other = _layer(ctx, c).import_params(exported)
        for key, value in other.export_params().items():
            np.testing.assert_array_equal(value, exported[key], err_msg=f"{name} {key}")
        via_module = ctx.knn.export_params(ctx.knn.import_params(_layer(ctx, c), exported))
        assert all(np.array_equal(via_module[k], v) for k, v in exported.items()), name
    layer = _layer(ctx, CASES["1d-valid"])
    before = layer.export_params()
    bad = {**before, "kernel": np.zeros((3, 3, 4), np.float32)}
    with pytest.raises(
        ValueError, match=r"parameters do not fit the layer: kernel has shape \(3, 3, 4\), expected \(4, 3, 3\)"
    ):
        layer.import_params(bad)
    with pytest.raises(ValueError, match="unexpected epsilon_raw"):
        layer.import_params({**before, "epsilon_raw": np.float32(0.0)})
    with pytest.raises(TypeError, match="real floating"):
        layer.import_params({**before, "bias": np.zeros(4, np.int32)})
    assert all(np.array_equal(v, before[k]) for k, v in layer.export_params().items()), "a bad import changed nothing"
    with pytest.raises(ValueError, match="not built yet"):
        ctx.knn.YatConv2D(4, 3).export_params()


@check("default-initialisation-is-the-cores")
def _(ctx: SimpleNamespace) -> None:
    ctx.keras.utils.set_random_seed(0)
    layer = ctx.knn.YatConv2D(64, 3, groups=2)
    layer.build((None, 8, 8, 32))
    p = layer.export_params()
    fan_in, fan_out = 16 * 9, 32 * 9  # the core's fans: (in/groups * k*k, out/groups * k*k)
    assert abs(float(np.std(p["kernel"])) / np.sqrt(2.0 / (fan_in + fan_out)) - 1) < 0.05
    assert float(np.max(np.abs(p["bias"]))) <= 1 / np.sqrt(fan_in) and float(np.std(p["bias"])) > 0
    assert float(p["alpha"]) == 1.0
    eps = ctx.knn.YatConv1D(2, 2, learnable_epsilon=True, epsilon=0.1)
    eps.build((None, 4, 1))
    assert float(softplus(eps.export_params()["epsilon_raw"].astype(np.float64))) == pytest.approx(0.1, rel=1e-6)


@check("gradients-reach-every-parameter")
def _(ctx: SimpleNamespace) -> None:
    for name in ("2d-spherical-learnable-epsilon-no-alpha", "2d-transpose-same-k3-s2", "3d-groups-no-bias"):
        c = CASES[name]
        layer = _random_layer(ctx, c, learnable_epsilon=True)
        x = case_inputs(c)
        grads = _gradients(ctx, layer, x)
        assert sorted(grads) == sorted(layer._built_spec().param_shapes), (name, sorted(grads))
        for key, g in grads.items():
            assert np.all(np.isfinite(g)) and np.any(g != 0), f"{name}: d/d{key} is {g}"


def _gradients(ctx: SimpleNamespace, layer: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """The backend's own gradients of ``sum(y * weights)`` for every trainable variable, by core name."""
    keras = ctx.keras
    names = {id(v): n for n, v in layer.param_variables().items()}
    variables = layer.trainable_variables
    w = np.linspace(-1.0, 1.0, int(np.prod(layer.compute_output_shape(x.shape)))).astype(np.float32)
    if ctx.backend == "jax":
        import jax

        def loss_of(values: list[Any]) -> Any:
            y, _ = layer.stateless_call(values, [], x)
            return keras.ops.sum(keras.ops.reshape(y, (-1,)) * w)

        grads = jax.jit(jax.grad(loss_of))([v.value for v in variables])
    elif ctx.backend == "torch":
        import torch

        loss = keras.ops.sum(keras.ops.reshape(layer(x), (-1,)) * keras.ops.convert_to_tensor(w))
        grads = torch.autograd.grad(loss, [v.value for v in variables])
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.reshape(layer(x), (-1,)) * w)
        grads = tape.gradient(loss, variables)
    return {names[id(v)]: _np(ctx, g) for v, g in zip(variables, grads)}


@check("config-round-trip-and-keras-file")
def _(ctx: SimpleNamespace) -> None:
    keras = ctx.keras
    for name in ("2d-same-stride2", "1d-same-dilated-constant-bias", "2d-transpose-int-padding-groups-dilated"):
        c = CASES[name]
        layer = _layer(ctx, c)
        config = json.loads(json.dumps(layer.get_config()))  # what a .keras file holds
        clone = type(layer).from_config(config)
        assert clone.get_config() == layer.get_config(), name
    c = CASES["2d-transpose-same-k3-s2"]
    x = case_inputs(c)
    model = keras.Sequential(
        [
            keras.Input((*c.spatial, c.in_channels)),
            ctx.knn.YatConv2DTranspose(**c.args, **ZEROS, learnable_epsilon=True),
            ctx.knn.YatConv2D(2, 3, padding="same", use_alpha=0.5, **ZEROS),
        ]
    )
    for seed, layer in enumerate(model.layers):
        layer.import_params(case_params({k: v.shape for k, v in layer.export_params().items()}, seed))
    path = ctx.out / "conv.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers] == ["YatConv2DTranspose", "YatConv2D"]
    y = _apply(ctx, model, x)
    assert y.shape == (2, 8, 10, 2) and float(np.std(y)) > 0
    np.testing.assert_array_equal(_apply(ctx, loaded, x), y)
    for a, b in zip(loaded.layers, model.layers):
        assert a.get_config() == b.get_config()
    # Regularisers and constraints go through Keras's add_weight, as Conv2D's.
    reg = ctx.knn.YatConv1D(2, 2, kernel_regularizer="l2", bias_regularizer="l1", kernel_constraint="non_neg", **ZEROS)
    reg.build((None, 5, 3))
    assert len(reg.losses) == 2 and reg.kernel.constraint is not None


@check("fit-trains-and-predict-equals-call")
def _(ctx: SimpleNamespace) -> None:
    """``model.fit`` (tensorflow: graphs with an unknown batch) trains every variable; ``predict`` is the call."""
    keras = ctx.keras
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            ctx.knn.YatConv2D(3, 3, strides=2, padding="same", learnable_epsilon=True, epsilon=0.5),
            ctx.knn.YatConv2DTranspose(2, 3, strides=2, padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 6, 6, 1)).astype(np.float32), rng.integers(0, 2, 10)
    before = {f"{i}.{k}": v for i, layer in enumerate(model.layers[:2]) for k, v in layer.export_params().items()}
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 4, 4, 2: the last batch is smaller
    after = {f"{i}.{k}": v for i, layer in enumerate(model.layers[:2]) for k, v in layer.export_params().items()}
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    assert not unchanged, f"not trained: {unchanged}"
    np.testing.assert_allclose(model.predict(x, verbose=0), _apply(ctx, model, x), rtol=1e-5, atol=1e-6)


@check("spec-and-from-spec")
def _(ctx: SimpleNamespace) -> None:
    from yat_core.nn.options import conv_layer_spec

    for name in (
        "1d-valid",
        "2d-stride-groups-int-padding",
        "2d-transpose-same-k4-s2",
        "2d-transpose-int-padding-groups-dilated",
    ):
        layer = _random_layer(ctx, CASES[name])
        spec = layer.spec
        assert spec.in_features == CASES[name].in_channels and spec.out_features == layer.filters, name
        clone = ctx.knn.conv_from_spec(spec, **ZEROS).import_params(layer.export_params())
        assert clone.spec == spec, name
        x = case_inputs(CASES[name])
        np.testing.assert_allclose(_apply(ctx, clone, x), _apply(ctx, layer, x), rtol=1e-6, atol=1e-6, err_msg=name)
    # Keras "same" transposed k 4 s 2 is torch's padding 1; the spec is built for its channels.
    assert _layer(ctx, CASES["2d-transpose-same-k4-s2"]).spec.padding == (1, 1)
    spec = conv_layer_spec(4, 6, 3, n_spatial=2, padding="same", groups=2)
    layer = ctx.knn.conv_from_spec(spec, data_format="channels_first", **ZEROS)
    assert tuple(layer.kernel.shape) == (3, 3, 2, 6) and layer.spec == spec and layer.built
    for name, match in (
        ("2d-same-stride2", "depends on the input size"),
        ("2d-transpose-same-k3-s2", "more on the left"),
    ):
        with pytest.raises(ValueError, match=match):
            _ = _layer(ctx, CASES[name]).spec
    with pytest.raises(ValueError, match="is built from a 'yat_conv' spec with 2"):
        ctx.knn.YatConv2D.from_spec(conv_layer_spec(4, 6, 3, n_spatial=1))


@check("bad-arguments-and-inputs-get-clear-errors")
def _(ctx: SimpleNamespace) -> None:
    knn = ctx.knn
    cases = [
        (lambda: knn.YatConv2D(4.0, 3), TypeError, "filters must be a positive integer"),
        (lambda: knn.YatConv2D(6, 3, groups=4), ValueError, "groups=4 must divide filters=6"),
        (lambda: knn.YatConv2D(4, (3, 3, 3)), ValueError, "kernel_size must be an int or a tuple of 2 ints"),
        (lambda: knn.YatConv2D(4, 3, strides=0), ValueError, "strides must be >= 1"),
        (lambda: knn.YatConv2D(4, 3, padding=-1), ValueError, "padding must be >= 0"),
        (lambda: knn.YatConv2D(4, 3, padding="causal"), ValueError, "padding must be 'valid', 'same' or ints"),
        (lambda: knn.YatConv2D(4, 3, data_format="NCHW"), ValueError, "data_format must be"),
        (lambda: knn.YatConv2D(4, 3, output_padding=1), TypeError, "takes no output_padding"),
        (lambda: knn.YatConv2D(4, 3, epsilon=0.0), ValueError, "epsilon must be a finite number > 0"),
        (lambda: knn.YatConv2DTranspose(4, 3, strides=2, output_padding=2), ValueError, "smaller than strides"),
        (lambda: knn.YatConv2DTranspose(4, 3, padding=1, output_padding=1), ValueError, "smaller than strides or"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()
    layer = knn.YatConv2D(4, 3, groups=2)
    with pytest.raises(ValueError, match="groups=2 must divide 3 and 4 channels"):
        layer.build((None, 8, 8, 3))  # input channels not divisible
    with pytest.raises(ValueError, match="expected ndim=4"):
        knn.YatConv2D(4, 3)(np.ones((2, 8, 3), np.float32))
    built = knn.YatConv2D(4, 3, **ZEROS)
    built(np.ones((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 3"):
        built(np.ones((1, 5, 5, 2), np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        built(np.ones((1, 2, 5, 3), np.float32))


@check("native-path-equals-the-unfold")
def _(ctx: SimpleNamespace) -> None:
    """The layers' namespace and native convolution against the core's own unfold on the same namespace."""
    xp = ctx.knn.namespace()
    rng = np.random.default_rng(3)
    cases = [  # (transposed, x, w, geometry): 3-D groups, strides with dilation, crops, asymmetric padding
        (False, (2, 4, 5, 4, 3), (4, 2, 2, 2, 2), {"groups": 2, "padding": 1}),
        (False, (1, 2, 9, 8), (3, 2, 3, 3), {"stride": 2, "dilation": 2, "padding": 1}),
        (False, (1, 2, 5, 6), (4, 1, 2, 4), {"padding": "same", "groups": 2}),
        (True, (1, 2, 5, 5), (2, 3, 3, 3), {"padding": 3, "dilation": (1, 2)}),
        (True, (1, 4, 3, 4), (4, 2, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}),
    ]
    for transposed, x_shape, w_shape, geometry in cases:
        x = xp.asarray(rng.normal(size=x_shape).astype(np.float32))
        w = xp.asarray(rng.normal(size=w_shape).astype(np.float32))
        fn = yat_conv_transpose if transposed else yat_conv
        outputs = []
        for native in (True, False):

            def forward(a: Any, b: Any, native: bool = native, fn: Any = fn, geometry: dict = geometry) -> Any:
                return fn(a, b, bias=0.1, alpha=1.5, native=native, xp=xp, **geometry)

            if ctx.backend == "jax":
                import jax

                forward = jax.jit(forward)
            outputs.append(_np(ctx, forward(x, w)))
        fast, slow = outputs
        assert_close(fast, slow.astype(np.float64), f"{x_shape} {w_shape} {geometry}", rtol=2e-5)


@check("tf-module-gives-the-same-outputs")
def _(ctx: SimpleNamespace) -> None:
    """On the tensorflow backend: the tf.Module of yat_core.nn.tf, same arguments and weights, same outputs."""
    if ctx.backend != "tensorflow":
        return
    from yat_core.nn import tf as ytf

    for name, c in CASES.items():
        layer = _random_layer(ctx, c)
        module = ytf._CONV_CLASSES[(c.transposed, c.rank)](c.in_channels, **c.args, seed=0)
        module.import_params(layer.export_params())
        x = case_inputs(c)
        np.testing.assert_allclose(module(x).numpy(), _np(ctx, layer(x)), rtol=1e-5, atol=1e-6, err_msg=name)
        assert tuple(module.kernel.shape) == tuple(layer.kernel.shape), name


def main(backend: str, out: Path) -> None:
    """The subprocess: run every check under Keras backend ``backend``; write ``out/results.json``."""
    import keras

    from yat_core.nn import keras as knn

    ctx = SimpleNamespace(backend=backend, keras=keras, knn=knn, out=out)
    run_checks(CHECKS, CHECKS, ctx, out)


# ================================================================ the pytest side


@pytest.fixture(scope="module")
def keras_conv_run(tmp_path_factory: pytest.TempPathFactory) -> BackendProcesses:
    """Every backend's check process, started together on first use."""
    return BackendProcesses(__file__, BACKENDS, tmp_path_factory.mktemp, SUBPROCESS_TIMEOUT)


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_conv(backend: str, check: str, keras_conv_run: BackendProcesses) -> None:
    """One check of :data:`CHECKS`, run in the backend's own process."""
    assert_check(keras_conv_run, backend, check)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
