"""Retrieval for the server: one thread embeds every query and request for /v1/embeddings.

The embedding model computes with OpenMP, and each thread that computes keeps a pool of workers; request threads
each embedding would leave a pool each and slow the model thread (see engine.py). So requests hand their texts to
this one thread and wait, as they do with the model thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tuneforge.config import RagConfig
from tuneforge.data.records import Messages
from tuneforge.rag import Index, Source, rag_messages, retrieve_sources
from tuneforge.rag.answer import REFUSAL


class RetrievalService:
    """An index and its embedding model behind the server's routes."""

    def __init__(self, index: Index, cfg: RagConfig) -> None:
        self.index, self.cfg = index, cfg
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-retrieval")
        self._thread.submit(lambda: index.embedder).result()  # load it now: a missing model fails at start
        self.model = index.model

    @classmethod
    def open(cls, folder: Path, cfg: RagConfig) -> RetrievalService:
        """The service over the index in `folder`, retrieving as `cfg` says."""
        return cls(Index(folder), cfg)

    def sources(self, question: str, where: str | None, top_k: int | None) -> tuple[list[Source], str]:
        """The passages for a question (or none and why), as tuneforge ask finds them."""
        cfg = self.cfg if top_k is None else self.cfg.model_copy(update={"top_k": top_k})
        return self._thread.submit(retrieve_sources, question, self.index, cfg, where).result()

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Passage embeddings of `texts` and the tokens they took."""
        embedder = self.index.embedder

        def work() -> tuple[np.ndarray, int]:
            return embedder.embed(texts), sum(embedder.count(t) for t in texts)

        return self._thread.submit(work).result()

    def messages(
        self, messages: Messages, sources: list[Source], count: Callable[[str], int]
    ) -> tuple[Messages, list[Source]]:
        """The conversation with the sources that fit the context budget (`count`: the answering model's tokens)."""
        return rag_messages(messages, sources, count, self.cfg.context_tokens)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


def refusal(why: str) -> str:
    """The answer when nothing retrieved is close enough to the question."""
    return f"{REFUSAL} ({why})"


def footer(sources: list[Source], cited: list[int]) -> str:
    """The sources under an answer: those it cited, or every one it was given when it cited none."""
    shown = [s for s in sources if s.number in cited] or sources
    lines = [f"[{s.number}] {s.where}" + (f" ({s.title})" if s.title else "") for s in shown]
    return "\n\nSources:\n" + "\n".join(lines) if lines else ""
