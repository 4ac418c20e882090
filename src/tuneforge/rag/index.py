"""`tuneforge index`: sources -> chunks -> vectors -> the store, again only for what changed.

Each document (a file, or a table row) is keyed by its path (`docs/guide.md`, `products.csv#A17`) and its content
hash. A second run re-chunks and re-embeds only new and changed documents, drops deleted ones, and says so; a run
with another chunk size re-chunks everything; another embedding model is refused (its vectors would not be
comparable) unless the index is rebuilt. Documents are written a group at a time, each in its own transaction, so a
killed run keeps what it finished and the next run does the rest.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tuneforge.config import RagConfig
from tuneforge.data.files import DATA_SUFFIXES, Row, Skipped, read_rows
from tuneforge.data.records import Issue
from tuneforge.errors import ConfigError, RetrievalError
from tuneforge.rag.chunk import Chunk, chunk_document, chunk_row
from tuneforge.rag.code import CODE, chunk_code
from tuneforge.rag.embed import Embedder, embed_all, load_embedder
from tuneforge.rag.qdrant import QdrantStore
from tuneforge.rag.store import SCHEMA_VERSION, Store
from tuneforge.rag.stores import open_store

Log = Callable[[str], None]
WRITE_GROUP = 256  # chunks embedded and written together: a kill loses at most this much work


@dataclass
class Document:
    """One thing to index: a file's text or a table row's, its key in the index and its metadata."""

    key: str
    text: str
    suffix: str
    row: str | None = None  # the row id of a table row
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8") + repr(sorted(self.metadata.items())).encode()).hexdigest()


@dataclass
class IndexSummary:
    """What `tuneforge index` did."""

    index_dir: Path
    embedder: str
    documents: int = 0
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    chunks_written: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        """The summary a person reads after indexing."""
        rate = self.chunks_written / self.embed_seconds if self.embed_seconds else 0.0
        lines = [
            f"indexed {self.documents} documents into {self.index_dir} ({self.embedder}): "
            f"{len(self.added)} new, {len(self.changed)} changed, {len(self.deleted)} deleted, "
            f"{self.unchanged} unchanged",
            f"{self.chunks_written} chunks embedded in {self.embed_seconds:.1f}s ({rate:.1f} chunks/s); whole run "
            f"{self.seconds:.1f}s",
            f"index now: {self.stats.get('files', 0)} documents, {self.stats.get('chunks', 0)} chunks, "
            f"{self.stats.get('tokens', 0)} tokens, {self.stats.get('bytes', 0) / 1e6:.1f} MB on disk",
        ]
        for name, paths in (("new", self.added), ("changed", self.changed), ("deleted", self.deleted)):
            if paths and len(paths) <= 20:
                lines.append(f"{name}: {', '.join(paths)}")
        if self.skipped:
            reasons = Counter(why.split(" (")[0] for _, why in self.skipped)
            lines.append(f"skipped {len(self.skipped)} files: " + ", ".join(f"{n} {w}" for w, n in reasons.items()))
            lines += [f"  {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


def build_index(cfg: RagConfig, index_dir: Path, log: Log = print, rebuild: bool = False) -> IndexSummary:
    """Index cfg.sources into `index_dir`, re-embedding only what changed since the last run."""
    started = time.perf_counter()
    if not cfg.sources:
        raise ConfigError("rag.sources is empty: nothing to index", "list files or folders under rag.sources")
    missing = [s for s in cfg.sources if not Path(s).exists()]
    if missing:
        raise ConfigError(f"rag.sources not found: {', '.join(missing)}", "fix the paths (relative to the config file)")
    embedder = load_embedder(cfg.embedding_model)
    if cfg.chunk_tokens > embedder.max_tokens:
        raise ConfigError(
            f"rag.chunk_tokens={cfg.chunk_tokens} is longer than {embedder.name}'s input ({embedder.max_tokens} "
            "tokens): the rest of each chunk would never be seen",
            f"set rag.chunk_tokens to at most {embedder.max_tokens}",
        )
    if rebuild and cfg.store == "qdrant" and cfg.store_url:
        server = QdrantStore(index_dir, cfg.store_url, create=True)
        server.drop()
        server.close()
    if rebuild and index_dir.exists():
        shutil.rmtree(index_dir)
    store = open_store(index_dir, create=True, kind=cfg.store, url=cfg.store_url)
    try:
        summary = _update(cfg, store, embedder, IndexSummary(index_dir, embedder.name), log)
        summary.stats = store.stats()
    finally:
        store.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _update(cfg: RagConfig, store: Store, embedder: Embedder, summary: IndexSummary, log: Log) -> IndexSummary:
    manifest = _manifest(cfg, embedder)
    rechunk = _check_manifest(store.manifest(), manifest)
    if rechunk:
        log(f"chunking changed ({rechunk}): every document is chunked and embedded again")
    store.set_manifest(manifest)
    stored = store.files()
    seen: set[str] = set()
    pending: list[tuple[Document, list[Chunk]]] = []
    for doc in _documents(cfg, summary):
        if doc.key in seen:
            raise ConfigError(f"two sources give the document {doc.key!r}", "index folders with different names")
        seen.add(doc.key)
        if stored.get(doc.key) == doc.digest and not rechunk:
            summary.unchanged += 1
            continue
        (summary.changed if doc.key in stored else summary.added).append(doc.key)
        pending.append((doc, _chunk(doc, cfg, embedder)))
    summary.documents = len(seen)
    summary.deleted = sorted(set(stored) - seen)
    store.delete_files(summary.deleted)
    _embed_and_write(store, embedder, pending, cfg.embedding_batch, summary)
    return summary


def _embed_and_write(
    store: Store, embedder: Embedder, pending: list[tuple[Document, list[Chunk]]], batch: int, summary: IndexSummary
) -> None:
    """Embed the pending documents' chunks a group at a time and write each document in one transaction."""
    total = sum(len(chunks) for _, chunks in pending)
    bar = tqdm(total=total, desc="embed", unit="chunk", dynamic_ncols=True, disable=not total)
    started = time.perf_counter()
    for group in _groups(pending):
        texts = [c.embed_text for _, chunks in group for c in chunks]
        vectors = embed_all(embedder, texts, batch, label=None)
        start = 0
        for doc, chunks in group:
            store.replace_file(doc.key, doc.digest, chunks, vectors[start : start + len(chunks)])
            start += len(chunks)
        bar.update(len(texts))
        summary.chunks_written += len(texts)
    bar.close()
    summary.embed_seconds = time.perf_counter() - started


