"""The job runner: a thread of the server that runs queued jobs one at a time, each in a worker process
(`python -m tuneforge.jobs.worker`), heartbeating for it, ending it on cancel, and recovering after a restart.

One at a time because one machine trains one model well (two would halve each other's speed on the same cores or
GPU). A server killed while a job ran leaves the job "running" with a heartbeat that stops; the next start finds it
(older than STALE_S) and queues it again, and its worker resumes from the newest checkpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tuneforge.jobs.db import Database
from tuneforge.jobs.errors import TransitionError
from tuneforge.jobs.files import DATABASE_ENV
from tuneforge.jobs.lifecycle import claim_next_job, find_stale_jobs, heartbeat, recover_stale_job, set_status
from tuneforge.jobs.records import Job, JobError
from tuneforge.jobs.store import append_event, get_job

HEARTBEAT_S = 2.0  # how often the runner says its job is alive (and looks for a cancel)
STALE_S = 30  # a running job without a heartbeat for this long lost its server: it is queued again


class JobRunner:
    """Runs the data directory's queued jobs; `on_success(job)` is called when one succeeds (the server starts
    serving its model then)."""

    def __init__(
        self,
        data_dir: Path,
        db: Database,
        on_success: Callable[[Job], None] | None = None,
        on_removed: Callable[[Job], None] | None = None,
    ) -> None:
        self.data_dir, self.db, self.on_success, self.on_removed = Path(data_dir), db, on_success, on_removed
        self.current: str | None = None  # the job this runner's worker is running
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tuneforge-jobs", daemon=True)

    def start(self) -> JobRunner:
        """Requeue the jobs a killed server left running, then start taking jobs."""
        self._recover()
        self.thread.start()
        return self

    def _recover(self) -> None:
        """Queue again every running job whose runner is gone: its process no longer exists (this machine), or it
        has not beaten for STALE_S (another machine's)."""
        now = time.time()
        for job in find_stale_jobs(self.db, -1):  # every running job
            if job.id == self.current:
                continue  # this runner's own
            # claimed by a process that is gone, or by this very pid before a restart (containers reuse pid 1)
            dead = job.worker_pid is None or job.worker_pid == os.getpid() or not _alive(job.worker_pid)
            stale = job.heartbeat_at is None or job.heartbeat_at < now - STALE_S
            if (dead or stale) and recover_stale_job(self.db, job.id, -1 if dead else STALE_S, status="queued"):
                append_event(self.db, job.id, "The server restarted: the job resumes from its last checkpoint")

    def notify(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            job = claim_next_job(self.db, os.getpid())
            if job is None:
                self.wake.wait(HEARTBEAT_S)
                self.wake.clear()
                self._recover()
                continue
            try:
                self._run(job)
            except Exception:  # a database or serving error must not stop every later job
                logging.getLogger(__name__).exception("running job %s", job.id)

    def _run(self, job: Job) -> None:
        """Run one claimed job's worker to its end, heartbeating; end it when the job is cancelled."""
        self.current = job.id
        try:
            self._supervise(job)
        finally:
            self.current = None

    def _supervise(self, job: Job) -> None:
        with self._log(job).open("ab") as log:  # the worker's own output, for the operator
            worker = subprocess.Popen(
                [sys.executable, "-m", "tuneforge.jobs.worker", str(self.data_dir), job.id],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self._worker_env(),
            )
        while True:
            try:
                worker.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                pass
            # the server stops (the job is queued again at the next start), or the job was cancelled or paused
            if self.stopping.is_set() or not heartbeat(self.db, job.id, os.getpid()):
                worker.terminate()
                worker.wait()
                if self.stopping.is_set():
                    append_event(self.db, job.id, "The server stopped: training goes on when it starts again")
                return
        self._finished(job, worker.returncode)

    def _finished(self, job: Job, code: int) -> None:
        """A worker that ended: its model served and the job succeeded, or the job failed with why."""
        done = get_job(self.db, job.id)
        if done.status != "running":  # failed by the worker with its reason, or cancelled meanwhile
            return
        if code == 0 and done.fine_tuned_model:
            try:
                if self.on_success is not None:
                    self.on_success(done)  # served before "succeeded": a client that sees it can use the model
            except Exception as exc:  # noqa: BLE001  # the model trained, but the server cannot load it
                self._fail(job, JobError("serving_failed", f"the model trained but could not be served: {exc}"))
                return
            try:
                set_status(self.db, job.id, "succeeded")
            except TransitionError:  # cancelled while its model was being loaded: it is not served
                if self.on_removed is not None:
                    self.on_removed(done)
                return
            append_event(self.db, job.id, "The job has successfully completed")
            return
        log = self._log(job).relative_to(self.data_dir)
        self._fail(job, JobError("worker_exited", f"the training process exited with code {code}; see <data>/{log}"))

    def _fail(self, job: Job, error: JobError) -> None:
        set_status(self.db, job.id, "failed", error)
        append_event(self.db, job.id, f"Fine-tuning job failed: {error.message}", level="error")

    def _worker_env(self) -> dict[str, str]:
        """The worker's environment: the database (a URL may hold a password: not on its command line), and no
        API key (a worker serves nothing)."""
        env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
        return {**env, DATABASE_ENV: self.db.connect_url} if self.db.connect_url else env

    def _log(self, job: Job) -> Path:
        """The worker's own output (stderr), for the operator."""
        folder = self.data_dir / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{job.id}.log"


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
