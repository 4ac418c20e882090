"""Chat template rendering and loss masks: the loss falls on assistant tokens only (weight 0 turns excluded).

The mask is computed on characters, then mapped to tokens through the fast tokenizer's offsets. For each
assistant turn, the text rendered up to the generation prompt is a prefix of the text rendered with the
answer; the characters in between (answer + end-of-turn marker) are the ones the model must learn to write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from tuneforge.data.records import Record

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """Token ids of one conversation and the labels (IGNORE_INDEX where no loss is taken); position ids only
    for packed rows of several examples (they restart at each)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The chat template applied to `messages` (and tool definitions), as text."""
    text = tokenizer.apply_chat_template(
        messages, tools=list(tools) if tools else None, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert isinstance(text, str)
    return text


def count_tokens(tokenizer: PreTrainedTokenizerBase, records: list[Record]) -> list[int]:
    """Tokens of each record as the model will see it (chat template for chats and pairs); one batched call.

    Raises jinja2 errors (or TypeError) when the model's chat template cannot render a record.
    """
    texts: list[str] = []
    for r in records:
        if r.kind == "chat":
            texts.append(render(tokenizer, r.data["messages"], False, r.data.get("tools")))
        elif r.kind == "preference":
            for answer in ("chosen", "rejected"):
                texts.append(render(tokenizer, r.data["prompt"] + r.data[answer], False, r.data.get("tools")))
        else:
            texts.append(r.data["text"])
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    out: list[int] = []
    pos = 0
    for r in records:
        width = 2 if r.kind == "preference" else 1
        out.append(max(lengths[pos : pos + width]))
        pos += width
    return out


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    from_turn: int = 0,
) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans written by the assistant (turns with weight 0 and turns
    before `from_turn` left out)."""
    full = render(tokenizer, messages, False, tools)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if i < from_turn or msg["role"] != "assistant" or msg.get("weight", 1) == 0:
            continue
        before = render(tokenizer, messages[:i], True, tools) if i else ""
        upto = render(tokenizer, messages[: i + 1], False, tools)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ValueError("the chat template does not render conversations incrementally; cannot mask the loss")
        spans.append((len(before), len(upto)))
    return full, spans


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    from_turn: int = 0,
) -> Encoded:
    """Token ids and assistant-only labels of one conversation (only turns from `from_turn` on carry labels)."""
    text, spans = assistant_spans(tokenizer, messages, tools, from_turn)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(a <= start < b for a, b in spans):
            labels[t] = ids[t]
    return Encoded(ids, labels)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the assistant generation prompt."""
    ids = tokenizer(render(tokenizer, messages, generation_prompt=True), add_special_tokens=False)["input_ids"]
    return list(ids)
