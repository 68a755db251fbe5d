"""yat-core: the ⵟ-product ("Yat") neural layer, written once against the array API.

The functional API runs on any array-API library (NumPy, PyTorch, JAX, MLX, ...)::

    >>> import numpy as np, yat_core
    >>> yat_core.yat_product(np.ones((2, 3)), np.ones((4, 3)), epsilon=1.0).shape
    (2, 4)

Training backends live in :mod:`yat_core.backends`, framework-native layers in
:mod:`yat_core.nn`, data loading in :mod:`yat_core.data`.
"""

from yat_core.attention import (
    yat_attention,
    yat_attention_vjp,
    yat_attention_weights,
    yat_embed,
    yat_embed_attend,
)
from yat_core.conv import (
    avg_pool,
    linear_conv,
    max_pool,
    yat_conv,
    yat_conv_transpose,
    yat_conv_transpose_vjp,
    yat_conv_vjp,
)
from yat_core.errors import BackendUnavailableError, DataError, YatError
from yat_core.losses import count_correct, softmax_cross_entropy
from yat_core.mlp import (
    LayerSpec,
    MLPSpec,
    count_params,
    init_mlp,
    mlp_forward,
    mlp_loss,
    mlp_value_and_grad,
    seed_spec,
)
from yat_core.optim import AdamWConfig, AdamWState, adamw_init, adamw_update
from yat_core.product import DEFAULT_EPSILON, dense, softplus, yat_product, yat_product_vjp

__version__ = "0.2.0"

__all__ = [
    "__version__",
    "yat_product",
    "yat_product_vjp",
    "yat_attention",
    "yat_attention_weights",
    "yat_attention_vjp",
    "yat_embed",
    "yat_embed_attend",
    "yat_conv",
    "yat_conv_transpose",
    "yat_conv_vjp",
    "yat_conv_transpose_vjp",
    "linear_conv",
    "max_pool",
    "avg_pool",
    "dense",
    "softplus",
    "DEFAULT_EPSILON",
    "LayerSpec",
    "MLPSpec",
    "seed_spec",
    "init_mlp",
    "mlp_forward",
    "mlp_loss",
    "mlp_value_and_grad",
    "count_params",
    "softmax_cross_entropy",
    "count_correct",
    "AdamWConfig",
    "AdamWState",
    "adamw_init",
    "adamw_update",
    "YatError",
    "DataError",
    "BackendUnavailableError",
]
