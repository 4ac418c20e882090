"""Canonical example types. Every record keeps where it came from, so every message can point at it.

One `Record` type for every kind of example; `kind` says which canonical fields `data` holds:

| kind             | data                                                                             |
|------------------|----------------------------------------------------------------------------------|
| `chat`           | `messages` (role, content, optional weight 0/1 / tool_calls), optional `tools`  |
| `preference`     | `prompt`, `chosen`, `rejected`: lists of messages (the prompt ends with the user) |
| `classification` | `text`, `label` (a string)                                                       |
| `text`           | `text` (raw text for continued pre-training or RAG)                              |

Cleaning and anonymisation walk `texts()` and rewrite them through `map_texts()`, so they work on every kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]
Kind = Literal["chat", "preference", "classification", "text"]
KINDS: tuple[Kind, ...] = ("chat", "preference", "classification", "text")
Messages = list[dict[str, Any]]  # OpenAI-style chat messages: role and content (+ weight, tool_calls, ...)
# Fields of each kind that hold text: a string, or a list of messages whose `content` is the text.
TEXT_FIELDS: dict[Kind, tuple[str, ...]] = {
    "chat": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "classification": ("text",),
    "text": ("text",),
}


def chat_prompts(rows: list[dict[str, Any]]) -> tuple[list[Messages], list[str]]:
    """Each chat row's conversation up to (not including) its last assistant answer, and that answer."""
    prompts, references = [], []
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(messages[:last])
        references.append(messages[last]["content"])
    return prompts, references


@dataclass(frozen=True)
class Source:
    """File and 1-based line (or table row) a record was read from; line 0 means the file as a whole."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Record:
    """One example of any kind, with its provenance and the group that must stay in one split."""

    kind: Kind
    data: dict[str, Any]
    source: Source
    group: str | None = None  # records with the same group go to the same split (conversation, document, file)
    n_tokens: int = 0

    @property
    def label(self) -> str | None:
        """The class label of a classification record, else None."""
        return self.data.get("label") if self.kind == "classification" else None

    def texts(self) -> Iterator[str]:
        """Every text of the record, in a fixed order."""
        for key in TEXT_FIELDS[self.kind]:
            value = self.data.get(key)
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                yield from (m["content"] for m in value if isinstance(m.get("content"), str))

    def map_texts(self, fn: Callable[[str], str]) -> None:
        """Replace every text by fn(text), in place."""
        for key in TEXT_FIELDS[self.kind]:
            value = self.data.get(key)
            if isinstance(value, str):
                self.data[key] = fn(value)
            elif isinstance(value, list):
                for m in value:
                    if isinstance(m.get("content"), str):
                        m["content"] = fn(m["content"])

    def to_json(self) -> dict[str, Any]:
        return {**self.data, "source": str(self.source), **({"group": self.group} if self.group else {})}


@dataclass(frozen=True)
class Issue:
    """One finding about the data: what rule, where, and how to fix it."""

    severity: Severity
    rule: str
    source: Source | None
    field: str | None
    message: str
    hint: str

    def __str__(self) -> str:
        where = str(self.source) if self.source else "data"
        at = f" [{self.field}]" if self.field else ""
        return f"{where}{at}: {self.message} ({self.rule}); fix: {self.hint}"

    def to_json(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "rule": self.rule,
            "file": self.source.file if self.source else None,
            "line": self.source.line if self.source else None,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
        }


def error(rule: str, source: Source | None, field: str | None, message: str, hint: str) -> Issue:
    """An error-severity Issue."""
    return Issue("error", rule, source, field, message, hint)


def warning(rule: str, source: Source | None, field: str | None, message: str, hint: str) -> Issue:
    """A warning-severity Issue (an error under --strict)."""
    return Issue("warning", rule, source, field, message, hint)
