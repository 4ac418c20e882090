"""A server killed with SIGKILL while a job trains comes back with the job resumed from its last checkpoint: nothing
uploaded, logged or checkpointed is lost, and no training process is left behind."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai

from helpers import toy_rows

KEY = "recovery-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, model: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tuneforge", "serve", "--data-dir", str(data), "--model", str(model)]
    server = subprocess.Popen(
        [*command, "--port", str(port)], env={**os.environ, "TUNEFORGE_API_KEY": KEY}, stdout=subprocess.DEVNULL,
        stderr=open(data / "server.log", "ab"),  # noqa: SIM115
    )  # fmt: skip
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            client.models.list()
            return server
        except openai.APIConnectionError:
            time.sleep(0.5)
    server.kill()
    raise AssertionError((data / "server.log").read_text()[-2000:])


def workers(job_id: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"tuneforge.jobs.worker .* {job_id}"], capture_output=True, text=True)
    return found.stdout.split()


def test_a_killed_server_resumes_its_job_from_the_last_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    data, port = tmp_path / "data", free_port()
    data.mkdir()
    server = start_server(data, tiny_model_dir, port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    try:
        rows = "".join(json.dumps(r) + "\n" for r in toy_rows(60)).encode()
        training = client.files.create(file=("toy.jsonl", io.BytesIO(rows)), purpose="fine-tune")
        config = {"train.precision": "fp32", "train.learning_rate": 0.01, "train.save_steps": 4}
        job = client.fine_tuning.jobs.create(
            model=str(tiny_model_dir), training_file=training.id, hyperparameters={"n_epochs": 12},
            extra_body={"tuneforge": {"config": config}},
        )  # fmt: skip
        checkpoints = data / "runs" / job.id / "checkpoints"
        end = time.monotonic() + 180
        while not any(checkpoints.glob("step-*")) and time.monotonic() < end:
            time.sleep(0.2)
        assert any(checkpoints.glob("step-*")), "no checkpoint was written"
        server.send_signal(signal.SIGKILL)
        server.wait()
        end = time.monotonic() + 10
        while workers(job.id) and time.monotonic() < end:
            time.sleep(0.2)
        assert not workers(job.id), "the training process outlived its server"
        server = start_server(data, tiny_model_dir, port)
        end = time.monotonic() + 300
        while (done := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
            assert time.monotonic() < end, "the resumed job did not finish"
            time.sleep(0.5)
        assert done.status == "succeeded", done.error
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
        assert "The server restarted: the job resumes from its last checkpoint" in messages
        assert "Fine-tuning job resumed from its last checkpoint" in messages
        assert client.files.retrieve(training.id).status == "processed"  # nothing uploaded is lost
        assert done.fine_tuned_model in [m.id for m in client.models.list()]
        server.kill()
        server.wait()
        server = start_server(data, tiny_model_dir, port)  # a restart serves what earlier jobs trained
        assert done.fine_tuned_model in [m.id for m in client.models.list()]
    finally:
        server.kill()
        server.wait()
