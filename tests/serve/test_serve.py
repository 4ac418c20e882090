import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from peft.tuners.lora.layer import Linear as LoraLinear

from tuneforge.cpu import weight_packs
from tuneforge.errors import ModelError, RunError
from tuneforge.generation import SamplingParams
from tuneforge.serve import ServeSettings, create_app
from tuneforge.serve.engine import Engine, _Task

ASK = [{"role": "user", "content": "Item 7: what colour?"}]


@pytest.fixture(scope="module")
def engine(trained_run: Path):
    engine = Engine([trained_run])
    yield engine
    engine.close()


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


QUESTIONS = [[{"role": "user", "content": f"Item {i}: what colour?"}] for i in (1, 7, 12, 30)]
GREEDY = SamplingParams(max_new_tokens=12)


def answer_together(engine: Engine, requests: list[tuple]) -> list:
    """Queue every request (model, messages, params[, True: streamed]) while the model is busy, then let them run:
    what concurrent clients see. A streamed request's result is its list of pieces (the Completion last)."""
    results: list = [None] * len(requests)

    def ask(i: int) -> None:
        model_id, messages, params, *streamed = requests[i]
        try:
            if any(streamed):
                results[i] = list(engine.stream(model_id, messages, params))
            else:
                results[i] = engine.complete(model_id, messages, params)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    busy, gate = threading.Event(), threading.Event()
    engine._submit(_Task(lambda: (busy.set(), gate.wait())))  # the model thread is busy: every request queues
    assert busy.wait(30)
    for thread in threads:
        thread.start()
    deadline = time.time() + 30
    while len(engine._queue) < len(requests) and time.time() < deadline:
        time.sleep(0.01)
    assert len(engine._queue) == len(requests)
    gate.set()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_concurrent_requests_are_answered_in_batches(engine: Engine) -> None:
    alone = [engine.complete("toy", q, GREEDY) for q in QUESTIONS]
    before = engine.batch_sizes.copy()
    seeded = SamplingParams(max_new_tokens=12, temperature=0.8, seed=3)
    requests = [("toy", q, GREEDY) for q in QUESTIONS] + [(engine.base_id, QUESTIONS[0], GREEDY), ("toy", ASK, seeded)]
    together = answer_together(engine, requests)
    # the four greedy "toy" requests share one batch; the base model's and the seeded one each run alone
    assert engine.batch_sizes - before == {4: 1, 1: 2}
    assert [c.text for c in together[:4]] == [c.text for c in alone]
    assert [c.completion_tokens for c in together[:4]] == [c.completion_tokens for c in alone]
    assert together[4].text == engine.complete(engine.base_id, QUESTIONS[0], GREEDY).text
    assert together[5].text == engine.complete("toy", ASK, seeded).text  # its seed reproduces it alone


def test_streamed_answers_share_a_batch_with_whole_ones(engine: Engine) -> None:
    alone = [engine.complete("toy", q, GREEDY) for q in QUESTIONS]
    before = engine.batch_sizes.copy()
    together = answer_together(engine, [("toy", q, GREEDY, i % 2 == 1) for i, q in enumerate(QUESTIONS)])
    assert engine.batch_sizes - before == {4: 1}
    for i, (got, expected) in enumerate(zip(together, alone, strict=True)):
        if i % 2:  # streamed: the pieces make the text, the Completion last
            assert "".join(got[:-1]) == expected.text and got[-1] == expected
        else:
            assert got == expected


def test_max_batch_bounds_a_batch(engine: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "max_batch", 3)
    before = engine.batch_sizes.copy()
    answer_together(engine, [("toy", q, GREEDY) for q in QUESTIONS])
    assert engine.batch_sizes - before == {3: 1, 1: 1}
    assert client.get("/health").json()["batches"] == {str(k): v for k, v in sorted(engine.batch_sizes.items())}


