"""The package's shape: arrows point down, no import circles, no framework loaded by accident.

Every import in ``yat_core`` is read from the source (also imports inside functions and
under ``TYPE_CHECKING``), so a lazy import cannot hide a circle or a wrong-way arrow.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yat_core"
FRAMEWORKS = ("torch", "jax", "jaxlib", "flax", "optax", "mlx", "tensorflow", "keras")

#: The core (math and the namespace seam) and what it must never import.
CORE = (
    "yat_core.namespaces",
    "yat_core.product",
    "yat_core.conv",
    "yat_core.attention",
    "yat_core.mlp",
    "yat_core.losses",
    "yat_core.optim",
)
ABOVE_CORE = (
    "yat_core.backends",
    "yat_core.nn",
    "yat_core.runners",
    "yat_core.train",
    "yat_core.cli",
    "yat_core.receipts",
    "yat_core.compare",
    "yat_core.report",
    "yat_core.data",
)
#: Layers know no backend and no training.
ABOVE_NN = (
    "yat_core.backends",
    "yat_core.runners",
    "yat_core.train",
    "yat_core.cli",
    "yat_core.receipts",
    "yat_core.compare",
    "yat_core.report",
    "yat_core.data",
)
#: Data knows no math.
ABOVE_DATA = (
    "yat_core.product",
    "yat_core.conv",
    "yat_core.attention",
    "yat_core.mlp",
    "yat_core.losses",
    "yat_core.optim",
    "yat_core.backends",
    "yat_core.nn",
    "yat_core.runners",
    "yat_core.train",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The yat_core module an import of ``name`` loads (the longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The yat_core modules ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for name in names:
            target = resolve(name) if name.startswith("yat_core") else None
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_reader_sees_known_edges():
    # Guards the test itself: an import inside a function and a relative-free package import.
    assert "yat_core.namespaces" in GRAPH["yat_core.product"]
    assert "yat_core.runners" in GRAPH["yat_core.train"]


def test_no_import_circle():
    """Tarjan's strongly connected components: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == [], f"import circles: {circles}"


@pytest.mark.parametrize(
    ("lower", "forbidden"),
    [(CORE, ABOVE_CORE), (("yat_core.nn",), ABOVE_NN), (("yat_core.data",), ABOVE_DATA)],
    ids=["core", "nn", "data"],
)
def test_arrows_point_down(lower, forbidden):
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _under(module, lower)
        for target in targets
        if _under(target, forbidden)
    )
    assert wrong == [], "imports that point up: " + "; ".join(wrong)


def test_no_training_runner_in_the_layer_modules():
    offenders = [
        m
        for m in MODULES
        if _under(m, ("yat_core.nn",))
        and (
            "Runner" in MODULES[m].read_text(encoding="utf-8")
            or "make_runner" in MODULES[m].read_text(encoding="utf-8")
        )
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "statement",
    [
        "import yat_core",
        "import yat_core.cli",
        "import yat_core.train",
        "import yat_core.nn, yat_core.runners, yat_core.backends",
    ],
)
def test_importing_the_package_loads_no_framework(statement):
    code = f"import sys; {statement}; print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", f"{statement!r} loaded {out.stdout.strip()}"


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("torch", "torch", "torch"),
        ("nnx", "flax", "flax"),
        ("linen", "flax", "flax"),
        ("mlx", "mlx", "mlx"),
        ("keras", "keras", "keras"),
        ("tf", "tensorflow", "tf"),
    ],
)
def test_a_layer_module_without_its_framework_names_the_extra(module, blocked, extra):
    # sys.modules[name] = None makes `import name` fail as if the framework were not installed.
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from yat_core.errors import BackendUnavailableError\n"
        f"try:\n    import yat_core.nn.{module}\nexcept BackendUnavailableError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == (
        f"yat_core.nn.{module} needs {blocked}, which is not installed here; "
        f"install it with: pip install 'yat-core[{extra}]'"
    ), out.stderr
