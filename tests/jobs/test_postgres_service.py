"""The fine-tuning service on PostgreSQL: the official client uploads, trains a tiny job (its worker process finds
the database through the environment, the password never on its command line) and chats with the result."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import openai
from fastapi.testclient import TestClient

from tuneforge.config import ServeConfig
from tuneforge.jobs.files import open_file_store
from tuneforge.serve import create_app
from tuneforge.serve.engine import Engine

from helpers import toy_rows


def test_a_job_runs_against_postgresql(postgres_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    store = open_file_store(tmp_path / "data", str(tiny_model_dir), postgres_url)
    assert store.db.dialect.name == "postgresql"
    engine = Engine([], max_batch=1, base=str(tiny_model_dir))
    app = create_app([], ServeConfig(), engine=engine, files=store)
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=TestClient(app))
    try:
        data = "".join(json.dumps(r) + "\n" for r in toy_rows(40)).encode()
        training = client.files.create(file=("toy.jsonl", io.BytesIO(data)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=str(tiny_model_dir), training_file=training.id, hyperparameters={"n_epochs": 1},
            extra_body={"tuneforge": {"config": {"train.precision": "fp32"}}},
        )  # fmt: skip
        end = time.monotonic() + 240
        while (done := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
            assert time.monotonic() < end
            time.sleep(0.5)
        assert done.status == "succeeded", done.error
        assert any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=100))
        reply = client.chat.completions.create(
            model=done.fine_tuned_model or "", messages=[{"role": "user", "content": "Item 1"}], max_tokens=4
        )
        assert reply.model == done.fine_tuned_model
    finally:
        app.state.runner.stop()
        engine.close()
