"""Trajectory parity: the same training run on every backend and framework, step by step.

Every run starts from the same float32 weights (:func:`yat_core.mlp.init_mlp_numpy`)
and sees the same batches in the same order (:func:`yat_core.train.batch_order`);
the reference is the NumPy backend in float64. Each backend runs its default
training step, compiled as users run it; each framework (``TrainConfig(framework=...)``)
trains its own native model with its own optimizer, built from the same weights.

Three models: ``"seed"`` (the seed MLP, ``--model mlp``), ``"cnn"`` (the Yat CNN,
``--model cnn``) and ``"vit"`` (the Yat vision transformer, ``--model vit``).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import numpy as np

from verification.error_model import Precision, loss_bound, yat_bound
from verification.oracle import (
    AttentionLayer64,
    ConvOracle,
    MLPBackward,
    avg_pool64,
    mlp_backward64,
    mlp_forward64,
    patches64,
    pool_windows64,
    unfold64,
    yat_attention_vjp64,
)
from yat_core.backends import get_backend
from yat_core.mlp import MLPSpec, init_mlp_numpy
from yat_core.optim import adamw_init
from yat_core.runners.core import CoreRunner
from yat_core.spec import MODELS as RECIPES
from yat_core.spec import TOKEN_KINDS, ModelSpec
from yat_core.train import TrainConfig, batch_order, train

__all__ = [
    "Run",
    "REFERENCE",
    "TRAINING_BACKENDS",
    "FRAMEWORKS",
    "MODELS",
    "model_spec",
    "mnist",
    "run",
    "compare_runs",
    "seed_batch",
    "first_batch",
    "conv_front_bounds",
    "token_loss_bound",
    "model_loss_bound",
]

#: The float64 reference run.
REFERENCE = ("numpy", "float64")
#: The float32 runs compared with it (backend, gradients; None: the backend's default).
TRAINING_BACKENDS = (("numpy", None), ("torch", None), ("jax", None), ("mlx", None))
#: Frameworks whose native model trains from the same weights (``TrainConfig(framework=...)``).
FRAMEWORKS = ("torch", "nnx", "linen", "mlx", "keras", "tf")
#: The parity suite's model names and the ``--model`` each one is.
MODELS = {"seed": "mlp", "cnn": "cnn", "vit": "vit"}
BATCH = 128


def model_spec(model: str) -> ModelSpec:
    """The Yat spec of a parity model name (``"seed"``, ``"cnn"``, ``"vit"``)."""
    return RECIPES[MODELS[model]].yat()


class Run(NamedTuple):
    """Per-step training losses and per-epoch test accuracies of one run."""

    label: str
    backend: str
    dtype: str
    gradients: str
    step_loss: list[float]
    test_acc: list[float]
    seconds: float


@functools.cache
def mnist() -> Any:
    """MNIST, loaded (and fetched on a fresh machine) once per session."""
    from yat_core.data import load_mnist

    return load_mnist(progress=False)


def seed_batch(n: int = BATCH, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first training batch of the seed recipe: pixels in [0, 1] (float32, as the
    core flattens them) and labels."""
    data = mnist()
    idx = batch_order(seed, 1, len(data.train_labels))[:n]
    images = data.train_images[idx].reshape(n, -1)
    return images.astype(np.float32) / 255.0, data.train_labels[idx].astype(np.int64)


