"""The server's HTTP behaviour on a FakeEngine (canned answers, no model): errors, API key, OpenAPI document, limits,
and the `serve` command. What the answers are made of is tested on the real engine in test_serve.py."""

import json
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import tuneforge.serve.app as app_module
from tuneforge.cli import app as cli
from tuneforge.config import ServeConfig
from tuneforge.serve import create_app
from tuneforge.serve.protocol import SEED_MAX, SEED_MIN

from helpers import FakeEngine

ASK = [{"role": "user", "content": "Item 7: what colour?"}]
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(context_length=256)


@pytest.fixture
def client(engine: FakeEngine) -> TestClient:
    return TestClient(create_app([], ServeConfig(max_new_tokens=32), engine=engine))


def post(client: TestClient, body: object | bytes, content_type: str = "application/json"):
    """POST raw bytes or a JSON body exactly as given (json.dumps: lone surrogates as \\ud800 escapes)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/chat/completions", content=content, headers={"content-type": content_type})


def test_models_lists_the_runs_and_the_base(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["toy", "fake/base"]


def test_a_chat_completion_reaches_the_engine_as_asked(client: TestClient, engine: FakeEngine) -> None:
    body = {"model": "toy", "messages": ASK, "max_tokens": 8, "temperature": 0.5, "seed": 3, "stop": "colour"}
    answer = client.post("/v1/chat/completions", json=body).json()
    assert answer["choices"][0]["message"]["content"] == "You said: Item 7: what "
    assert answer["choices"][0]["finish_reason"] == "stop"
    (model, messages, params), *_ = engine.asked
    assert model == "toy" and messages == ASK and params.stop == ("colour",)
    assert (params.max_new_tokens, params.temperature, params.seed) == (8, 0.5, 3)


@pytest.mark.parametrize(
    ("body", "status", "param", "needle"),
    [
        ({"model": "nope", "messages": ASK}, 404, "model", "The model 'nope' does not exist"),
        ({"model": "toy", "messages": []}, 400, "messages", "messages: List should have at least 1 item"),
        ({"model": "toy", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role", "messages.0.role"),
        ({"model": "toy", "messages": ASK, "max_tokens": 999}, 400, "max_tokens", "above this server's limit of 32"),
        ({"model": "toy", "messages": ASK, "n": 2}, 400, "n", "n: Input should be less than or equal to 1"),
        # 50 digits once overflowed torch.manual_seed: a 500
        ({"model": "toy", "messages": ASK, "seed": 10**50}, 400, "seed", "seed: Input should be less than or equal"),
        ({"model": "toy", "messages": ASK, "seed": SEED_MIN - 1}, 400, "seed", "Input should be greater than or equal"),
        (
            {"model": "toy", "messages": [{"role": "user", "content": "a\ud800"}]},
            400,
            "messages.0.content",
            "surrogate",
        ),
        ({"model": "\udfff", "messages": ASK}, 400, "model", "lone surrogate at character 0"),
        (b'{"model": "toy",', 400, None, "the body is not valid JSON (Expecting"),
        (b'{"seed": 1' + b"0" * 5000 + b"}", 400, None, "There was an error parsing the body"),  # > 4300 digits
        (b"\xff\xfe", 400, None, "not valid JSON"),
        ([1, 2], 400, None, "body: Input should be a valid dictionary"),
    ],
)
def test_bad_requests_get_openai_style_errors(
    client: TestClient, body: object, status: int, param: str | None, needle: str
) -> None:
    response = post(client, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error.keys() == ERROR_KEYS and error["type"] == "invalid_request_error"
    assert needle in error["message"] and error["param"] == param


def test_seeds_at_the_bounds_are_taken(client: TestClient) -> None:
    for seed in (SEED_MIN, -1, 0, SEED_MAX):  # what torch.manual_seed takes (the fake engine seeds a generator)
        assert post(client, {"model": "toy", "messages": ASK, "seed": seed}).status_code == 200


def test_unknown_paths_and_methods_get_openai_style_errors(client: TestClient) -> None:
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Invalid URL (GET /v1/nothing)"
    wrong = client.get("/v1/chat/completions")
    assert (
        wrong.status_code == 405 and wrong.json()["error"]["message"] == "Method not allowed (GET /v1/chat/completions)"
    )
    assert wrong.headers["allow"] == "POST"


def test_an_engine_failure_is_an_openai_style_500(engine: FakeEngine) -> None:
    engine.reply = lambda messages: (_ for _ in ()).throw(MemoryError("no room"))
    client = TestClient(create_app([], engine=engine), raise_server_exceptions=False)
    response = client.post("/v1/chat/completions", json={"model": "toy", "messages": ASK})
    assert response.status_code == 500
    assert response.json()["error"] == {
        "message": "The server had an error while answering (MemoryError); see the server's log.",
        "type": "server_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize("path", ["/v1/models", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/x"])
def test_every_path_but_health_needs_the_api_key_when_one_is_set(engine: FakeEngine, path: str) -> None:
    client = TestClient(create_app([], engine=engine, api_key="s3cret"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        refused = client.get(path, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code != 401
    assert client.get("/health").status_code == 200


def test_without_a_key_the_docs_are_open(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200


def test_the_openapi_document_lists_the_errors_the_server_answers(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    models = schema["paths"]["/v1/models"]["get"]["responses"]
    assert chat.keys() == {"200", "400", "401", "404"} and models.keys() == {"200", "401"}
    assert all(chat[s]["content"] == error for s in ("400", "401", "404")) and models["401"]["content"] == error
    assert chat["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert "context_length_exceeded" in chat["400"]["description"]
    assert "422" not in str(schema) and "HTTPValidationError" not in schema["components"]["schemas"]


def test_without_max_tokens_the_answer_takes_the_rest_of_the_context_up_to_the_limit(
    client: TestClient, engine: FakeEngine
) -> None:
    def given_max_new_tokens(messages: list[dict[str, str]]) -> int:
        assert client.post("/v1/chat/completions", json={"model": "toy", "messages": messages}).status_code == 200
        return engine.asked[-1][2].max_new_tokens

    assert given_max_new_tokens(ASK) == 32  # the server's limit: the context has room
    long = [{"role": "user", "content": "x" * 4 * 240}]  # 240 + 4 + 2 of the fake engine's 256 tokens
    assert engine.prompt_tokens(long, 255) == 246 and given_max_new_tokens(long) == 10
    engine.context_length = None  # a model whose context is unknown: only the limit
    assert given_max_new_tokens(long) == 32


def test_the_context_check_names_the_numbers(client: TestClient, engine: FakeEngine) -> None:
    def error(messages: list[dict[str, str]], max_tokens: int | None = None) -> dict[str, str]:
        body = {"model": "toy", "messages": messages} | ({"max_tokens": max_tokens} if max_tokens else {})
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 400 and not engine.asked  # refused before reaching the engine
        assert response.json()["error"]["code"] == "context_length_exceeded"
        return response.json()["error"]

    full = [{"role": "user", "content": "x" * 4 * 250}]  # 256 tokens: no room for an answer
    assert error(full)["message"] == (
        "This model's maximum context length is 256 tokens; the messages take 256 tokens, leaving no room for an "
        "answer. Shorten the messages."
    )
    engine.context_length = 30
    assert error(ASK, 31)["param"] == "max_tokens"
    assert "max_tokens=31 leaves no room for the messages. Lower max_tokens." in error(ASK, 31)["message"]
    assert "you requested 31 tokens (11 in the messages, 20 in the completion)" in error(ASK, 20)["message"]
    assert "the messages (1000 characters) take more than 29 tokens" in error(full)["message"]


def test_a_temperature_too_small_to_sample_with_is_greedy(client: TestClient, engine: FakeEngine) -> None:
    for temperature, used in ((1e-300, 0.0), (9e-6, 0.0), (1e-5, 1e-5), (0.7, 0.7)):
        body = {"model": "toy", "messages": ASK, "temperature": temperature}
        assert client.post("/v1/chat/completions", json=body).status_code == 200  # 1e-300 sampled: a 500
        assert engine.asked[-1][2].temperature == used


def test_the_serve_command_serves_as_the_run_config_and_its_options_say(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: dict = {}
    monkeypatch.setattr(app_module, "Engine", lambda run_dirs, max_batch: FakeEngine(("toy",)))
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: served.update(kw, app=application))
    runner = CliRunner()
    flags = ["--port", "8765", "--max-batch", "3", "--api-key-env", "NO"]  # "NO" stays a name (YAML would read False)
    result = runner.invoke(cli, ["serve", str(trained_run), *flags], env={"NO": "s3cret"})
    assert result.exit_code == 0, result.output
    assert "serving toy, fake/base on http://127.0.0.1:8765/v1 (API key from $NO: required" in result.output
    config = served["app"].state.serve
    assert config == ServeConfig(port=8765, max_batch=3, api_key_env="NO")  # the run's serve: section, changed
    assert served["host"] == "127.0.0.1" and served["port"] == 8765
    assert "s3cret" not in str(config.model_dump()) and "api_key" not in ServeConfig.model_fields  # never dumped
    client = TestClient(served["app"])
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    refused = runner.invoke(cli, ["serve", str(trained_run), "--port", "70000", "--max-tokens", "0"])
    assert refused.exit_code == 2 and "serve.port" in refused.output and "serve.max_new_tokens" in refused.output
