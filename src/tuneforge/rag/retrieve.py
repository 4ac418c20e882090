"""Retrieval: dense (cosine over the vectors), keyword (BM25) or hybrid (both, fused by reciprocal-rank fusion),
after metadata filters, over an index opened with the embedding model that built it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tuneforge.errors import RetrievalError
from tuneforge.rag.embed import Embedder, load_embedder
from tuneforge.rag.filters import Filter, parse_filter
from tuneforge.rag.store import Hit, Store
from tuneforge.rag.stores import open_store

Mode = Literal["hybrid", "dense", "keyword"]


@dataclass
class Results:
    """The hits of one search, best first, and the best cosine similarity any passage had (None: not searched)."""

    hits: list[Hit]
    best_similarity: float | None


class Index:
    """An index on disk: its store, its manifest, and (loaded on first use) the embedding model that built it."""

    def __init__(self, folder: str | Path, embedder: Embedder | None = None) -> None:
        self.folder = Path(folder)
        self.store: Store = open_store(self.folder)
        manifest = self.store.manifest()
        if manifest is None:
            raise RetrievalError(f"{self.folder} holds no finished index", "run `tuneforge index <config.yaml>`")
        self.manifest = manifest
        self._embedder = embedder
        if embedder is not None:
            self._check(embedder)

    @property
    def model(self) -> str:
        """The embedding model's name, as the manifest records it."""
        return str(self.manifest["embedder"]["model"])

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.model)
            self._check(self._embedder)
        return self._embedder

    def _check(self, embedder: Embedder) -> None:
        recorded = self.manifest["embedder"]
        if (embedder.name, embedder.dim) != (recorded["model"], recorded["dim"]):
            raise RetrievalError(
                f"the index at {self.folder} was built with the embedding model {recorded['model']!r} "
                f"({recorded['dim']} dimensions); a query embedded by {embedder.name!r} ({embedder.dim}) cannot be "
                "compared with it",
                f"query with rag.embedding_model: {recorded['model']}, or index again with the new model (--rebuild)",
            )

    def search(
        self,
        query: str,
        k: int = 4,
        mode: Mode = "hybrid",
        where: str | None = None,
        candidates: int = 50,
        rrf_k: int = 60,
    ) -> Results:
        """The k best chunks for `query` by `mode`, among those the filter `where` admits."""
        condition = parse_filter(where, self.store.metadata_fields()) if where else None
        dense = self._dense(query, max(k, candidates), condition) if mode != "keyword" else []
        keyword = self.store.keyword(query, max(k, candidates), condition) if mode != "dense" else []
        similarity = dict(dense)
        if mode == "dense":
            ranked = dense[:k]
        elif mode == "keyword":
            ranked = keyword[:k]
        else:
            ranked = fuse([dense, keyword], rrf_k)[:k]
        chunks = self.store.chunks([i for i, _ in ranked])
        hits = [Hit(i, chunks[i], score, similarity.get(i)) for i, score in ranked if i in chunks]
        return Results(hits, dense[0][1] if dense else None)

    def _dense(self, query: str, k: int, condition: Filter | None) -> list[tuple[int, float]]:
        vector = self.embedder.embed([query], query=True)[0]
        return self.store.dense(vector, k, condition)


def fuse(rankings: list[list[tuple[int, float]]], rrf_k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: each id scores the sum of 1 / (rrf_k + rank) over the rankings it is in (rank from
    1); ties keep the order of first appearance."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (item, _) in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])
