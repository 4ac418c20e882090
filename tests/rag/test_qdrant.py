"""The Qdrant store behind the same Store protocol, in Qdrant's local mode (the client API a Qdrant server answers
too; no server runs here): index, search by each mode, incremental updates, filters, and the store choice kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_index import DOCS, wines, write_docs  # noqa: F401  (wines is a fixture)

from tuneforge.config import RagConfig
from tuneforge.errors import RetrievalError
from tuneforge.rag import Index, build_index


def index(cfg: RagConfig, folder: Path, **kw):
    return build_index(cfg, folder, log=lambda _: None, **kw)


def test_qdrant_indexes_searches_and_updates_incrementally(tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "kb", DOCS)
    cfg = RagConfig(sources=[str(docs)], store="qdrant")
    first = index(cfg, tmp_path / "index")
    assert first.stats["files"] == 3 and first.stats["chunks"] >= 4
    found = Index(tmp_path / "index")
    for mode in ("hybrid", "dense", "keyword"):
        assert found.search("Wie lange gilt die Garantie?", 1, mode).hits[0].chunk.path == "kb/garantie.md", mode
    hit = found.search("sum of the prices in the shopping cart", 1).hits[0]
    assert (hit.chunk.title, hit.chunk.start_line) == ("checkout_total", 6)
    found.store.close()
    (docs / "garantie.md").unlink()
    (docs / "shipping.md").write_text("# Shipping\n\nOrders ship the same day.\n", encoding="utf-8")
    second = index(cfg, tmp_path / "index")
    assert (second.changed, second.deleted, second.unchanged) == (["kb/shipping.md"], ["kb/garantie.md"], 1)
    found = Index(tmp_path / "index")
    assert not [h for h in found.search("Garantie", 10, "keyword").hits if h.chunk.path == "kb/garantie.md"]
    assert found.search("same day", 1, "keyword").hits[0].chunk.path == "kb/shipping.md"
    found.store.close()
    with pytest.raises(RetrievalError, match="kept in qdrant, not sqlite"):
        index(RagConfig(sources=[str(docs)]), tmp_path / "index")
    rebuilt = index(RagConfig(sources=[str(docs)]), tmp_path / "index", rebuild=True)
    assert rebuilt.stats["files"] == 2 and not (tmp_path / "index" / "store.json").exists()


def test_qdrant_filters_table_rows_by_metadata(wines: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = RagConfig(sources=[str(wines)], text_column="description", id_column="sku", store="qdrant")
    index(cfg, tmp_path / "index")
    found = Index(tmp_path / "index")
    hits = found.search("Rotwein zu Lamm", 5, where="price < 12 and colour = 'red'").hits
    assert {h.chunk.metadata["row"] for h in hits} == {"W1", "W4"}
    hits = found.search("Lamm", 5, "keyword", where="region in ('FR', 'DE') and not colour = 'white'").hits
    assert [h.chunk.metadata["row"] for h in hits] == ["W2"]
    hits = found.search("Wein", 5, "dense", where="price = 24.0 or region = 'DE'").hits
    assert {h.chunk.metadata["row"] for h in hits} == {"W2", "W3"}
    found.store.close()
