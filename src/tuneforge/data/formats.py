"""Record formats: one parsed row (a JSON object, a CSV row, ...) -> canonical record data, or the Issues that stop it.

Each format has a converter registered under its `data.format` name and produces one record kind (see
records.py). With `data.format: auto` every row is recognised by its keys (SIGNATURES, tried in order).
Converters check the fields of their own format, so an error names the field the user wrote (`output`, not
`messages[2].content`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from tuneforge.data.records import Issue, Kind, Messages, Source, error
from tuneforge.data.validate import check_chat, check_messages, text_issue

Converter = Callable[[dict[str, Any], Source], tuple[dict[str, Any], list[Issue]]]
FORMATS: dict[str, tuple[Kind, Converter]] = {}
# The keys that identify each format under data.format=auto, tried in this order.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction",),
    "openai_preference": ("preferred_output",),
    "preference": ("chosen", "rejected"),
    "completion": ("prompt", "completion"),
    "classification": ("text", "label"),
    "text": ("text",),
    "prompt": ("prompt",),  # only when no other format's key is there (a preference row missing its 'rejected')
}
# One-line example of each format: docs/data.md's table and `prepare --help` show these.
EXAMPLES: dict[str, str] = {
    "chat": '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
    "sharegpt": '{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}',
    "alpaca": '{"instruction": "Translate to German", "input": "Good morning", "output": "Guten Morgen"}',
    "openai_preference": '{"input": {"messages": [{"role": "user", "content": "Hi"}]}, '
    '"preferred_output": [{"role": "assistant", "content": "Hello!"}], '
    '"non_preferred_output": [{"role": "assistant", "content": "What?"}]}',
    "preference": '{"prompt": "Hi", "chosen": "Hello! How can I help?", "rejected": "What do you want?"}',
    "completion": '{"prompt": "Capital of France?", "completion": "Paris"}',
    "classification": '{"text": "Lieferung kam zwei Wochen zu spät.", "label": "negative"}',
    "text": '{"text": "Raw domain text for continued pre-training ..."}',
    "prompt": '{"prompt": "Extract the parties of: ..."}',
}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class Converted(NamedTuple):
    """A converted row: its kind and canonical data, or the issues that stop it (kind None if unrecognised)."""

    kind: Kind | None
    data: dict[str, Any]
    issues: list[Issue]


def register(name: str, kind: Kind) -> Callable[[Converter], Converter]:
    """Add a record format producing records of `kind` to the registry under `name`."""

    def add(fn: Converter) -> Converter:
        FORMATS[name] = (kind, fn)
        return fn

    return add


def detect(obj: dict[str, Any]) -> str | None:
    """The format whose identifying keys the row has, or None."""
    found = next((f for f, keys in SIGNATURES.items() if set(keys) <= set(obj)), None)
    others = {k for f, keys in SIGNATURES.items() if f != "prompt" for k in keys} - {"prompt"}
    return None if found == "prompt" and set(obj) & others else found


def convert(obj: Any, source: Source, fmt: str = "auto") -> Converted:
    """One parsed row as canonical record data, in format `fmt` or the one its keys identify."""
    if not isinstance(obj, dict):
        return Converted(
            None,
            {},
            [
                error(
                    "not_an_object",
                    source,
                    None,
                    f"expected a JSON object, got {type(obj).__name__}",
                    'write one object per line: {"messages": [...]}',
                )
            ],
        )
    name = fmt if fmt != "auto" else detect(obj)
    if name is None:
        known = "; ".join(f"{f}: {'+'.join(k)}" for f, k in SIGNATURES.items())
        near = [(f, [k for k in keys if k not in obj]) for f, keys in SIGNATURES.items() if set(keys) & set(obj)]
        missing = "".join(f"; a {f} record would need {', '.join(map(repr, m))} too" for f, m in near if m)
        return Converted(
            None,
            {},
            [
                error(
                    "unknown_format",
                    source,
                    None,
                    f"no known record format (keys: {sorted(obj)}){missing}",
                    f"give each row the keys of one format ({known}), map columns with data.columns, "
                    "or set data.format",
                )
            ],
        )
    kind, fn = FORMATS[name]
    data, issues = fn(obj, source)
    return Converted(None if issues else kind, {} if issues else data, issues)


@register("chat", "chat")
def from_chat(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """OpenAI chat: {"messages": [{"role", "content", "weight"?}, ...], "tools"?: [...]}."""
    found = check_chat(obj, source)
    if found:
        return {}, found
    keep = ("role", "content", "weight", "name", "tool_calls", "tool_call_id")
    messages = [{k: m[k] for k in keep if k in m} for m in obj["messages"]]
    return {"messages": messages, **({"tools": obj["tools"]} if obj.get("tools") else {})}, []


@register("alpaca", "chat")
def from_alpaca(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """Alpaca: instruction, optional input, output (optional system); input is appended to the instruction."""
    found = [i for key in ("instruction", "output") if (i := text_issue(obj, key, source, required=True))]
    found += [i for key in ("input", "system") if (i := text_issue(obj, key, source, required=False))]
    if found:
        return {}, found
    extra, system_text = obj.get("input") or "", obj.get("system") or ""  # absent, null and "" all mean none
    prompt = obj["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
    system = [{"role": "system", "content": system_text}] if system_text.strip() else []
    messages = [*system, {"role": "user", "content": prompt}, {"role": "assistant", "content": obj["output"]}]
    return {"messages": messages}, []


@register("completion", "chat")
def from_completion(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """Prompt/completion pairs: the prompt becomes the user turn, the completion the answer."""
    found = [i for key in ("prompt", "completion") if (i := text_issue(obj, key, source, required=True))]
    if found:
        return {}, found
    return {"messages": [_user(obj["prompt"]), _assistant(obj["completion"])]}, []


@register("prompt", "chat")
def from_prompt(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """A prompt without an answer (what reinforcement learning samples answers for): text or a list of messages."""
    value = obj.get("prompt")
    if isinstance(value, list):
        found = check_messages(value, source, "prompt", need_assistant=False)
        return ({}, found) if found else ({"messages": value}, [])
    if problem := text_issue(obj, "prompt", source, required=True):
        return {}, [problem]
    return {"messages": [_user(obj["prompt"])]}, []


@register("sharegpt", "chat")
def from_sharegpt(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}."""
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        return {}, [
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
        if problem := text_issue(turn, "value", source, required=True, where=f"{where}.value"):
            found.append(problem)
        if role and not problem:
            messages.append({"role": role, "content": turn["value"]})
    if not found and all(m["role"] != "assistant" for m in messages):
        found.append(error("no_assistant", source, "conversations", "no 'gpt' turn", "add the answer as a 'gpt' turn"))
    return ({}, found) if found else ({"messages": messages}, [])


@register("preference", "preference")
def from_preference(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """Preference pairs (TRL style): prompt, chosen, rejected as strings or message lists.

    Without `prompt`, chosen and rejected are whole conversations and their shared beginning is the prompt.
    """
    found: list[Issue] = []
    parts: dict[str, Messages] = {}
    for key, role in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
        value = obj.get(key)
        if key == "prompt" and value is None:
            continue
        if isinstance(value, str) and "prompt" not in obj and (turns := transcript(value)) is not None:
            parts[key] = turns  # an HH-RLHF transcript: the shared turns become the prompt below
        elif isinstance(value, list):
            found += check_messages(value, source, key, need_assistant=False)
            parts[key] = value
        elif problem := text_issue(obj, key, source, required=True):
            found.append(problem)
        else:
            parts[key] = [{"role": role, "content": value}]
    if found:
        return {}, found
    if "prompt" not in parts:
        parts["prompt"], parts["chosen"], parts["rejected"] = _split_prefix(parts["chosen"], parts["rejected"])
    data, issues = _check_pair(parts, source, ("chosen", "rejected"))
    extras, bad = _pair_extras(obj, source)
    return ({}, issues + bad) if issues or bad else (data | extras, [])


# "\n\nHuman: ... \n\nAssistant: ..." (Anthropic's HH-RLHF), the speaker names as its files write them
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def transcript(text: str) -> Messages | None:
    """The turns of an HH-RLHF-style transcript ("\n\nHuman: ...\n\nAssistant: ..."); None for plain text."""
    marks = list(_TURN.finditer(text))
    if not marks or marks[0].start() != 0 or marks[0].group(1) != "Human":
        return None
    turns = []
    for mark, after in zip(marks, [*marks[1:], None], strict=True):
        content = text[mark.end() : after.start() if after else len(text)].strip()
        turns.append({"role": "user" if mark.group(1) == "Human" else "assistant", "content": content})
    return turns


def _pair_extras(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """What a pair may carry besides its answers: a margin (a rating gap, for the reward model's margin loss) and
    who judged it (for agreement figures)."""
    extras: dict[str, Any] = {}
    margin = obj.get("margin")
    if margin is not None:
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin):
            bad = f"'margin' must be a finite number, got {margin!r:.40}"
            return {}, [error("bad_margin", source, "margin", bad, "write a number such as 2, or drop the field")]
        extras["margin"] = float(margin)
    if isinstance(obj.get("annotator"), str) and obj["annotator"]:
        extras["annotator"] = obj["annotator"]
    return extras, []


@register("openai_preference", "preference")
def from_openai_preference(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """OpenAI DPO files: {"input": {"messages", "tools"?}, "preferred_output": [...], "non_preferred_output": [...]}."""
    inp = obj.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list):
        return {}, [
            error(
                "missing_messages",
                source,
                "input.messages",
                f"'input' must be an object with a 'messages' list, got {inp!r:.60}",
                'write "input": {"messages": [{"role": "user", "content": ...}]}',
            )
        ]
    found = check_messages(inp["messages"], source, "input.messages", need_assistant=False)
    outputs: dict[str, Messages] = {}
    for key in ("preferred_output", "non_preferred_output"):
        value = obj.get(key)
        if not isinstance(value, list) or not value:
            found.append(
                error(
                    "missing_output",
                    source,
                    key,
                    f"'{key}' must be a non-empty list of assistant messages, got {value!r:.60}",
                    f'write "{key}": [{{"role": "assistant", "content": ...}}]',
                )
            )
            continue
        found += check_messages(value, source, key, need_assistant=True)
        outputs[key] = value
    if found:
        return {}, found
    pair = {"prompt": inp["messages"], "chosen": outputs["preferred_output"]}
    pair["rejected"] = outputs["non_preferred_output"]
    data, issues = _check_pair(pair, source, ("preferred_output", "non_preferred_output"))
    if inp.get("tools"):
        data["tools"] = inp["tools"]
    return data, issues


@register("classification", "classification")
def from_classification(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """Classification: {"text": ..., "label": ...}; labels are kept as strings (1 and "1" are one class)."""
    found = [i for i in [text_issue(obj, "text", source, required=True)] if i]
    label = obj.get("label")
    if label is None or (isinstance(label, str) and not label.strip()):
        found.append(error("missing_label", source, "label", "no 'label'", "give every example its class label"))
    elif not isinstance(label, str | int | bool):
        found.append(
            error(
                "bad_label",
                source,
                "label",
                f"a label must be a string or an integer, got {type(label).__name__}",
                "write one class name or number per example",
            )
        )
    if found:
        return {}, found
    return {"text": obj["text"], "label": str(label).strip()}, []


@register("text", "text")
def from_text(obj: dict[str, Any], source: Source) -> tuple[dict[str, Any], list[Issue]]:
    """Raw text for continued pre-training: {"text": ...}."""
    if problem := text_issue(obj, "text", source, required=True):
        return {}, [problem]
    return {"text": obj["text"]}, []


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def _split_prefix(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    """Shared leading messages of two conversations (the prompt) and what follows in each."""
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def _check_pair(
    pair: dict[str, Messages], source: Source, names: tuple[str, str]
) -> tuple[dict[str, Any], list[Issue]]:
    """Preference-level checks: a prompt exists, both answers are assistant turns, and they differ."""
    found: list[Issue] = []
    if not pair["prompt"]:
        found.append(
            error(
                "missing_prompt",
                source,
                "prompt",
                "no prompt: chosen and rejected share no leading messages",
                "add 'prompt', or start both conversations with the same user message",
            )
        )
    for key, name in zip(("chosen", "rejected"), names, strict=True):
        if not pair[key] or pair[key][0].get("role") != "assistant":
            found.append(
                error(
                    "not_an_answer",
                    source,
                    name,
                    f"'{name}' must start with an assistant message",
                    "put the answer the model should (not) give as an assistant message",
                )
            )
    if not found and pair["chosen"] == pair["rejected"]:
        found.append(
            error(
                "same_answers",
                source,
                names[0],
                f"'{names[0]}' and '{names[1]}' are identical",
                "a preference pair needs two different answers; drop the record",
            )
        )
    return ({}, found) if found else (pair, [])
