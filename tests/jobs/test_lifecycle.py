"""A job's life: every status change allowed or refused as the table says, claims never shared, dead workers found."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from tuneforge.jobs import store
from tuneforge.jobs.db import Database
from tuneforge.jobs.errors import ConflictError, TransitionError
from tuneforge.jobs.lifecycle import (
    TRANSITIONS,
    claim_next_job,
    find_stale_jobs,
    heartbeat,
    recover_stale_job,
    set_status,
    update_job,
)
from tuneforge.jobs.records import FINISHED, FileRecord, JobError, JobStatus

STATUSES: list[JobStatus] = list(TRANSITIONS)


@pytest.mark.parametrize("current", STATUSES)
def test_every_transition_is_allowed_or_refused_as_the_table_says(
    db: Database, train_file: FileRecord, current: JobStatus
) -> None:
    for target in STATUSES:
        job = store.create_job(db, "m", train_file.id, status=current)
        if target in TRANSITIONS[current]:
            moved = set_status(db, job.id, target, now=99)
            assert moved.status == target
            assert moved.finished_at == (99 if target in FINISHED else None)
        else:
            with pytest.raises(TransitionError) as caught:
                set_status(db, job.id, target)
            assert (caught.value.current, caught.value.requested) == (current, target)
            assert store.get_job(db, job.id).status == current


def test_cancelling_a_succeeded_job_is_a_conflict(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "m", train_file.id, status="running")
    set_status(db, job.id, "succeeded")
    with pytest.raises(ConflictError, match=f"job {job.id} is succeeded and cannot become cancelled") as caught:
        set_status(db, job.id, "cancelled")
    assert isinstance(caught.value, TransitionError) and caught.value.param == "status"
    assert "finished and cannot change" in str(caught.value)


def test_a_job_runs_from_queue_to_success(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "m", train_file.id)
    set_status(db, job.id, "queued")
    running = claim_next_job(db, worker_pid=4242, now=100)
    assert running is not None and (running.id, running.status, running.worker_pid) == (job.id, "running", 4242)
    assert claim_next_job(db, worker_pid=4243) is None  # nothing else queued
    update_job(db, job.id, estimated_finish=500, run_dir=f"runs/{job.id}")
    update_job(db, job.id, trained_tokens=1234, fine_tuned_model="ft:m:tuneforge::x", result_files=["file-r"])
    done = set_status(db, job.id, "succeeded", now=400)
    assert (done.status, done.finished_at, done.estimated_finish, done.trained_tokens) == ("succeeded", 400, None, 1234)
    assert (done.run_dir, done.fine_tuned_model) == (f"runs/{job.id}", "ft:m:tuneforge::x")
    assert done.result_files == ["file-r"]


def test_a_failure_keeps_its_error(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "m", train_file.id)
    error = JobError("invalid_training_file", "line 3 has no assistant message", "training_file")
    assert set_status(db, job.id, "failed", error=error).error == error
    assert store.get_job(db, job.id).error == error


def test_pause_stops_the_worker_and_resume_requeues(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "m", train_file.id, status="queued")
    claim_next_job(db, worker_pid=1)
    assert heartbeat(db, job.id, worker_pid=1) is True
    assert heartbeat(db, job.id, worker_pid=2) is False  # not its job
    set_status(db, job.id, "paused")
    assert heartbeat(db, job.id, worker_pid=1) is False  # the worker sees it must stop
    resumed = set_status(db, job.id, "queued")
    assert (resumed.status, resumed.worker_pid, resumed.heartbeat_at) == ("queued", None, None)
    again = claim_next_job(db, worker_pid=2)
    assert again is not None and again.worker_pid == 2


def test_jobs_are_claimed_oldest_first(db: Database, train_file: FileRecord) -> None:
    jobs = [store.create_job(db, "m", train_file.id, status="queued") for _ in range(3)]
    claimed = [claim_next_job(db, worker_pid=1) for _ in range(3)]
    assert [c.id for c in claimed if c] == [j.id for j in jobs]


def test_threads_never_claim_the_same_job(db: Database, train_file: FileRecord) -> None:
    jobs = {store.create_job(db, "m", train_file.id, status="queued").id for _ in range(50)}
    claims: list[list[str]] = [[] for _ in range(4)]

    def work(mine: list[str]) -> None:
        while (job := claim_next_job(db, worker_pid=threading.get_ident())) is not None:
            mine.append(job.id)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [j for mine in claims for j in mine]
    assert sorted(every) == sorted(jobs)  # each once, none lost


# A worker process: once told to go, claims until the queue is empty, then prints the ids it got.
_CLAIMER = """
import json, os, sys
from tuneforge.jobs.db import open_database
from tuneforge.jobs.lifecycle import claim_next_job
db = open_database(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
got = []
while (job := claim_next_job(db, worker_pid=os.getpid())) is not None:
    got.append(job.id)
print(json.dumps(got))
"""


def test_processes_never_claim_the_same_job(db: Database, train_file: FileRecord) -> None:
    jobs = {store.create_job(db, "m", train_file.id, status="queued").id for _ in range(50)}
    command = [sys.executable, "-c", _CLAIMER, db.url]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:  # both started before either claims, so that they race
        assert w.stdout is not None and w.stdout.readline() == "ready\n"
    for w in workers:
        assert w.stdin is not None
        w.stdin.write("go\n")
        w.stdin.flush()
    claims = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    assert sorted(claims[0] + claims[1]) == sorted(jobs)
    owners = {j.id: j.worker_pid for j in store.list_jobs(db, limit=100).data}
    assert all(owners[job_id] == worker.pid for worker, mine in zip(workers, claims, strict=True) for job_id in mine)


def test_a_dead_worker_is_found_and_its_job_recovered(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "m", train_file.id, status="queued")
    claim_next_job(db, worker_pid=7, now=1000)
    heartbeat(db, job.id, worker_pid=7, now=1050)
    assert find_stale_jobs(db, older_than_s=60, now=1100) == []
    stale = find_stale_jobs(db, older_than_s=60, now=1200)
    assert [j.id for j in stale] == [job.id] and stale[0].heartbeat_at == 1050
    heartbeat(db, job.id, worker_pid=7, now=1190)  # it was only slow: recovery must not take the job from it
    assert recover_stale_job(db, job.id, older_than_s=60, now=1200) is False
    assert recover_stale_job(db, job.id, older_than_s=60, now=1300) is True
    requeued = store.get_job(db, job.id)
    assert (requeued.status, requeued.worker_pid, requeued.heartbeat_at) == ("queued", None, None)
    assert heartbeat(db, job.id, worker_pid=7) is False  # the old worker, if it wakes, is told to stop
    claimed = claim_next_job(db, worker_pid=8, now=1400)
    assert claimed is not None and claimed.id == job.id


def test_a_dead_worker_job_can_be_failed_instead(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "m", train_file.id, status="queued")
    claim_next_job(db, worker_pid=7, now=1000)
    error = JobError("worker_died", "the worker stopped and no checkpoint can be resumed")
    assert recover_stale_job(db, job.id, older_than_s=60, status="failed", error=error, now=2000) is True
    failed = store.get_job(db, job.id)
    assert (failed.status, failed.error, failed.finished_at) == ("failed", error, 2000)
    with pytest.raises(TransitionError):
        recover_stale_job(db, job.id, older_than_s=60, status="succeeded")
