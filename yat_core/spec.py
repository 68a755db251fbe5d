"""A network described as data: the layers, their options and the shapes between them.

A :class:`ModelSpec` is framework-neutral: the core runs it on every backend
(:mod:`yat_core.mlp`) and each framework of :mod:`yat_core.nn` builds it from its own
layers, so the same spec, seed and batch order give the same trajectory everywhere.
Layer kinds:

``"yat"`` / ``"linear"``
    dense layers on ``(features,)`` inputs (``in_features -> out_features``);
``"yat_conv"`` / ``"conv"``
    convolutions on channels-first ``(channels, *spatial)`` inputs
    (``in_features``/``out_features`` are channels; ``kernel_size``, ``stride``,
    ``padding``, ``dilation``, ``groups`` as :func:`yat_core.conv.yat_conv`);
``"yat_conv_transpose"``
    the transposed Yat convolution (:func:`yat_core.conv.yat_conv_transpose`; kernel
    ``(in, out/groups, *k)``, ``output_padding``);
``"max_pool"`` / ``"avg_pool"``
    non-overlapping windows of ``kernel_size`` (channels unchanged);
``"flatten"``
    ``(channels, *spatial) -> (channels * prod(spatial),)``;
``"patches"``
    ``(channels, H, W) -> (tokens, channels * ph * pw)``: non-overlapping ``kernel_size``
    patches in row-major order, each flattened channels first;
``"pos_embed"``
    adds a learnable ``(tokens, features)`` table to a token sequence;
``"yat_attention"`` / ``"attention"``
    multi-head self-attention on ``(tokens, features)`` with query, key, value and
    output projections (``features -> features``, ``heads`` heads): Yat scores
    (:func:`yat_core.attention.yat_attention`) or scaled dot-product softmax scores;
``"token_mean"``
    ``(tokens, features) -> (features,)``, the mean over the tokens.

Dense layers (``"yat"``, ``"linear"``) act on the last axis, so they also map a token
sequence ``(tokens, in) -> (tokens, out)``. ``residual=True`` (dense and attention
kinds, ``in_features == out_features``) adds the layer's input to its output.
``"linear"`` and ``"conv"`` may carry a ReLU (the conventional baselines); Yat layers
never do: the product is the non-linearity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, NamedTuple, Union

from yat_core.conv import conv_output_shape, conv_transpose_output_shape
from yat_core.product import DEFAULT_EPSILON, validate_epsilon

__all__ = [
    "LayerSpec",
    "ModelSpec",
    "MLPSpec",
    "Option",
    "LEARNABLE",
    "YAT_KINDS",
    "PARAM_KINDS",
    "CONV_KINDS",
    "YAT_CONV_KINDS",
    "ATTENTION_KINDS",
    "TOKEN_KINDS",
    "seed_spec",
    "relu_spec",
    "cnn_spec",
    "cnn_relu_spec",
    "vit_spec",
    "vit_softmax_spec",
    "MODELS",
    "ModelRecipe",
    "count_params",
    "spec_record",
    "spec_from_record",
]

#: "learnable", a constant float, or None (absent).
Option = Union[Literal["learnable"], float, None]
LEARNABLE: Literal["learnable"] = "learnable"
Kind = Literal[
    "yat",
    "linear",
    "yat_conv",
    "yat_conv_transpose",
    "conv",
    "max_pool",
    "avg_pool",
    "flatten",
    "patches",
    "pos_embed",
    "yat_attention",
    "attention",
    "token_mean",
]
#: Kinds computed by the ⵟ-product (they take alpha, epsilon, spherical).
YAT_KINDS = ("yat", "yat_conv", "yat_conv_transpose", "yat_attention")
#: Multi-head self-attention kinds (query, key, value and output projections).
ATTENTION_KINDS = ("yat_attention", "attention")
#: Kinds with learnable parameters.
PARAM_KINDS = ("yat", "linear", "yat_conv", "yat_conv_transpose", "conv", "pos_embed", *ATTENTION_KINDS)
#: Kinds with a convolution kernel.
YAT_CONV_KINDS = ("yat_conv", "yat_conv_transpose")
CONV_KINDS = (*YAT_CONV_KINDS, "conv")
#: Kinds that make, change or reduce a token sequence ``(tokens, features)``.
TOKEN_KINDS = ("patches", "pos_embed", *ATTENTION_KINDS, "token_mean")
#: The projections of an attention layer, each ``features -> features``.
PROJECTIONS = ("q", "k", "v", "o")
_POOL_KINDS = ("max_pool", "avg_pool")
_ALL_KINDS = ("yat", "linear", *CONV_KINDS, *_POOL_KINDS, "flatten", *TOKEN_KINDS)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a network.

    Parameters
    ----------
    kind : {"yat", "linear", "yat_conv", "conv", "max_pool", "avg_pool", "flatten"}
    in_features, out_features : int
        Features of a dense layer, channels of a convolution or pooling, input channels
        and flattened size of a flatten.
    bias : "learnable", float or None
        Learnable vector, constant added to every unit, or no bias.
    alpha : "learnable", float or None
        Yat kinds only: learnable scalar (initialised to 1.0), constant, or none.
    epsilon : float
        Yat kinds only: the denominator's epsilon (> 0); the initial value when learnable.
    learnable_epsilon : bool
        Yat kinds only: learn ``epsilon`` as ``softplus(raw)``.
    spherical : bool
        Yat kinds only: normalise inputs (patches) and kernel rows.
    activation : {None, "relu"}
        ``"linear"`` and ``"conv"`` only: the activation after them (the baselines).
    kernel_size, stride, dilation : tuple of int
        Convolutions: one entry per spatial dimension (stride and dilation default to 1).
        Pooling: ``kernel_size`` is the window.
    padding : tuple of int, "valid" or "same"
        Convolutions only.
    groups : int
        Convolutions only.
    output_padding : tuple of int
        ``"yat_conv_transpose"`` only.
    heads : int
        Attention kinds only: the number of heads (dividing ``in_features``).
    tokens : int
        ``"pos_embed"`` only: the sequence length of its table.
    residual : bool
        Dense and attention kinds with ``in_features == out_features``: add the input.

    Examples
    --------
    >>> LayerSpec("yat", 784, 256).n_params
    200961
    >>> LayerSpec("yat_conv", 1, 32, kernel_size=(3, 3)).param_shapes
    {'kernel': (32, 1, 3, 3), 'bias': (32,), 'alpha': ()}
    """

    kind: Kind
    in_features: int
    out_features: int
    bias: Option = LEARNABLE
    alpha: Option = LEARNABLE
    epsilon: float = DEFAULT_EPSILON
    learnable_epsilon: bool = False
    spherical: bool = False
    activation: Literal["relu"] | None = None
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    output_padding: tuple[int, ...] = ()
    heads: int = 0
    tokens: int = 0
    residual: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _ALL_KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}; choose one of: {', '.join(_ALL_KINDS)}")
        self._check_tokens()
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"layer sizes must be >= 1, got {self.in_features} -> {self.out_features}")
        for name in ("bias", "alpha"):
            value = getattr(self, name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (value is None or value == LEARNABLE or is_number):
                raise ValueError(f"{name} must be 'learnable', a number or None, got {value!r}")
        validate_epsilon(self.epsilon)
        yat = self.kind in YAT_KINDS
        if not yat and (self.alpha not in (LEARNABLE, None) or self.learnable_epsilon or self.spherical):
            raise ValueError("alpha, epsilon and spherical options apply to Yat layers only")
        if self.activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', got {self.activation!r}")
        if self.activation is not None and self.kind not in ("linear", "conv"):
            raise ValueError(f"a {self.kind} layer takes no activation (Yat layers: the product is the non-linearity)")
        spatial = self.kind in CONV_KINDS or self.kind in _POOL_KINDS or self.kind == "patches"
        if spatial and (not self.kernel_size or any(k < 1 for k in self.kernel_size)):
            raise ValueError(f"a {self.kind} layer needs a kernel_size of ints >= 1, got {self.kernel_size!r}")
        if not spatial and (self.kernel_size or self.stride or self.padding or self.dilation):
            raise ValueError(
                f"kernel_size, stride, padding and dilation apply to convolutions and pooling, not {self.kind}"
            )
        if self.kind in _POOL_KINDS and self.in_features != self.out_features:
            raise ValueError(f"pooling keeps the channels: in_features {self.in_features} != {self.out_features}")
        if self.output_padding and self.kind != "yat_conv_transpose":
            raise ValueError(f"output_padding applies to transposed convolutions, not {self.kind}")
        if self.kind in CONV_KINDS:
            self._check_geometry()
        if self.kind in CONV_KINDS and (self.in_features % self.groups or self.out_features % self.groups):
            raise ValueError(f"groups={self.groups} must divide {self.in_features} and {self.out_features} channels")

    def _check_tokens(self) -> None:
        # The options of the token kinds, refused on any other kind.
        attention = self.kind in ATTENTION_KINDS
        if attention and (self.heads < 1 or self.in_features % self.heads):
            raise ValueError(f"heads must be >= 1 and divide the {self.in_features} features, got {self.heads}")
        if attention and self.bias not in (LEARNABLE, None):
            raise ValueError(f"an attention layer's projections take a learnable bias or none, got {self.bias!r}")
        if self.heads and not attention:
            raise ValueError(f"heads applies to attention layers, not {self.kind}")
        if (self.kind == "pos_embed") != (self.tokens > 0):
            raise ValueError(f"tokens (>= 1) is the pos_embed table's length and applies to it only, got {self.tokens}")
        if attention or self.kind in ("pos_embed", "token_mean"):
            if self.in_features != self.out_features:
                raise ValueError(f"a {self.kind} layer keeps the features: {self.in_features} != {self.out_features}")
        if self.residual and (
            self.kind not in ("yat", "linear", *ATTENTION_KINDS) or self.in_features != self.out_features
        ):
            raise ValueError(
                f"residual needs a dense or attention layer with in_features == out_features, got {self.kind} "
                f"{self.in_features} -> {self.out_features}"
            )
        if self.kind == "patches" and len(self.kernel_size) != 2:
            raise ValueError(f"patches take a 2-D kernel_size (ph, pw), got {self.kernel_size!r}")

    def _check_geometry(self) -> None:
        # What the convolution would refuse at its first call, refused when the layer is described.
        n = len(self.kernel_size)
        for name in ("stride", "dilation", "output_padding"):
            value = getattr(self, name)
            if value and len(value) != n:
                raise ValueError(f"{name} needs {n} entries (one per spatial dimension), got {value!r}")
        if isinstance(self.padding, str):
            if self.padding not in ("valid", "same") or self.kind == "yat_conv_transpose":
                raise ValueError(f"padding must be ints (or 'valid'/'same' for a convolution), got {self.padding!r}")
            if self.padding == "same" and any(s > 1 for s in self.stride):
                raise ValueError(f"padding='same' needs stride 1, got stride {self.stride}")
        elif self.padding and len(self.padding) != n:
            raise ValueError(f"padding needs {n} entries (one per spatial dimension), got {self.padding!r}")
        stride, dilation = self.stride or (1,) * n, self.dilation or (1,) * n
        for op, s, d in zip(self.output_padding, stride, dilation):
            if op >= max(s, d):
                raise ValueError(
                    f"output_padding {self.output_padding} must be smaller than the stride {stride} or the "
                    f"dilation {dilation} in every dimension"
                )

    @property
    def conv_options(self) -> dict[str, Any]:
        """``stride``, ``padding``, ``dilation``, ``groups`` as :func:`yat_core.conv.yat_conv` takes them."""
        n = len(self.kernel_size)
        options: dict[str, Any] = {
            "stride": self.stride or (1,) * n,
            "padding": self.padding if self.padding != () else (0,) * n,
            "dilation": self.dilation or (1,) * n,
            "groups": self.groups,
        }
        if self.kind == "yat_conv_transpose":
            options["output_padding"] = self.output_padding or (0,) * n
        return options

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names (without the layer prefix) and shapes of the learnable parameters."""
        if self.kind not in PARAM_KINDS:
            return {}
        if self.kind == "pos_embed":
            return {"table": (self.tokens, self.in_features)}
        if self.kind in ATTENTION_KINDS:
            d = self.in_features
            projections: dict[str, tuple[int, ...]] = {}
            for p in PROJECTIONS:
                projections[f"{p}_kernel"] = (d, d)
                if self.bias == LEARNABLE:
                    projections[f"{p}_bias"] = (d,)
            if self.kind == "yat_attention" and self.alpha == LEARNABLE:
                projections["alpha"] = ()
            if self.learnable_epsilon:
                projections["epsilon_raw"] = ()
            return projections
        if self.kind == "yat_conv_transpose":
            kernel = (self.in_features, self.out_features // self.groups, *self.kernel_size)
        elif self.kind in CONV_KINDS:
            kernel = (self.out_features, self.in_features // self.groups, *self.kernel_size)
        else:
            kernel = (self.out_features, self.in_features)
        shapes: dict[str, tuple[int, ...]] = {"kernel": kernel}
        if self.bias == LEARNABLE:
            shapes["bias"] = (self.out_features,)
        if self.kind in YAT_KINDS:
            if self.alpha == LEARNABLE:
                shapes["alpha"] = ()
            if self.learnable_epsilon:
                shapes["epsilon_raw"] = ()
        return shapes

    @property
    def fans(self) -> tuple[int, int]:
        """``(fan_in, fan_out)`` of the kernel, as PyTorch's initialisers count them."""
        receptive = math.prod(self.kernel_size) if self.kind in CONV_KINDS else 1
        if self.kind == "yat_conv_transpose":  # kernel (in, out/groups, *k): PyTorch reads dims 1 and 0
            return self.out_features // self.groups * receptive, self.in_features * receptive
        return self.in_features // self.groups * receptive, self.out_features // self.groups * receptive

    @property
    def n_params(self) -> int:
        """Number of learnable scalars in this layer."""
        return sum(math.prod(s) for s in self.param_shapes.values())

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one sample after this layer, for one of shape ``shape`` (no batch axis)."""
        if self.kind in ("yat", "linear"):
            if not shape or shape[-1] != self.in_features or len(shape) > 2:
                raise ValueError(
                    f"a {self.kind} layer takes ({self.in_features},) features or (tokens, {self.in_features}), "
                    f"got {shape}"
                )
            return (*shape[:-1], self.out_features)
        if self.kind in TOKEN_KINDS and self.kind != "patches":
            if len(shape) != 2 or shape[1] != self.in_features:
                raise ValueError(f"a {self.kind} layer takes (tokens, {self.in_features}), got {shape}")
            if self.kind == "pos_embed" and shape[0] != self.tokens:
                raise ValueError(f"a pos_embed table of {self.tokens} tokens cannot be added to {shape[0]} tokens")
            return (self.out_features,) if self.kind == "token_mean" else shape
        if self.kind == "patches":
            ph, pw = self.kernel_size
            if len(shape) != 3 or shape[0] != self.in_features or shape[1] % ph or shape[2] % pw:
                raise ValueError(
                    f"patches of {self.kernel_size} take ({self.in_features}, H, W) with H, W multiples of the "
                    f"patch, got {shape}"
                )
            if self.out_features != self.in_features * ph * pw:
                raise ValueError(
                    f"a patch of {self.in_features} x {ph} x {pw} has {self.in_features * ph * pw} values, "
                    f"not {self.out_features}"
                )
            return ((shape[1] // ph) * (shape[2] // pw), self.out_features)
        if len(shape) != len(self.kernel_size) + 1 and self.kind != "flatten":
            raise ValueError(
                f"a {self.kind} layer with kernel {self.kernel_size} takes (channels, {len(self.kernel_size)} "
                f"spatial dims), got {shape}"
            )
        if shape[0] != self.in_features:
            raise ValueError(f"a {self.kind} layer takes {self.in_features} channels, got {shape[0]} ({shape})")
        if self.kind == "flatten":
            if math.prod(shape) != self.out_features:
                raise ValueError(f"flatten of {shape} gives {math.prod(shape)} features, not {self.out_features}")
            return (self.out_features,)
        if self.kind in _POOL_KINDS:
            if any(s < k for s, k in zip(shape[1:], self.kernel_size)):
                raise ValueError(f"a {self.kind} window {self.kernel_size} is larger than the input {shape[1:]}")
            return (shape[0], *(s // k for s, k in zip(shape[1:], self.kernel_size)))
        if self.kind == "yat_conv_transpose":
            w_shape = (self.in_features, self.out_features // self.groups, *self.kernel_size)
            return conv_transpose_output_shape((1, *shape), w_shape, **self.conv_options)[1:]
        w_shape = (self.out_features, self.in_features // self.groups, *self.kernel_size)
        return conv_output_shape((1, *shape), w_shape, **self.conv_options)[1:]


@dataclass(frozen=True)
class ModelSpec:
    """A stack of layers applied to samples of ``input_shape``; the shapes must chain.

    ``input_shape`` defaults to ``(layers[0].in_features,)``: a network on flattened
    inputs (an MLP). Images of another shape (``(n, 28, 28)`` pixels) are reshaped to
    ``(n, *input_shape)`` before the first layer.

    Examples
    --------
    >>> spec = seed_spec()
    >>> [layer.kind for layer in spec.layers], count_params(spec), spec.input_shape
    (['yat', 'yat', 'linear'], 235148, (784,))
    >>> cnn_spec().shapes()[-1]
    (10,)
    """

    layers: tuple[LayerSpec, ...]
    input_shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a model needs at least one layer")
        if not self.input_shape:
            object.__setattr__(self, "input_shape", (self.layers[0].in_features,))
        self.shapes()  # raises for layers whose shapes do not chain
        if len(self.shapes()[-1]) != 1:
            raise ValueError(f"the model must end in features (n, classes), not {self.shapes()[-1]}")

    def shapes(self) -> list[tuple[int, ...]]:
        """The per-sample shape after every layer (the input's first).

        Raises
        ------
        ValueError
            Naming the first layer whose input does not fit.
        """
        out = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                out.append(layer.output_shape(out[-1]))
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer.kind}): {exc}") from None
        return out

    @property
    def in_features(self) -> int:
        """Scalars per input sample (784 for MNIST, whatever the input shape)."""
        return math.prod(self.input_shape)

    @property
    def n_classes(self) -> int:
        return self.layers[-1].out_features

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's full name and shape, in initialisation order."""
        return {
            f"{i}.{name}": shape for i, layer in enumerate(self.layers) for name, shape in layer.param_shapes.items()
        }


#: The name the MLP-only code used; every spec is a :class:`ModelSpec` now.
MLPSpec = ModelSpec


def count_params(spec: ModelSpec) -> int:
    """Number of learnable scalars in the model (235,148 for :func:`seed_spec`)."""
    return sum(layer.n_params for layer in spec.layers)


def relu_spec() -> ModelSpec:
    """The seed model's shape with ``Linear + ReLU`` in place of each Yat layer (the baseline).

    Examples
    --------
    >>> count_params(relu_spec())  # no alpha: two scalars fewer than the seed model
    235146
    """
    return ModelSpec(
        (
            LayerSpec("linear", 784, 256, activation="relu"),
            LayerSpec("linear", 256, 128, activation="relu"),
            LayerSpec("linear", 128, 10),
        )
    )


def seed_spec(**yat_options: Any) -> ModelSpec:
    """The seed model: ``Flatten(28x28) -> Yat(784->256) -> Yat(256->128) -> Linear(128->10)``.

    Keyword arguments (``alpha``, ``bias``, ``epsilon``, ``learnable_epsilon``,
    ``spherical``) apply to both Yat layers.

    Examples
    --------
    >>> count_params(seed_spec())
    235148
    """
    return ModelSpec(
        (
            LayerSpec("yat", 784, 256, **yat_options),
            LayerSpec("yat", 256, 128, **yat_options),
            LayerSpec("linear", 128, 10),
        )
    )


def _cnn(conv: Kind, dense: Kind, **options: Any) -> ModelSpec:
    act: dict[str, Any] = {"activation": "relu"} if conv == "conv" else options
    dense_act: dict[str, Any] = {"activation": "relu"} if dense == "linear" else options
    return ModelSpec(
        (
            LayerSpec(conv, 1, 32, kernel_size=(3, 3), **act),
            LayerSpec("max_pool", 32, 32, kernel_size=(2, 2)),
            LayerSpec(conv, 32, 64, kernel_size=(3, 3), **act),
            LayerSpec("max_pool", 64, 64, kernel_size=(2, 2)),
            LayerSpec("flatten", 64, 64 * 5 * 5),
            LayerSpec(dense, 64 * 5 * 5, 128, **dense_act),
            LayerSpec("linear", 128, 10),
        ),
        input_shape=(1, 28, 28),
    )


def cnn_spec(**yat_options: Any) -> ModelSpec:
    """The Yat CNN for MNIST: ``YatConv 1->32 3x3, max-pool 2, YatConv 32->64 3x3, max-pool 2,
    flatten, Yat 1600->128, Linear 128->10`` (valid padding, stride 1).

    Examples
    --------
    >>> count_params(cnn_spec())
    225037
    """
    return _cnn("yat_conv", "yat", **yat_options)


def cnn_relu_spec() -> ModelSpec:
    """:func:`cnn_spec`'s shape with ``Conv + ReLU`` and ``Linear + ReLU`` in place of the Yat layers.

    Examples
    --------
    >>> count_params(cnn_relu_spec())
    225034
    """
    return _cnn("conv", "linear")


def _vit(attention: Kind, mlp: Kind, **yat_options: Any) -> ModelSpec:
    d, tokens = 64, 16
    mlp_options: dict[str, Any] = {"activation": "relu"} if mlp == "linear" else dict(yat_options)
    attention_options = {} if attention == "attention" else dict(yat_options)
    block = (
        LayerSpec(attention, d, d, heads=4, residual=True, **attention_options),
        LayerSpec(mlp, d, d, residual=True, **mlp_options),
    )
    return ModelSpec(
        (
            LayerSpec("patches", 1, 49, kernel_size=(7, 7)),
            LayerSpec("linear", 49, d),
            LayerSpec("pos_embed", d, d, tokens=tokens),
            *block,
            *block,
            LayerSpec("token_mean", d, d),
            LayerSpec("linear", d, 10),
        ),
        input_shape=(1, 28, 28),
    )


def vit_spec(**yat_options: Any) -> ModelSpec:
    """The Yat vision transformer for MNIST.

    ``7x7`` patches as 16 tokens, ``Linear 49->64``, a learned position table, two
    blocks of ``YatAttention(64, 4 heads) + x`` and ``Yat(64->64) + x``, the mean over
    the tokens, ``Linear 64->10``. No normalisation layers: the Yat product is the
    non-linearity and keeps its outputs non-negative.

    Examples
    --------
    >>> count_params(vit_spec())
    46478
    >>> vit_spec().shapes()[1], vit_spec().shapes()[-2]
    ((16, 49), (64,))
    """
    return _vit("yat_attention", "yat", **yat_options)


def vit_softmax_spec() -> ModelSpec:
    """:func:`vit_spec`'s shape with softmax attention and ``Linear + ReLU`` blocks (the baseline).

    Examples
    --------
    >>> count_params(vit_softmax_spec())  # no alpha: four scalars fewer
    46474
    """
    return _vit("attention", "linear")


class ModelRecipe(NamedTuple):
    """A ``--model`` choice: the Yat model, its same-shape ReLU baseline, and AdamW's default learning rate.

    The learning rate is the model's, not the framework's: every backend and framework,
    and the baseline, train a model with the same one (``--lr`` overrides it). The seed
    MLP keeps 3e-4; the CNN, whose Yat layers start with small outputs, learns at 1e-3.
    """

    yat: Callable[[], ModelSpec]
    relu: Callable[[], ModelSpec]
    lr: float


#: ``--model`` choices.
MODELS = {
    "mlp": ModelRecipe(seed_spec, relu_spec, 3e-4),
    "cnn": ModelRecipe(cnn_spec, cnn_relu_spec, 1e-3),
    "vit": ModelRecipe(vit_spec, vit_softmax_spec, 2e-3),
}


def spec_record(spec: ModelSpec) -> dict[str, Any]:
    """The model as plain data (lists, numbers, strings): its input shape and every layer's fields.

    What receipts, weight files and ``.keras`` configs store; :func:`spec_from_record`
    reads it back.

    Examples
    --------
    >>> spec_from_record(spec_record(vit_spec())) == vit_spec()
    True
    """
    return {"input_shape": list(spec.input_shape), "layers": [asdict(layer) for layer in spec.layers]}


def spec_from_record(record: Any) -> ModelSpec:
    """The :class:`ModelSpec` of :func:`spec_record`'s data, checked as any spec is.

    Raises
    ------
    ValueError
        A record without ``layers`` or ``input_shape``, an unknown field, or layers the
        spec refuses (the message says which).

    Examples
    --------
    >>> spec = spec_from_record({"input_shape": [3], "layers": [{"kind": "linear", "in_features": 3, "out_features": 2}]})
    >>> spec.layers[0].kind, spec.layers[0].bias, spec.input_shape
    ('linear', 'learnable', (3,))
    """
    if not isinstance(record, Mapping) or not isinstance(record.get("layers"), list) or "input_shape" not in record:
        raise ValueError("the model spec needs 'input_shape' and a list of 'layers'")
    known = {f.name for f in fields(LayerSpec)}
    layers = []
    for i, layer_fields in enumerate(record["layers"]):
        if not isinstance(layer_fields, Mapping):
            raise ValueError(f"layer {i} of the model spec is not a record")
        unknown = sorted(set(layer_fields) - known)
        if unknown:
            raise ValueError(f"layer {i} of the model spec has unknown fields: {', '.join(unknown)}")
        # JSON turns the tuples (kernel_size, stride, padding, ...) into lists.
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in layer_fields.items()}
        try:
            layers.append(LayerSpec(**values))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"layer {i} of the model spec: {exc}") from None
    shape = record["input_shape"]
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise ValueError(f"the model spec's input_shape must be a list of ints, got {shape!r}")
    return ModelSpec(tuple(layers), tuple(shape))
