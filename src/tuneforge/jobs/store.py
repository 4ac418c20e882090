"""The jobs service's store: files, jobs, events and checkpoints, each write one transaction.

Lists page like OpenAI's: `after` is the id of the last record already seen, `limit` the page size; records are
ordered by insertion (`seq`, which follows `created_at` but never ties). A job's status changes live in `lifecycle`.
Table names are constants; every value reaches the SQL as a parameter.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from tuneforge.jobs.db import Database, Row, Tx
from tuneforge.jobs.errors import ConflictError, InvalidRequestError, NotFoundError
from tuneforge.jobs.records import (
    Checkpoint,
    EventLevel,
    EventType,
    FilePurpose,
    FileRecord,
    FileStatus,
    Job,
    JobEvent,
    JobStatus,
    Page,
    check_choice,
    check_limit,
    check_metadata,
    check_relative_path,
    check_sha256,
    checkpoint_from_row,
    dumps,
    event_from_row,
    file_from_row,
    job_from_row,
    new_id,
    now_s,
)

T = TypeVar("T")
Order = Literal["asc", "desc"]


def _insert(tx: Tx, table: str, values: dict[str, Any], unless_duplicate: bool = False) -> bool:
    """Insert one row; with `unless_duplicate`, a row breaking a UNIQUE constraint is skipped. Whether it went in.

    The skip is for uniqueness checked before writing: on PostgreSQL a concurrent writer can insert the same key
    between the check and the insert (SQLite's write lock rules that out), and this turns the race into the check's
    answer instead of a driver error.
    """
    columns, markers = ", ".join(values), ", ".join("?" * len(values))
    conflict = " ON CONFLICT DO NOTHING" if unless_duplicate else ""
    return tx.execute(f"INSERT INTO {table} ({columns}) VALUES ({markers}){conflict}", list(values.values())) == 1


def _page(
    tx: Tx,
    table: str,
    convert: Callable[[Row], T],
    where: tuple[str, list[Any]],
    after: str | None,
    limit: int,
    order: Order,
) -> Page[T]:
    """One page of `table` in `order` of insertion, starting after the record `after` (of any filter)."""
    check_limit(limit)
    check_choice(order, Order, "order")
    clause, params = where
    if after is not None:
        cursor = tx.row(f"SELECT seq FROM {table} WHERE id = ?", [after])
        if cursor is None:
            raise NotFoundError(f"no record {after!r} to list after", "pass an id from the previous page", "after")
        clause, params = f"{clause} AND seq {'<' if order == 'desc' else '>'} ?", [*params, cursor["seq"]]
    sql = f"SELECT * FROM {table} WHERE {clause} ORDER BY seq {order.upper()} LIMIT ?"
    rows = tx.rows(sql, [*params, limit + 1])
    return Page([convert(r) for r in rows[:limit]], has_more=len(rows) > limit)


# Files -------------------------------------------------------------------------------------------------------------


def create_file(
    db: Database,
    filename: str,
    purpose: FilePurpose,
    bytes: int,
    path: str,
    sha256: str,
    status: FileStatus = "uploaded",
    now: int | None = None,
) -> FileRecord:
    """Record an uploaded file (already written under the data directory at `path`)."""
    check_choice(purpose, FilePurpose, "purpose")
    check_choice(status, FileStatus, "status")
    check_relative_path(path)
    check_sha256(sha256)
    if not filename or bytes < 0:
        raise InvalidRequestError(f"a file needs a name and a size >= 0, got {filename!r} of {bytes}", param="file")
    record = FileRecord(new_id("file-"), filename, purpose, bytes, now_s(now), status, None, path, sha256)
    with db.write() as tx:
        _insert(tx, "files", vars(record))
    return record


def get_file(db: Database, file_id: str) -> FileRecord:
    """A file by id, or NotFoundError."""
    with db.read() as tx:
        return _get_file(tx, file_id)


def _get_file(tx: Tx, file_id: str) -> FileRecord:
    row = tx.row("SELECT * FROM files WHERE id = ?", [file_id])
    if row is None:
        raise NotFoundError(f"no file {file_id!r}", "list the files with GET /v1/files", "file_id")
    return file_from_row(row)


def list_files(
    db: Database, after: str | None = None, limit: int = 10_000, order: Order = "desc", purpose: str | None = None
) -> Page[FileRecord]:
    """Files newest first by default (OpenAI: limit 1..10000, default 10000), optionally of one purpose."""
    where = ("purpose = ?", [purpose]) if purpose is not None else ("1 = 1", [])
    with db.read() as tx:
        return _page(tx, "files", file_from_row, where, after, limit, order)


def set_file_status(db: Database, file_id: str, status: FileStatus, status_details: str | None = None) -> FileRecord:
    """Record the outcome of validating a file: processed, or error with the findings in `status_details`."""
    check_choice(status, FileStatus, "status")
    with db.write() as tx:
        tx.execute("UPDATE files SET status = ?, status_details = ? WHERE id = ?", [status, status_details, file_id])
        return _get_file(tx, file_id)


def delete_file(db: Database, file_id: str) -> bool:
    """Delete a file's row (jobs keep its id, as OpenAI's do); whether it existed. The caller removes the bytes."""
    with db.write() as tx:
        return tx.execute("DELETE FROM files WHERE id = ?", [file_id]) == 1


# Jobs --------------------------------------------------------------------------------------------------------------


def create_job(
    db: Database,
    model: str,
    training_file: str,
    validation_file: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
    method: dict[str, Any] | None = None,
    suffix: str | None = None,
    seed: int | None = None,
    metadata: dict[str, str] | None = None,
    tuneforge: dict[str, Any] | None = None,
    status: JobStatus = "validating_files",
    now: int | None = None,
) -> Job:
    """Record a new job; its files must exist. A missing seed is drawn at random, as OpenAI does."""
    check_metadata(metadata)
    check_choice(status, JobStatus, "status")
    job = Job(
        id=new_id("ftjob-"), model=model, training_file=training_file, validation_file=validation_file,
        hyperparameters=hyperparameters or {}, method=method, suffix=suffix,
        seed=secrets.randbelow(2**31) if seed is None else seed, metadata=metadata, status=status, error=None,
        fine_tuned_model=None, trained_tokens=None, result_files=[], estimated_finish=None, created_at=now_s(now),
        finished_at=None, run_dir=None, tuneforge=tuneforge or {}, worker_pid=None, heartbeat_at=None,
    )  # fmt: skip
    json_columns = ("hyperparameters", "method", "metadata", "result_files", "tuneforge", "error")
    row = {k: dumps(v) if k in json_columns else v for k, v in vars(job).items()}
    with db.write() as tx:
        for param, file_id in (("training_file", training_file), ("validation_file", validation_file)):
            if file_id is not None and tx.row("SELECT id FROM files WHERE id = ?", [file_id]) is None:
                raise InvalidRequestError(f"{param} {file_id!r} does not exist", "upload it first", param=param)
        _insert(tx, "jobs", row)
        for key, value in (metadata or {}).items():
            _insert(tx, "job_metadata", {"job_id": job.id, "key": key, "value": value})
    return job


def get_job(db: Database, job_id: str) -> Job:
    """A job by id, or NotFoundError."""
    with db.read() as tx:
        return get_job_in(tx, job_id)


def get_job_in(tx: Tx, job_id: str) -> Job:
    """A job by id inside an open transaction, or NotFoundError."""
    row = tx.row("SELECT * FROM jobs WHERE id = ?", [job_id])
    if row is None:
        raise NotFoundError(f"no fine-tuning job {job_id!r}", "list the jobs with GET /v1/fine_tuning/jobs", "job_id")
    return job_from_row(row)


def list_jobs(
    db: Database, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
) -> Page[Job]:
    """Jobs newest first (OpenAI: default 20), only those carrying every given metadata key=value pair."""
    clause, params = "1 = 1", []
    for key, value in (metadata or {}).items():
        clause += " AND EXISTS (SELECT 1 FROM job_metadata m WHERE m.job_id = jobs.id AND m.key = ? AND m.value = ?)"
        params += [key, value]
    with db.read() as tx:
        return _page(tx, "jobs", job_from_row, (clause, params), after, limit, "desc")


# Events and checkpoints --------------------------------------------------------------------------------------------


def _require_job(tx: Tx, job_id: str) -> None:
    if tx.row("SELECT id FROM jobs WHERE id = ?", [job_id]) is None:
        raise NotFoundError(f"no fine-tuning job {job_id!r}", "list the jobs with GET /v1/fine_tuning/jobs", "job_id")


def append_event(
    db: Database,
    job_id: str,
    message: str,
    level: EventLevel = "info",
    type: EventType = "message",
    data: dict[str, Any] | None = None,
    now: int | None = None,
) -> JobEvent:
    """Add a line to a job's log (`type` metrics: one step's numbers in `data`)."""
    check_choice(level, EventLevel, "level")
    check_choice(type, EventType, "type")
    event = JobEvent(new_id("ftevent-"), job_id, now_s(now), level, message, type, data)
    with db.write() as tx:
        _require_job(tx, job_id)
        _insert(tx, "events", {**vars(event), "data": dumps(data)})
    return event


def list_events(db: Database, job_id: str, after: str | None = None, limit: int = 20) -> Page[JobEvent]:
    """A job's events newest first (OpenAI: default 20)."""
    with db.read() as tx:
        _require_job(tx, job_id)
        return _page(tx, "events", event_from_row, ("job_id = ?", [job_id]), after, limit, "desc")


