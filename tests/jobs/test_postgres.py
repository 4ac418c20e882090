"""PostgreSQL's own checks of the jobs database; the shared behaviour runs on it through the `db` fixture.

64-bit columns, enforced foreign keys, migrators racing on a fresh database, the URL's own options and a socket URL,
the busy timeout as a lock timeout, and no password in any message (those last need no server).
"""

from __future__ import annotations

import threading
import time
import traceback

import jobs_backends
import pytest

from tuneforge.jobs import store
from tuneforge.jobs.db import Database, _scrub, open_database
from tuneforge.jobs.errors import DatabaseError
from tuneforge.jobs.lifecycle import claim_next_job, heartbeat
from tuneforge.jobs.schema import MIGRATIONS

NAMES = [name for name, _ in MIGRATIONS]


def test_a_fresh_database_has_64_bit_columns_and_enforces_foreign_keys(postgres_url: str) -> None:
    db = open_database(postgres_url)
    assert db.applied_migrations() == NAMES
    with db.read() as tx:
        columns = tx.rows(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
    types = {(c["table_name"], c["column_name"]): c["data_type"] for c in columns}
    assert types[("files", "bytes")] == types[("jobs", "seq")] == types[("jobs", "created_at")] == "bigint"
    assert {"integer", "real"}.isdisjoint(types.values())  # SQLite's INTEGER and REAL hold 64 bits
    import psycopg

    with pytest.raises(psycopg.errors.ForeignKeyViolation), db.write() as tx:
        tx.execute("INSERT INTO events (id, job_id, created_at, level, message, type) VALUES (?, ?, 1, ?, ?, ?)",
                   ["ftevent-x", "ftjob-missing", "info", "hi", "message"])  # fmt: skip


def test_migrators_racing_on_a_fresh_database_apply_each_migration_once(postgres_url: str) -> None:
    start, applied, failures = threading.Barrier(6), [], []

    def open_it() -> None:
        start.wait()
        try:
            applied.append(open_database(postgres_url).applied_migrations())
        except Exception as exc:  # noqa: BLE001 - collected, to show them all
            failures.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and applied == [NAMES] * 6
    with open_database(postgres_url).read() as tx:
        assert tx.rows("SELECT COUNT(*) AS n FROM migrations") == [{"n": len(NAMES)}]


def test_the_urls_own_options_stay_and_a_socket_url_works(postgres: jobs_backends.Cluster, postgres_url: str) -> None:
    db = open_database(f"{postgres_url}?options=-c%20statement_timeout%3D1234", busy_timeout_s=2.5)
    with db.read() as tx:
        assert tx.row("SHOW statement_timeout") == {"statement_timeout": "1234ms"}
        assert tx.row("SHOW lock_timeout") == {"lock_timeout": "2500ms"}  # the busy timeout, added to them
    over_socket = open_database(postgres.socket_url(postgres_url.rsplit("/", 1)[1]))
    assert over_socket.applied_migrations() == NAMES


def test_a_writer_waits_for_a_locked_row_no_longer_than_the_busy_timeout(postgres_url: str) -> None:
    import psycopg

    db = open_database(postgres_url, busy_timeout_s=0.3)
    train = store.create_file(db, "t.jsonl", "fine-tune", 1, "files/t.jsonl", "0" * 64)
    job = store.create_job(db, "m", train.id, status="queued")
    assert claim_next_job(db, worker_pid=7) is not None
    with db.write() as holder:
        holder.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ?", [1, job.id])  # holds the row's lock
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            heartbeat(db, job.id, worker_pid=7)
        assert time.monotonic() - started < 5
    assert heartbeat(db, job.id, worker_pid=7) is True


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://tf:s3cr%40t@127.0.0.1:1/jobs",  # nothing listens on port 1
        "postgres://tf@127.0.0.1:1/jobs?sslmode=disable&password=s3cr@t",
        "postgresql://tf:s3cr@t@127.0.0.1:notaport/jobs",  # libpq cannot parse it
    ],
)
def test_no_message_shows_the_password(url: str) -> None:
    with pytest.raises(DatabaseError, match="jobs database postgres") as caught:
        open_database(url)
    shown = "".join(traceback.format_exception(caught.value))
    assert "s3cr" not in shown and "***" in shown


def test_a_driver_message_quoting_the_password_is_scrubbed() -> None:
    assert _scrub('bad token "s3cr@t"', "postgresql://tf:s3cr%40t@h/db") == 'bad token "***"'
    assert _scrub("no secret here", "postgresql://tf@h/db") == "no secret here"


def test_the_shown_url_has_no_password(postgres_url: str) -> None:
    db: Database = open_database(postgres_url.replace("postgres@", "postgres:ignored-by-trust@"))
    assert db.url == postgres_url.replace("postgres@", "postgres:***@")
