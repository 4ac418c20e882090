"""Collecting preferences: an annotation session over a prompt file, shared by the terminal (`tuneforge annotate`)
and the web UI.

Each prompt gets two answers sampled once from the model (seeded by the prompt, kept in <out>.candidates.jsonl), so
every annotator judges the same pair and their judgements can be compared. Which answer shows on the left is drawn
per annotator and prompt (position bias spreads out). Every judgement - left, right, tie, both bad, skip - goes to
<out>.judgements.jsonl; a decisive one also goes to <out> itself as a preference pair (prompt, chosen, rejected,
annotator, time, model, sampling): the file `prepare` reads for train.task=reward or dpo. Lines are appended under
a file lock, one write each, so several annotators (terminals or browsers) can share the files, and a session
resumes where its annotator stopped.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.records import Messages
from tuneforge.errors import DataError

# (prompt, seed) -> two different answers, or fewer when the model keeps giving the same one
Sampler = Callable[[Messages, int], list[str]]
JUDGEMENTS = ("left", "right", "tie", "both_bad", "skip")
DECISIVE = ("a", "b")


@dataclass
class Item:
    """A prompt to judge, with its id (a hash of the prompt) and its two answers once sampled."""

    id: str
    prompt: Messages
    answers: list[str] = field(default_factory=list)


def item_id(prompt: Messages) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def read_prompts(path: Path) -> list[Item]:
    """The prompts of a file: JSONL rows with messages (a final answer is dropped) or prompt, or one per line of a
    text file; the same prompt twice counts once."""
    if not path.is_file():
        raise DataError(f"prompt file {path} does not exist", "give a JSONL or text file of prompts")
    items: dict[str, Item] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        prompt = _prompt(line, f"{path}:{number}", path.suffix in (".jsonl", ".json"))
        items.setdefault(item_id(prompt), Item(item_id(prompt), prompt))
    if not items:
        raise DataError(f"{path} holds no prompts", "write one prompt per line (or JSONL rows with messages/prompt)")
    return list(items.values())


def _prompt(line: str, where: str, structured: bool) -> Messages:
    if not structured:
        return [{"role": "user", "content": line.strip()}]
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{where}: invalid JSON ({exc})", "write one JSON object per line") from None
    messages = row.get("messages") if isinstance(row, dict) else None
    if isinstance(messages, list) and messages:
        return messages[:-1] if messages[-1].get("role") == "assistant" and len(messages) > 1 else messages
    if isinstance(row, dict) and isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return [{"role": "user", "content": row["prompt"]}]
    raise DataError(
        f"{where}: no prompt (keys: {sorted(row) if isinstance(row, dict) else row!r:.40})",
        'write {"messages": [...]} or {"prompt": "..."}',
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):  # a line cut short by a kill is dropped
            rows.append(json.loads(line))
    return rows


class Annotation:
    """One preference file being filled from one prompt file by one model."""

    def __init__(self, prompts: Path, out: Path, sampler: Sampler, model: str, sampling: dict[str, Any]) -> None:
        self.items = read_prompts(prompts)
        self.out = out
        self.candidates = out.with_name(out.stem + ".candidates.jsonl")
        self.judgements = out.with_name(out.stem + ".judgements.jsonl")
        self.sampler, self.model, self.sampling = sampler, model, sampling
        out.parent.mkdir(parents=True, exist_ok=True)

    def _answers(self, item: Item) -> list[str]:
        """The item's two answers: sampled once, then read back (under the lock: one sampling for everyone)."""
        with _locked(self.candidates):
            for row in _rows(self.candidates):
                if row.get("item") == item.id:
                    return list(row["answers"])
            answers = self.sampler(item.prompt, int(item.id[:8], 16))
            _append(
                self.candidates,
                {
                    "item": item.id,
                    "prompt": item.prompt,
                    "answers": answers,
                    "model": self.model,
                    "sampling": self.sampling,
                },
            )
            return answers

    def judged(self, annotator: str) -> set[str]:
        """The items `annotator` has judged (skips included)."""
        return {r["item"] for r in _rows(self.judgements) if r.get("annotator") == annotator}

    def next_item(self, annotator: str) -> Item | None:
        """The first item `annotator` has not judged, its answers sampled; None when all are done. An item whose two
        answers came out the same is passed over (recorded as such)."""
        done = self.judged(annotator)
        for item in self.items:
            if item.id in done:
                continue
            item.answers = self._answers(item)
            if len(item.answers) == 2 and item.answers[0] != item.answers[1]:
                return item
            self._record(annotator, item, "same_answers")
        return None

    def left_first(self, annotator: str, item: Item) -> bool:
        """Whether answer a shows on the left for this annotator (drawn per annotator and item, stable)."""
        return hashlib.sha256(f"{annotator}\0{item.id}".encode()).digest()[0] % 2 == 0

    def shown(self, annotator: str, item: Item) -> tuple[str, str]:
        """The item's answers as `annotator` sees them: (left, right)."""
        a, b = item.answers
        return (a, b) if self.left_first(annotator, item) else (b, a)

    def record(self, annotator: str, item: Item, judgement: str) -> None:
        """Save a judgement given on the screen (left, right, tie, both_bad, skip); a decisive one becomes a pair."""
        if judgement not in JUDGEMENTS:
            raise DataError(f"unknown judgement {judgement!r}", f"give one of {', '.join(JUDGEMENTS)}")
        if not annotator.strip():
            raise DataError("the annotator has no name", "pass --annotator NAME (it tells annotators apart)")
        first = self.left_first(annotator, item)
        choice = {"left": "a" if first else "b", "right": "b" if first else "a"}.get(judgement, judgement)
        self._record(annotator, item, choice)

    def _record(self, annotator: str, item: Item, choice: str) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        row = {"item": item.id, "annotator": annotator, "judgement": choice, "time": now}
        with _locked(self.judgements):
            _append(self.judgements, row)
            if choice in DECISIVE:
                chosen, rejected = item.answers if choice == "a" else item.answers[::-1]
                _append(
                    self.out,
                    {
                        "prompt": item.prompt,
                        "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}],
                        "annotator": annotator,
                        "time": now,
                        "model": self.model,
                        "sampling": self.sampling,
                        "item": item.id,
                    },
                )

    def progress(self, annotator: str) -> tuple[int, int]:
        """(items judged by `annotator`, items in all)."""
        ids = {item.id for item in self.items}
        return len(self.judged(annotator) & ids), len(ids)


