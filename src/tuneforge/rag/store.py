"""The index store: chunks with their metadata, a BM25 keyword index and the vectors, behind one `Store` protocol.

The embedded default is one SQLite file (chosen by measurement, BENCHMARKS.md "RAG"): chunks, metadata (JSON) and
vectors (float32 blobs) in one table, SQLite's FTS5 for BM25, and exact dense search as one matrix product over the
vectors held in memory (100k chunks x 384 dimensions: milliseconds, and recall 1.0 where an approximate index loses
some). A file's chunks are replaced in one transaction, so a killed `tuneforge index` leaves every file either as it
was or fully re-indexed, never a chunk without its vector; WAL lets `serve` read while `index` writes, and a reader
sees a writer's commit at its next query.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from tuneforge.errors import RetrievalError
from tuneforge.rag.chunk import Chunk
from tuneforge.rag.filters import Filter, to_sql

INDEX_FILE = "index.sqlite"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, hash TEXT NOT NULL, chunks INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
    title TEXT, text TEXT NOT NULL, metadata TEXT NOT NULL, tokens INTEGER NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
"""
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*[a-z0-9][A-Z][A-Za-z0-9_]*\b")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class Hit:
    """A retrieved chunk, its store id and its score (cosine similarity, BM25, or fused)."""

    id: int
    chunk: Chunk
    score: float
    similarity: float | None = None  # cosine similarity to the question, when the dense search saw it


