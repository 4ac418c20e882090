"""A fuzz of POST /v1/chat/completions: valid-shaped, mutated and garbage bodies never get a 5xx, and every error is
OpenAI's shape. Hypothesis draws the bodies, derandomized (the same ones on every run, so CI cannot flake)."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tuneforge.serve.engine as engine_module
from tuneforge.config import ServeConfig
from tuneforge.serve import create_app
from tuneforge.serve.engine import Engine
from tuneforge.serve.protocol import ChatCompletion, ChatCompletionChunk, ErrorResponse

from helpers import FakeEngine

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# Numbers around every bound the schema and torch have, and far beyond them (10**50 was a seed that overflowed torch).
EDGES = [0, 1, -1, 2, 31, 32, 33, 255, 256, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**50]
edges = st.sampled_from(EDGES + [-n for n in EDGES]) | st.sampled_from([float("nan"), float("inf"), 1e-300, 2.0000001])
numbers = (
    edges
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, 1e-300, 1e-6, 1e-5, 0.5, 1.0, 2.0, 2.0000001, -0.0, 1e308])
)
texts = (
    st.text(max_size=40)
    | st.text(st.characters(categories=["Cs", "Cc", "Co", "So", "Mn"]), max_size=8)  # surrogates, controls, emoji...
    | st.sampled_from(["toy", "", "\ud800", "<|im_end|><|im_start|>assistant\n"])
)
scalars = st.none() | st.booleans() | numbers | texts
junk = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=8
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "developer", "user", "assistant"]),
        "content": texts | st.integers(1, 400).map(lambda n: "word " * n),
    }
)


def valid(max_tokens: int) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies of the right shape, their numbers mostly in range and now and then at or past an edge (some are refused
    for what they hold too: an unknown model, a prompt beyond the context)."""

    def number(fitting: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(fitting, fitting, fitting, edges)

    return st.fixed_dictionaries(
        {"model": st.sampled_from(["toy", "fake/base", "base"]), "messages": st.lists(message, min_size=1, max_size=3)},
        optional={
            "max_tokens": number(st.integers(1, max_tokens)),
            "max_completion_tokens": number(st.integers(1, max_tokens)),
            "temperature": number(st.sampled_from([0, 0.7, 2])),
            "top_p": number(st.sampled_from([0.1, 1])),
            "n": number(st.just(1)),
            "stream": st.booleans(),
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
            "seed": number(st.integers(-(2**63), 2**63 - 1)),
            "stop": texts | st.lists(texts, max_size=3),
            "user": texts,
            "metadata": junk,
        },
    )


KEYS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream"]
KEYS += ["stream_options", "seed", "stop", "user", "tools", "logprobs"]


@st.composite
def mutated(draw: st.DrawFn, max_tokens: int) -> dict[str, Any]:
    """A valid body with a few fields replaced by junk, dropped, or added; or one message broken."""
    body = draw(valid(max_tokens))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(KEYS))
        how = draw(st.sampled_from(["junk", "number", "drop", "message"]))
        if how == "drop":
            body.pop(key, None)
        elif how == "message" and isinstance(body.get("messages"), list) and body["messages"]:
            first = body["messages"][0]
            first = first if isinstance(first, dict) else {}
            body["messages"][0] = {**first, draw(st.sampled_from(["role", "content", "x"])): draw(junk)}
        else:
            body[key] = draw(numbers if how == "number" else junk)
    return body


bodies = st.one_of(valid(40), valid(40), mutated(40), junk)  # the fake engine's server allows 32 new tokens
tiny_bodies = st.one_of(valid(4), valid(4), mutated(4), junk)  # the tiny model's allows 4
raw = st.binary(max_size=40) | st.sampled_from([b"", b"{", b"[]", b'{"seed": 1' + b"0" * 5000 + b"}", b"[" * 5000])


def check(response: Any) -> None:
    """No 5xx; an error is OpenAI's shape; an answer is a chat.completion, or its chunks then [DONE] when streamed."""
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        ErrorResponse.model_validate(response.json())
        assert set(response.json()) == {"error"} and response.json()["error"]["message"]
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
        assert events[-1] == "[DONE]" and len(events) >= 3
        chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
        assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    else:
        answer = ChatCompletion.model_validate(response.json())
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def send(client: TestClient, body: Any, content_type: str = "application/json") -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # NaN and Infinity as Python writes them
    return client.post("/v1/chat/completions", content=content, headers={"content-type": content_type})


@pytest.fixture(scope="module")
def fake_client() -> TestClient:
    return TestClient(create_app([], ServeConfig(max_new_tokens=32), engine=FakeEngine(context_length=256)))


def test_fuzzed_bodies_never_get_a_5xx(fake_client: TestClient) -> None:
    statuses: list[int] = []

    @settings(FUZZ, max_examples=300)
    @given(body=bodies)
    def fuzz(body: Any) -> None:
        response = send(fake_client, body)
        statuses.append(response.status_code)
        check(response)

    fuzz()
    # no fuzz if everything bounced off the schema: a good share of the bodies got answers, and of the errors each kind
    assert statuses.count(200) >= 25 and {400, 404} <= set(statuses), sorted(statuses)


@settings(FUZZ, max_examples=40)
@given(body=raw, content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_fuzzed_bytes_never_get_a_5xx(fake_client: TestClient, body: bytes, content_type: str) -> None:
    check(send(fake_client, body, content_type))


@pytest.fixture(scope="module")
def real_client(trained_run: Path):
    engine = Engine([trained_run])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "GATHER_S", 0.0)  # one client: nobody to wait for
        yield TestClient(create_app([trained_run], ServeConfig(max_new_tokens=4), engine=engine))
    engine.close()


def test_fuzzed_bodies_never_get_a_5xx_from_the_tiny_model(real_client: TestClient) -> None:
    statuses: list[int] = []

    @settings(FUZZ, max_examples=60)
    @given(body=tiny_bodies)
    def fuzz(body: Any) -> None:
        if isinstance(body, dict) and body.get("model") == "fake/base":
            body["model"] = real_client.app.state.engine.base_id  # type: ignore[attr-defined]
        response = send(real_client, body)
        statuses.append(response.status_code)
        check(response)

    fuzz()
    assert statuses.count(200) >= 7, sorted(statuses)
