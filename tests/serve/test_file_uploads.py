"""/v1/files with the official openai client: upload (validated by the data stage), list with cursor pages,
retrieve, content, delete; the errors as the client's typed exceptions; paths that cannot leave the data directory."""

from __future__ import annotations

import io
import json
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from tuneforge.config import ServeConfig
from tuneforge.jobs.db import open_database
from tuneforge.jobs.errors import NotFoundError
from tuneforge.jobs.files import FileStore
from tuneforge.jobs.records import FileRecord
from tuneforge.jobs.store import get_file
from tuneforge.serve import create_app

from helpers import ROOT, FakeEngine, toy_rows

KEY = "files-key"


@pytest.fixture
def store(tmp_path: Path, tiny_model_dir: Path) -> FileStore:
    return FileStore(tmp_path / "data", open_database(tmp_path / "data" / "tuneforge.db"), str(tiny_model_dir))


@pytest.fixture
def client(store: FileStore) -> openai.OpenAI:
    app = create_app([], ServeConfig(), api_key=KEY, engine=FakeEngine(), files=store)
    return openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=TestClient(app))


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_upload_validate_list_retrieve_content_delete(client: openai.OpenAI, store: FileStore) -> None:
    data = jsonl(toy_rows(30))
    uploaded = client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.filename == "train.jsonl" and uploaded.bytes == len(data)
    assert uploaded.status == "processed" and "30 chat records valid" in (uploaded.status_details or "")
    assert client.files.retrieve(uploaded.id) == uploaded
    assert client.files.content(uploaded.id).content == data
    stored = store.path(get_file(store.db, uploaded.id))
    assert (
        stored.parent == (store.data_dir / "files").resolve() and "train" not in stored.name
    )  # never the client's name
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    assert not stored.exists()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_list_pages_with_a_cursor(client: openai.OpenAI) -> None:
    ids = [client.files.create(file=(f"f{i}.jsonl", io.BytesIO(jsonl(toy_rows(12)))), purpose="fine-tune").id
           for i in range(3)]  # fmt: skip
    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids  # the client follows the cursor
    assert [f.id for f in client.files.list(after=ids[1], order="asc").data] == [ids[2]]


def test_a_broken_file_is_kept_with_its_findings(client: openai.OpenAI) -> None:
    broken = (ROOT / "examples" / "broken" / "chat.jsonl").read_bytes()
    uploaded = client.files.create(file=("chat.jsonl", io.BytesIO(broken)), purpose="fine-tune")
    assert uploaded.status == "error"
    details = uploaded.status_details or ""
    assert "line 2: invalid JSON" in details and "messages[1].role: unknown role 'bot'" in details
    assert str(ROOT) not in details  # the stored path is the server's business


def test_errors_are_the_clients_typed_exceptions(client: openai.OpenAI, store: FileStore) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("x.jsonl", io.BytesIO(b'{"a": 1}\n')), purpose="training")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "purpose"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="must be one of"):
        client.files.create(file=("model.exe", io.BytesIO(b"MZ")), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.files.create(file=("empty.jsonl", io.BytesIO(b"")), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.files.list(after="file-doesnotexist")
    keyless = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=client._client)
    with pytest.raises(openai.AuthenticationError):
        keyless.files.list()
    assert not list((store.data_dir / "files").glob(".upload-*"))  # refused uploads leave nothing behind


def test_a_stored_path_outside_the_files_folder_is_refused(store: FileStore) -> None:
    record = FileRecord("file-x", "a.jsonl", "fine-tune", 1, 0, "processed", None, "../tuneforge.db", "0" * 64)
    with pytest.raises(NotFoundError, match="inside the data directory"):
        store.path(record)


def test_a_server_without_a_data_directory_says_how_to_get_one() -> None:
    app = create_app([], ServeConfig(), engine=FakeEngine())
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=TestClient(app))
    with pytest.raises(openai.NotFoundError, match="--data-dir"):
        client.files.list()
