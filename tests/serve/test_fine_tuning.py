"""The OpenAI fine-tuning quickstart, unchanged but for base_url and api_key, against tuneforge on the tiny model:
upload -> create -> poll retrieve / list_events -> checkpoints and results file -> chat with fine_tuned_model; and the
errors as the official client's exceptions."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from tuneforge.config import ServeConfig
from tuneforge.jobs.db import open_database
from tuneforge.jobs.files import FileStore
from tuneforge.serve import create_app
from tuneforge.serve.engine import Engine

from helpers import toy_rows

KEY = "jobs-key"
FAST = {"train.precision": "fp32", "train.learning_rate": 0.01, "train.save_steps": 3, "data.val_size": 0.1}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    data = tmp_path_factory.mktemp("service")
    store = FileStore(data, open_database(data / "tuneforge.db"), str(tiny_model_dir))
    engine = Engine([], max_batch=1, base=str(tiny_model_dir))
    app = create_app([], ServeConfig(), api_key=KEY, engine=engine, files=store)
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=TestClient(app))
    yield client, str(tiny_model_dir), app
    app.state.runner.stop()
    engine.close()


def wait(client: openai.OpenAI, job_id: str, seconds: float = 240) -> openai.types.fine_tuning.FineTuningJob:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {seconds} s")


def test_the_quickstart_trains_serves_and_chats(service) -> None:
    client, base, app = service
    data = "".join(json.dumps(r) + "\n" for r in toy_rows(60)).encode()
    training = client.files.create(file=("toy.jsonl", io.BytesIO(data)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base, training_file=training.id, suffix="toy", hyperparameters={"n_epochs": 2},
        metadata={"team": "docs"}, extra_body={"tuneforge": {"config": FAST}},
    )  # fmt: skip
    assert job.status == "queued" and job.id.startswith("ftjob-")
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{base}:tuneforge:toy:{job.id}" and done.trained_tokens
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert events[0] == "The job has successfully completed" and f"Created fine-tuning job: {job.id}" in events
    assert any(m.startswith("Step ") for m in events) and "Fine-tuning job started" in events
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert steps and all(s % 3 == 0 for s in steps)
    results = client.files.content(done.result_files[0]).text
    assert results.startswith("step,train_loss")
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "docs"})] == [job.id]
    assert done.fine_tuned_model in [m.id for m in client.models.list()]  # served at once, no restart
    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "Item 3: what colour?"}], max_tokens=12
    )
    assert reply.choices[0].message.content is not None and reply.model == done.fine_tuned_model
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)  # finished: 409
    assert any(m.startswith("memory: ~") for m in events)  # the train stage's memory check, as an event
    evaluated = next(e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if "held-out" in e.message)
    assert evaluated.data["report"] == f"/v1/fine_tuning/jobs/{job.id}/report"
    assert "test_loss" in evaluated.data["tuned"]
    assert "test_loss=" in evaluated.message and "(base " in evaluated.message
    card = (app.state.files.data_dir / "runs" / job.id / "MODEL_CARD.md").read_text()  # evaluate writes the card
    assert "| test_loss |" in card and "- Split train: " in card


def test_a_finished_jobs_report_is_served_sandboxed(service) -> None:
    client, base, app = service
    job = next(j for j in client.fine_tuning.jobs.list() if j.user_provided_suffix == "toy" and j.fine_tuned_model)
    http, auth = TestClient(app), {"Authorization": f"Bearer {KEY}"}
    for path in (f"/v1/fine_tuning/jobs/{job.id}/report", f"/v1/models/{job.fine_tuned_model}/report"):
        page = http.get(path, headers=auth)
        assert page.status_code == 200 and f"<h1>tuneforge report: {job.id}</h1>" in page.text
        assert page.headers["content-security-policy"] == "sandbox"
        assert http.get(path).status_code == 401
    assert http.get("/v1/fine_tuning/jobs/ftjob-nope/report", headers=auth).status_code == 404
    assert http.get(f"/v1/models/{base}/report", headers=auth).json()["error"]["param"] == "model"  # no run


def test_a_checkpoint_answers_from_its_first_request(service) -> None:
    client, _, app = service
    job = next(j for j in client.fine_tuning.jobs.list() if j.user_provided_suffix == "toy" and j.fine_tuned_model)
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[-1]  # the oldest
    name = checkpoint.fine_tuned_model_checkpoint
    assert name == f"{job.fine_tuned_model}:ckpt-step-{checkpoint.step_number}"
    assert name not in [m.id for m in client.models.list()]  # not loaded until asked for
    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Item 3?"}], max_tokens=4)
    assert reply.model == name and name in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=name[:-1] + "99", messages=[{"role": "user", "content": "hi"}])
    newest = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert newest.step_number > checkpoint.step_number
    shutil.rmtree(app.state.files.data_dir / "runs" / job.id / "checkpoints" / f"step-{newest.step_number}")
    with pytest.raises(openai.NotFoundError, match="no longer on disk"):
        client.chat.completions.create(
            model=newest.fine_tuned_model_checkpoint, messages=[{"role": "user", "content": "hi"}]
        )


def test_errors_are_the_clients_typed_exceptions(service) -> None:
    client, base, _ = service
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=base, training_file="file-nope")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")
    broken = client.files.create(file=("b.jsonl", io.BytesIO(b'{"messages": []}\n')), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model=base, training_file=broken.id)
    assert bad.value.body["param"] == "training_file"  # type: ignore[index]
    good = client.files.create(
        file=("t.jsonl", io.BytesIO(json.dumps(toy_rows(12)[0]).encode() * 1)), purpose="fine-tune"
    )
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=good.id)
    assert bad.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model=base, training_file=good.id, hyperparameters={"n_epochs": 0})
    assert "n_epochs" in str(bad.value)


def test_a_cancelled_job_stops(service) -> None:
    client, base, _ = service
    data = "".join(json.dumps(r) + "\n" for r in toy_rows(60)).encode()
    training = client.files.create(file=("toy.jsonl", io.BytesIO(data)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base, training_file=training.id, hyperparameters={"n_epochs": 50},
        extra_body={"tuneforge": {"config": FAST}},
    )  # fmt: skip
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    time.sleep(3)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_pause_resume_and_delete_the_model(service) -> None:
    client, base, app = service
    data = "".join(json.dumps(r) + "\n" for r in toy_rows(60)).encode()
    training = client.files.create(file=("toy.jsonl", io.BytesIO(data)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=base, training_file=training.id, suffix="paused", hyperparameters={"n_epochs": 8},
        extra_body={"tuneforge": {"config": FAST, "evaluate": False}},
    )  # fmt: skip
    checkpoints = app.state.files.data_dir / "runs" / job.id / "checkpoints"
    end = time.monotonic() + 120
    while not any(checkpoints.glob("step-*")) and time.monotonic() < end:
        time.sleep(0.2)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(job.id)  # paused already
    time.sleep(3)  # the worker ends within a heartbeat
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert "Fine-tuning job paused" in messages and "Fine-tuning job resumed from its last checkpoint" in messages
    assert not any("held-out" in m for m in messages)  # tuneforge.evaluate=false: no evaluation, no report
    page = TestClient(app).get(f"/v1/fine_tuning/jobs/{job.id}/report", headers={"Authorization": f"Bearer {KEY}"})
    assert page.status_code == 404 and "no report" in page.json()["error"]["message"]
    assert client.models.delete(done.fine_tuned_model).deleted
    assert done.fine_tuned_model not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.models.delete(done.fine_tuned_model)
    with pytest.raises(openai.NotFoundError):
        client.models.delete(base)  # the base model is not a job's


def test_the_dpo_method_trains_on_openai_preference_data(service) -> None:
    client, base, _ = service
    rows = []
    for row in toy_rows(40):
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        wrong = answer.replace("red", "x").replace("green", "x").replace("blue", "x").replace("black", "x")
        rows.append({
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": answer}],
            "non_preferred_output": [{"role": "assistant", "content": wrong}],
        })  # fmt: skip
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    training = client.files.create(file=("prefs.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert training.status == "processed", training.status_details
    job = client.fine_tuning.jobs.create(
        model=base, training_file=training.id, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
        extra_body={"tuneforge": {"config": FAST}},
    )  # fmt: skip
    done = wait(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.method is not None and done.method.type == "dpo"
    config = (Path(service[2].state.files.data_dir) / "runs" / job.id / "config.yaml").read_text()
    assert "task: dpo" in config and "dpo_beta: 0.2" in config


@pytest.mark.parametrize(
    "key", ["output_dir", "data.path", "data.datasets", "model.name", "evaluate.metrics", "rag.sources", "name"]
)
def test_options_that_reach_outside_the_data_directory_are_refused(service, key: str) -> None:
    client, base, _ = service
    data = "".join(json.dumps(r) + "\n" for r in toy_rows(12)).encode()
    training = client.files.create(file=("toy.jsonl", io.BytesIO(data)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(
            model=base, training_file=training.id, extra_body={"tuneforge": {"config": {key: "/etc"}}}
        )
    assert bad.value.body["param"] == f"tuneforge.config.{key}"  # type: ignore[index]
