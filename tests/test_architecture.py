"""The shape of the tree, checked: no import cycles, every import declared, pure modules pure.

Read from the source with ``ast`` (imports under ``TYPE_CHECKING`` count: a cycle that only
the type checker sees is still two modules that cannot be understood one without the other).
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(p.parent for p in ROOT.glob("*/*/pyproject.toml") if (p.parent / "src").is_dir())
# Pure data and typing modules: the hub, hot tier and clients import them, so they must not
# drag in a server.
PURE = ["relaycore.frames", "relaycore.prepared", "relaycore.direct", "relaycore.models",
        "relaycore.ids", "relaycore.keys", "relaycore.retention"]  # fmt: skip
SERVER_CODE = ("uvicorn", "starlette", "glide", "relaycore.uvicorn_ext")


def _modules(member: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted((member / "src").rglob("*.py")):
        parts = list(path.relative_to(member / "src").with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, absolute names (relative imports resolved)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


ALL = {name: path for member in MEMBERS for name, path in _modules(member)}
GRAPH = {
    name: {target for target in _imports(path, name) if target in ALL and target != name}
    for name, path in ALL.items()
}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    # A package's __init__ importing its own submodules is not a cycle worth the name.
    cycles = [c for c in _cycles() if not all(m.startswith(c[0] + ".") for m in c[1:])]
    assert cycles == []


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_server_code(module: str) -> None:
    reached: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in reached:
            continue
        reached.add(current)
        todo.extend(GRAPH.get(current, ()))
    imports = {i for m in reached for i in _imports(ALL[m], m)}
    bad = sorted(i for i in imports if i.startswith(SERVER_CODE))
    assert bad == [], f"{module} reaches server code: {bad}"


def _declared(member: Path) -> set[str]:
    project = tomllib.loads((member / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower().replace("_", "-") for r in project.get("dependencies", [])}


@pytest.mark.parametrize("member", MEMBERS, ids=lambda p: p.name)
def test_every_imported_package_is_declared(member: Path) -> None:
    distributions = packages_distributions()
    own = {name.partition(".")[0] for name, _ in _modules(member)}
    declared = _declared(member)
    missing: set[str] = set()
    for name, path in _modules(member):
        for imported in _imports(path, name):
            top = imported.partition(".")[0]
            if not top or top in own or top in sys.stdlib_module_names or top == "__future__":
                continue
            names = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
            if not names & declared:
                missing.add(f"{top} (in {name})")
    assert sorted(missing) == []
