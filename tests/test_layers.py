"""The packages of ``sgm`` import each other in one direction only: no cycle between them, and the
bottom layer ``sgm.common`` imports nothing of ``sgm`` but :mod:`sgm.util`."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "sgm"


def unit_of(module: str) -> str:
    """``sgm.recon.mesh`` -> ``sgm.recon``; ``sgm.cli`` -> ``sgm.cli``: a subpackage or a top-level module."""
    return ".".join(module.split(".")[:2])


def imports_of(path: Path) -> set[str]:
    """Absolute names of the ``sgm`` modules that ``path`` imports (at any depth of the file)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "sgm" or name.startswith("sgm.")}


def package_graph() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the files that import it."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        here = unit_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name in imports_of(path):
            there = unit_of(name)
            if there not in (here, "sgm"):
                graph[here][there].append(str(path.relative_to(ROOT)))
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b": ["a.py"]}, "b": {"c": ["b.py"]}, "c": {"a": ["c.py"]}, "d": {"a": ["d.py"]}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_between_packages():
    graph = package_graph()
    found = cycles(graph)
    detail = [{unit: {other: graph[unit][other][:3] for other in graph[unit] if other in component}
               for unit in component} for component in found]
    assert not found, f"import cycles between packages: {detail}"


def test_bottom_layer_imports_nothing_above_it():
    graph = package_graph()
    assert not graph.get("sgm.common"), dict(graph["sgm.common"])
