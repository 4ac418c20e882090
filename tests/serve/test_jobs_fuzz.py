"""A fuzz of the files and fine-tuning jobs routes: valid-shaped, mutated and garbage bodies, query parameters and
uploads never get a 5xx, and every error is OpenAI's shape (derandomized: the same examples on every run). The jobs
are recorded but not run (the runner is not started)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz import FUZZ, edges, junk, numbers, texts

from tuneforge.config import ServeConfig
from tuneforge.jobs.db import open_database
from tuneforge.jobs.files import FileStore
from tuneforge.jobs.runner import JobRunner
from tuneforge.serve import create_app
from tuneforge.serve.protocol import ErrorResponse

from helpers import FakeEngine, toy_rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[TestClient, str]:
    data = tmp_path_factory.mktemp("fuzz")
    store = FileStore(data, open_database(data / "tuneforge.db"), str(tiny_model_dir))
    app = create_app([], ServeConfig(), engine=FakeEngine(), files=store, run_jobs=False)
    app.state.runner = JobRunner(data, store.db)  # routes work, nothing trains
    client = TestClient(app)
    rows = "".join(json.dumps(r) + "\n" for r in toy_rows(12)).encode()
    good = client.post("/v1/files", files={"file": ("t.jsonl", io.BytesIO(rows))}, data={"purpose": "fine-tune"})
    assert good.json()["status"] == "processed"
    return client, good.json()["id"]


QUERY_KEYS = ["after", "limit", "order", "purpose", "metadata[a]"]
# what an HTTP client can put in a URL at all (a lone surrogate or a control character fails in the client)
url_texts = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=30)


def check(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        ErrorResponse.model_validate(response.json())


def hyper() -> st.SearchStrategy[Any]:
    value = st.one_of(st.just("auto"), numbers, edges, texts)
    keys = st.sampled_from(["n_epochs", "batch_size", "learning_rate_multiplier", "beta", "x"])
    return st.dictionaries(keys, value, max_size=4) | junk


def job_bodies(file_id: str) -> st.SearchStrategy[Any]:
    valid = st.fixed_dictionaries(
        {"model": st.sampled_from(["fake/base", "base", ""]), "training_file": st.sampled_from([file_id, "file-x"])},
        optional={
            "validation_file": st.sampled_from([file_id, "file-y"]) | junk,
            "hyperparameters": hyper(),
            "method": st.fixed_dictionaries(
                {"type": st.sampled_from(["supervised", "dpo", "rl"])},
                optional={
                    "supervised": st.fixed_dictionaries({"hyperparameters": hyper()}),
                    "dpo": st.fixed_dictionaries({"hyperparameters": hyper()}),
                },
            )
            | junk,  # fmt: skip
            "suffix": texts | junk,
            "seed": numbers | junk,
            "metadata": st.dictionaries(texts, texts, max_size=20) | junk,
            "tuneforge": st.fixed_dictionaries({"config": st.dictionaries(texts, junk, max_size=2)}) | junk,
        },
    )
    return st.one_of(valid, valid, junk, st.binary(max_size=30))


def test_fuzzed_job_bodies_never_get_a_5xx(setup: tuple[TestClient, str]) -> None:
    client, file_id = setup

    @settings(FUZZ, max_examples=300)
    @given(body=job_bodies(file_id))
    def run(body: Any) -> None:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        check(client.post("/v1/fine_tuning/jobs", content=content, headers={"content-type": "application/json"}))

    run()


def test_fuzzed_queries_and_paths_never_get_a_5xx(setup: tuple[TestClient, str]) -> None:
    client, file_id = setup
    jobs = "/v1/fine_tuning/jobs"
    paths = ["/v1/files", jobs, "/v1/files/{x}", "/v1/files/{x}/content", f"{jobs}/{{x}}", f"{jobs}/{{x}}/events"]
    paths.append(f"{jobs}/{{x}}/checkpoints")

    @settings(FUZZ, max_examples=200)
    @given(
        path=st.sampled_from(paths),
        x=url_texts | st.just(file_id),
        query=st.dictionaries(st.sampled_from(QUERY_KEYS), url_texts | numbers.map(str)),
    )  # fmt: skip
    def run(path: str, x: str, query: dict[str, str]) -> None:
        check(
            client.get(path.replace("{x}", x.replace("/", "%2F").replace("?", "%3F").replace("#", "%23")), params=query)
        )

    run()


def test_fuzzed_uploads_never_get_a_5xx(setup: tuple[TestClient, str]) -> None:
    client, _ = setup

    @settings(FUZZ, max_examples=60)
    @given(
        name=url_texts | st.sampled_from(["../../etc/passwd.jsonl", "a.jsonl", "x.csv", "y.parquet", "z.txt"]),
        purpose=st.sampled_from(["fine-tune", "batch", "nonsense", ""]),
        content=st.binary(max_size=200) | st.sampled_from([b'{"messages": []}\n', b"a,b\n1,2\n", b"PAR1garbage"]),
    )
    def run(name: str, purpose: str, content: bytes) -> None:
        check(client.post("/v1/files", files={"file": (name or "f", io.BytesIO(content))}, data={"purpose": purpose}))

    run()
