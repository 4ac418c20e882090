"""Rated answers turned into preference pairs (`tuneforge preferences`).

Teams often have ratings rather than pairs: answers scored 1-5 by reviewers, or thumbs up / down from a chat UI. Two
answers to the same prompt with different ratings make a pair (the better one chosen), and the rating gap is the
pair's margin (the reward model's optional margin loss reads it). Every pair of differently rated answers of a
prompt is used, as InstructGPT used all K-choose-2 comparisons of a ranking. Rows come grouped
({"prompt", "answers": [{"text", "rating"}, ...]}) or one answer per row ({"prompt", "answer", "rating"}), grouped
here by prompt.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.errors import DataError
from tuneforge.rundir import atomic_write_text

PROMPT_KEYS = ("prompt", "question", "instruction")
ANSWER_KEYS = ("answer", "completion", "response", "text", "content", "output")
RATING_KEYS = ("rating", "score", "thumbs", "label", "feedback")
LIST_KEYS = ("answers", "completions", "responses")
THUMBS = {"up": 1.0, "down": 0.0, "good": 1.0, "bad": 0.0, "thumbs_up": 1.0, "thumbs_down": 0.0, "👍": 1.0, "👎": 0.0}


@dataclass
class Rated:
    """One rated answer and where it came from."""

    answer: str
    rating: float
    source: str
    annotator: str | None = None


@dataclass
class Converted:
    """The pairs made, and what could not make any."""

    pairs: list[dict[str, Any]] = field(default_factory=list)
    prompts: int = 0
    answers: int = 0
    unpaired: list[str] = field(default_factory=list)  # prompts whose answers all share one rating, or only one


def rating_value(value: Any, where: str) -> float:
    """A rating as a number: numbers as they are, booleans and thumbs as 1 / 0."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in THUMBS:
            return THUMBS[text]
        try:
            return float(text)
        except ValueError:
            pass
    raise DataError(
        f"{where}: rating {value!r} is neither a number nor a thumb",
        f"write a number (e.g. 1-5) or one of {', '.join(sorted(THUMBS))}",
    )


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    return next(((k, row[k]) for k in keys if k in row), (None, None))


def _prompt_messages(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    raise DataError(f"{where}: the prompt is empty or not text / a list of messages", "give every row its prompt")


def read_rated(path: Path) -> dict[str, tuple[list[dict[str, Any]], list[Rated]]]:
    """The rated answers of a JSONL file, grouped by prompt (in file order)."""
    groups: dict[str, tuple[list[dict[str, Any]], list[Rated]]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: invalid JSON ({exc})", "write one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object", "write one JSON object per line")
        key, prompt = _first(row, PROMPT_KEYS)
        if key is None:
            raise DataError(f"{where}: no prompt (keys: {sorted(row)})", f"name it one of {', '.join(PROMPT_KEYS)}")
        messages = _prompt_messages(prompt, f"{where} [{key}]")
        annotator = row.get("annotator") if isinstance(row.get("annotator"), str) else None
        _, listed = _first(row, LIST_KEYS)
        items = listed if isinstance(listed, list) else [row]
        group = groups.setdefault(json.dumps(messages, sort_keys=True), (messages, []))[1]
        for i, item in enumerate(items):
            at = f"{where}" + (f" [answers[{i}]]" if listed is not None else "")
            if not isinstance(item, dict):
                raise DataError(
                    f"{at}: an answer must be an object with its text and rating", 'write {"text", "rating"}'
                )
            answer_key, text = _first(item, ANSWER_KEYS)
            rating_key, rating = _first(item, RATING_KEYS)
            if answer_key is None or not isinstance(text, str) or not text.strip():
                raise DataError(f"{at}: no answer text", f"name it one of {', '.join(ANSWER_KEYS)}")
            if rating_key is None:
                raise DataError(f"{at}: the answer has no rating", f"name it one of {', '.join(RATING_KEYS)}")
            who = item.get("annotator") if isinstance(item.get("annotator"), str) else annotator
            group.append(Rated(text, rating_value(rating, f"{at} [{rating_key}]"), f"{path.name}:{number}", who))
    return groups


def ratings_to_pairs(path: Path, per_prompt: int | None = None, seed: int = 0) -> Converted:
    """Every pair of differently rated answers to one prompt, the better one chosen, margin = the rating gap
    (`per_prompt`: at most that many of a prompt's pairs, drawn at random: a prompt with hundreds of rated answers
    would otherwise give tens of thousands of pairs)."""
    result = Converted()
    rng = random.Random(seed)
    for messages, rated in read_rated(path).values():
        result.prompts += 1
        result.answers += len(rated)
        made = 0
        candidates = [
            (a, b) for a, b in itertools.combinations(rated, 2) if a.rating != b.rating and a.answer != b.answer
        ]
        if per_prompt is not None and len(candidates) > per_prompt:
            candidates = rng.sample(candidates, per_prompt)
        for a, b in candidates:
            better, worse = (a, b) if a.rating > b.rating else (b, a)
            pair: dict[str, Any] = {
                "prompt": messages,
                "chosen": [{"role": "assistant", "content": better.answer}],
                "rejected": [{"role": "assistant", "content": worse.answer}],
                "margin": better.rating - worse.rating,
                "origin": f"{better.source} > {worse.source}",
            }
            if better.annotator and better.annotator == worse.annotator:
                pair["annotator"] = better.annotator
            result.pairs.append(pair)
            made += 1
        if not made:
            result.unpaired.append(str(messages[-1].get("content", ""))[:60])
    return result


def write_pairs(pairs: list[dict[str, Any]], out: Path) -> Path:
    """Write preference pairs as JSONL (atomically): the format `prepare` reads for train.task=reward or dpo."""
    atomic_write_text(out, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return out
