"""The package's shape: imports go one way and never in a loop.

Read from source with :mod:`ast` (nothing is imported), counting imports inside
functions too: a lazy import that closes a loop is still a loop in the design.
The layers, from the top: cli -> experiments -> models -> layers -> functional
-> backends -> leaves (activations, files). A module may import modules of its
own layer or below, never above.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "batchnorm"

#: Layer of each top-level module or subpackage (higher imports lower).
LAYERS: dict[str, int] = {
    "__main__": 8,
    "cli": 8,
    "diagnose_cli": 8,
    "experiments": 7,
    "benchmark": 7,
    "models": 6,
    "": 5,  # the package root: re-exports the public API
    "accumulate": 4,
    "algorithm2": 4,
    "diagnose": 4,
    "convert": 4,
    "frozen": 4,
    "fused": 4,
    "ghost": 4,
    "layers": 4,
    "percentiles": 4,
    "renorm": 4,
    "sync": 4,
    "functional": 3,
    "statistics": 2,
    "distributed": 2,
    "backends": 2,
    "data": 2,
    "reference": 1,
    "graph": 1,
    "passes": 1,
    "activations": 0,
    "files": 0,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for vertex in sorted(graph):
        if vertex not in index:
            visit(vertex)
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if top not in LAYERS:
        raise AssertionError(f"{module}: not placed in a layer; add it to LAYERS")
    return LAYERS[top]


def test_the_graph_is_read():
    graph = _graph()
    assert "batchnorm.layers" in graph["batchnorm.fused"]
    assert "batchnorm.functional" in graph["batchnorm.layers"]
    assert "batchnorm.backends.registry" in graph["batchnorm.backends.native"]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(_graph()))
def test_imports_go_one_way(module):
    upward = [
        target
        for target in sorted(_graph()[module])
        if _layer(target) > _layer(module)
    ]
    assert upward == [], f"{module} imports a higher layer: {upward}"


def test_backend_registry_is_a_leaf():
    """The registry every backend imports imports nothing of this package."""
    assert _graph()["batchnorm.backends.registry"] == set()
