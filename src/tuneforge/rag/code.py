"""Chunking source code by its syntax tree (tree-sitter): one chunk per function, method or class, with the comments
and decorators right above it, named by its qualified symbol (`Store.search`). A class too large for one chunk gives
a chunk of its header and one per method; a function too large is cut at blank lines. Code between definitions
(imports, constants, scripts) is chunked by paragraphs. Languages without a grammar here are chunked as text.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any

from tuneforge.rag.chunk import Chunk, Count, Unit, pack, paragraphs


@dataclass(frozen=True)
class Grammar:
    """What a language's definitions look like in its tree-sitter grammar."""

    module: str  # the grammar package
    function: str  # its language function
    definitions: frozenset[str]  # node types that are a chunk of their own
    containers: frozenset[str]  # definitions whose body holds more definitions (classes, impls)
    wrappers: frozenset[str] = frozenset()  # nodes around a definition that belong to it (decorators, export)


_JS_DEFS = {"function_declaration", "generator_function_declaration", "class_declaration", "method_definition"}
_JS = Grammar(
    "tree_sitter_javascript",
    "language",
    frozenset(_JS_DEFS | {"variable_declarator"}),
    frozenset({"class_declaration"}),
    frozenset({"export_statement", "lexical_declaration", "variable_declaration"}),
)
_TS_DEFS = _JS_DEFS | {"interface_declaration", "abstract_class_declaration", "type_alias_declaration"}
_TS = Grammar(
    "tree_sitter_typescript",
    "language_typescript",
    frozenset(_TS_DEFS | {"variable_declarator"}),
    frozenset({"class_declaration", "abstract_class_declaration", "interface_declaration"}),
    frozenset({"export_statement", "lexical_declaration", "variable_declaration"}),
)
GRAMMARS: dict[str, Grammar] = {
    ".py": Grammar(
        "tree_sitter_python",
        "language",
        frozenset({"function_definition", "class_definition"}),
        frozenset({"class_definition"}),
        frozenset({"decorated_definition"}),
    ),
    ".js": _JS,
    ".mjs": _JS,
    ".cjs": _JS,
    ".jsx": _JS,
    ".ts": _TS,
    ".tsx": Grammar("tree_sitter_typescript", "language_tsx", _TS.definitions, _TS.containers, _TS.wrappers),
    ".go": Grammar(
        "tree_sitter_go",
        "language",
        frozenset({"function_declaration", "method_declaration", "type_spec"}),
        frozenset(),
        frozenset({"type_declaration"}),
    ),
    ".rs": Grammar(
        "tree_sitter_rust",
        "language",
        frozenset({"function_item", "impl_item", "struct_item", "enum_item", "trait_item", "mod_item"}),
        frozenset({"impl_item", "trait_item", "mod_item"}),
    ),
    ".java": Grammar(
        "tree_sitter_java",
        "language",
        frozenset(
            {"class_declaration", "interface_declaration", "enum_declaration", "method_declaration"}
            | {"constructor_declaration", "record_declaration"}
        ),
        frozenset({"class_declaration", "interface_declaration", "enum_declaration", "record_declaration"}),
    ),
}
CODE = set(GRAMMARS) | {".c", ".h", ".cc", ".cpp", ".hpp", ".rb", ".php", ".sh", ".kt", ".swift", ".scala", ".sql"}


@cache
def _parser(suffix: str) -> Any:
    from tree_sitter import Language, Parser

    grammar = GRAMMARS[suffix]
    return Parser(Language(getattr(importlib.import_module(grammar.module), grammar.function)()))


