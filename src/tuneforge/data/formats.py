"""Readers: files -> chat records, each with its source file and line. Malformed lines become Issues.

A JSONL line may be in any of the common instruction-data formats; each has a converter to OpenAI-style
messages, registered under its `data.format` name. With `data.format: auto` every line is recognised by its keys.
Converters check the fields of their own format, so an error names the field the user wrote (`output`, not
`messages[2].content`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.data.records import Chat, Issue, Messages, Source
from tuneforge.data.validate import check_chat, error

Converter = Callable[[dict[str, Any], Source], tuple[Messages, list[Issue]]]
FORMATS: dict[str, Converter] = {}
# The keys that identify each format under data.format=auto, tried in this order.
SIGNATURES = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction",),
    "completion": ("prompt",),
}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def register(name: str) -> Callable[[Converter], Converter]:
    """Add a record format to the registry under `name`."""

    def add(fn: Converter) -> Converter:
        FORMATS[name] = fn
        return fn

    return add


def read_jsonl(path: Path, fmt: str = "auto") -> tuple[list[Chat], list[Issue]]:
    """Read a JSONL file of chat, alpaca, ShareGPT or prompt/completion records; return chats and problems."""
    chats: list[Chat] = []
    issues: list[Issue] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            source = Source(str(path), lineno)
            obj, problem = _parse_line(raw, source)
            if problem:
                issues.append(problem)
                continue
            if obj is None:  # blank line
                continue
            messages, found = convert(obj, source, fmt)
            issues += found
            if not found:
                chats.append(Chat(messages, source))
    if not chats and not issues:
        issues.append(
            error(
                "empty_file", Source(str(path), 0), None, "the file holds no examples", "add one JSON object per line"
            )
        )
    return chats, issues


def convert(obj: Any, source: Source, fmt: str = "auto") -> tuple[Messages, list[Issue]]:
    """One parsed record as chat messages, in format `fmt` or the one its keys identify."""
    if not isinstance(obj, dict):
        return [], [
            error(
                "not_an_object",
                source,
                None,
                f"expected a JSON object, got {type(obj).__name__}",
                'write one object per line: {"messages": [...]}',
            )
        ]
    name = fmt if fmt != "auto" else next((f for f, keys in SIGNATURES.items() if set(keys) <= set(obj)), None)
    if name is None:
        known = "; ".join(f"{f}: {', '.join(k)}" for f, k in SIGNATURES.items())
        return [], [
            error(
                "unknown_format",
                source,
                None,
                f"no known record format (keys: {sorted(obj)})",
                f"give each line the keys of one format ({known}) or set data.format",
            )
        ]
    return FORMATS[name](obj, source)


@register("chat")
def from_chat(obj: dict[str, Any], source: Source) -> tuple[Messages, list[Issue]]:
    """OpenAI chat: {"messages": [{"role", "content"}, ...]}."""
    found = check_chat(obj, source)
    if found:
        return [], found
    return [{"role": m["role"], "content": m["content"]} for m in obj["messages"]], []


@register("alpaca")
def from_alpaca(obj: dict[str, Any], source: Source) -> tuple[Messages, list[Issue]]:
    """Alpaca: instruction, optional input, output (optional system); input is appended to the instruction."""
    found = [i for key in ("instruction", "output") if (i := _text_issue(obj, key, source, required=True))]
    found += [i for key in ("input", "system") if (i := _text_issue(obj, key, source, required=False))]
    if found:
        return [], found
    extra, system_text = obj.get("input") or "", obj.get("system") or ""  # absent, null and "" all mean none
    prompt = obj["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    system = [{"role": "system", "content": system_text}] if system_text.strip() else []
    return [*system, {"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}], []


@register("completion")
def from_completion(obj: dict[str, Any], source: Source) -> tuple[Messages, list[Issue]]:
    """Prompt/completion pairs: the prompt becomes the user turn, the completion the answer."""
    found = [i for key in ("prompt", "completion") if (i := _text_issue(obj, key, source, required=True))]
    if found:
        return [], found
    return [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}], []


@register("sharegpt")
def from_sharegpt(obj: dict[str, Any], source: Source) -> tuple[Messages, list[Issue]]:
    """ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}."""
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        return [], [
            error(
                "conversations_not_list",
                source,
                "conversations",
                f"'conversations' must be a non-empty list, got {turns!r:.60}",
                'give a list of {"from": "human"|"gpt", "value": ...} objects',
            )
        ]
    messages: Messages = []
    found: list[Issue] = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            found.append(
                error(
                    "message_not_object",
                    source,
                    where,
                    f"expected an object, got {type(turn).__name__}",
                    'write each turn as {"from": ..., "value": ...}',
                )
            )
            continue
        role = SHAREGPT_ROLES.get(str(turn.get("from")))
        if role is None:
            found.append(
                error(
                    "unknown_role",
                    source,
                    f"{where}.from",
                    f"unknown speaker {turn.get('from')!r}",
                    f"use one of {sorted(SHAREGPT_ROLES)}",
                )
            )
        if problem := _text_issue(turn, "value", source, required=True, where=f"{where}.value"):
            found.append(problem)
        if role and not problem:
            messages.append({"role": role, "content": turn["value"]})
    if not found and all(m["role"] != "assistant" for m in messages):
        found.append(error("no_assistant", source, "conversations", "no 'gpt' turn", "add the answer as a 'gpt' turn"))
    return ([], found) if found else (messages, [])


def _text_issue(
    obj: dict[str, Any], key: str, source: Source, required: bool, where: str | None = None
) -> Issue | None:
    """An Issue when obj[key] is missing (if required), not a string, or blank."""
    field = where or key
    if key not in obj or obj[key] is None:
        return error("missing_field", source, field, f"no '{key}'", f"add '{key}' with the text") if required else None
    value = obj[key]
    if not isinstance(value, str):
        return error(
            "not_a_string",
            source,
            field,
            f"'{key}' must be a string, got {type(value).__name__}",
            "write the text as a string",
        )
    if required and not value.strip():
        return error("empty_content", source, field, f"'{key}' is empty", "write the text or drop the record")
    return None


def _parse_line(raw: bytes, source: Source) -> tuple[Any, Issue | None]:
    """The JSON value of one line (None for a blank line), or the Issue that stops it."""
    try:
        text = raw.decode("utf-8-sig" if source.line == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return None, error(
            "bad_encoding",
            source,
            None,
            f"not UTF-8 (byte {raw[exc.start]:#x} at column {exc.start + 1})",
            "re-save the file as UTF-8",
        )
    if not text.strip():
        return None, None
    try:
        return json.loads(text.rstrip("\r\n")), None
    except json.JSONDecodeError as exc:
        return None, error(
            "invalid_json",
            source,
            None,
            f"invalid JSON: {exc.msg} at column {exc.colno}",
            "each line must be one complete JSON object",
        )
