"""Answering with retrieval: the question's passages, numbered, in the prompt (within a token budget), an answer
that cites them as [1], [2], and "not in the documents" without asking the model when nothing retrieved is similar
enough to the question."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneforge.config import RagConfig
from tuneforge.data.records import Messages
from tuneforge.rag.embed import MIN_SIMILARITY
from tuneforge.rag.retrieve import Index
from tuneforge.rag.store import Hit

SYSTEM = (
    "Answer the question using only the numbered sources. Cite the sources you use with their numbers in brackets, "
    "like [1]. If the sources do not contain the answer, say: {refusal}"
)
REFUSAL = "Not in the documents."
_CITE = re.compile(r"\[(\d{1,3})\]")

Count = Callable[[str], int]  # tokens of a text in the answering model's tokenizer
Generate = Callable[[Messages], str]


@dataclass
class Source:
    """A passage given to the model, as a citation: number, where it is, and the text."""

    number: int
    path: str
    start_line: int
    end_line: int
    title: str | None
    text: str
    score: float
    similarity: float | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """`docs/guide.md:12-30`, or `products.csv#A17` for a table row."""
        if "row" in self.metadata:
            return f"{self.path}#{self.metadata['row']}"
        return f"{self.path}:{self.start_line}" + (f"-{self.end_line}" if self.end_line != self.start_line else "")

    def to_json(self) -> dict[str, Any]:
        """The citation as the server returns it."""
        return {
            "index": self.number,
            "source": self.where,
            "path": self.path,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "title": self.title,
            "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "metadata": self.metadata,
            "text": self.text,
        }


@dataclass
class Answer:
    """The model's answer, the sources it was given, and which of them it cited."""

    text: str
    sources: list[Source]
    cited: list[int]
    refused: bool = False


def retrieve_sources(question: str, index: Index, cfg: RagConfig, where: str | None = None) -> tuple[list[Source], str]:
    """The passages for `question` as numbered sources, or none and the reason when nothing is similar enough."""
    results = index.search(question, cfg.top_k, cfg.retrieval, where, cfg.candidates, cfg.rrf_k)
    if not results.hits:
        return [], "no passage matches the question" + (f" and the filter {where!r}" if where else "")
    best, floor = results.best_similarity, min_similarity(cfg, index.model)
    if floor is not None and best is not None and best < floor:
        return [], f"no passage is similar enough (best {best:.2f} < rag.min_similarity {floor:.2f})"
    return [_source(n, hit) for n, hit in enumerate(results.hits, start=1)], ""


def min_similarity(cfg: RagConfig, model: str) -> float | None:
    """The similarity below which nothing retrieved counts as an answer (None: no floor)."""
    if cfg.min_similarity == "auto":
        return MIN_SIMILARITY.get(model)
    return cfg.min_similarity


def rag_messages(messages: Messages, sources: list[Source], count: Count, budget: int) -> tuple[Messages, list[Source]]:
    """The conversation with the sources that fit in `budget` tokens put before its last user message, and the
    instructions to cite them as the system message (after any system message of the caller's)."""
    used: list[Source] = []
    blocks: list[str] = []
    spent = 0
    for source in sources:
        block = _block(source)
        cost = count(block)
        if spent + cost > budget and used:
            break
        used.append(source)
        blocks.append(block)
        spent += cost
    system = SYSTEM.format(refusal=REFUSAL)
    out: Messages = [dict(m) for m in messages]
    last_user = max(i for i, m in enumerate(out) if m.get("role") == "user")
    context = "\n\n".join(blocks)
    out[last_user] = {"role": "user", "content": f"Sources:\n\n{context}\n\nQuestion: {out[last_user]['content']}"}
    if out and out[0].get("role") == "system":
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{system}"}
    else:
        out.insert(0, {"role": "system", "content": system})
    return out, used


def answer(
    question: str, index: Index, cfg: RagConfig, generate: Generate, count: Count, where: str | None = None
) -> Answer:
    """Retrieve, prompt, generate: the answer to `question` with its cited sources."""
    sources, why = retrieve_sources(question, index, cfg, where)
    if not sources:
        return Answer(f"{REFUSAL} ({why})", [], [], refused=True)
    messages, used = rag_messages([{"role": "user", "content": question}], sources, count, cfg.context_tokens)
    text = generate(messages)
    return Answer(text, used, cited_numbers(text, len(used)))


def cited_numbers(text: str, n_sources: int) -> list[int]:
    """The source numbers an answer cites ([2] and [2][3] alike), in order of first citation."""
    found = [int(m) for m in _CITE.findall(text) if 1 <= int(m) <= n_sources]
    return list(dict.fromkeys(found))


def _block(source: Source) -> str:
    title = f" ({source.title})" if source.title else ""
    return f"[{source.number}] {source.where}{title}\n{source.text}"


def _source(number: int, hit: Hit) -> Source:
    c = hit.chunk
    return Source(number, c.path, c.start_line, c.end_line, c.title, c.text, hit.score, hit.similarity, c.metadata)