class Store(Protocol):
    """What indexing and retrieval use of a store."""

    def manifest(self) -> dict[str, Any] | None: ...

    def set_manifest(self, manifest: dict[str, Any]) -> None: ...

    def files(self) -> dict[str, str]: ...

    def replace_file(self, path: str, digest: str, chunks: list[Chunk], vectors: np.ndarray) -> None: ...

    def delete_files(self, paths: Iterable[str]) -> None: ...

    def dense(self, vector: np.ndarray, k: int, where: Filter | None = None) -> list[tuple[int, float]]: ...

    def keyword(self, query: str, k: int, where: Filter | None = None) -> list[tuple[int, float]]: ...

    def chunks(self, ids: list[int]) -> dict[int, Chunk]: ...

    def metadata_fields(self) -> set[str]: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class SqliteStore:
    """The embedded store: one SQLite file (see the module docstring)."""

    def __init__(self, folder: Path, create: bool = False) -> None:
        path = folder / INDEX_FILE
        if not create and not path.is_file():
            raise RetrievalError(f"no index at {folder}", "build it with `tuneforge index <config.yaml>`")
        folder.mkdir(parents=True, exist_ok=True)
        self.path = path
        # IMMEDIATE: a write transaction takes the write lock at BEGIN, so two writers wait for each other instead of
        # one failing with "database is locked" halfway (seen with deferred BEGIN by the store survey, 2026-12-07)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level="IMMEDIATE")
        self._lock = threading.Lock()  # one connection shared by a server's threads
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise RetrievalError(
                f"{path} is not a readable index: {exc}", "delete the folder and index again"
            ) from None
        self._vectors: tuple[int, np.ndarray, np.ndarray] | None = None  # (data_version, ids, matrix)
        self._fields: tuple[int, set[str]] | None = None
        self._writes = 0

    def close(self) -> None:
        self._db.close()

    def manifest(self) -> dict[str, Any] | None:
        row = self._query("SELECT value FROM meta WHERE key = 'manifest'")
        return json.loads(row[0][0]) if row else None

    def set_manifest(self, manifest: dict[str, Any]) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('manifest', ?)", (json.dumps(manifest),))

    def files(self) -> dict[str, str]:
        return dict(self._query("SELECT path, hash FROM files"))

    def replace_file(self, path: str, digest: str, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """The file's chunks and vectors, instead of those it had, in one transaction."""
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors for {path}")
        with self._lock, self._db:
            self._delete(path)
            for chunk, vector in zip(chunks, vectors, strict=True):
                cursor = self._db.execute(
                    "INSERT INTO chunks (path, start_line, end_line, title, text, metadata, tokens, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (chunk.path, chunk.start_line, chunk.end_line, chunk.title, chunk.text,
                     json.dumps(chunk.metadata, ensure_ascii=False), chunk.tokens,
                     np.asarray(vector, np.float32).tobytes()),
                )  # fmt: skip
                self._db.execute(
                    "INSERT INTO chunks_fts (rowid, body) VALUES (?, ?)", (cursor.lastrowid, body_of(chunk))
                )
            self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?)", (path, digest, len(chunks)))
            self._writes += 1

    def delete_files(self, paths: Iterable[str]) -> None:
        with self._lock, self._db:
            for path in paths:
                self._delete(path)
                self._db.execute("DELETE FROM files WHERE path = ?", (path,))
            self._writes += 1

    def _delete(self, path: str) -> None:
        ids = [i for (i,) in self._db.execute("SELECT id FROM chunks WHERE path = ?", (path,))]
        self._db.executemany("DELETE FROM chunks_fts WHERE rowid = ?", [(i,) for i in ids])
        self._db.execute("DELETE FROM chunks WHERE path = ?", (path,))

    def dense(self, vector: np.ndarray, k: int, where: Filter | None = None) -> list[tuple[int, float]]:
        """The k chunks most similar to `vector` (exact: one matrix product), among those `where` admits."""
        ids, matrix = self._matrix()
        if where is not None:
            condition = to_sql(where)
            allowed = np.array(
                [i for (i,) in self._query(f"SELECT id FROM chunks WHERE {condition.sql}", condition.params)]
            )
            keep = np.isin(ids, allowed)
            ids, matrix = ids[keep], matrix[keep]
        if not len(ids):
            return []
        with threadpool_limits(1, "blas"):  # one matrix-vector product: a second BLAS thread costs more than it saves
            scores = matrix @ np.asarray(vector, np.float32)
        k = min(k, len(ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(ids[i]), float(scores[i])) for i in top]

    def keyword(self, query: str, k: int, where: Filter | None = None) -> list[tuple[int, float]]:
        """The k best BM25 matches of the query's words (any of them), among the chunks `where` admits."""
        words = terms_of(query)
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
        sql = "SELECT chunks_fts.rowid, bm25(chunks_fts) FROM chunks_fts"
        params: list[Any] = [match]
        if where is not None:
            condition = to_sql(where)
            sql += " JOIN chunks ON chunks.id = chunks_fts.rowid WHERE chunks_fts MATCH ? AND " + f"({condition.sql})"
            params += condition.params
        else:
            sql += " WHERE chunks_fts MATCH ?"
        rows = self._query(sql + " ORDER BY bm25(chunks_fts) LIMIT ?", [*params, k])
        return [(int(i), -float(score)) for i, score in rows]  # FTS5's bm25() is lower-is-better

    def chunks(self, ids: list[int]) -> dict[int, Chunk]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._query(
            f"SELECT id, text, path, start_line, end_line, title, metadata, tokens FROM chunks WHERE id IN ({marks})",
            ids,
        )
        return {r[0]: Chunk(r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7]) for r in rows}

    def metadata_fields(self) -> set[str]:
        """The metadata keys of the chunks (read again only after a write: the query reads every chunk)."""
        version = self._version()
        if self._fields is None or self._fields[0] != version:
            rows = self._query("SELECT DISTINCT key FROM chunks, json_each(chunks.metadata)")
            self._fields = (version, {r[0] for r in rows})
        return self._fields[1]

    def stats(self) -> dict[str, int]:
        files, chunks, tokens = self._query("SELECT (SELECT count(*) FROM files), count(*), total(tokens) FROM chunks")[
            0
        ]
        return {"files": int(files), "chunks": int(chunks), "tokens": int(tokens), "bytes": self._size()}

    def _size(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(INDEX_FILE + "*"))

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, list(params)).fetchall()

    def _version(self) -> int:
        """Changes whenever this connection or another has written since (SQLite's data_version counts others')."""
        return int(self._query("PRAGMA data_version")[0][0]) * 1_000_003 + self._writes

    def _matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Every vector as one matrix, read again when this or another connection has written since."""
        version = self._version()
        if self._vectors is None or self._vectors[0] != version:
            rows = self._query("SELECT id, vector FROM chunks ORDER BY id")
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            blob = b"".join(r[1] for r in rows)
            matrix = np.frombuffer(blob, np.float32).reshape(len(rows), -1) if rows else np.zeros((0, 1), np.float32)
            self._vectors = (version, ids, matrix)
        return self._vectors[1], self._vectors[2]


def body_of(chunk: Chunk) -> str:
    """What BM25 indexes: the title and text, plus camelCase identifiers split into their words."""
    text = f"{chunk.title or ''}\n{chunk.text}"
    split = " ".join(_CAMEL.sub(" ", m.group(0)) for m in _IDENTIFIER.finditer(text))
    return f"{text}\n{split}" if split else text


def terms_of(text: str, unique: bool = True) -> list[str]:
    """The lower-cased words of a text, camelCase identifiers also as their parts (once each when `unique`)."""
    words = _WORD.findall(text) + [p for m in _IDENTIFIER.finditer(text) for p in _CAMEL.sub(" ", m.group(0)).split()]
    lowered = [w.lower() for w in words]
    return list(dict.fromkeys(lowered)) if unique else lowered
