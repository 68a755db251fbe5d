"""The backends under test: one registry, one parametrisation.

Each entry of :data:`PROVIDERS` names the modules it needs and a loader that returns
an implementation with some of these capabilities (host NumPy arrays in, NumPy
arrays out):

``yat(inp, dtype)`` / ``yat_native(inp, dtype)``
    the product of a :class:`~verification.cases.YatInputs` (``"yat"``);
``yat_grads(inp, mode, dtype)``
    gradients of ``sum(g * y)`` for every array input (``"yat_grad"``);
``mlp_forward(params, x, spec, dtype)``
    the logits of a Yat MLP (``"mlp"``);
``mlp_loss_grad(params, x, labels, spec, mode, dtype)``
    mean loss and every parameter gradient (``"mlp_grad"``).

The array-API core runs on NumPy, array-api-strict, PyTorch, JAX and MLX; a
framework-native layer (:mod:`yat_core.nn`) is one more entry with the ``"mlp"``
capability (``nn-torch``, ``nn-nnx``, ``nn-linen``, ``nn-mlx``, ``nn-keras``,
``nn-tf``). Frameworks are imported only when their entry is loaded.

PyTorch and JAX run on the CPU unless ``$YAT_PARITY_DEVICE`` names another device
(``cuda``, ``cuda:1``): the same checks, against the same float64 oracle, on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from verification.cases import YatInputs
from yat_core.mlp import MLPSpec, mlp_forward, mlp_value_and_grad
from yat_core.product import softplus, yat_product, yat_product_vjp

__all__ = [
    "Provider",
    "ProviderMissing",
    "PROVIDERS",
    "load",
    "provider_ids",
    "gradient_ids",
    "split_gradient_id",
]


class ProviderMissing(ImportError):
    """A backend's framework is not installed."""


@dataclass(frozen=True)
class Provider:
    """A registry entry: a backend's name, the modules it imports, how to load it."""

    name: str
    requires: tuple[str, ...]
    loader: Callable[[], Any]
    capabilities: frozenset[str]
    modes: tuple[str, ...] = ("analytic",)  # gradient modes: "analytic", "autodiff"
    description: str = ""

    def missing(self) -> list[str]:
        """Modules this entry needs that do not import here."""
        out = []
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out.append(module)
        return out