def summary(judgements: Path) -> dict[str, Any]:
    """Per annotator: their judgements by kind; per pair of annotators: the prompts both judged (skips left out),
    the share judged alike and Cohen's kappa of their choices (a, b, tie, both_bad) on them."""
    latest: dict[tuple[str, str], str] = {}  # (annotator, item) -> their last word on it
    for row in _rows(judgements):
        latest[row["annotator"], row["item"]] = row["judgement"]
    annotators = sorted({a for a, _ in latest})
    counts: dict[str, dict[str, int]] = {a: {} for a in annotators}
    for (annotator, _), choice in latest.items():
        counts[annotator][choice] = counts[annotator].get(choice, 0) + 1
    pairs = [(a, b) for i, a in enumerate(annotators) for b in annotators[i + 1 :]]
    return {"annotators": counts, "agreement": [agreement(latest, a, b) for a, b in pairs]}


def agreement(latest: dict[tuple[str, str], str], first: str, second: str) -> dict[str, Any]:
    """How two annotators judged the prompts both gave a choice on: items, share alike, Cohen's kappa (None when
    only one kind of choice occurs: kappa is undefined there)."""
    from sklearn.metrics import cohen_kappa_score

    passed = ("skip", "same_answers")
    both = sorted(
        item
        for (who, item), choice in latest.items()
        if who == first and choice not in passed and latest.get((second, item), "skip") not in passed
    )
    x, y = [latest[first, i] for i in both], [latest[second, i] for i in both]
    kappa = float(cohen_kappa_score(x, y)) if both and len(set(x) | set(y)) > 1 else None
    alike = sum(a == b for a, b in zip(x, y, strict=True))
    return {
        "annotators": [first, second],
        "items": len(both),
        "agreement": round(alike / len(both), 4) if both else None,
        "kappa": round(kappa, 4) if kappa is not None else None,
    }
