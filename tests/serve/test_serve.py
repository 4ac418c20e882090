import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from peft.tuners.lora.layer import Linear as LoraLinear

import tuneforge.serve.engine as engine_module
from tuneforge.config import ServeConfig
from tuneforge.cpu import weight_packs
from tuneforge.data.tokenize import encode_prompt
from tuneforge.errors import ModelError, RunError
from tuneforge.generation import SamplingParams
from tuneforge.serve import create_app
from tuneforge.serve.engine import Engine, _Task

ASK = [{"role": "user", "content": "Item 7: what colour?"}]


@pytest.fixture(scope="module")
def engine(trained_run: Path):
    engine = Engine([trained_run])
    yield engine
    engine.close()


@pytest.fixture
def client(engine: Engine, trained_run: Path) -> TestClient:
    return TestClient(create_app([trained_run], ServeConfig(max_new_tokens=32), engine=engine))


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


def test_the_engine_keeps_its_packed_weights_from_batch_to_batch(trained_run: Path, fp32_packs: str) -> None:
    engine = Engine([trained_run])  # its own: the packs (MKL's or the stand-in) are chosen as the model thread starts
    try:
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
    finally:
        engine.close()


def test_requests_sent_together_to_an_idle_engine_share_a_batch(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def copy_run(trained_run: Path, folder: Path, **info: object) -> Path:
    """A copy of the trained run's model folder with some of its tuneforge.json fields changed."""
    shutil.copytree(trained_run / "model", folder / "model")
    path = folder / "model" / "tuneforge.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **info}))
    return folder


def test_engine_refuses_two_runs_of_one_name_and_serves_two_of_two(tmp_path: Path, trained_run: Path) -> None:
    twin = copy_run(trained_run, tmp_path / "twin")  # another folder, but its run is also named "toy"
    with pytest.raises(RunError, match="two runs are named 'toy'") as refused:
        Engine([trained_run, twin])
    assert "serve runs with different names" in str(refused.value)
    other = copy_run(trained_run, tmp_path / "other", run="other")
    engine = Engine([trained_run, other])
    try:
        assert list(engine.models) == ["toy", "other", engine.base_id]
        assert engine.complete("other", ASK, GREEDY).text == engine.complete("toy", ASK, GREEDY).text  # same weights
    finally:
        engine.close()


def test_each_served_runs_report_is_served(tmp_path: Path, trained_run: Path) -> None:
    reported, plain = copy_run(trained_run, tmp_path / "a", run="a"), copy_run(trained_run, tmp_path / "b", run="b")
    (reported / "report.html").write_text("<h1>tuneforge report: a</h1><h2>Bake-off</h2>")
    engine = Engine([reported, plain])
    try:
        client = TestClient(create_app([reported, plain], engine=engine))
        page = client.get("/v1/models/a/report")
        assert page.status_code == 200 and "Bake-off" in page.text
        assert page.headers["content-type"].startswith("text/html")
        missing = client.get("/v1/models/b/report").json()["error"]
        assert "has no report" in missing["message"] and "tuneforge evaluate" in missing["message"]
        assert client.get(f"/v1/models/{engine.base_id}/report").status_code == 404  # the base model has no run
    finally:
        engine.close()


def test_engine_refuses_runs_of_different_base_models(tmp_path: Path, trained_run: Path) -> None:
    other = copy_run(trained_run, tmp_path / "other", run="other", base_model="HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(RunError, match="trained on different base models") as refused:
        Engine([trained_run, other])
    assert "SmolLM2-360M-Instruct" in str(refused.value) and "one base model per server" in str(refused.value)


def test_the_context_length_is_the_smaller_known_one() -> None:
    config, unknown = (
        types.SimpleNamespace(max_position_embeddings=8192),
        types.SimpleNamespace(model_max_length=int(1e30)),
    )
    assert engine_module.context_length(config, unknown) == 8192  # transformers' "no limit known"
    assert engine_module.context_length(config, types.SimpleNamespace(model_max_length=2048)) == 2048
    assert engine_module.context_length(types.SimpleNamespace(max_position_embeddings=1024), None) == 1024
    assert engine_module.context_length(None, unknown) is None


def ask_with_prompt_of(engine: Engine, tokens: int) -> list[dict[str, str]]:
    """A conversation whose prompt takes `tokens` tokens or a few fewer (the tiny tokenizer's words)."""
    words = ["Item 7 is red."]
    while len(encode_prompt(engine.tokenizer, [{"role": "user", "content": " ".join(words)}])) <= tokens:
        words.append("Item 7 is red.")
    return [{"role": "user", "content": " ".join(words[:-1])}]


def test_prompt_and_max_tokens_beyond_the_context_are_refused_before_queueing(
    client: TestClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine.context_length == 1024  # the tiny Llama's max_position_embeddings; its tokenizer knows no limit
    messages = ask_with_prompt_of(engine, 1000)
    prompt = len(encode_prompt(engine.tokenizer, messages))
    assert engine.prompt_tokens(messages, 1023) == prompt and 990 < prompt <= 1000
    room = 1024 - prompt
    batches = sum(engine.batch_sizes.values())
    refused = client.post("/v1/chat/completions", json={"model": "toy", "messages": messages, "max_tokens": room + 1})
    assert refused.status_code == 400 and sum(engine.batch_sizes.values()) == batches  # never queued
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert error["message"] == (
        f"This model's maximum context length is 1024 tokens; you requested {1024 + 1} tokens ({prompt} in the "
        f"messages, {room + 1} in the completion). Shorten the messages or lower max_tokens."
    )
    body = {"model": "toy", "messages": messages, "max_tokens": room, "temperature": 0}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    # without max_tokens the answer may take the rest of the context
    answer = client.post("/v1/chat/completions", json={"model": "toy", "messages": messages}).json()
    assert answer["usage"]["prompt_tokens"] == prompt and answer["usage"]["completion_tokens"] <= room
    # a huge prompt is refused from its length in characters, without tokenizing it
    monkeypatch.setattr(engine_module, "encode_prompt", lambda *a: pytest.fail("tokenized"))
    huge = [{"role": "user", "content": "x" * 200_000}]
    refused = client.post("/v1/chat/completions", json={"model": "toy", "messages": huge})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    assert "the messages (200000 characters) take more than 1023 tokens" in refused.json()["error"]["message"]


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