def chunk_code(path: str, text: str, suffix: str, count: Count, size: int) -> list[Chunk]:
    """Chunks of one source file: its definitions by syntax tree, the code between them by paragraphs."""
    if suffix not in GRAMMARS:
        return pack(paragraphs(text, 1), count, size, 0, path, None, code=True)
    source = text.encode("utf-8")
    tree = _parser(suffix).parse(source)
    walk = _Walk(path, source, GRAMMARS[suffix], count, size)
    walk.children(tree.root_node, "")
    covered = {line for chunk in walk.chunks for line in range(chunk.start_line, chunk.end_line + 1)}
    gaps = [c for run in _uncovered(text.split("\n"), covered) for c in pack(run, count, size, 0, path, None, True)]
    return sorted(walk.chunks + gaps, key=lambda c: c.start_line)


def _uncovered(lines: list[str], covered: set[int]) -> list[list[Unit]]:
    """The paragraphs of each run of lines that no definition chunk holds (line numbers from 1)."""
    units: list[list[Unit]] = []
    run: list[int] = []
    for number in [*range(1, len(lines) + 1), 0]:
        if number and number not in covered:
            run.append(number)
            continue
        if run:
            units.append(paragraphs("\n".join(lines[run[0] - 1 : run[-1]]), run[0]))
        run = []
    return units


class _Walk:
    """Visits a syntax tree and emits a chunk per definition (see the module docstring)."""

    def __init__(self, path: str, source: bytes, grammar: Grammar, count: Count, size: int) -> None:
        self.path, self.grammar, self.count, self.size = path, grammar, count, size
        self.lines = source.split(b"\n")
        self.chunks: list[Chunk] = []

    def children(self, node: Any, prefix: str) -> None:
        comment_start: int | None = None  # first line of the comments right above the next definition
        previous_end = -2
        for child in node.named_children:
            if "comment" in child.type:
                adjacent = comment_start is not None and child.start_point[0] <= previous_end + 1
                comment_start = comment_start if adjacent else child.start_point[0]
                previous_end = child.end_point[0]
                continue
            definition = self._definition(child)
            start = child.start_point[0]
            if comment_start is not None and previous_end >= start - 1:
                start = comment_start
            if definition is not None:
                self.definition(definition, start, child.end_point[0], prefix)
            elif child.named_child_count and child.type not in {"string", "comment"}:
                self.children(child, prefix)
            comment_start, previous_end = None, -2

    def _definition(self, node: Any) -> Any:
        """The definition `node` is, or wraps (a decorated function, `export class`, `const f = () => ...`)."""
        if node.type in self.grammar.definitions and _name(node) is not None:
            if node.type != "variable_declarator" or _is_function(node.child_by_field_name("value")):
                return node
            return None
        if node.type in self.grammar.wrappers:
            inner = [self._definition(c) for c in node.named_children]
            found = [d for d in inner if d is not None]
            return found[0] if len(found) == 1 else None
        return None

    def definition(self, node: Any, start_row: int, end_row: int, prefix: str) -> None:
        name = f"{prefix}{_name(node)}"
        text = self._lines(start_row, end_row)
        tokens = self.count(text)
        if tokens <= self.size:
            self.chunks.append(Chunk(text, self.path, start_row + 1, end_row + 1, name, tokens=tokens))
            return
        body = node.child_by_field_name("body")
        if node.type in self.grammar.containers and body is not None:
            inner = [c.start_point[0] for c in body.named_children if self._definition(c) is not None]
            header = paragraphs(self._lines(start_row, min(inner, default=end_row + 1) - 1), start_row + 1)
            self.chunks += pack(header, self.count, self.size, 0, self.path, name, code=True)
            self.children(body, f"{name}.")
            return
        units = paragraphs(text, start_row + 1)
        self.chunks += pack(units, self.count, self.size, 0, self.path, name, code=True)

    def _lines(self, start_row: int, end_row: int) -> str:
        return b"\n".join(self.lines[start_row : end_row + 1]).decode("utf-8", errors="replace")


def _name(node: Any) -> str | None:
    named = node.child_by_field_name("name") or node.child_by_field_name("type")
    return named.text.decode("utf-8", errors="replace") if named is not None and named.text else None


def _is_function(value: Any) -> bool:
    return value is not None and value.type in {"arrow_function", "function_expression", "function", "class"}
