"""The house's shape, checked: stages import only downward, no import circle, modules and functions within budget.

Every `import` is read from the source (at module level, inside functions and under TYPE_CHECKING alike), so a lazy
import cannot hide a circle. A new package must be given its layer in LAYERS before its first import passes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import ROOT

SRC = ROOT / "src" / "tuneforge"
# Lowest first: a module may import its own layer's modules (no circle) and a lower layer's, never a higher one's.
LAYERS: list[set[str]] = [
    {"errors"},
    {"metrics"},  # pure metric functions: config validates metric names against them
    {"config", "tuneforge"},  # the package root re-exports config and errors
    {"models", "rundir", "cpu"},
    {"data"},
    {"generation"},
    {"train"},
    {"evaluation"},
    {"feedback"},  # annotation sessions and rated answers -> preference pairs (the RLHF phase's data)
    {"tune"},
    {"rag"},  # index, retrieve, answer with citations
    {"workflow"},  # the whole run: prepare -> train -> evaluate
    {"compare"},  # the bake-off: prompt vs few-shot vs RAG vs fine-tune vs both
    {"serve", "jobs", "export"},  # the API server; the jobs service; exports for other runtimes
    {"annotate", "chat", "cli", "console", "launch", "__main__"},
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in SRC.rglob("*.py"):
        parts = ("tuneforge", *path.relative_to(SRC).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The tuneforge modules `path` imports anywhere in its code (a `from package import module` names the module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                names.add(child if child in known else node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path}: relative import; write `from tuneforge... import` as the rest of the code does")
    return {n for n in names if n in known}


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    for index, members in enumerate(LAYERS):
        if top in members:
            return index
    pytest.fail(
        f"{module} belongs to no layer: add its package to LAYERS in {Path(__file__).name} (and ARCHITECTURE.md)"
    )


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer(target) > layer(source)
    ]
    assert not upward, "imports reaching up a layer:\n" + "\n".join(upward)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
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


def test_there_is_no_import_circle() -> None:
    assert circles(graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(edges) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_and_functions_stay_within_budget(name: str) -> None:
    path = modules()[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path}: over {MAX_MODULE_LINES} lines: split it at a seam"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path}: functions over {MAX_FUNCTION_LINES} lines: {long}"
