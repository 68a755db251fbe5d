"""The Yat MLP: a spec of layers, deterministic initialisation, forward pass, loss.

Parameters are a flat ``{name: array}`` dict (``"0.kernel"``, ``"0.bias"``,
``"0.alpha"``, ...): a pytree for JAX and MLX, a list of leaves for PyTorch, and the
interchange format between frameworks. Initial values are drawn once with NumPy's
generator and converted, so every backend starts from bit-identical weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np

from yat_core.losses import cross_entropy_grad, softmax_cross_entropy
from yat_core.namespaces import array_namespace
from yat_core.product import (
    DEFAULT_EPSILON,
    dense,
    softplus,
    softplus_inverse,
    validate_epsilon,
    yat_backward,
    yat_forward,
    yat_product,
)

__all__ = [
    "LayerSpec",
    "MLPSpec",
    "seed_spec",
    "relu_spec",
    "init_mlp",
    "init_mlp_numpy",
    "init_layer_numpy",
    "mlp_forward",
    "mlp_loss",
    "mlp_value_and_grad",
    "count_params",
    "flatten_images",
    "layer_inputs",
]

Array = Any
Params = dict[str, Any]
#: "learnable", a constant float, or None (absent).
Option = Union[Literal["learnable"], float, None]
LEARNABLE: Literal["learnable"] = "learnable"


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the MLP.

    Parameters
    ----------
    kind : {"yat", "linear"}
    in_features, out_features : int
    bias : "learnable", float or None
        Learnable vector, constant added to every unit, or no bias.
    alpha : "learnable", float or None
        Yat only: learnable scalar (initialised to 1.0), constant, or none.
    epsilon : float
        Yat only: the denominator's epsilon (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Yat only: learn ``epsilon`` as ``softplus(raw)``.
    spherical : bool
        Yat only: normalise inputs and kernel rows.
    activation : {None, "relu"}
        Linear only: the activation after it (``"relu"`` builds the conventional
        ``Linear + ReLU`` MLP that the benchmarks compare against).

    Examples
    --------
    >>> LayerSpec("yat", 784, 256).n_params
    200961
    """

    kind: Literal["yat", "linear"]
    in_features: int
    out_features: int
    bias: Option = LEARNABLE
    alpha: Option = LEARNABLE
    epsilon: float = DEFAULT_EPSILON
    learnable_epsilon: bool = False
    spherical: bool = False
    activation: Literal["relu"] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("yat", "linear"):
            raise ValueError(f"layer kind must be 'yat' or 'linear', got {self.kind!r}")
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"layer sizes must be >= 1, got {self.in_features} -> {self.out_features}")
        for name in ("bias", "alpha"):
            value = getattr(self, name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (value is None or value == LEARNABLE or is_number):
                raise ValueError(f"{name} must be 'learnable', a number or None, got {value!r}")
        validate_epsilon(self.epsilon)
        if self.kind == "linear" and (self.alpha not in (LEARNABLE, None) or self.learnable_epsilon or self.spherical):
            raise ValueError("alpha, epsilon and spherical options apply to 'yat' layers only")
        if self.activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', got {self.activation!r}")
        if self.kind == "yat" and self.activation is not None:
            raise ValueError("a yat layer takes no activation: the product itself is the non-linearity")

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names (without the layer prefix) and shapes of the learnable parameters."""
        shapes: dict[str, tuple[int, ...]] = {"kernel": (self.out_features, self.in_features)}
        if self.bias == LEARNABLE:
            shapes["bias"] = (self.out_features,)
        if self.kind == "yat":
            if self.alpha == LEARNABLE:
                shapes["alpha"] = ()
            if self.learnable_epsilon:
                shapes["epsilon_raw"] = ()
        return shapes

    @property
    def n_params(self) -> int:
        """Number of learnable scalars in this layer."""
        return sum(math.prod(s) for s in self.param_shapes.values())


@dataclass(frozen=True)
class MLPSpec:
    """A stack of layers applied to flattened inputs; consecutive sizes must chain.

    Examples
    --------
    >>> spec = seed_spec()
    >>> [layer.kind for layer in spec.layers], count_params(spec)
    (['yat', 'yat', 'linear'], 235148)
    """

    layers: tuple[LayerSpec, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("an MLP needs at least one layer")
        for i, (a, b) in enumerate(zip(self.layers, self.layers[1:])):
            if a.out_features != b.in_features:
                raise ValueError(
                    f"layer {i} outputs {a.out_features} features but layer {i + 1} expects {b.in_features}"
                )

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's full name and shape, in initialisation order."""
        return {
            f"{i}.{name}": shape for i, layer in enumerate(self.layers) for name, shape in layer.param_shapes.items()
        }


def relu_spec() -> MLPSpec:
    """The seed model's shape with ``Linear + ReLU`` in place of each Yat layer (the baseline).

    Examples
    --------
    >>> count_params(relu_spec())  # no alpha: two scalars fewer than the seed model
    235146
    """
    return MLPSpec(
        (
            LayerSpec("linear", 784, 256, activation="relu"),
            LayerSpec("linear", 256, 128, activation="relu"),
            LayerSpec("linear", 128, 10),
        )
    )


def seed_spec(**yat_options: Any) -> MLPSpec:
    """The seed model: ``Flatten(28x28) -> Yat(784->256) -> Yat(256->128) -> Linear(128->10)``.

    Keyword arguments (``alpha``, ``bias``, ``epsilon``, ``learnable_epsilon``,
    ``spherical``) apply to both Yat layers.

    Examples
    --------
    >>> count_params(seed_spec())
    235148
    """
    return MLPSpec(
        (
            LayerSpec("yat", 784, 256, **yat_options),
            LayerSpec("yat", 256, 128, **yat_options),
            LayerSpec("linear", 128, 10),
        )
    )


def count_params(spec: MLPSpec) -> int:
    """Number of learnable scalars in the model (235,148 for :func:`seed_spec`)."""
    return sum(layer.n_params for layer in spec.layers)


def init_layer_numpy(layer: LayerSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One layer's initial parameters (float64), drawn from ``rng`` in the order of ``param_shapes``.

    Kernels: Xavier-normal for Yat layers, PyTorch's ``nn.Linear`` default
    (uniform ``±1/sqrt(in)``) for linear ones; biases uniform ``±1/sqrt(in)``;
    alpha 1.0; learnable epsilon at its configured value. Every framework's layer
    starts from these values when built from a spec.

    Examples
    --------
    >>> values = init_layer_numpy(LayerSpec("yat", 4, 3), np.random.default_rng(0))
    >>> {name: v.shape for name, v in values.items()}
    {'kernel': (3, 4), 'bias': (3,), 'alpha': ()}
    """
    fan_in, fan_out = layer.in_features, layer.out_features
    bound = 1.0 / math.sqrt(fan_in)
    out: dict[str, np.ndarray] = {}
    for name, shape in layer.param_shapes.items():
        if name == "kernel" and layer.kind == "yat":
            value = rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
        elif name in ("kernel", "bias"):
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


def _yat_kwargs(layer: LayerSpec, params: Params, prefix: str, xp: Any) -> dict[str, Any]:
    bias = params[prefix + "bias"] if layer.bias == LEARNABLE else layer.bias
    alpha = params[prefix + "alpha"] if layer.alpha == LEARNABLE else layer.alpha
    epsilon = softplus(params[prefix + "epsilon_raw"], xp=xp) if layer.learnable_epsilon else layer.epsilon
    return {"bias": bias, "alpha": alpha, "epsilon": epsilon, "spherical": layer.spherical}


def _layer_forward(layer: LayerSpec, params: Params, prefix: str, h: Array, xp: Any) -> Array:
    if layer.kind == "yat":
        return yat_product(h, params[prefix + "kernel"], xp=xp, **_yat_kwargs(layer, params, prefix, xp))
    bias = params[prefix + "bias"] if layer.bias == LEARNABLE else layer.bias
    out = dense(h, params[prefix + "kernel"], xp=xp)
    out = out if bias is None else out + bias
    return xp.where(out > 0, out, 0.0) if layer.activation == "relu" else out


def _check_input(x: Array, spec: MLPSpec) -> None:
    if x.ndim != 2 or x.shape[1] != spec.in_features:
        raise ValueError(f"the model expects inputs of shape (n, {spec.in_features}), got {tuple(x.shape)}")


def _model_input(params: Params, images: Array, spec: MLPSpec, xp: Any) -> Array:
    # Float inputs are used as given; uint8 pixels are flattened and scaled in the params' dtype.
    dtype = next(iter(params.values())).dtype
    x = images if xp.isdtype(images.dtype, "real floating") else flatten_images(images, dtype, xp=xp)
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
    x = _model_input(params, images, spec, xp)
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
    h = _model_input(params, images, spec, xp)
    # Forward, keeping each layer's input (linear) or residuals (yat) for the backward pass.
    saved: list[Any] = []
    for i, layer in enumerate(spec.layers):
        prefix = f"{i}."
        if layer.kind == "yat":
            kwargs = _yat_kwargs(layer, params, prefix, xp)
            h, res = yat_forward(h, params[prefix + "kernel"], xp=xp, **kwargs)
            saved.append(res)
        else:
            h_in, h = h, _layer_forward(layer, params, prefix, h, xp)
            saved.append((h_in, h))
    logits = h
    loss = softmax_cross_entropy(logits, labels, xp=xp)
    g = cross_entropy_grad(logits, labels, xp=xp)
    grads: Params = {}
    for i in reversed(range(len(spec.layers))):
        layer, prefix = spec.layers[i], f"{i}."
        if layer.kind == "linear":
            h_in, out = saved[i]
            if layer.activation == "relu":  # out = relu(pre): positive exactly where pre is
                g = xp.where(out > 0, g, 0.0)
            grads[prefix + "kernel"] = xp.matrix_transpose(g) @ h_in
            if layer.bias == LEARNABLE:
                grads[prefix + "bias"] = xp.sum(g, axis=0)
            g = g @ params[prefix + "kernel"]
            continue
        parts = yat_backward(saved[i], g, xp=xp)
        grads[prefix + "kernel"] = parts.w
        if parts.bias is not None:
            grads[prefix + "bias"] = parts.bias
        if parts.alpha is not None:
            grads[prefix + "alpha"] = parts.alpha
        if parts.epsilon is not None:
            raw = params[prefix + "epsilon_raw"]
            grads[prefix + "epsilon_raw"] = parts.epsilon / (1.0 + xp.exp(-raw))  # d softplus = sigmoid
        g = parts.x
    return loss, {name: grads[name] for name in params}
