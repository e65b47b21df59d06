"""The shape of the package (docs/architecture.md §1): no import cycles, short modules, short functions.

The import graph comes from grimp (the library under import-linter) and includes the imports written
inside functions, which is where cycles used to hide. The old module paths at the top of the package
(``stacchip_assets/rio.py`` ...) only alias a new module (``sys.modules[__name__] = module``) and are
left out. Lengths are measured with ``ast`` on the source files, per layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

from tests.conftest import PROJECT

PACKAGE = "stacchip_assets"
ROOT = PROJECT / PACKAGE
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
LAYERS = ["core", "io", "index", "training", "dagster_defs", "demo", "<top>"]

#: Files exempt from the length rules: generated data tables only, each with the reason.
EXEMPT: dict[str, str] = {}


def _is_alias_module(path: Path) -> bool:
    """Whether a module only makes its name an alias of another module (``sys.modules[__name__] = m``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Attribute)
                        and target.value.attr == "modules"):
                    return True
    return False


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(path: Path) -> str:
    relative = path.relative_to(ROOT).parts
    return relative[0] if len(relative) > 1 else "<top>"


SOURCES = sorted(ROOT.rglob("*.py"))
ALIASES = {_module_name(p) for p in SOURCES if p.parent == ROOT and _is_alias_module(p)}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_including_imports_inside_functions():
    graph = grimp.build_graph(PACKAGE, cache_dir=None, exclude_type_checking_imports=False)
    modules = {m for m in graph.modules if m not in ALIASES}
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules} for m in modules}
    assert "stacchip_assets.io.storage" in modules and edges["stacchip_assets.io.storage"]
    assert _cycles(edges) == []


def _long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}() has {lines} lines")
    return out


@pytest.mark.parametrize("layer", LAYERS)
def test_modules_and_functions_are_short(layer):
    files = [p for p in SOURCES if _layer(p) == layer and str(p.relative_to(ROOT.parent)) not in EXEMPT]
    assert files, f"no module in layer {layer}"
    too_long = [f"{p.relative_to(ROOT.parent)} has {n} lines" for p in files
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    too_long += [entry for p in files for entry in _long_functions(p)]
    assert too_long == []
