"""A model of a :class:`~yat_core.spec.ModelSpec`: deterministic initialisation, forward pass, loss, gradients.

Parameters are a flat ``{name: array}`` dict (``"0.kernel"``, ``"0.bias"``,
``"0.alpha"``, ...): a pytree for JAX and MLX, a list of leaves for PyTorch, and the
interchange format between frameworks. Initial values are drawn once with NumPy's
generator and converted, so every backend starts from bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from yat_core.attention import softmax_attention, softmax_attention_vjp, yat_attention, yat_attention_vjp
from yat_core.conv import (
    avg_pool,
    avg_pool_vjp,
    linear_conv,
    linear_conv_vjp,
    max_pool,
    max_pool_vjp,
    yat_conv,
    yat_conv_backward,
    yat_conv_forward,
    yat_conv_transpose,
    yat_conv_transpose_vjp,
)
from yat_core.losses import cross_entropy_grad, softmax_cross_entropy
from yat_core.namespaces import array_namespace
from yat_core.product import dense, softplus, softplus_inverse, yat_backward, yat_forward, yat_product
from yat_core.spec import (
    ATTENTION_KINDS,
    LEARNABLE,
    PROJECTIONS,
    YAT_KINDS,
    LayerSpec,
    MLPSpec,
    ModelSpec,
    Option,
    count_params,
    relu_spec,
    seed_spec,
)

__all__ = [
    "LayerSpec",
    "MLPSpec",
    "ModelSpec",
    "Option",
    "LEARNABLE",
    "seed_spec",
    "relu_spec",
    "count_params",
    "init_mlp",
    "init_mlp_numpy",
    "init_layer_numpy",
    "forward_options",
    "mlp_forward",
    "mlp_loss",
    "mlp_value_and_grad",
    "flatten_images",
    "model_input",
    "layer_inputs",
]

Array = Any
Params = dict[str, Any]


def init_layer_numpy(layer: LayerSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One layer's initial parameters (float64), drawn from ``rng`` in the order of ``param_shapes``.

    Kernels: Xavier-normal for Yat layers, PyTorch's ``nn.Linear`` / ``nn.Conv2d``
    default (uniform ``±1/sqrt(fan_in)``) for the others and for attention's
    projections; biases uniform ``±1/sqrt(fan_in)`` (fans count the kernel's receptive
    field, as PyTorch's do); position tables normal with deviation 0.02; alpha 1.0;
    learnable epsilon at its configured value. Every framework's layer
    starts from these values when built from a spec.

    Examples
    --------
    >>> values = init_layer_numpy(LayerSpec("yat", 4, 3), np.random.default_rng(0))
    >>> {name: v.shape for name, v in values.items()}
    {'kernel': (3, 4), 'bias': (3,), 'alpha': ()}
    """
    fan_in, fan_out = layer.fans
    bound = 1.0 / math.sqrt(fan_in)
    out: dict[str, np.ndarray] = {}
    for name, shape in layer.param_shapes.items():
        if name == "kernel" and layer.kind in YAT_KINDS:
            value = rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
        elif name == "table":  # position embedding: small, as ViTs start them
            value = rng.normal(0.0, 0.02, shape)
        elif name.endswith(("kernel", "bias")):  # dense kernels, and attention's projections
            value = rng.uniform(-bound, bound, shape)
        elif name == "alpha":
            value = np.ones(shape)
        else:  # epsilon_raw
            value = np.full(shape, softplus_inverse(layer.epsilon))
        out[name] = np.asarray(value, dtype=np.float64)
    return out