@pytest.mark.skipif(not weight_packs.available(torch.nn.Linear(2, 2)), reason="this torch has no MKL packed sgemm")
@pytest.mark.usefixtures("fp32_packs")
def test_the_engine_keeps_its_packed_weights_from_batch_to_batch(engine: Engine) -> None:
    packs = getattr(engine.model, weight_packs._ATTR)  # the engine's, kept for its whole life
    answer_together(engine, [("toy", q, GREEDY) for q in QUESTIONS[:2]])
    first = dict(packs.packed)
    adapted = [m for m in first if isinstance(m, LoraLinear)]  # the adapter is folded into its layers' packs
    assert packs.rows == 2 and len(adapted) == 14
    answer_together(engine, [("toy", q, GREEDY) for q in QUESTIONS[2:4]])
    assert packs.packed.keys() == first.keys() and all(packs.packed[m] is first[m] for m in first)  # not redone
    answer_together(engine, [(engine.base_id, q, GREEDY) for q in QUESTIONS[:2]])
    assert packs.packed and not any(isinstance(m, LoraLinear) for m in packs.packed)  # the base model: its own
    answer_together(engine, [("toy", q, GREEDY) for q in QUESTIONS[:3]])  # the adapter again, another batch size
    assert packs.rows == 3 and all(packs.packed[m] is first[m] for m in adapted)  # the adapter's packs, kept


def test_requests_sent_together_to_an_idle_engine_share_a_batch(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuneforge.serve.engine as engine_module

    monkeypatch.setattr(engine_module, "GATHER_S", 2.0)  # generous: threads on a loaded machine start late
    before = engine.batch_sizes.copy()
    barrier = threading.Barrier(3)
    answers: list = []
    threads = [
        threading.Thread(target=lambda q=q: (barrier.wait(), answers.append(engine.complete("toy", q, GREEDY))))
        for q in QUESTIONS[:3]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 3 and engine.batch_sizes - before == {3: 1}


def test_a_failing_batch_fails_its_requests_and_the_engine_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tuneforge.serve.engine as engine_module

    real = engine_module.generate
    monkeypatch.setattr(engine_module, "generate", lambda *a, **k: (_ for _ in ()).throw(MemoryError("no room")))
    failed = answer_together(engine, [("toy", q, GREEDY) for q in QUESTIONS[:3]] + [("toy", ASK, GREEDY, True)])
    assert all(isinstance(r, MemoryError) for r in failed)  # the streamed one's reader too
    monkeypatch.setattr(engine_module, "generate", real)
    assert engine.complete("toy", ASK, GREEDY).completion_tokens > 0
    assert not engine._queue


def test_every_generation_runs_in_the_engine_thread(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Request threads only queue work: the model computes in the thread that loaded it (see serve/engine.py)."""
    threads: list[str] = []
    real = engine.model.generate

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", recorded)
    engine.complete("toy", ASK, GREEDY)
    pieces = list(engine.stream("toy", ASK, GREEDY))
    answer_together(engine, [("toy", q, GREEDY) for q in QUESTIONS[:2]])
    assert threads == ["tuneforge-model"] * 3
    assert pieces[-1].text == engine.complete("toy", ASK, GREEDY).text


def test_a_closed_engine_refuses_work(trained_run: Path) -> None:
    engine = Engine([trained_run])
    engine.close()
    engine.close()  # a second close is harmless
    assert not engine._thread.is_alive()
    with pytest.raises(RunError, match="this engine is closed"):
        engine.complete("toy", ASK, GREEDY)


def test_engine_load_errors_reach_the_caller(tmp_path: Path, trained_run: Path) -> None:
    run = tmp_path / "broken"
    (run / "model").mkdir(parents=True)
    shutil.copy(trained_run / "model" / "tuneforge.json", run / "model" / "tuneforge.json")  # no adapter beside it
    with pytest.raises(ModelError, match="holds no adapter"):
        Engine([run])


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
        [sys.executable, "-m", "tuneforge", "serve", str(trained_run), "--port", str(port), "--max-batch", "2"],
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


def test_the_cli_server_batches_concurrent_requests_up_to_max_batch(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="test-key")
    before = httpx.get(f"{server}/health").json()["batches"]
    replies: list = []
    threads = [
        threading.Thread(
            target=lambda q=q: replies.append(
                client.chat.completions.create(model="toy", messages=q, max_tokens=8, temperature=0)
            )
        )
        for q in QUESTIONS[:3]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    after = httpx.get(f"{server}/health").json()["batches"]
    new = {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    assert len(replies) == 3 and all(r.choices[0].message.content is not None for r in replies)
    assert set(new) <= {"1", "2"}  # --max-batch 2 bounds every batch
    assert sum(int(size) * count for size, count in new.items()) == 3
