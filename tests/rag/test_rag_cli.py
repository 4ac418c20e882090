"""`tuneforge index`, `ask` and `chat --index` through the real command line (CliRunner), the answer from a real
(tiny) model."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tuneforge.chat import chat_loop
from tuneforge.cli import app
from tuneforge.config import RagConfig
from tuneforge.generation import SamplingParams
from tuneforge.serve.engine import Engine
from tuneforge.serve.retrieval import RetrievalService

runner = CliRunner()


def make_config(tmp_path: Path) -> Path:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "garantie.md").write_text("# Garantie\n\nDie Garantie gilt zwei Jahre ab Kaufdatum.\n", encoding="utf-8")
    (kb / "versand.md").write_text("# Versand\n\nWir liefern in zwei Werktagen.\n", encoding="utf-8")
    config = tmp_path / "rag.yaml"
    config.write_text(yaml.safe_dump({"name": "kb", "output_dir": str(tmp_path / "runs"), "rag": {"sources": ["kb"]}}))
    return config


def test_index_then_ask_search_only(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = runner.invoke(app, ["index", str(config)])
    assert first.exit_code == 0, first.output
    assert "indexed 2 documents" in first.output and "2 new" in first.output
    again = runner.invoke(app, ["index", str(config)])
    assert "0 new, 0 changed, 0 deleted, 2 unchanged" in again.output
    found = runner.invoke(app, ["ask", str(config), "Wie lange gilt die Garantie?", "--search-only", "--top-k", "1"])
    assert found.exit_code == 0, found.output
    assert "[1] kb/garantie.md:1-3 (Garantie)" in found.output and "zwei Jahre ab Kaufdatum" in found.output
    index_dir = tmp_path / "runs" / "kb" / "index"
    direct = runner.invoke(app, ["ask", str(index_dir), "Versand", "--search-only", "--retrieval", "keyword"])
    assert "[1] kb/versand.md" in direct.output


def test_ask_answers_with_a_model_and_lists_its_sources(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = make_config(tmp_path)
    runner.invoke(app, ["index", str(config)])
    result = runner.invoke(
        app, ["ask", str(config), "Wie lange gilt die Garantie?", "--model", str(tiny_model_dir), "--max-tokens", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "sources (cited:" in result.output and "kb/garantie.md" in result.output


def test_bad_input_is_a_clear_error_without_a_traceback(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    missing = runner.invoke(app, ["ask", str(tmp_path / "runs" / "kb" / "index"), "x"])
    assert missing.exit_code == 2 and "no index at" in missing.output and "Traceback" not in missing.output
    runner.invoke(app, ["index", str(config)])
    bad = runner.invoke(app, ["ask", str(config), "x", "--search-only", "--filter", "start_line <"])
    assert bad.exit_code == 2 and "a value is missing" in bad.output
    wrong = runner.invoke(app, ["ask", str(config), "x", "--search-only", "--retrieval", "fuzzy"])
    assert wrong.exit_code == 2 and "rag.retrieval" in wrong.output
    overlap = runner.invoke(app, ["index", str(config), "rag.chunk_overlap=300"])
    assert overlap.exit_code == 2 and "must be smaller than rag.chunk_tokens" in overlap.output


def test_chat_shows_sources_under_each_answer(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = make_config(tmp_path)
    runner.invoke(app, ["index", str(config)])
    service = RetrievalService.open(tmp_path / "runs" / "kb" / "index", RagConfig(top_k=1))
    engine = Engine([], max_batch=1, base=str(tiny_model_dir))
    lines = iter(["Wie lange gilt die Garantie?", "/exit"])
    out = io.StringIO()
    try:
        answers = chat_loop(engine, engine.default_id, SamplingParams(max_new_tokens=4), lambda _: next(lines), out,
                            retrieval=service)  # fmt: skip
    finally:
        engine.close()
        service.close()
    assert answers == 1
    assert "Sources:\n[1] kb/garantie.md:1-3 (Garantie)" in out.getvalue()
