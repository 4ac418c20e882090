"""Which store an index folder uses: the embedded SQLite store (the default) or Qdrant, recorded in the folder's
store.json when the index is built, so `ask`, `chat` and `serve` open it the same way."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import RetrievalError
from tuneforge.rag.qdrant import QdrantStore
from tuneforge.rag.store import INDEX_FILE, SqliteStore, Store

STORE_FILE = "store.json"


def open_store(folder: Path, create: bool = False, kind: str = "sqlite", url: str | None = None) -> Store:
    """The store of the index in `folder`; with create=True, made as `kind` (at `url` for a Qdrant server) unless
    the folder already holds an index of another kind."""
    pointer = folder / STORE_FILE
    recorded = json.loads(pointer.read_text(encoding="utf-8")) if pointer.is_file() else None
    if create:
        wanted = {"store": kind, "url": url}
        if recorded is not None and recorded != wanted:
            raise RetrievalError(
                f"the index at {folder} is kept in {recorded['store']}"
                + (f" at {recorded['url']}" if recorded["url"] else "")
                + f", not {kind}"
                + (f" at {url}" if url else ""),
                "set rag.store / rag.store_url back, or rebuild the index with --rebuild",
            )
        if recorded is None and (kind != "sqlite" or url):
            folder.mkdir(parents=True, exist_ok=True)
            pointer.write_text(json.dumps(wanted), encoding="utf-8")
        recorded = wanted
    if recorded is not None and recorded["store"] == "qdrant":
        return QdrantStore(folder, recorded["url"], create=create)
    return SqliteStore(folder, create=create)


def is_index(folder: Path) -> bool:
    """Whether `folder` holds an index (of either store)."""
    return (folder / INDEX_FILE).is_file() or (folder / STORE_FILE).is_file()
