"""Readers: files -> records, each with its source file and line. Malformed lines become Issues."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.data.records import Chat, Issue, Source
from tuneforge.data.validate import check_chat


def read_chat_jsonl(path: Path) -> tuple[list[Chat], list[Issue]]:
    """Read OpenAI-style chat JSONL; return the valid conversations and the problems found."""
    chats: list[Chat] = []
    issues: list[Issue] = []
    name = str(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            source = Source(name, lineno)
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                issues.append(
                    Issue(
                        "error",
                        "bad_encoding",
                        source,
                        None,
                        f"not UTF-8 (byte {raw[exc.start]:#x} at column {exc.start + 1})",
                        "re-save the file as UTF-8",
                    )
                )
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                issues.append(
                    Issue(
                        "error",
                        "invalid_json",
                        source,
                        None,
                        f"invalid JSON: {exc.msg} at column {exc.colno}",
                        "each line must be one complete JSON object",
                    )
                )
                continue
            found = check_chat(obj, source)
            issues += found
            if not found:
                messages = [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
                chats.append(Chat(messages, source))
    if not chats and not issues:
        issues.append(
            Issue(
                "error",
                "empty_file",
                Source(name, 0),
                None,
                "the file holds no examples",
                'add one JSON object per line: {"messages": [...]}',
            )
        )
    return chats, issues
