"""The prompts of each approach of the bake-off, built from the same test examples.

Every prompt is written out (compare/prompts.jsonl) and shown in the report: no approach gets hidden prompt
engineering. The base model's approaches (prompt, fewshot, rag) get compare.instructions as their system message
when an example carries none; the fine-tuned ones get the example's own messages, as they saw them in training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from tuneforge.config import Approach
from tuneforge.data.records import Messages
from tuneforge.errors import RunError
from tuneforge.rag.answer import REFUSAL, Source, rag_messages

# Which model answers each approach: the base model, the run's tuned model, or the RAFT-tuned one.
MODEL_OF: dict[str, str] = {
    "prompt": "base",
    "fewshot": "base",
    "rag": "base",
    "finetune": "finetune",
    "finetune+rag": "raft",
}
RETRIEVES: frozenset[str] = frozenset({"rag", "finetune+rag"})


class Retriever(Protocol):
    """Passages for a question (the RAG stage's index in use; a fake in tests)."""

    def search(self, question: str, k: int) -> tuple[list[Source], str]:
        """Up to `k` numbered sources, or none and the reason (nothing similar enough)."""
        ...


@dataclass
class Prompt:
    """One approach's prompt for one test example: the conversation the model gets, or a fixed answer given without
    asking the model (RAG's refusal when nothing retrieved is similar enough), and the sources it was given."""

    messages: Messages
    answer: str | None = None
    sources: list[str] | None = None  # where each passage came from (file:lines)
    retrieve_seconds: float = 0.0
    retrieve_cpu_seconds: float = 0.0
    context: str = ""  # the passages' texts (to check whether they hold the answer)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": self.messages}
        if self.answer is not None:
            out["answer"] = self.answer
        if self.sources is not None:
            out["sources"] = self.sources
        return out


def question_of(messages: Messages) -> str:
    """The last user message: what retrieval and few-shot selection look for ("" when there is none)."""
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")


def with_instructions(messages: Messages, instructions: str | None) -> Messages:
    """The conversation with `instructions` as its system message when it has none."""
    if not instructions or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": instructions}, *messages]


class FewShot:
    """The k training examples most similar to a question (TF-IDF of character 2-4-grams, cosine): language-neutral,
    needs no model, and picks examples that share the question's words and names."""

    def __init__(self, train_prompts: list[Messages], train_answers: list[str], k: int) -> None:
        self.prompts, self.answers, self.k = train_prompts, train_answers, k
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
        try:
            self.matrix = self.vectorizer.fit_transform([question_of(p) for p in train_prompts])
        except ValueError:  # no word in any training question: nothing to be similar to
            raise RunError(
                "few-shot selection found no text in the training examples' user messages",
                "check the train split's user messages, or leave fewshot out of compare.approaches",
            ) from None

    def messages(self, prompt: Messages, instructions: str | None) -> Messages:
        """The prompt with its k nearest training examples as earlier turns, the nearest last (next to the question)."""
        scores = (self.matrix @ self.vectorizer.transform([question_of(prompt)]).T).toarray().ravel()
        nearest = np.argsort(-scores, kind="stable")[: self.k][::-1]
        system = [m for m in prompt[:1] if m.get("role") == "system"]
        shots: Messages = []
        for i in nearest:
            turns = [m for m in self.prompts[i] if m.get("role") != "system"]
            shots += [*turns, {"role": "assistant", "content": self.answers[i]}]
        rest = prompt[len(system) :]
        return with_instructions([*system, *shots, *rest], instructions)


def rag_prompt(prompt: Messages, retriever: Retriever, top_k: int, count: Callable[[str], int], budget: int) -> Prompt:
    """The prompt with the question's passages (as `tuneforge ask` and the server build it), or the refusal."""
    cpu, start = time.process_time(), time.perf_counter()
    sources, why = retriever.search(question_of(prompt), top_k)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    if not sources:
        return Prompt(list(prompt), f"{REFUSAL} ({why})", [], seconds, cpu_seconds)
    messages, used = rag_messages(prompt, sources, count, budget)
    context = "\n".join(s.text for s in used)
    return Prompt(messages, None, [s.where for s in used], seconds, cpu_seconds, context)


def build_prompts(
    approach: Approach,
    prompts: list[Messages],
    instructions: str | None,
    fewshot: FewShot | None,
    rag: Callable[[Messages], Prompt] | None,
) -> list[Prompt]:
    """Every test example's prompt for one approach (`fewshot` and `rag` given when the approach needs them)."""
    base = MODEL_OF[approach] == "base"
    own = [with_instructions(p, instructions) if base else list(p) for p in prompts]
    if approach == "fewshot":
        assert fewshot is not None
        return [Prompt(fewshot.messages(p, instructions)) for p in prompts]
    if approach in RETRIEVES:
        assert rag is not None
        return [rag(p) for p in own]
    return [Prompt(p) for p in own]
