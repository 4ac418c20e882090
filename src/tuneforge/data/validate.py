"""Checks of chat records. Pure: each function takes parsed data and returns Issues."""

from __future__ import annotations

from typing import Any

from tuneforge.data.records import Issue, Source

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight"}


def check_chat(obj: dict[str, Any], source: Source) -> list[Issue]:
    """Structural checks of one parsed JSONL object against the OpenAI chat format."""
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
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        return [
            error(
                "messages_not_list",
                source,
                "messages",
                f"'messages' must be a non-empty list, got {messages!r:.60}",
                "give a list of {role, content} objects",
            )
        ]
    issues: list[Issue] = []
    for i, msg in enumerate(messages):
        issues += _check_message(msg, source, f"messages[{i}]")
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if not issues and "assistant" not in roles:
        issues.append(
            error(
                "no_assistant",
                source,
                "messages",
                f"no assistant message (roles: {roles})",
                "add the answer the model should learn as a message with role 'assistant'",
            )
        )
    return issues


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
    content = msg.get("content")
    if content is None:
        issues.append(error("missing_content", source, f"{where}.content", "no 'content'", "add the message text"))
    elif not isinstance(content, str):
        issues.append(
            error(
                "content_not_string",
                source,
                f"{where}.content",
                f"content must be a string, got {type(content).__name__}",
                "write the text as a string",
            )
        )
    elif not content.strip():
        issues.append(
            error(
                "empty_content",
                source,
                f"{where}.content",
                "content is empty",
                "write the message text or drop the message",
            )
        )
    return issues


def error(rule: str, source: Source, field: str | None, message: str, hint: str) -> Issue:
    """An error-severity Issue."""
    return Issue("error", rule, source, field, message, hint)
