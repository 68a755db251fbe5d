"""Sphinx configuration: the API reference built from yat-core's numpydoc docstrings.

Build it with ``nox -s docs`` (warnings are errors), or by hand::

    sphinx-build -W --keep-going -b html docs docs/_build/html
    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

from numpydoc.docscrape_sphinx import SphinxDocString

# Keras reads its backend once, on first import: autodoc and the examples run it on JAX.
os.environ["KERAS_BACKEND"] = "jax"
# Quieter imports of TensorFlow and JAX; neither changes what is documented.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import yat_core  # noqa: E402

project = "yat-core"
author = "yat-core contributors"
copyright = "yat-core contributors"
release = yat_core.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "numpydoc",
    "yat_cli_usage",
    "yat_module_coverage",
]

root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []

# The docstrings are numpydoc; numpydoc renders their sections. Members are listed by
# autodoc (``:members:``), so numpydoc's own member tables would list them twice.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True

_process_param = SphinxDocString._process_param


def _link_members_only(self: SphinxDocString, param: str, desc: list[str], fake_autosummary: bool) -> tuple:
    """numpydoc links an Attributes entry to any callable class attribute and swaps in its docstring.

    A Flax Linen field whose default is callable (``param_dtype = jnp.float32``) is a value, not a
    member: keep its own description, and link only properties and other descriptors.
    """
    value = getattr(self._obj, param.strip(), None) if fake_autosummary else None
    if value is not None and not (isinstance(value, property) or inspect.isdatadescriptor(value)):
        fake_autosummary = False
    return _process_param(self, param, desc, fake_autosummary)


SphinxDocString._process_param = _link_members_only  # type: ignore[method-assign]

autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings' Parameters sections say the types
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False
# Framework classes inherit long docstrings from their framework (nn.Module, keras.Layer);
# only yat-core's own text belongs here.
autoclass_content = "class"

# Only the pages' own ``.. doctest::`` / ``.. testcode::`` blocks run under ``-b doctest``:
# the docstrings' examples (pulled in by autodoc) are run by the tests session's doctests.
doctest_test_doctest_blocks = ""
doctest_global_setup = "import numpy as np"

html_theme = "furo"
html_title = f"yat-core {release}"
html_static_path: list[str] = []
