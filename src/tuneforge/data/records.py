"""Canonical example types. Every record keeps where it came from, so every message can point at it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]
Messages = list[dict[str, str]]  # OpenAI-style chat messages: role and content


@dataclass(frozen=True)
class Source:
    """File and 1-based line a record was read from."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Chat:
    """One conversation: OpenAI-style messages with role and content."""

    messages: Messages
    source: Source
    n_tokens: int = 0
    meta: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"messages": self.messages, "source": str(self.source)}


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
