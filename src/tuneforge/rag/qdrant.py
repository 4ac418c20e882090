"""The `Store` protocol over Qdrant, for indexes that outgrow one machine: `rag.store: qdrant` with `rag.store_url`
(a Qdrant server or cluster, e.g. http://qdrant:6333) or, without a URL, Qdrant's local mode in the index folder
(the same client API in-process: what the tests run here).

Each chunk is one point with two vectors: the dense embedding (cosine) and a sparse bag of words for BM25, whose
term weights are BM25's saturated term frequency and whose IDF Qdrant computes itself (`Modifier.IDF`), so keyword
scores stay right as documents come and go. Hybrid fusion stays in tuneforge (`retrieve.fuse`), the same as for the
embedded store. Files and the manifest live in two small collections beside the chunks. A file's chunks are replaced
before its file record is written, so an interrupted run leaves a file whose record is old or missing, which the next
run replaces whole.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import RetrievalError
from tuneforge.rag.chunk import Chunk
from tuneforge.rag.filters import BUILTIN_FIELDS, Compare, Filter, Logic
from tuneforge.rag.store import body_of, terms_of

K1, B, AVERAGE_TOKENS = 1.2, 0.75, 200.0  # BM25's constants; the length norm uses a fixed average chunk length
_META_ID = 1


class QdrantStore:
    """A Qdrant collection set named `prefix`_chunks, _files, _meta (see the module docstring)."""

    def __init__(self, folder: Path, url: str | None, prefix: str = "tuneforge", create: bool = False) -> None:
        from qdrant_client import QdrantClient

        if url is None and not create and not (folder / "qdrant").is_dir():
            raise RetrievalError(f"no index at {folder}", "build it with `tuneforge index <config.yaml>`")
        self.folder = folder
        self.client = QdrantClient(url=url) if url else QdrantClient(path=str(folder / "qdrant"))
        self.names = {part: f"{prefix}_{part}" for part in ("chunks", "files", "meta")}
        self._dim: int | None = None

    def close(self) -> None:
        self.client.close()

    def drop(self) -> None:
        """Delete the index's collections (a rebuild on a server, where deleting the folder deletes nothing)."""
        for name in self.names.values():
            if self.client.collection_exists(name):
                self.client.delete_collection(name)

    def _ensure(self, dim: int | None = None) -> None:
        from qdrant_client import models

        for part in ("files", "meta"):
            if not self.client.collection_exists(self.names[part]):
                self.client.create_collection(self.names[part], vectors_config={})
        if dim is not None and not self.client.collection_exists(self.names["chunks"]):
            self.client.create_collection(
                self.names["chunks"],
                vectors_config={"dense": models.VectorParams(size=dim, distance=models.Distance.COSINE)},
                sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )

    def manifest(self) -> dict[str, Any] | None:
        if not self.client.collection_exists(self.names["meta"]):
            return None
        found = self.client.retrieve(self.names["meta"], [_META_ID], with_payload=True)
        return json.loads(found[0].payload["manifest"]) if found and found[0].payload else None

    def set_manifest(self, manifest: dict[str, Any]) -> None:
        from qdrant_client import models

        self._ensure(int(manifest["embedder"]["dim"]))
        fields = (self.manifest() or {}).get("fields", [])
        manifest = {**manifest, "fields": fields}
        point = models.PointStruct(id=_META_ID, vector={}, payload={"manifest": json.dumps(manifest)})
        self.client.upsert(self.names["meta"], [point])

    def files(self) -> dict[str, str]:
        if not self.client.collection_exists(self.names["files"]):
            return {}
        return {p["path"]: p["hash"] for p in self._scroll(self.names["files"])}

    def replace_file(self, path: str, digest: str, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """The file's chunks and vectors instead of those it had; its record last (see the module docstring)."""
        from qdrant_client import models

        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors for {path}")
        self._delete_chunks(path)
        points = [
            models.PointStruct(
                id=_chunk_id(path, i), vector={"dense": v.tolist(), "bm25": _sparse(c)}, payload=_payload(c)
            )
            for i, (c, v) in enumerate(zip(chunks, vectors, strict=True))
        ]
        if points:
            self.client.upsert(self.names["chunks"], points)
        self._add_fields({k for c in chunks for k in c.metadata})
        record = models.PointStruct(
            id=_chunk_id(path, -1), vector={}, payload={"path": path, "hash": digest, "chunks": len(chunks)}
        )
        self.client.upsert(self.names["files"], [record])

    def delete_files(self, paths: Iterable[str]) -> None:
        from qdrant_client import models

        for path in paths:
            self._delete_chunks(path)
            self.client.delete(self.names["files"], models.PointIdsList(points=[_chunk_id(path, -1)]))

    def dense(self, vector: np.ndarray, k: int, where: Filter | None = None) -> list[tuple[int, float]]:
        return self._search(np.asarray(vector, np.float32).tolist(), "dense", k, where)

    def keyword(self, query: str, k: int, where: Filter | None = None) -> list[tuple[int, float]]:
        from qdrant_client import models

        words = terms_of(query)
        if not words:
            return []
        indices = sorted({_term_id(w) for w in words})
        return self._search(models.SparseVector(indices=indices, values=[1.0] * len(indices)), "bm25", k, where)

    def chunks(self, ids: list[int]) -> dict[int, Chunk]:
        if not ids:
            return {}
        found = self.client.retrieve(self.names["chunks"], ids, with_payload=True)
        return {int(p.id): _chunk(p.payload or {}) for p in found}

    def metadata_fields(self) -> set[str]:
        return set((self.manifest() or {}).get("fields", []))

    def stats(self) -> dict[str, int]:
        if not self.client.collection_exists(self.names["chunks"]):
            return {"files": len(self.files()), "chunks": 0, "tokens": 0, "bytes": self._size()}
        tokens = sum(int(p.get("tokens", 0)) for p in self._scroll(self.names["chunks"]))
        chunks = self.client.count(self.names["chunks"]).count
        return {"files": len(self.files()), "chunks": chunks, "tokens": tokens, "bytes": self._size()}

    def _search(self, query: Any, using: str, k: int, where: Filter | None) -> list[tuple[int, float]]:
        if not self.client.collection_exists(self.names["chunks"]):
            return []
        found = self.client.query_points(
            self.names["chunks"], query=query, using=using, limit=k, query_filter=_qdrant_filter(where)
        )
        return [(int(p.id), float(p.score)) for p in found.points]

    def _delete_chunks(self, path: str) -> None:
        from qdrant_client import models

        if self.client.collection_exists(self.names["chunks"]):
            match = models.FieldCondition(key="path", match=models.MatchValue(value=path))
            self.client.delete(self.names["chunks"], models.FilterSelector(filter=models.Filter(must=[match])))

    def _add_fields(self, fields: set[str]) -> None:
        manifest = self.manifest() or {}
        known = set(manifest.get("fields", []))
        if fields - known:
            from qdrant_client import models

            manifest["fields"] = sorted(known | fields)
            point = models.PointStruct(id=_META_ID, vector={}, payload={"manifest": json.dumps(manifest)})
            self.client.upsert(self.names["meta"], [point])

    def _scroll(self, collection: str) -> Iterable[dict[str, Any]]:
        offset = None
        while True:
            points, offset = self.client.scroll(collection, limit=1000, offset=offset, with_payload=True)
            yield from (p.payload or {} for p in points)
            if offset is None:
                return

    def _size(self) -> int:
        root = self.folder / "qdrant"
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def _chunk_id(path: str, number: int) -> int:
    """A stable 63-bit id for a file's n-th chunk (-1: the file's record)."""
    return int.from_bytes(hashlib.sha256(f"{path}\0{number}".encode()).digest()[:8], "big") >> 1


def _term_id(term: str) -> int:
    return zlib.crc32(term.encode("utf-8"))


def _sparse(chunk: Chunk) -> Any:
    """BM25's term weights of a chunk (IDF is applied by Qdrant at query time)."""
    from qdrant_client import models

    counts = Counter(_term_id(t) for t in terms_of(body_of(chunk), unique=False))
    length = sum(counts.values()) or 1
    norm = K1 * (1 - B + B * length / AVERAGE_TOKENS)
    indices = sorted(counts)
    return models.SparseVector(indices=indices, values=[counts[i] * (K1 + 1) / (counts[i] + norm) for i in indices])


def _payload(chunk: Chunk) -> dict[str, Any]:
    return {
        "path": chunk.path,
        "start_line": chunk.start_line,
        "end_line": chunk.end_line,
        "title": chunk.title,
        "text": chunk.text,
        "tokens": chunk.tokens,
        "meta": chunk.metadata,
    }


def _chunk(p: dict[str, Any]) -> Chunk:
    return Chunk(p["text"], p["path"], p["start_line"], p["end_line"], p.get("title"), p.get("meta") or {}, p["tokens"])


def _qdrant_filter(tree: Filter | None) -> Any:
    """A filter tree as Qdrant's Filter (must / should / must_not of field conditions)."""
    from qdrant_client import models

    if tree is None:
        return None
    if isinstance(tree, Logic):
        parts = [_qdrant_filter(p) for p in tree.parts]
        kind = {"and": "must", "or": "should", "not": "must_not"}[tree.op]
        return models.Filter(**{kind: parts})
    return _condition(tree)


def _condition(c: Compare) -> Any:
    from qdrant_client import models

    key = c.field if c.field in BUILTIN_FIELDS else f"meta.{c.field}"
    if c.op in ("in", "notin"):
        match = models.FieldCondition(key=key, match=models.MatchAny(any=list(c.value)))
        return models.Filter(must=[match]) if c.op == "in" else models.Filter(must_not=[match])
    if c.op == "like":
        raise RetrievalError("'like' filters are not supported by the Qdrant store", "filter with = or in instead")
    if c.value is None:
        empty = models.IsNullCondition(is_null=models.PayloadField(key=key))
        return models.Filter(must=[empty]) if c.op == "=" else models.Filter(must_not=[empty])
    if c.op in ("=", "!="):
        if isinstance(c.value, float):
            cond = models.FieldCondition(key=key, range=models.Range(gte=c.value, lte=c.value))
        else:
            cond = models.FieldCondition(key=key, match=models.MatchValue(value=c.value))
        return models.Filter(must=[cond]) if c.op == "=" else models.Filter(must_not=[cond])
    bound = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}[c.op]
    return models.Filter(must=[models.FieldCondition(key=key, range=models.Range(**{bound: c.value}))])