def add_checkpoint(
    db: Database,
    job_id: str,
    step_number: int,
    metrics: dict[str, Any],
    fine_tuned_model_checkpoint: str,
    path: str,
    now: int | None = None,
) -> Checkpoint:
    """Record a saved checkpoint of a job (its folder already written at `path`, relative to the data directory)."""
    check_relative_path(path)
    checkpoint = Checkpoint(
        new_id("ftckpt-"), job_id, step_number, metrics, fine_tuned_model_checkpoint, path, now_s(now)
    )
    with db.write() as tx:
        _require_job(tx, job_id)
        if not _insert(tx, "checkpoints", {**vars(checkpoint), "metrics": dumps(metrics)}, unless_duplicate=True):
            raise ConflictError(
                f"job {job_id} already has a checkpoint at step {step_number}",
                "record each step once",
                "step_number",
            )
    return checkpoint


def list_checkpoints(db: Database, job_id: str, after: str | None = None, limit: int = 10) -> Page[Checkpoint]:
    """A job's checkpoints newest first (OpenAI: default 10)."""
    with db.read() as tx:
        _require_job(tx, job_id)
        return _page(tx, "checkpoints", checkpoint_from_row, ("job_id = ?", [job_id]), after, limit, "desc")


def find_checkpoint(db: Database, model: str) -> Checkpoint | None:
    """The checkpoint of a succeeded job whose model name (`ft:...:ckpt-step-N`) is `model`, if any."""
    with db.read() as tx:
        row = tx.row(
            "SELECT c.* FROM checkpoints c JOIN jobs j ON j.id = c.job_id "
            "WHERE c.fine_tuned_model_checkpoint = ? AND j.status = ?",
            [model, "succeeded"],
        )
    return None if row is None else checkpoint_from_row(row)


# Models ------------------------------------------------------------------------------------------------------------


def served_models(db: Database) -> list[Job]:
    """The succeeded jobs whose fine-tuned model was not deleted, oldest first: what a (re)started server serves."""
    with db.read() as tx:
        rows = tx.rows(
            "SELECT * FROM jobs WHERE status = ? AND fine_tuned_model IS NOT NULL AND fine_tuned_model NOT IN "
            "(SELECT model FROM deleted_models) ORDER BY seq",
            ["succeeded"],
        )
    return [job_from_row(r) for r in rows]


def delete_model(db: Database, model: str) -> bool:
    """Record that a fine-tuned model is deleted (its job keeps the name, as OpenAI's do); whether it was served."""
    with db.write() as tx:
        owned = tx.row("SELECT id FROM jobs WHERE fine_tuned_model = ? AND status = ?", [model, "succeeded"])
        deleted = {"model": model, "deleted_at": now_s()}
        return owned is not None and _insert(tx, "deleted_models", deleted, unless_duplicate=True)
