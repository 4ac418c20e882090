"""Metadata filters: `price < 12 and colour = 'red'` -> a tree of conditions, which each store translates (the
embedded store into parameterised SQL over the chunks' metadata, `to_sql`; Qdrant into its filter objects).

A small recursive-descent parser, so a filter from the command line or an API request can never become SQL of its
own: field names are checked against the index's metadata keys and every value travels as a parameter.

    filter  := or
    or      := and ('or' and)*
    and     := unary ('and' unary)*
    unary   := 'not' unary | '(' or ')' | field op value | field ['not'] 'in' '(' value (',' value)* ')'
    op      := = == != <> < <= > >= | 'like'
    value   := number | 'text' | "text" | true | false | null
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneforge.errors import RetrievalError

_TOKEN = re.compile(
    r"\s*(?:(?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<string>'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")"
    r"|(?P<op><=|>=|!=|<>|==|=|<|>)|(?P<punct>[(),])|(?P<word>[A-Za-z_][A-Za-z0-9_.\-]*))"
)
_KEYWORDS = {"and", "or", "not", "in", "like", "true", "false", "null"}
BUILTIN_FIELDS = {"path": "path", "title": "title", "start_line": "start_line", "end_line": "end_line"}


@dataclass(frozen=True)
class Compare:
    """`field op value`: op is one of = != < <= > >= like in notin (value a list for in / notin)."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Logic:
    """and / or of several conditions, or not of one."""

    op: str
    parts: tuple[Filter, ...]


Filter = Compare | Logic


@dataclass
class Condition:
    """A filter as SQL (over the `chunks` table) and its parameters."""

    sql: str
    params: list[Any]


def parse_filter(text: str, fields: set[str]) -> Filter:
    """The condition tree of filter `text`; `fields` are the metadata keys the index holds."""
    parser = _Parser(text, fields)
    tree = parser.disjunction()
    if parser.position < len(parser.tokens):
        parser.fail(f"unexpected {parser.tokens[parser.position][1]!r}")
    return tree


def to_sql(tree: Filter) -> Condition:
    """The filter as a parameterised SQL condition over the embedded store's `chunks` table."""
    if isinstance(tree, Logic):
        parts = [to_sql(p) for p in tree.parts]
        if tree.op == "not":
            return Condition(f"NOT ({parts[0].sql})", parts[0].params)
        return Condition(f" {tree.op.upper()} ".join(f"({p.sql})" for p in parts), [v for p in parts for v in p.params])
    column = BUILTIN_FIELDS.get(tree.field) or f"json_extract(metadata, '$.\"{tree.field}\"')"  # a checked key
    if tree.op in ("in", "notin"):
        marks = ", ".join("?" * len(tree.value))
        return Condition(f"{column} {'NOT ' if tree.op == 'notin' else ''}IN ({marks})", list(tree.value))
    if tree.value is None:
        return Condition(f"{column} IS {'NOT ' if tree.op == '!=' else ''}NULL", [])
    return Condition(f"{column} {tree.op.upper()} ?", [tree.value])


class _Parser:
    def __init__(self, text: str, fields: set[str]) -> None:
        self.text, self.fields = text, fields
        self.tokens = _tokens(text)
        self.position = 0

    def fail(self, problem: str) -> None:
        raise RetrievalError(
            f"filter {self.text!r}: {problem}",
            "write conditions like price < 12 and colour = 'red' (operators = != < <= > >= like in, joined by "
            "and / or / not, text in quotes)",
        )

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        token = self.peek()
        if token is None or (kind and token[0] != kind) or (value and token[1].lower() != value):
            self.fail(f"expected {value or kind} at {'the end' if token is None else repr(token[1])}")
        self.position += 1
        return token[1] if token else ""

    def at(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "word" and token[1].lower() == word

    def disjunction(self) -> Filter:
        return self.chain("or", self.conjunction)

    def conjunction(self) -> Filter:
        return self.chain("and", self.unary)

    def chain(self, word: str, part: Callable[[], Filter]) -> Filter:
        """`part (word part)*` as one Logic node (or the part alone)."""
        parts = [part()]
        while self.at(word):
            self.take()
            parts.append(part())
        return parts[0] if len(parts) == 1 else Logic(word, tuple(parts))

    def unary(self) -> Filter:
        if self.at("not"):
            self.take()
            return Logic("not", (self.unary(),))
        if self.peek() == ("punct", "("):
            self.take()
            inner = self.disjunction()
            self.take("punct", ")")
            return inner
        return self.comparison()

    def comparison(self) -> Filter:
        field = self.column(self.take("word"))
        negated = self.at("not")
        if negated:
            self.take()
        if self.at("in"):
            self.take()
            return Compare(field, "notin" if negated else "in", self.values())
        if negated:
            self.fail("'not' after a field name must be followed by 'in'")
        if self.at("like"):
            self.take()
            return Compare(field, "like", self.value())
        op = {"==": "=", "<>": "!="}.get(operator := self.take("op"), operator)
        return Compare(field, op, self.value())

    def values(self) -> list[Any]:
        self.take("punct", "(")
        values = [self.value()]
        while self.peek() == ("punct", ","):
            self.take()
            values.append(self.value())
        self.take("punct", ")")
        return values

    def value(self) -> Any:
        token = self.peek()
        if token is None:
            self.fail("a value is missing at the end")
        assert token is not None
        kind, text = token
        self.position += 1
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "string":
            return text[1:-1].replace(text[0] * 2, text[0])
        if kind == "word" and text.lower() in {"true", "false", "null"}:
            return {"true": True, "false": False, "null": None}[text.lower()]
        self.fail(f"expected a value (a number, 'text', true, false or null), got {text!r}")

    def column(self, name: str) -> str:
        if name.lower() in _KEYWORDS:
            self.fail(f"expected a field name, got {name!r}")
        if name in BUILTIN_FIELDS:
            return name
        if name not in self.fields:
            known = sorted(self.fields | set(BUILTIN_FIELDS))
            close = difflib.get_close_matches(name, known, n=1)
            self.fail(
                f"the index has no field {name!r}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (fields: {', '.join(known)})"
            )
        return name  # a stored key exactly, of the characters a field token allows: safe to quote in SQL


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise RetrievalError(
                f"filter {text!r}: cannot read it from {text[position:].strip()[:20]!r} on",
                "write conditions like price < 12 and colour = 'red'; text values in quotes",
            )
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens
