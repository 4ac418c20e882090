"""The jobs store: each record round-trips, lists page like OpenAI's, and bad values are refused with their field."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tuneforge.jobs import store
from tuneforge.jobs.db import Database
from tuneforge.jobs.errors import ConflictError, InvalidRequestError, NotFoundError
from tuneforge.jobs.lifecycle import set_status, update_job
from tuneforge.jobs.records import FileRecord, JobEvent, Page, new_id

AddFile = Callable[..., FileRecord]  # the add_file fixture


def test_ids_are_prefixed_random_base62() -> None:
    ids = {new_id("file-") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"file-[A-Za-z0-9]{24}", i) for i in ids)


def test_a_file_round_trips_and_deletes_once(db: Database, add_file: AddFile) -> None:
    created = add_file("data.jsonl")
    assert created.status == "uploaded" and created.id.startswith("file-")
    assert store.get_file(db, created.id) == created
    processed = store.set_file_status(db, created.id, "error", "line 3: no assistant message")
    assert (processed.status, processed.status_details) == ("error", "line 3: no assistant message")
    assert store.delete_file(db, created.id) is True
    assert store.delete_file(db, created.id) is False
    with pytest.raises(NotFoundError) as caught:
        store.get_file(db, created.id)
    assert caught.value.param == "file_id"


def test_a_file_over_2_gib_made_after_2038_round_trips(db: Database) -> None:
    big = store.create_file(db, "huge.jsonl", "fine-tune", 5 * 2**30, "files/huge.jsonl", "0" * 64, now=2**32)
    assert store.get_file(db, big.id) == big  # 64-bit integers on both backends


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "files/../../x", "C:\\x", "\\\\server\\x", ""])
def test_a_path_outside_the_data_directory_is_refused(db: Database, path: str) -> None:
    with pytest.raises(InvalidRequestError, match="relative to the data directory") as caught:
        store.create_file(db, "x.jsonl", "fine-tune", 1, path, "0" * 64)
    assert caught.value.param == "path"


def test_bad_file_fields_are_refused(db: Database) -> None:
    with pytest.raises(InvalidRequestError, match="purpose 'fine-tuning' is not one of"):
        store.create_file(db, "x.jsonl", "fine-tuning", 1, "files/x", "0" * 64)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="sha256"):
        store.create_file(db, "x.jsonl", "fine-tune", 1, "files/x", "abc")


def _ids(page: Page[Any]) -> list[str]:
    return [record.id for record in page.data]


def test_files_page_in_both_orders(db: Database, add_file: AddFile) -> None:
    files = [add_file(f"f{i}.jsonl", "fine-tune" if i % 2 else "batch") for i in range(5)]
    everything = [f.id for f in files]
    assert _ids(store.list_files(db)) == everything[::-1]  # newest first by default
    first = store.list_files(db, limit=2, order="asc")
    assert (_ids(first), first.has_more, first.first_id, first.last_id) == (everything[:2], True, *everything[:2])
    rest = store.list_files(db, after=first.last_id, limit=3, order="asc")
    assert (_ids(rest), rest.has_more) == (everything[2:], False)
    assert _ids(store.list_files(db, after=everything[3], order="desc")) == everything[:3][::-1]
    assert _ids(store.list_files(db, purpose="fine-tune")) == [everything[3], everything[1]]
    # A cursor is a position, whatever its purpose: the next fine-tune files after a batch file.
    assert _ids(store.list_files(db, purpose="fine-tune", after=everything[2], order="asc")) == [everything[3]]
    empty = store.list_files(db, after=everything[-1], order="asc")
    assert (empty.data, empty.has_more, empty.first_id, empty.last_id) == ([], False, None, None)


def test_bad_pages_are_refused(db: Database) -> None:
    for limit in (0, 10_001):
        with pytest.raises(InvalidRequestError, match="limit must be between 1 and 10000") as caught:
            store.list_files(db, limit=limit)
        assert caught.value.param == "limit"
    with pytest.raises(NotFoundError, match="to list after") as missing:
        store.list_files(db, after="file-nope")
    assert missing.value.param == "after"
    with pytest.raises(InvalidRequestError, match="order"):
        store.list_files(db, order="newest")  # type: ignore[arg-type]


def test_a_job_round_trips(db: Database, add_file: AddFile) -> None:
    train, val = add_file("train.jsonl"), add_file("val.jsonl")
    job = store.create_job(
        db, "HuggingFaceTB/SmolLM2-135M-Instruct", train.id, val.id,
        hyperparameters={"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": 0.5},
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}, suffix="contracts", seed=7,
        metadata={"team": "legal", "ticket": "42"}, tuneforge={"method": "lora", "privacy": "strict"},
        now=1_700_000_000,
    )  # fmt: skip
    assert job.id.startswith("ftjob-") and job.status == "validating_files" and job.result_files == []
    assert job.created_at == 1_700_000_000 and job.finished_at is None and job.error is None
    assert store.get_job(db, job.id) == job
    assert store.create_job(db, "m", train.id).seed in range(2**31)  # drawn when not given, as OpenAI does


def test_a_job_needs_existing_files_and_valid_metadata(db: Database, train_file: FileRecord) -> None:
    with pytest.raises(InvalidRequestError, match="training_file 'file-nope' does not exist") as caught:
        store.create_job(db, "m", "file-nope")
    assert caught.value.param == "training_file"
    with pytest.raises(InvalidRequestError) as caught:
        store.create_job(db, "m", train_file.id, validation_file="file-nope")
    assert caught.value.param == "validation_file"
    with pytest.raises(InvalidRequestError, match="17 keys") as caught:
        store.create_job(db, "m", train_file.id, metadata={f"k{i}": "v" for i in range(17)})
    assert caught.value.param == "metadata"
    with pytest.raises(InvalidRequestError, match="at most 512"):
        store.create_job(db, "m", train_file.id, metadata={"k": "v" * 513})
    assert store.list_jobs(db).data == []  # nothing half-written
    with pytest.raises(NotFoundError, match="no fine-tuning job"):
        store.get_job(db, "ftjob-nope")


def test_jobs_list_newest_first_and_filter_by_metadata(db: Database, train_file: FileRecord) -> None:
    jobs = [store.create_job(db, "m", train_file.id, metadata={"team": "ab"[i % 2], "n": str(i)}) for i in range(5)]
    newest_first = [j.id for j in reversed(jobs)]
    first = store.list_jobs(db, limit=2)
    assert (_ids(first), first.has_more) == (newest_first[:2], True)
    assert _ids(store.list_jobs(db, after=first.last_id)) == newest_first[2:]
    assert _ids(store.list_jobs(db, metadata={"team": "a"})) == [jobs[4].id, jobs[2].id, jobs[0].id]
    assert _ids(store.list_jobs(db, metadata={"team": "a", "n": "2"})) == [jobs[2].id]
    assert _ids(store.list_jobs(db, metadata={"team": "c"})) == []
    assert _ids(store.list_jobs(db, metadata={"team": "a"}, after=jobs[3].id)) == [jobs[2].id, jobs[0].id]


def test_events_round_trip_and_page_newest_first(db: Database, train_file: FileRecord) -> None:
    job, other = store.create_job(db, "m", train_file.id), store.create_job(db, "m", train_file.id)
    created = store.append_event(db, job.id, "Validating training file", now=5)
    assert created == JobEvent(created.id, job.id, 5, "info", "Validating training file", "message", None)
    for step in range(1, 4):
        store.append_event(db, job.id, f"Step {step}/3", type="metrics", data={"step": step, "train_loss": 1 / step})
    store.append_event(db, other.id, "someone else's", level="warn")
    page = store.list_events(db, job.id, limit=3)
    assert [e.message for e in page.data] == ["Step 3/3", "Step 2/3", "Step 1/3"] and page.has_more
    assert page.data[0].data == {"step": 3, "train_loss": 1 / 3}
    assert store.list_events(db, job.id, after=page.last_id).data == [created]
    with pytest.raises(NotFoundError):
        store.append_event(db, "ftjob-nope", "hi")
    with pytest.raises(InvalidRequestError, match="level 'debug'"):
        store.append_event(db, job.id, "hi", level="debug")  # type: ignore[arg-type]


def test_checkpoints_round_trip_once_per_step(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "m", train_file.id)
    saved = [
        store.add_checkpoint(db, job.id, step, {"step": step, "train_loss": 0.5}, f"ft:m::x:{job.id}:ckpt-step-{step}",
                             f"runs/{job.id}/checkpoints/step-{step}")
        for step in (10, 20, 30)
    ]  # fmt: skip
    assert saved[0].id.startswith("ftckpt-")
    page = store.list_checkpoints(db, job.id, limit=2)
    assert (page.data, page.has_more) == (saved[:0:-1], True)
    assert store.list_checkpoints(db, job.id, after=page.last_id).data == [saved[0]]
    with pytest.raises(ConflictError, match="already has a checkpoint at step 20") as caught:
        store.add_checkpoint(db, job.id, 20, {}, "again", "runs/again")
    assert caught.value.param == "step_number"
    with pytest.raises(InvalidRequestError):
        store.add_checkpoint(db, job.id, 40, {}, "escape", "../../elsewhere")


def test_a_served_model_is_deleted_once(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "m", train_file.id, status="running")
    update_job(db, job.id, fine_tuned_model="ft:m:tuneforge::x")
    set_status(db, job.id, "succeeded")
    assert [j.id for j in store.served_models(db)] == [job.id]
    assert store.delete_model(db, "ft:m:tuneforge::x") is True
    assert store.delete_model(db, "ft:m:tuneforge::x") is False  # already deleted
    assert store.delete_model(db, "ft:m:tuneforge::never") is False
    assert store.served_models(db) == []
