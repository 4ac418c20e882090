"""Chat template rendering and loss masks: the loss falls on assistant tokens only.

The mask is computed on characters, then mapped to tokens through the fast tokenizer's offsets. For each
assistant turn, the text rendered up to the generation prompt is a prefix of the text rendered with the
answer; the characters in between (answer + end-of-turn marker) are the ones the model must learn to write.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """Token ids of one conversation and the labels (IGNORE_INDEX where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """The chat template applied to `messages`, as text."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert isinstance(text, str)
    return text


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans written by the assistant."""
    full = render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ValueError("the chat template does not render conversations incrementally; cannot mask the loss")
        spans.append((len(before), len(upto)))
    return full, spans


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> Encoded:
    """Token ids and assistant-only labels of one conversation."""
    text, spans = assistant_spans(tokenizer, messages)
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