def _groups(pending: list[tuple[Document, list[Chunk]]]) -> Iterator[list[tuple[Document, list[Chunk]]]]:
    group: list[tuple[Document, list[Chunk]]] = []
    size = 0
    for item in pending:
        group.append(item)
        size += len(item[1])
        if size >= WRITE_GROUP:
            yield group
            group, size = [], 0
    if group:
        yield group


def _chunk(doc: Document, cfg: RagConfig, embedder: Embedder) -> list[Chunk]:
    size, count = cfg.chunk_tokens, embedder.count
    if doc.row is not None:
        return chunk_row(doc.key.split("#")[0], doc.row, doc.text, doc.metadata, count, size)
    if doc.suffix in CODE:
        return chunk_code(doc.key, doc.text, doc.suffix, count, size)
    return chunk_document(doc.key, doc.text, doc.suffix, count, size, cfg.chunk_overlap)


def _documents(cfg: RagConfig, summary: IndexSummary) -> Iterator[Document]:
    """Every document of every source; what cannot be indexed goes to summary.skipped with the reason."""
    max_bytes = int(cfg.max_file_mb * 1e6)
    for source in map(Path, cfg.sources):
        is_table = source.is_file() and source.suffix.lower() in DATA_SUFFIXES
        base = source.name if source.is_dir() else None
        for item in read_rows(str(source), max_bytes=max_bytes):
            if isinstance(item, Skipped):
                if item.reason != "gitignore":  # ignored on purpose, as git does: not worth a line each
                    summary.skipped.append((_shown(item.path, source), item.reason))
            elif isinstance(item, Issue):
                where = item.source.file if item.source else str(source)
                summary.skipped.append((_shown(where, source), f"{item.message} (line {_line(item)})"))
            elif is_table:
                yield from _row_document(item, source, cfg, summary)
            elif isinstance(item, Row):
                key = f"{base}/{item.group}" if base and item.group else source.name
                yield Document(key, item.value["text"], Path(key).suffix.lower())


def _row_document(row: Row, source: Path, cfg: RagConfig, summary: IndexSummary) -> Iterator[Document]:
    value = row.value if isinstance(row.value, dict) else {}
    text = value.get(cfg.text_column)
    row_id = str(value.get(cfg.id_column, row.source.line) if cfg.id_column else row.source.line)
    where = f"{source.name}#{row_id}"
    if not isinstance(text, str) or not text.strip():
        columns = ", ".join(map(str, value)) or "none"
        summary.skipped.append(
            (where, f"no text in column {cfg.text_column!r} (columns: {columns}); set rag.text_column")
        )
        return
    keep = cfg.metadata_columns if cfg.metadata_columns is not None else [k for k in value if k != cfg.text_column]
    metadata = {k: _number(value.get(k)) for k in keep if k in value}
    yield Document(where, text, ".txt", row=row_id, metadata=metadata)


def _number(value: Any) -> Any:
    """A table cell as a number when it reads as one: CSV cells are text, and `price < 12` compares numbers."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def _shown(path: str, source: Path) -> str:
    try:
        return str(Path(path).relative_to(source.parent))
    except ValueError:
        return path


def _line(issue: Issue) -> int:
    return issue.source.line if issue.source else 0


def _manifest(cfg: RagConfig, embedder: Embedder) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "embedder": embedder.identity(),
        "chunking": {"chunk_tokens": cfg.chunk_tokens, "chunk_overlap": cfg.chunk_overlap},
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _check_manifest(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """What of the chunking changed since the index was built (None: nothing); another embedder is an error."""
    if old is None:
        return None
    before, now = old.get("embedder", {}), new["embedder"]
    if (before.get("model"), before.get("dim")) != (now["model"], now["dim"]):
        raise RetrievalError(
            f"the index was built with the embedding model {before.get('model')!r} ({before.get('dim')} dimensions), "
            f"not {now['model']!r} ({now['dim']}): their vectors cannot be compared",
            f"set rag.embedding_model: {before.get('model')}, or rebuild the index with --rebuild",
        )
    if old.get("chunking") != new["chunking"]:
        return f"{old.get('chunking')} -> {new['chunking']}"
    return None
