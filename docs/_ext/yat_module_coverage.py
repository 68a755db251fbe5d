"""Every public module of ``yat_core`` must be on a page: a module left out is a build warning.

With ``-W`` that fails the build, so a new module cannot ship without its reference.
Public means no component of the dotted name starts with an underscore (``__main__``
included). Finding the modules imports only ``yat_core``'s packages, which load no
framework.
"""

from __future__ import annotations

import pkgutil

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

logger = logging.getLogger(__name__)


def public_modules(package: str = "yat_core") -> set[str]:
    """The dotted names of ``package`` and every public module and subpackage under it."""
    root = __import__(package)
    names = {package}
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.add(info.name)
    return names


def check_coverage(app: Sphinx, env: BuildEnvironment) -> None:
    documented = set(env.get_domain("py").modules)  # the PythonDomain: module name -> entry
    for name in sorted(public_modules() - documented):
        logger.warning("module %s is documented on no page: add an '.. automodule:: %s' directive", name, name)


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("env-check-consistency", check_coverage)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
