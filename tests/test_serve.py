import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from tuneforge.errors import RunError
from tuneforge.serve import ServeSettings, create_app
from tuneforge.serve.engine import Engine

ASK = [{"role": "user", "content": "Item 7: what colour?"}]


@pytest.fixture(scope="module")
def engine(trained_run: Path) -> Engine:
    return Engine([trained_run])


@pytest.fixture
def client(engine: Engine, trained_run: Path) -> TestClient:
    return TestClient(create_app(ServeSettings((trained_run,), api_key=None, max_new_tokens=32), engine=engine))


def sse_events(text: str) -> list[dict]:
    lines = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_models_lists_the_adapter_and_the_base(client: TestClient, engine: Engine) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["toy", engine.base_id]


def test_chat_completion_shape_and_greedy_determinism(client: TestClient) -> None:
    request = {"model": "toy", "messages": ASK, "max_tokens": 16, "temperature": 0}
    first = client.post("/v1/chat/completions", json=request).json()
    assert first["object"] == "chat.completion" and first["model"] == "toy"
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    usage = first["usage"]
    assert (
        usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] > 0
    )
    again = client.post("/v1/chat/completions", json=request).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_streaming_sends_role_then_deltas_then_finish_then_usage(client: TestClient) -> None:
    request = {"model": "toy", "messages": ASK, "max_tokens": 16, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=request).json()["choices"][0]["message"]["content"]
    response = client.post(
        "/v1/chat/completions", json={**request, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_base_model_answers_differently_from_the_adapter(client: TestClient, engine: Engine) -> None:
    def ask(model: str) -> str:
        body = {"model": model, "messages": ASK, "max_tokens": 12, "temperature": 0}
        return client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]

    assert ask("toy") != ask(engine.base_id)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "nope", "messages": ASK}, 404, "The model 'nope' does not exist"),
        ({"model": "toy", "messages": []}, 400, "messages: List should have at least 1 item"),
        ({"model": "toy", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
        ({"model": "toy", "messages": ASK, "max_tokens": 999}, 400, "above this server's limit of 32"),
        ({"model": "toy", "messages": ASK, "n": 2}, 400, "n: Input should be less than or equal to 1"),
    ],
)
def test_bad_requests_get_openai_style_errors(client: TestClient, body: dict, status: int, needle: str) -> None:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]


def test_api_key_is_required_when_configured(engine: Engine, trained_run: Path) -> None:
    client = TestClient(create_app(ServeSettings((trained_run,), api_key="s3cret"), engine=engine))
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/health").status_code == 200


def test_engine_refuses_a_folder_without_a_trained_model(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="has no trained model"):
        Engine([tmp_path])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(trained_run: Path):
    port = free_port()
    env = {**os.environ, "TUNEFORGE_API_KEY": "test-key", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "serve", str(trained_run), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read() if proc.stdout else "server died") from None
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError("server did not start in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_the_official_openai_client_works_unchanged(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="test-key")
    assert "toy" in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(model="toy", messages=ASK, max_tokens=16, temperature=0)
    text = reply.choices[0].message.content
    assert text and reply.usage and reply.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="toy", messages=ASK, max_tokens=16, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=ASK)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong").models.list()