def first_batch(n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """The first batch of a run on the first ``n_train`` training images: pixels in [0, 1]
    in float64 (as the float64 reference reads them) and labels."""
    data = mnist()
    idx = batch_order(0, 1, n_train)[:BATCH]
    x = data.train_images[:n_train][idx].reshape(BATCH, -1) / 255.0
    return x, data.train_labels[:n_train][idx].astype(np.int64)


def _float32_init_runner(spec: MLPSpec, config: TrainConfig) -> CoreRunner:
    """The core's runner, started from the float32 initial weights whatever its dtype:
    the float64 reference then differs from the float32 runs by arithmetic only."""
    backend = get_backend(config.backend, config.device, config.gradients, spec)
    runner = CoreRunner(backend, spec, config)
    init = init_mlp_numpy(spec, config.seed, np.float32)
    runner.params = {k: backend.asarray(v.astype(config.dtype)) for k, v in init.items()}
    runner.opt_state = adamw_init(runner.params, xp=backend.xp)
    return runner


def run(
    backend: str | None,
    dtype: str,
    *,
    gradients: str | None,
    steps: int | None,
    epochs: int,
    test_limit: int | None,
    model: str = "seed",
    framework: str | None = None,
) -> Run:
    """Train ``model`` on the first ``steps * 128`` training images (all when None), from
    the float32 initial weights: on the core's ``backend``, or (``backend=None``) as
    ``framework``'s native model with its own optimizer (labelled ``nn-<framework>``)."""
    from yat_core.runners import make_runner

    keras_backend = None
    if framework == "keras":
        import keras

        keras_backend = keras.config.backend()  # the session's (conftest: tensorflow)
    config = TrainConfig(
        model=MODELS[model],
        backend=backend,
        framework=framework,
        keras_backend=keras_backend,
        dtype=dtype,
        gradients=gradients,
        epochs=epochs,
        seed=0,
        train_limit=None if steps is None else steps * BATCH,
        test_limit=test_limit,
    )
    factory = make_runner if framework is not None else _float32_init_runner
    t0 = time.perf_counter()
    receipt = train(config, data=mnist(), runner_factory=factory, progress=False, log=None)
    losses = [v for record in receipt["history"] for v in record["step_loss"]]
    grads = receipt.get("gradients") or "autodiff"
    if framework is not None:
        label = f"nn-{framework}-{dtype}"
    else:
        label = f"{backend}-{dtype}" + ("" if dtype == "float64" else f"-{grads}")
    return Run(
        label,
        backend or f"nn-{framework}",
        dtype,
        grads,
        losses,
        [record["test_acc"] for record in receipt["history"]],
        time.perf_counter() - t0,
    )


def compare_runs(reference: Run, other: Run) -> dict[str, Any]:
    """Per-step loss differences of ``other`` from ``reference`` and the accuracy gap."""
    ref, got = np.asarray(reference.step_loss), np.asarray(other.step_loss)
    diff = np.abs(got - ref)
    return {
        "label": other.label,
        "steps": int(diff.size),
        "max_loss_diff": float(diff.max()),
        "max_loss_diff_step": int(diff.argmax()) + 1,
        "mean_loss_diff": float(diff.mean()),
        "first_step_diff": float(diff[0]),
        "final_test_acc": other.test_acc[-1],
        "acc_diff_pp": 100.0 * abs(other.test_acc[-1] - reference.test_acc[-1]),
        "seconds": other.seconds,
    }


# -- the step-1 bound of a model with convolutions ---------------------------------------------


def conv_front_bounds(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    spec: ModelSpec,
    prec: Precision,
    x_err: np.ndarray,
    *,
    forward: tuple[list[np.ndarray], list[Any]] | None = None,
) -> tuple[int, np.ndarray, np.ndarray]:
    """The error model through the layers before a model's first dense layer.

    Returns ``(i, h, e)``: the index of the first dense layer, its exact (float64) input
    and a bound on the error of that input as computed in ``prec``. Per layer:

    - ``yat_conv``: the dense product's bound (:func:`~verification.error_model.yat_bound`)
      on each group's patches, the input error unfolded with them (padding is exact);
    - ``conv``: the dense linear bound on the patches, then the ReLU (1-Lipschitz);
    - ``max_pool``: max is exact and 1-Lipschitz in each element, so the window's
      largest error; ``avg_pool``: the mean of the errors plus ``gamma_K`` of the mean
      magnitude (a sum of ``K`` terms and a division);
    - ``flatten``: a reshape.

    ``forward`` is the oracle's ``mlp_forward64(params, x, spec)`` when already computed.
    """
    from verification.error_model import gamma, linear_bound

    acts, saved = mlp_forward64(params, x, spec) if forward is None else forward
    err = np.asarray(x_err, dtype=np.float64).reshape(acts[0].shape)
    for i, layer in enumerate(spec.layers):
        if layer.kind in ("yat", "linear"):
            return i, acts[i], err
        if layer.kind in ("yat_conv", "conv"):
            c: ConvOracle = saved[i]
            cols = unfold64(err, c.kernel, c.stride, c.dilation, c.pads)
            per = cols.shape[-2] // len(c.groups)
            outs = []
            for j, group in enumerate(c.groups):
                e = cols[..., j * per : (j + 1) * per, :].reshape(math.prod(c.lead), -1)
                if layer.kind == "yat_conv":
                    outs.append(yat_bound(group, prec, x_err=e).y)
                else:
                    bias = params[f"{i}.bias"] if layer.bias == "learnable" else layer.bias
                    n_out = c.w.shape[0] // len(c.groups)
                    rows = c.w[j * n_out : (j + 1) * n_out]
                    b = bias[j * n_out : (j + 1) * n_out] if isinstance(bias, np.ndarray) else bias
                    outs.append(linear_bound(group, rows, b, e, prec))
            bound = np.concatenate([o.reshape(*c.lead, -1) for o in outs], axis=-1)
            err = np.moveaxis(bound, -1, 1)
        elif layer.kind == "max_pool":
            err = pool_windows64(err, layer.kernel_size).max(axis=-1)
        elif layer.kind == "avg_pool":
            k = math.prod(layer.kernel_size)
            err = avg_pool64(err, layer.kernel_size) + gamma(k + 1, prec.u) * avg_pool64(
                np.abs(acts[i]) + err, layer.kernel_size
            )
        elif layer.kind == "flatten":
            err = err.reshape(err.shape[0], -1)
        else:
            raise NotImplementedError(f"no step-1 error bound through a {layer.kind} layer")
    raise ValueError("the model has no dense layer")


def model_loss_bound(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    labels: np.ndarray,
    spec: ModelSpec,
    prec: Precision,
    x_err: np.ndarray | None = None,
    *,
    forward: tuple[list[np.ndarray], list[Any]] | None = None,
    backward: MLPBackward | None = None,
) -> float:
    """:func:`~verification.error_model.loss_bound` of any model: the convolutional front
    by :func:`conv_front_bounds`, then the dense tail (a Yat MLP on the front's output,
    carrying its error) by ``loss_bound``; a model with token layers by
    :func:`token_loss_bound` (``backward``: the oracle's ``mlp_backward64`` of the inputs, when
    already computed). ``forward``: as :func:`conv_front_bounds`."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), *spec.input_shape)
    x_err = np.zeros_like(x) if x_err is None else x_err
    if any(layer.kind in TOKEN_KINDS for layer in spec.layers):
        return token_loss_bound(params, x, labels, spec, prec, x_err, backward=backward)
    i, h, err = conv_front_bounds(params, x, spec, prec, x_err, forward=forward)
    if i == 0:
        return loss_bound(params, x, labels, spec, prec, err)
    tail = ModelSpec(spec.layers[i:])
    tail_params = {
        f"{int(name.split('.')[0]) - i}.{name.split('.', 1)[1]}": value
        for name, value in params.items()
        if int(name.split(".")[0]) >= i
    }
    return loss_bound(tail_params, h, labels, tail, prec, err)


# -- the step-1 bound of a vision transformer --------------------------------------------------


def _attention_terms(
    layer: Any, params: dict[str, np.ndarray], prefix: str, h: np.ndarray, a: AttentionLayer64, g: np.ndarray, prec: Any
) -> float:
    """``sum |dL/dz| e_z`` over the attention layer's intermediates ``z``: the q/k/v
    projections (:func:`~verification.error_model.linear_bound` of exact inputs), the
    attention (:func:`~verification.error_model.attention_bound` of exact q, k, v) and the
    output projection; ``g`` is the loss's gradient on the layer's own output."""
    from verification.error_model import attention_bound, linear_bound

    if layer.kind != "yat_attention":
        raise NotImplementedError(f"no step-1 error bound through a {layer.kind} layer")
    bias = {p: params.get(f"{prefix}{p}_bias") for p in ("q", "k", "v", "o")}
    kernel = {p: params[f"{prefix}{p}_kernel"] for p in ("q", "k", "v", "o")}
    g_merged = g @ np.asarray(kernel["o"], dtype=np.float64)
    parts = yat_attention_vjp64(a.attention, g_merged.reshape(a.v.shape))
    zero = np.zeros_like(h)
    total = float(np.sum(np.abs(g) * linear_bound(a.merged, kernel["o"], bias["o"], np.zeros_like(a.merged), prec)))
    total += float(np.sum(np.abs(g_merged) * attention_bound(a.attention, prec).out.reshape(g_merged.shape)))
    for p in ("q", "k", "v"):
        e = linear_bound(h, kernel[p], bias[p], zero, prec)
        total += float(np.sum(np.abs(parts[p].reshape(h.shape)) * e))
    return total


def token_loss_bound(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    labels: np.ndarray,
    spec: ModelSpec,
    prec: Precision,
    x_err: np.ndarray,
    *,
    backward: MLPBackward | None = None,
) -> float:
    """The error model's bound on the mean loss of a vision transformer (``patches``, token
    layers, then a dense head after ``token_mean``), computed in ``prec``, linearised.

    The error model bounds each layer's rounding on exact inputs (a dense layer
    :func:`~verification.error_model.linear_bound` or
    :func:`~verification.error_model.yat_bound`, the attention
    :func:`~verification.error_model.attention_bound` and its projections, ``u |out|``
    for a position table's or a residual's addition, ``gamma_(T+1)`` of the mean magnitude
    for the token mean); each such error ``e_z`` of an intermediate ``z`` moves the loss by
    at most ``sum |dL/dz| e_z`` to first order, the gradients ``dL/dz`` being the float64
    oracle's. The pixels' error goes through the (exact) patch permutation the same way,
    and the last layer and the cross-entropy are :func:`~verification.error_model.loss_bound`
    of that dense layer on the oracle's exact input. Second-order terms are ``O(u^2)``
    relative (1e-14 here) and are not carried: unlike the interval arguments of the dense
    and convolutional models this bound is first order, as the attention's bound is on
    exact inputs only. ``backward``: ``mlp_backward64(params, x, labels, spec)`` when already
    computed.
    """
    from verification.error_model import gamma, linear_bound, loss_bound, yat_bound

    back = mlp_backward64(params, x, labels, spec) if backward is None else backward
    u, last = prec.u, len(spec.layers) - 1
    if spec.layers[0].kind != "patches" or spec.layers[last].kind not in ("yat", "linear"):
        raise NotImplementedError("the token bound takes patches first and a dense layer last")
    total = float(np.sum(np.abs(back.upstream[0]) * patches64(x_err, spec.layers[0].kernel_size)))
    for i, layer in enumerate(spec.layers[1:last], start=1):
        prefix, h, out, g = f"{i}.", back.acts[i], back.acts[i + 1], back.upstream[i]
        if layer.kind == "linear":
            bias = params[prefix + "bias"] if layer.bias == "learnable" else layer.bias
            e = linear_bound(h, params[prefix + "kernel"], bias, np.zeros_like(h), prec)
        elif layer.kind == "yat":
            e = yat_bound(back.saved[i], prec).y.reshape(out.shape)
        elif layer.kind == "pos_embed":
            e = u * np.abs(out)
        elif layer.kind == "token_mean":
            e = gamma(h.shape[1] + 1, u) * np.mean(np.abs(h), axis=1) + prec.tiny
        elif layer.kind == "yat_attention":
            total += _attention_terms(layer, params, prefix, h, back.saved[i], g, prec)
            e = np.zeros_like(out)
        else:
            raise NotImplementedError(f"no step-1 error bound through a {layer.kind} layer")
        if layer.residual:  # the addition of the input, one rounding of the sum
            e = e + u * np.abs(out)
        total += float(np.sum(np.abs(g) * e))
    head = ModelSpec((spec.layers[last],))
    head_params = {"0." + k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{last}.")}
    return total + loss_bound(head_params, back.acts[last], labels, head, prec)
