"""A job's life: allowed status changes, a worker's claim and heartbeat, and finding jobs whose worker died.

Every change is a compare-and-set (`UPDATE ... WHERE status = <the one just read>`) inside a write transaction. On
SQLite the write lock alone already serialises them; the compare-and-set keeps them right on a backend whose writers
only lock rows (PostgreSQL), where a lost race changes no row and the loop reads again.
"""

from __future__ import annotations

from typing import Any

from tuneforge.jobs.db import Database, Tx
from tuneforge.jobs.errors import TransitionError
from tuneforge.jobs.records import FINISHED, Job, JobError, JobStatus, check_choice, dumps, job_from_row, now_s
from tuneforge.jobs.store import get_job_in

# Where each status may go. running -> queued is the recovery of a job whose worker died; paused -> queued resumes.
TRANSITIONS: dict[JobStatus, tuple[JobStatus, ...]] = {
    "validating_files": ("queued", "failed", "cancelled"),
    "queued": ("running", "failed", "cancelled"),
    "running": ("succeeded", "failed", "cancelled", "paused", "queued"),
    "paused": ("queued", "failed", "cancelled"),
    "succeeded": (),
    "failed": (),
    "cancelled": (),
}
_RECOVERIES: tuple[JobStatus, ...] = ("queued", "failed", "cancelled")  # what a job whose worker died may become
_RETRIES = 100  # compare-and-set attempts before giving up; each failed one means another writer made progress


def set_status(
    db: Database, job_id: str, status: JobStatus, error: JobError | None = None, now: int | None = None
) -> Job:
    """Move a job to `status` (with the failure's `error`), or TransitionError (HTTP 409) if it may not go there."""
    check_choice(status, JobStatus, "status")
    now = now_s(now)
    with db.write() as tx:
        for _ in range(_RETRIES):
            job = get_job_in(tx, job_id)
            allowed = TRANSITIONS[job.status]
            if status not in allowed:
                raise TransitionError(job_id, job.status, status, allowed)
            changes: dict[str, Any] = {"status": status}
            if status in FINISHED:
                changes.update(finished_at=now, estimated_finish=None)
            if error is not None:
                changes["error"] = dumps(vars(error))
            if status == "queued":  # back in the queue: no worker owns it
                changes.update(worker_pid=None, heartbeat_at=None)
            if _compare_and_set(tx, job_id, job.status, changes):
                return get_job_in(tx, job_id)
    raise RuntimeError(f"job {job_id}: status kept changing under {_RETRIES} attempts to set it to {status}")


def _compare_and_set(
    tx: Tx, job_id: str, expected: JobStatus, changes: dict[str, Any], extra: tuple[str, list[Any]] = ("", [])
) -> bool:
    """Apply `changes` if the job's status is still `expected` (and the `extra` condition holds); whether it did."""
    assignments = ", ".join(f"{column} = ?" for column in changes)
    sql = f"UPDATE jobs SET {assignments} WHERE id = ? AND status = ?{extra[0]}"
    return tx.execute(sql, [*changes.values(), job_id, expected, *extra[1]]) == 1


def update_job(
    db: Database,
    job_id: str,
    estimated_finish: int | None = None,
    trained_tokens: int | None = None,
    fine_tuned_model: str | None = None,
    result_files: list[str] | None = None,
    run_dir: str | None = None,
) -> Job:
    """Record a job's progress or outcome; only the fields given (not None) change."""
    given = {
        "estimated_finish": estimated_finish,
        "trained_tokens": trained_tokens,
        "fine_tuned_model": fine_tuned_model,
        "result_files": dumps(result_files),
        "run_dir": run_dir,
    }
    changes = {column: value for column, value in given.items() if value is not None}
    with db.write() as tx:
        get_job_in(tx, job_id)  # NotFoundError for an unknown id
        if changes:
            assignments = ", ".join(f"{column} = ?" for column in changes)
            tx.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*changes.values(), job_id])
        return get_job_in(tx, job_id)


def claim_next_job(db: Database, worker_pid: int, now: int | None = None) -> Job | None:
    """Take the oldest queued job for this worker (status running, heartbeat now); None when the queue is empty."""
    now = now_s(now)
    with db.write() as tx:
        for _ in range(_RETRIES):
            row = tx.row("SELECT id FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", ["queued"])
            if row is None:
                return None
            changes = {"status": "running", "worker_pid": worker_pid, "heartbeat_at": now}
            if _compare_and_set(tx, row["id"], "queued", changes):
                return get_job_in(tx, row["id"])
    return None


def heartbeat(db: Database, job_id: str, worker_pid: int, now: int | None = None) -> bool:
    """Record that the worker is alive; False tells it to stop: the job was cancelled, paused or handed to another."""
    with db.write() as tx:
        sql = "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND status = ? AND worker_pid = ?"
        return tx.execute(sql, [now_s(now), job_id, "running", worker_pid]) == 1


def find_stale_jobs(db: Database, older_than_s: int, now: int | None = None) -> list[Job]:
    """Running jobs whose worker has not beaten for more than `older_than_s` seconds (it died), oldest first."""
    with db.read() as tx:
        rows = tx.rows(
            "SELECT * FROM jobs WHERE status = ? AND (heartbeat_at IS NULL OR heartbeat_at < ?) ORDER BY seq",
            ["running", now_s(now) - older_than_s],
        )
    return [job_from_row(r) for r in rows]


def recover_stale_job(
    db: Database,
    job_id: str,
    older_than_s: int,
    status: JobStatus = "queued",
    error: JobError | None = None,
    now: int | None = None,
) -> bool:
    """Requeue (to resume from its checkpoint) or fail a job whose worker died; False if it beat again meanwhile."""
    if status not in _RECOVERIES:
        raise TransitionError(job_id, "running (stale)", status, _RECOVERIES)
    now = now_s(now)
    changes: dict[str, Any] = {"status": status, "worker_pid": None, "heartbeat_at": None}
    if status in FINISHED:
        changes.update(finished_at=now, estimated_finish=None, error=dumps(None if error is None else vars(error)))
    stale = (" AND (heartbeat_at IS NULL OR heartbeat_at < ?)", [now - older_than_s])
    with db.write() as tx:
        return _compare_and_set(tx, job_id, "running", changes, stale)