class CoreImpl:
    """The array-API core (:mod:`yat_core`) run on one array namespace."""

    def __init__(
        self,
        name: str,
        xp: Any,
        asarray: Callable[[np.ndarray], Any],
        to_numpy: Callable[[Any], np.ndarray],
        *,
        backend: Any = None,
        compile_fn: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None,
        precision: Callable[[Any], Any] | None = None,
    ) -> None:
        self.name, self.xp = name, xp
        self._asarray, self._to_numpy = asarray, to_numpy
        self.backend = backend  # the yat_core.backends shim, where there is one
        self._compile = compile_fn
        self._precision = precision or (lambda dtype: contextlib.nullcontext())

    # -- conversions ----------------------------------------------------------------
    def put(self, a: Any, dtype: Any) -> Any:
        """A host value as this namespace's array of ``dtype`` (Python floats pass through)."""
        if a is None or isinstance(a, float):
            return a
        return self._asarray(np.array(a, dtype=dtype, order="C"))  # a writable copy

    def host(self, a: Any) -> np.ndarray:
        return np.array(self._to_numpy(a))

    @contextlib.contextmanager
    def precision(self, dtype: Any) -> Iterator[None]:
        """Whatever the framework needs to compute in ``dtype`` (JAX: x64 mode)."""
        with self._precision(np.dtype(dtype)):
            yield

    # -- the product ----------------------------------------------------------------
    def _yat_args(self, inp: YatInputs, dtype: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        arrays = {"x": self.put(inp.x, dtype), "w": self.put(inp.w, dtype), "g": self.put(inp.g, dtype)}
        const: dict[str, Any] = {"spherical": inp.spherical}
        for name in ("bias", "alpha"):
            value = getattr(inp, name)
            if isinstance(value, np.ndarray):
                arrays[name] = self.put(value, dtype)
            else:
                const[name] = value
        if inp.epsilon_raw is not None:
            arrays["epsilon_raw"] = self.put(inp.epsilon_raw, dtype)
        else:
            const["epsilon"] = inp.epsilon
        return arrays, const

    def _forward(self, params: dict[str, Any], const: dict[str, Any]) -> Any:
        xp = self.xp
        kwargs = dict(const)
        for name in ("bias", "alpha"):
            if name in params:
                kwargs[name] = params[name]
        if "epsilon_raw" in params:
            kwargs["epsilon"] = softplus(params["epsilon_raw"], xp=xp)
        return yat_product(params["x"], params["w"], xp=xp, **kwargs)

    def compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` under the framework's compiler where the backend compiles (JAX, MLX).

        JAX dispatches op by op without it, compiling every operation for every new
        shape; one compiled function per call is much faster, and is what training runs.
        """
        return fn if self._compile is None else self._compile(fn)

    def yat_native(self, inp: YatInputs, dtype: Any = np.float32) -> tuple[dict[str, Any], Any]:
        """The native input arrays and the native output."""
        arrays, const = self._yat_args(inp, dtype)
        params = {k: v for k, v in arrays.items() if k != "g"}
        return arrays, self.compiled(functools.partial(self._forward, const=const))(params)

    def yat(self, inp: YatInputs, dtype: Any = np.float32) -> np.ndarray:
        with self.precision(dtype):
            return self.host(self.yat_native(inp, dtype)[1])

    def yat_grads(self, inp: YatInputs, mode: str, dtype: Any = np.float32) -> dict[str, np.ndarray]:
        """Gradients of ``sum(g * y)`` by the framework's autodiff or the core's analytic VJP."""
        with self.precision(dtype):
            arrays, const = self._yat_args(inp, dtype)
            if mode == "autodiff":
                xp = self.xp

                def objective(params: dict[str, Any]) -> Any:
                    g = params.pop("g")
                    return xp.sum(g * self._forward(params, const))

                def grads_of(params: dict[str, Any]) -> dict[str, Any]:
                    params = dict(params)
                    g = params.pop("g")
                    return self.backend.value_and_grad(lambda p: objective({**p, "g": g}))(params)[1]

                grads = self.compiled(grads_of)(arrays)
            else:
                grads = self.compiled(functools.partial(self._analytic_yat_grads, const=const))(arrays)
            return {k: self.host(v) for k, v in grads.items()}

    def _analytic_yat_grads(self, arrays: dict[str, Any], const: dict[str, Any]) -> dict[str, Any]:
        xp = self.xp
        g = arrays["g"]
        kwargs = {k: v for k, v in const.items()}
        for name in ("bias", "alpha"):
            if name in arrays:
                kwargs[name] = arrays[name]
        raw = arrays.get("epsilon_raw")
        if raw is not None:
            kwargs["epsilon"] = softplus(raw, xp=xp)
        parts = yat_product_vjp(arrays["x"], arrays["w"], g, xp=xp, **kwargs)
        grads = {"x": parts.x, "w": parts.w}
        if "bias" in arrays:
            grads["bias"] = parts.bias
        if "alpha" in arrays:
            grads["alpha"] = parts.alpha
        if raw is not None:  # d softplus / d raw = sigmoid(raw)
            grads["epsilon_raw"] = parts.epsilon / (1.0 + xp.exp(-raw))
        return grads

    # -- the MLP --------------------------------------------------------------------
    def mlp_forward(
        self, params: dict[str, np.ndarray], x: np.ndarray, spec: MLPSpec, dtype: Any = np.float32
    ) -> np.ndarray:
        with self.precision(dtype):
            native = {k: self.put(v, dtype) for k, v in params.items()}
            fn = self.compiled(lambda p, inputs: mlp_forward(p, inputs, spec, xp=self.xp))
            return self.host(fn(native, self.put(x, dtype)))

    def mlp_loss_grad(
        self,
        params: dict[str, np.ndarray],
        x: np.ndarray,
        labels: np.ndarray,
        spec: MLPSpec,
        mode: str,
        dtype: Any = np.float32,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The backend's own ``loss_and_grad`` (analytic or autodiff, as ``mode`` says)."""
        with self.precision(dtype):
            native = {k: self.put(v, dtype) for k, v in params.items()}
            xs, ys = self.put(x, dtype), self._asarray(np.asarray(labels, dtype=np.int64))
            if self.backend is not None:
                fn = type(self.backend)(None, mode).loss_and_grad(spec)
            elif mode == "analytic":

                def fn(p: dict[str, Any], images: Any, labels: Any) -> Any:
                    return mlp_value_and_grad(p, images, labels, spec, xp=self.xp)
            else:
                raise ValueError(f"{self.name} has no autodiff")
            loss, grads = self.compiled(fn)(native, xs, ys)
            return float(self.host(loss)), {k: self.host(v) for k, v in grads.items()}


# -- loaders ------------------------------------------------------------------------------

#: Environment variable naming the device of the PyTorch and JAX entries (default ``cpu``).
DEVICE_ENV_VAR = "YAT_PARITY_DEVICE"


def device() -> str:
    """The device PyTorch and JAX are checked on: ``$YAT_PARITY_DEVICE``, else ``"cpu"``."""
    return os.environ.get(DEVICE_ENV_VAR) or "cpu"


def _load_numpy() -> CoreImpl:
    from yat_core.backends import get_backend

    backend = get_backend("numpy")
    return CoreImpl("numpy", backend.xp, np.asarray, np.asarray, backend=backend)


def _load_strict() -> CoreImpl:
    import array_api_strict as xp

    return CoreImpl("array_api_strict", xp, xp.asarray, lambda a: np.from_dlpack(a))


def _load_torch() -> CoreImpl:
    from yat_core.backends import get_backend

    backend = get_backend("torch", device())
    return CoreImpl("torch", backend.xp, backend.asarray, backend.to_numpy, backend=backend)


def _load_jax() -> CoreImpl:
    import jax

    from yat_core.backends import get_backend

    backend = get_backend("jax", device())

    def precision(dtype: np.dtype) -> Any:
        return jax.enable_x64(dtype == np.float64)

    # The backend's compile: jax.jit at the backend's matmul precision (full float32 on a GPU).
    return CoreImpl(
        "jax",
        backend.xp,
        backend.asarray,
        backend.to_numpy,
        backend=backend,
        compile_fn=backend.compile,
        precision=precision,
    )


def _load_mlx() -> CoreImpl:
    import mlx.core as mx

    from yat_core.backends import get_backend

    backend = get_backend("mlx", "cpu")

    def asarray(a: np.ndarray) -> Any:  # mx.array would turn float64 into float32
        return mx.array(a, dtype=mx.float64) if a.dtype == np.float64 else mx.array(a)

    # Eager: mx.compile on the CPU builds C++ kernels per new graph (seconds each); the
    # compiled training step is exercised by the trajectory checks.
    return CoreImpl("mlx", backend.xp, asarray, backend.to_numpy, backend=backend)


class NativeImpl:
    """A framework-native model of :mod:`yat_core.nn` (``build_model``, ``import_params``,
    ``predict``): the MLP forward pass with the core's weights loaded into it."""

    def __init__(self, framework: str) -> None:
        from yat_core.nn import get_framework

        self.name = f"nn-{framework}"
        self.module = get_framework(framework)
        self._models: dict[MLPSpec, Any] = {}

    def mlp_forward(
        self, params: dict[str, np.ndarray], x: np.ndarray, spec: MLPSpec, dtype: Any = np.float32
    ) -> np.ndarray:
        if np.dtype(dtype) != np.float32:
            raise ValueError(f"{self.name} is checked in float32 only")
        if spec not in self._models:  # building a native model is slow; loading weights is not
            self._models[spec] = self.module.build_model(spec, 0)
        model = self.module.import_params(self._models[spec], params)  # Linen returns a new module
        return np.asarray(self.module.predict(model, np.ascontiguousarray(x, dtype=np.float32)))


def _native(framework: str) -> Callable[[], NativeImpl]:
    return lambda: NativeImpl(framework)


_CORE = frozenset({"yat", "yat_grad", "mlp", "mlp_grad"})
_NATIVE = frozenset({"mlp"})
_BOTH = ("analytic", "autodiff")

#: Every backend the suite checks, in report order.
PROVIDERS: dict[str, Provider] = {
    "numpy": Provider("numpy", ("numpy",), _load_numpy, _CORE, ("analytic",), "core on NumPy (the reference backend)"),
    "array_api_strict": Provider(
        "array_api_strict", ("array_api_strict",), _load_strict, _CORE, ("analytic",), "core on array-api-strict"
    ),
    "torch": Provider("torch", ("torch",), _load_torch, _CORE, _BOTH, "core on PyTorch (eager)"),
    "jax": Provider("jax", ("jax",), _load_jax, _CORE, _BOTH, "core on JAX (under jax.jit)"),
    "mlx": Provider("mlx", ("mlx.core",), _load_mlx, _CORE, _BOTH, "core on MLX (eager)"),
    # Framework-native layers (yat_core.nn): the same model, built the framework's way.
    "nn-torch": Provider("nn-torch", ("torch",), _native("torch"), _NATIVE, (), "yat_core.nn.torch"),
    "nn-nnx": Provider("nn-nnx", ("flax",), _native("nnx"), _NATIVE, (), "yat_core.nn.nnx"),
    "nn-linen": Provider("nn-linen", ("flax",), _native("linen"), _NATIVE, (), "yat_core.nn.linen"),
    "nn-mlx": Provider("nn-mlx", ("mlx.core",), _native("mlx"), _NATIVE, (), "yat_core.nn.mlx"),
    "nn-keras": Provider("nn-keras", ("keras",), _native("keras"), _NATIVE, (), "yat_core.nn.keras"),
    "nn-tf": Provider("nn-tf", ("tensorflow",), _native("tf"), _NATIVE, (), "yat_core.nn.tf"),
}


@functools.cache
def load(name: str) -> Any:
    """The implementation of provider ``name`` (cached); :class:`ProviderMissing` if absent."""
    provider = PROVIDERS[name]
    missing = provider.missing()
    if missing:
        raise ProviderMissing(f"backend {name!r} needs {', '.join(missing)}, which is not installed")
    return provider.loader()


def provider_ids(capability: str) -> list[str]:
    """Names of the providers with ``capability`` (the test ids)."""
    return [name for name, p in PROVIDERS.items() if capability in p.capabilities]


def gradient_ids(capability: str = "yat_grad") -> list[str]:
    """``name-mode`` for every provider and gradient mode it offers."""
    return [f"{name}-{mode}" for name, p in PROVIDERS.items() if capability in p.capabilities for mode in p.modes]


def split_gradient_id(test_id: str) -> tuple[str, str]:
    """``"torch-autodiff"`` -> ``("torch", "autodiff")``."""
    name, _, mode = test_id.rpartition("-")
    return name, mode
