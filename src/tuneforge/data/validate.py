"""Checks of records and of whole datasets. Pure: each function takes parsed data and returns Issues."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from tuneforge.data.records import Issue, Source, error, warning

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id"}


def check_chat(obj: dict[str, Any], source: Source) -> list[Issue]:
    """Structural checks of one parsed object against the OpenAI chat format (the cookbook's checks and more)."""
    if "messages" not in obj:
        return [
            error(
                "missing_messages",
                source,
                "messages",
                f"no 'messages' key (keys: {sorted(obj)})",
                'add "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]',
            )
        ]
    issues = check_messages(obj["messages"], source, "messages", need_assistant=True)
    tools = obj.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        issues.append(
            error(
                "bad_tools",
                source,
                "tools",
                f"'tools' must be a list of tool definitions, got {tools!r:.60}",
                'write "tools": [{"type": "function", "function": {"name": ..., "parameters": {...}}}]',
            )
        )
    return issues


def check_messages(messages: Any, source: Source, where: str, need_assistant: bool) -> list[Issue]:
    """Checks of a list of chat messages at field `where`; `need_assistant`: one must be an assistant turn."""
    if not isinstance(messages, list) or not messages:
        return [
            error(
                "messages_not_list",
                source,
                where,
                f"'{where}' must be a non-empty list, got {messages!r:.60}",
                "give a list of {role, content} objects",
            )
        ]
    issues: list[Issue] = []
    for i, msg in enumerate(messages):
        issues += _check_message(msg, source, f"{where}[{i}]")
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if not issues and need_assistant and "assistant" not in roles:
        issues.append(
            error(
                "no_assistant",
                source,
                where,
                f"no assistant message (roles: {roles})",
                "add the answer the model should learn as a message with role 'assistant'",
            )
        )
    return issues


def text_issue(obj: dict[str, Any], key: str, source: Source, required: bool, where: str | None = None) -> Issue | None:
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


def check_length(n_tokens: int, max_seq_len: int, source: Source) -> Issue | None:
    """An error when the example is longer than the model may see in training."""
    if n_tokens <= max_seq_len:
        return None
    return error(
        "too_long",
        source,
        "messages",
        f"{n_tokens} tokens with the model's chat template, more than data.max_seq_len={max_seq_len}",
        "shorten the example, split the conversation, or raise data.max_seq_len",
    )


def check_count(n: int, minimum: int, file: str) -> Issue | None:
    """An error when too few valid examples remain to split and train."""
    if n >= minimum:
        return None
    return error(
        "too_few_examples",
        Source(file, 0),
        None,
        f"{n} valid example(s); at least {minimum} are needed for train/val/test splits",
        "add more examples or lower data.val_size / data.test_size",
    )


def check_labels(codes: list[int], names: dict[str, int], ratio: float, allowed: list[str] | None) -> Iterator[Issue]:
    """Dataset-level label checks: a single class, imbalance beyond `ratio`, allowed labels that never occur."""
    counts = Counter(codes)
    by_name = {name: counts.get(code, 0) for name, code in names.items()}
    if len(by_name) == 1:
        only = next(iter(by_name))
        yield error("one_label", None, "label", f"every example has label {only!r}", "a classifier needs two classes")
    elif by_name:
        common, rare = max(by_name, key=by_name.__getitem__), min(by_name, key=by_name.__getitem__)
        if by_name[common] >= ratio * by_name[rare]:
            yield warning(
                "label_imbalance",
                None,
                "label",
                f"{common!r} has {by_name[common]} examples, {rare!r} only {by_name[rare]} "
                f"({by_name[common] / by_name[rare]:.0f}x; data.imbalance_ratio={ratio:g})",
                "collect more of the rare class, or weight classes in training",
            )
    for name in allowed or []:
        if name not in by_name:
            yield warning("unused_label", None, "label", f"label {name!r} of data.labels never occurs", "add examples")


def check_privacy(mode: str, gate: str, found: Counter[str], records: int) -> Issue | None:
    """Personal data left in the written splits: an error under privacy.gate=block, else a warning (or nothing)."""
    if mode != "report" or not found or gate == "off":
        return None
    listed = ", ".join(f"{k} {v}" for k, v in found.most_common())
    return (error if gate == "block" else warning)(
        "personal_data",
        None,
        None,
        f"personal data remains in {records} record(s): {listed}",
        "set privacy.mode to mask, pseudonymize or drop (privacy.gate=block refuses to train until then)",
    )


def _check_message(msg: Any, source: Source, where: str) -> list[Issue]:
    if not isinstance(msg, dict):
        return [
            error(
                "message_not_object",
                source,
                where,
                f"expected an object, got {type(msg).__name__}",
                'write each message as {"role": ..., "content": ...}',
            )
        ]
    issues: list[Issue] = []
    unknown = sorted(set(msg) - MESSAGE_KEYS)
    if unknown:
        issues.append(
            error("unknown_key", source, where, f"unknown key(s) {unknown}", f"allowed keys are {sorted(MESSAGE_KEYS)}")
        )
    role = msg.get("role")
    if role is None:
        issues.append(error("missing_role", source, f"{where}.role", "no 'role'", f"set role to one of {list(ROLES)}"))
    elif role not in ROLES:
        issues.append(
            error("unknown_role", source, f"{where}.role", f"unknown role {role!r}", f"use one of {list(ROLES)}")
        )
    if "weight" in msg and (msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool) or role != "assistant"):
        issues.append(
            error(
                "bad_weight",
                source,
                f"{where}.weight",
                f"weight {msg['weight']!r} on a {role} message",
                "weight is 0 (do not learn this answer) or 1, and only on assistant messages",
            )
        )
    if role == "assistant" and msg.get("tool_calls") and msg.get("content") is None:
        return issues  # a tool call instead of text is a complete assistant turn
    return issues + _check_content(msg.get("content"), source, f"{where}.content")


def _check_content(content: Any, source: Source, where: str) -> list[Issue]:
    """A message's content must be a non-empty string."""
    if content is None:
        return [error("missing_content", source, where, "no 'content'", "add the message text")]
    if not isinstance(content, str):
        return [
            error(
                "content_not_string",
                source,
                where,
                f"content must be a string, got {type(content).__name__}",
                "write the text as a string",
            )
        ]
    if not content.strip():
        return [error("empty_content", source, where, "content is empty", "write the message text or drop the message")]
    return []
