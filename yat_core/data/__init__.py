"""Data loading: the IDX file format and MNIST with verified sources and a cache.

Examples
--------
>>> from yat_core.data import load_mnist
>>> mnist = load_mnist()  # doctest: +SKIP
>>> mnist.source  # doctest: +SKIP
'cache /home/me/.cache/yat-core/mnist'
"""

from __future__ import annotations

from .idx import read_idx, write_idx
from .mnist import IDX_FILES, MNIST, default_cache_dir, load_mnist

__all__ = ["MNIST", "IDX_FILES", "load_mnist", "default_cache_dir", "read_idx", "write_idx"]