def init_mlp_numpy(spec: MLPSpec, seed: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Initial parameters as NumPy arrays, drawn from ``numpy.random.default_rng(seed)``.

    Layer by layer with :func:`init_layer_numpy`, in float64 and in a fixed order,
    then rounded to ``dtype``, so every framework gets the same bits.
    """
    rng = np.random.default_rng(seed)
    return {
        f"{i}.{name}": value.astype(dtype)
        for i, layer in enumerate(spec.layers)
        for name, value in init_layer_numpy(layer, rng).items()
    }


def init_mlp(spec: MLPSpec, seed: int, /, *, xp: Any = None, dtype: Any = None, device: Any = None) -> Params:
    """Initial parameters in namespace ``xp`` (NumPy by default), bit-identical across namespaces.

    Examples
    --------
    >>> params = init_mlp(seed_spec(), 0)
    >>> params["0.kernel"].shape, params["0.kernel"].dtype.name, float(params["0.alpha"])
    ((256, 784), 'float32', 1.0)
    """
    if xp is None:
        import array_api_compat.numpy as xp  # noqa: PLW0127 - the default namespace
    np_dtype = np.float32 if dtype is None else np.dtype(_dtype_name(dtype))
    arrays = init_mlp_numpy(spec, seed, np_dtype)
    return {k: xp.asarray(v, device=device) if device is not None else xp.asarray(v) for k, v in arrays.items()}


def _dtype_name(dtype: Any) -> str:
    # Map any library's float dtype object (np.float32, torch.float32, mx.float32) to its name.
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype).rsplit(".", 1)[-1]
    if name not in ("float16", "float32", "float64", "bfloat16"):
        raise TypeError(f"parameters must be floating point, got dtype {dtype}")
    return name


def flatten_images(images: Array, dtype: Any, /, *, xp: Any = None) -> Array:
    """Flatten ``(n, 28, 28)`` (or ``(n, 784)``) uint8 pixels to floats in [0, 1]."""
    xp = array_namespace(images) if xp is None else xp
    return xp.reshape(xp.astype(images, dtype), (images.shape[0], -1)) / 255.0


def forward_options(layer: LayerSpec, param: Callable[[str], Any], xp: Any) -> dict[str, Any]:
    """The ⵟ-product's keyword options for a layer: learnable values from ``param(name)``, else the spec's.

    The one place that turns a layer's options into values; the core's model and every
    framework's layer call it.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> layer = LayerSpec("yat", 4, 3, bias=0.5, learnable_epsilon=True)
    >>> opts = forward_options(layer, lambda name: np.float64(1.0), xp)
    >>> opts["bias"], opts["alpha"], round(float(opts["epsilon"]), 4)
    (0.5, np.float64(1.0), 1.3133)
    """
    return {
        "bias": param("bias") if layer.bias == LEARNABLE else layer.bias,
        "alpha": param("alpha") if layer.alpha == LEARNABLE else layer.alpha,
        "epsilon": softplus(param("epsilon_raw"), xp=xp) if layer.learnable_epsilon else layer.epsilon,
        "spherical": layer.spherical,
    }


def _layer_forward(layer: LayerSpec, params: Params, prefix: str, h: Array, xp: Any) -> Array:
    out = _layer_output(layer, params, prefix, h, xp)
    return h + out if layer.residual else out


def _patches(h: Array, layer: LayerSpec, xp: Any) -> Array:
    """``(N, C, H, W) -> (N, tokens, C * ph * pw)``: row-major patches, each flattened channels first."""
    (ph, pw), shape = layer.kernel_size, tuple(h.shape)
    n, c, rows, cols = shape[0], int(shape[1]), int(shape[2]) // ph, int(shape[3]) // pw
    h = xp.reshape(h, (n, c, rows, ph, cols, pw))
    h = xp.permute_dims(h, (0, 2, 4, 1, 3, 5))
    return xp.reshape(h, (n, rows * cols, c * ph * pw))


def _unpatch(g: Array, layer: LayerSpec, image: tuple[int, ...], xp: Any) -> Array:
    """Adjoint of :func:`_patches` (it is a permutation): tokens back to ``(N, C, H, W)``."""
    (ph, pw), (n, c, height, width) = layer.kernel_size, image
    g = xp.reshape(g, (n, height // ph, width // pw, c, ph, pw))
    return xp.reshape(xp.permute_dims(g, (0, 3, 1, 4, 2, 5)), image)


def _project(h: Array, params: Params, prefix: str, p: str, layer: LayerSpec, xp: Any) -> Array:
    out = dense(h, params[f"{prefix}{p}_kernel"], xp=xp)
    return out + params[f"{prefix}{p}_bias"] if layer.bias == LEARNABLE else out


def _attention_inputs(layer: LayerSpec, params: Params, prefix: str, h: Array, xp: Any) -> list[Array]:
    """Queries, keys and values of the token sequence ``h (N, T, D)``, split into heads ``(N, T, H, D/H)``."""
    shape = tuple(h.shape)
    heads = (*shape[:-1], layer.heads, int(shape[-1]) // layer.heads)
    return [xp.reshape(_project(h, params, prefix, p, layer, xp), heads) for p in PROJECTIONS[:3]]


def _attention_options(layer: LayerSpec, params: Params, prefix: str, xp: Any) -> dict[str, Any]:
    if layer.kind != "yat_attention":
        return {}
    # The projections own the bias; the score takes alpha, epsilon and spherical.
    options = forward_options(dataclasses.replace(layer, bias=None), functools.partial(_param, params, prefix), xp)
    del options["bias"]
    return options


def _layer_output(layer: LayerSpec, params: Params, prefix: str, h: Array, xp: Any) -> Array:
    param = lambda name: params[prefix + name]  # noqa: E731
    if layer.kind in ATTENTION_KINDS:
        q, k, v = _attention_inputs(layer, params, prefix, h, xp)
        attend = yat_attention if layer.kind == "yat_attention" else softmax_attention
        a = attend(q, k, v, xp=xp, **_attention_options(layer, params, prefix, xp))
        return _project(xp.reshape(a, tuple(h.shape)), params, prefix, "o", layer, xp)
    if layer.kind == "patches":
        return _patches(h, layer, xp)
    if layer.kind == "pos_embed":
        return h + param("table")
    if layer.kind == "token_mean":
        return xp.mean(h, axis=1)
    if layer.kind == "yat":
        return yat_product(h, param("kernel"), xp=xp, **forward_options(layer, param, xp))
    if layer.kind == "yat_conv":
        # The library's own convolution where it has one (torch, JAX, MLX); the unfold elsewhere.
        return yat_conv(
            h, param("kernel"), xp=xp, native=True, **layer.conv_options, **forward_options(layer, param, xp)
        )
    if layer.kind == "yat_conv_transpose":
        return yat_conv_transpose(
            h, param("kernel"), xp=xp, native=True, **layer.conv_options, **forward_options(layer, param, xp)
        )
    if layer.kind == "max_pool":
        return max_pool(h, layer.kernel_size, native=True, xp=xp)
    if layer.kind == "avg_pool":
        return avg_pool(h, layer.kernel_size, xp=xp)
    if layer.kind == "flatten":
        return xp.reshape(h, (h.shape[0], -1))
    bias = params[prefix + "bias"] if layer.bias == LEARNABLE else layer.bias
    if layer.kind == "conv":
        out = linear_conv(h, param("kernel"), bias=bias, xp=xp, native=True, **layer.conv_options)
    else:
        out = dense(h, param("kernel"), xp=xp)
        out = out if bias is None else out + bias
    return xp.where(out > 0, out, 0.0) if layer.activation == "relu" else out


def _check_input(x: Array, spec: ModelSpec) -> None:
    if tuple(x.shape[1:]) != spec.input_shape:
        raise ValueError(
            f"the model expects inputs of shape (n, {', '.join(map(str, spec.input_shape))}), got {tuple(x.shape)}"
        )


def model_input(params: Params, images: Array, spec: ModelSpec, /, *, xp: Any = None) -> Array:
    """The first layer's input: uint8 pixels scaled to [0, 1] in the parameters' dtype (floats as given),
    reshaped to ``(n, *spec.input_shape)``."""
    xp = array_namespace(images) if xp is None else xp
    dtype = next(iter(params.values())).dtype
    x = images if xp.isdtype(images.dtype, "real floating") else flatten_images(images, dtype, xp=xp)
    if tuple(x.shape[1:]) != spec.input_shape and math.prod(x.shape[1:]) == spec.in_features:
        x = xp.reshape(x, (x.shape[0], *spec.input_shape))
    _check_input(x, spec)
    return x


def layer_inputs(params: Params, x: Array, spec: MLPSpec, /, *, xp: Any = None) -> list[Array]:
    """The input of every layer followed by the model output (``len(spec.layers) + 1`` arrays)."""
    xp = array_namespace(x) if xp is None else xp
    _check_input(x, spec)
    acts = [x]
    for i, layer in enumerate(spec.layers):
        acts.append(_layer_forward(layer, params, f"{i}.", acts[-1], xp))
    return acts


def mlp_forward(params: Params, x: Array, spec: MLPSpec, /, *, xp: Any = None) -> Array:
    """Logits of the MLP for flattened inputs ``x`` of shape ``(n, in)``.

    Examples
    --------
    >>> import numpy as np
    >>> spec = seed_spec(); params = init_mlp(spec, 0)
    >>> mlp_forward(params, np.zeros((2, 784), np.float32), spec).shape
    (2, 10)
    """
    return layer_inputs(params, x, spec, xp=xp)[-1]


def mlp_loss(params: Params, images: Array, labels: Array, spec: MLPSpec, /, *, xp: Any = None) -> Array:
    """Mean cross-entropy of the model on uint8 ``images`` (n, 28, 28) or float inputs (n, in)."""
    xp = array_namespace(images) if xp is None else xp
    x = model_input(params, images, spec, xp=xp)
    return softmax_cross_entropy(mlp_forward(params, x, spec, xp=xp), labels, xp=xp)


def mlp_value_and_grad(
    params: Params, images: Array, labels: Array, spec: MLPSpec, /, *, xp: Any = None
) -> tuple[Array, Params]:
    """Loss and its gradient for every parameter, by the analytic backward pass.

    The reference gradient for the NumPy backend (any dtype, float64 included);
    the parity suite checks it against finite differences and every autodiff
    framework.

    Examples
    --------
    >>> import numpy as np
    >>> spec = seed_spec(); params = init_mlp(spec, 0, dtype=np.float64)
    >>> loss, grads = mlp_value_and_grad(params, np.zeros((3, 784)), np.array([0, 1, 2]), spec)
    >>> sorted(grads) == sorted(params)
    True
    """
    xp = array_namespace(images) if xp is None else xp
    h = model_input(params, images, spec, xp=xp)
    # Forward, keeping what each layer's backward needs: its input, or the product's residuals.
    saved: list[Any] = []
    for i, layer in enumerate(spec.layers):
        prefix = f"{i}."
        param = functools.partial(_param, params, prefix)
        if layer.kind == "yat":
            y, res = yat_forward(h, params[prefix + "kernel"], xp=xp, **forward_options(layer, param, xp))
            h = h + y if layer.residual else y
            saved.append(res)
        elif layer.kind == "yat_conv":
            h, conv_res = yat_conv_forward(
                h, param("kernel"), xp=xp, native=True, **layer.conv_options, **forward_options(layer, param, xp)
            )
            saved.append(conv_res)
        else:  # the input, and the layer's own output (before any residual)
            own = _layer_output(layer, params, prefix, h, xp)
            saved.append((h, own))
            h = h + own if layer.residual else own
    logits = h
    loss = softmax_cross_entropy(logits, labels, xp=xp)
    g = cross_entropy_grad(logits, labels, xp=xp)
    grads: Params = {}
    for i in reversed(range(len(spec.layers))):
        g = _layer_backward(spec.layers[i], params, f"{i}.", saved[i], g, grads, xp)
    return loss, {name: grads[name] for name in params}


def _param(params: Params, prefix: str, name: str) -> Any:
    return params[prefix + name]


def _store_yat_grads(parts: Any, params: Params, prefix: str, grads: Params, xp: Any) -> None:
    grads[prefix + "kernel"] = parts.w
    if parts.bias is not None:
        grads[prefix + "bias"] = parts.bias
    if parts.alpha is not None:
        grads[prefix + "alpha"] = parts.alpha
    if parts.epsilon is not None:
        raw = params[prefix + "epsilon_raw"]
        grads[prefix + "epsilon_raw"] = parts.epsilon / (1.0 + xp.exp(-raw))  # d softplus = sigmoid


def _layer_backward(
    layer: LayerSpec, params: Params, prefix: str, saved: Any, g: Array, grads: Params, xp: Any
) -> Array:
    """Store the layer's parameter gradients in ``grads``; return the gradient of its input."""
    g_in = _output_backward(layer, params, prefix, saved, g, grads, xp)
    return g_in + g if layer.residual else g_in


def _dense_grads(g: Array, h: Array, xp: Any) -> Array:
    """``g^T h`` summed over every leading axis: a dense kernel's gradient for ``(..., out)`` and ``(..., in)``."""
    return xp.matrix_transpose(xp.reshape(g, (-1, int(g.shape[-1])))) @ xp.reshape(h, (-1, int(h.shape[-1])))


def _over_leading(g: Array, xp: Any) -> Array:
    return xp.sum(xp.reshape(g, (-1, int(g.shape[-1]))), axis=0)


def _attention_backward(
    layer: LayerSpec, params: Params, prefix: str, h: Array, g: Array, grads: Params, xp: Any
) -> Array:
    """Through the output projection, the attention (its analytic VJP) and the input projections."""
    q, k, v = _attention_inputs(layer, params, prefix, h, xp)
    options = _attention_options(layer, params, prefix, xp)
    attend = yat_attention if layer.kind == "yat_attention" else softmax_attention
    a = xp.reshape(attend(q, k, v, xp=xp, **options), tuple(h.shape))
    grads[prefix + "o_kernel"] = _dense_grads(g, a, xp)
    if layer.bias == LEARNABLE:
        grads[prefix + "o_bias"] = _over_leading(g, xp)
    g_a = xp.reshape(g @ params[prefix + "o_kernel"], tuple(q.shape))
    if layer.kind == "yat_attention":
        parts = yat_attention_vjp(q, k, v, g_a, xp=xp, **options)
        if parts.alpha is not None:
            grads[prefix + "alpha"] = parts.alpha
        if parts.epsilon is not None:
            raw = params[prefix + "epsilon_raw"]
            grads[prefix + "epsilon_raw"] = parts.epsilon / (1.0 + xp.exp(-raw))  # d softplus = sigmoid
    else:
        parts = softmax_attention_vjp(q, k, v, g_a, xp=xp)
    g_h = None
    for p, g_p in zip(PROJECTIONS, (parts.q, parts.k, parts.v)):
        g_p = xp.reshape(g_p, tuple(h.shape))
        grads[f"{prefix}{p}_kernel"] = _dense_grads(g_p, h, xp)
        if layer.bias == LEARNABLE:
            grads[f"{prefix}{p}_bias"] = _over_leading(g_p, xp)
        g_p = g_p @ params[f"{prefix}{p}_kernel"]
        g_h = g_p if g_h is None else g_h + g_p
    return g_h


def _output_backward(
    layer: LayerSpec, params: Params, prefix: str, saved: Any, g: Array, grads: Params, xp: Any
) -> Array:
    # The gradient of the layer's own output (before any residual) with respect to its input.
    if layer.kind == "yat":
        parts = yat_backward(saved, g, xp=xp)
        _store_yat_grads(parts, params, prefix, grads, xp)
        return parts.x
    if layer.kind == "yat_conv":
        conv_parts = yat_conv_backward(saved, g, xp=xp)
        _store_yat_grads(conv_parts, params, prefix, grads, xp)
        return conv_parts.x
    h_in, out = saved
    if layer.kind == "yat_conv_transpose":
        param = functools.partial(_param, params, prefix)
        t_parts = yat_conv_transpose_vjp(
            h_in,
            params[prefix + "kernel"],
            g,
            xp=xp,
            native=True,
            **layer.conv_options,
            **forward_options(layer, param, xp),
        )
        _store_yat_grads(t_parts, params, prefix, grads, xp)
        return t_parts.x
    if layer.kind == "max_pool":
        return max_pool_vjp(h_in, g, layer.kernel_size, native=True, xp=xp)
    if layer.kind == "avg_pool":
        return avg_pool_vjp(h_in, g, layer.kernel_size, xp=xp)
    if layer.kind == "flatten":
        return xp.reshape(g, tuple(h_in.shape))
    if layer.kind in ATTENTION_KINDS:
        return _attention_backward(layer, params, prefix, h_in, g, grads, xp)
    if layer.kind == "patches":
        return _unpatch(g, layer, tuple(h_in.shape), xp)
    if layer.kind == "pos_embed":
        grads[prefix + "table"] = xp.sum(g, axis=0)
        return g
    if layer.kind == "token_mean":
        shape = tuple(h_in.shape)
        return xp.broadcast_to(xp.expand_dims(g, axis=1), shape) / shape[1]
    if layer.activation == "relu":  # out = relu(pre): positive exactly where pre is
        g = xp.where(out > 0, g, 0.0)
    if layer.kind == "conv":
        bias = params[prefix + "bias"] if layer.bias == LEARNABLE else layer.bias
        lin = linear_conv_vjp(h_in, params[prefix + "kernel"], g, bias=bias, xp=xp, native=True, **layer.conv_options)
        grads[prefix + "kernel"] = lin.w
        if lin.bias is not None:
            grads[prefix + "bias"] = lin.bias
        return lin.x
    grads[prefix + "kernel"] = _dense_grads(g, h_in, xp)
    if layer.bias == LEARNABLE:
        grads[prefix + "bias"] = _over_leading(g, xp)
    return g @ params[prefix + "kernel"]
