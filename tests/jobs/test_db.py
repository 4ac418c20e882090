"""The jobs database: migrations (applied once, history checked), the URL rules, and surviving a SIGKILLed writer.

The migration checks run on both backends (`database_url`); the WAL and file checks are SQLite's own, and
test_postgres.py holds PostgreSQL's.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from jobs_backends import driver_error, table_names

from tuneforge.jobs import store
from tuneforge.jobs.db import Database, _translate, open_database
from tuneforge.jobs.errors import DatabaseError
from tuneforge.jobs.records import FileRecord
from tuneforge.jobs.schema import MIGRATIONS

EXTRA = ("0099_extra", "CREATE TABLE extra (x INTEGER); CREATE INDEX extra_x ON extra (x)")


def test_a_fresh_database_records_every_migration_and_uses_wal(tmp_path: Path) -> None:
    db = open_database(tmp_path / "sub" / "jobs.sqlite")
    assert db.applied_migrations() == [name for name, _ in MIGRATIONS]
    with db.read() as tx:
        assert tx.rows("PRAGMA journal_mode") == [{"journal_mode": "wal"}]
        assert tx.rows("PRAGMA foreign_keys") == [{"foreign_keys": 1}]
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
            tx.execute("INSERT INTO events (id, job_id, created_at, level, message, type) VALUES (?, ?, 1, ?, ?, ?)",
                       ["ftevent-x", "ftjob-missing", "info", "hi", "message"])  # fmt: skip


def test_reopening_applies_nothing_and_keeps_the_record(database_url: str) -> None:
    db = open_database(database_url)
    with db.read() as tx:
        before = tx.rows("SELECT * FROM migrations ORDER BY position")
    again = open_database(database_url)
    assert again.migrate() == []
    with again.read() as tx:
        assert tx.rows("SELECT * FROM migrations ORDER BY position") == before


def test_a_new_migration_applies_once(database_url: str) -> None:
    open_database(database_url)
    db = open_database(database_url, [*MIGRATIONS, EXTRA])
    assert db.applied_migrations()[-1] == "0099_extra"
    assert db.migrate([*MIGRATIONS, EXTRA]) == []
    with db.write() as tx:
        tx.execute("INSERT INTO extra (x) VALUES (?)", [1])


def test_a_database_from_a_newer_tuneforge_is_refused(database_url: str) -> None:
    open_database(database_url, [*MIGRATIONS, EXTRA])
    with pytest.raises(DatabaseError, match="0099_extra") as caught:
        open_database(database_url)
    assert "upgrade tuneforge" in str(caught.value)


def test_an_edited_history_is_refused(database_url: str) -> None:
    open_database(database_url)
    edited = [MIGRATIONS[0], ("0002_jobs_renamed", MIGRATIONS[1][1]), *MIGRATIONS[2:]]
    with pytest.raises(DatabaseError, match="migration 2 as '0002_jobs'"):
        open_database(database_url, edited)


def test_a_failing_migration_leaves_nothing_behind(database_url: str) -> None:
    broken = ("0099_broken", "CREATE TABLE half (x INTEGER); CREATE TABLE oops (")
    with pytest.raises(driver_error(database_url)):
        open_database(database_url, [*MIGRATIONS, broken])
    db = open_database(database_url)  # the known migrations were rolled back with it, and now apply cleanly
    assert "half" not in table_names(db) and "files" in table_names(db)
    assert db.applied_migrations() == [name for name, _ in MIGRATIONS]


def test_urls(tmp_path: Path) -> None:
    assert open_database(f"sqlite:///{tmp_path}/a.sqlite").url == f"{tmp_path}/a.sqlite"
    # Nothing listens on port 1: the message names the server, never the password (test_postgres checks more).
    with pytest.raises(DatabaseError, match=r"jobs database postgresql://tf:\*\*\*@127.0.0.1:1/jobs") as caught:
        open_database("postgresql://tf:secret@127.0.0.1:1/jobs")
    assert "secret" not in str(caught.value)
    with pytest.raises(DatabaseError, match="must be a file"):
        open_database(":memory:")
    with pytest.raises(DatabaseError, match="unknown jobs database URL"):
        open_database("mysql://localhost/jobs")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DatabaseError, match="cannot be opened as a SQLite database"):
        open_database(garbage)


def test_placeholders_translate_outside_literals_only() -> None:
    sql = "SELECT * FROM t WHERE a = ? AND b = 'what?' AND c LIKE '5%' AND d = ?"
    assert _translate(sql, "?") == sql
    assert _translate(sql, "%s") == "SELECT * FROM t WHERE a = %s AND b = 'what?' AND c LIKE '5%%' AND d = %s"


# A child that commits one file, then dies (SIGKILL from the parent) in the middle of a large write transaction.
_KILLED_MID_WRITE = """
import sys, time
from tuneforge.jobs import store
from tuneforge.jobs.db import open_database
db = open_database(sys.argv[1])
store.create_file(db, "committed.jsonl", "fine-tune", 1, "files/committed.jsonl", "0" * 64)
with db.write() as tx:
    for i in range(20000):  # megabytes: more than SQLite's page cache, so uncommitted pages reach the WAL file
        tx.execute("INSERT INTO files (id, filename, purpose, bytes, created_at, status, path, sha256) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [f"file-{i}", "x" * 200, "fine-tune", 1, 0, "uploaded", "p", "0"])
    print("mid-transaction", flush=True)
    time.sleep(60)
"""

# A child that commits events one by one, saying so after each commit returns, until it is killed.
_KILLED_WHILE_COMMITTING = """
import sys
from tuneforge.jobs import store
from tuneforge.jobs.db import open_database
db = open_database(sys.argv[1])
for i in range(100000):
    store.append_event(db, sys.argv[2], f"step {i}", type="metrics", data={"step": i, "train_loss": 1.0 / (i + 1)})
    print(i + 1, flush=True)
"""


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)


def _kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert child.stdout is not None
    child.stdout.close()


def _integrity(path: Path) -> str:
    with open_database(path).read() as tx:
        return str(tx.rows("PRAGMA integrity_check")[0]["integrity_check"])


def test_a_writer_killed_mid_transaction_leaves_the_committed_state(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    open_database(path)
    child = _child(_KILLED_MID_WRITE, str(path))
    assert child.stdout is not None and child.stdout.readline().strip() == "mid-transaction"
    assert Path(f"{path}-wal").stat().st_size > 1_000_000  # the half-done transaction really was on disk
    _kill(child)
    db = open_database(path)
    assert [f.filename for f in store.list_files(db).data] == ["committed.jsonl"]
    assert _integrity(path) == "ok"
    store.create_file(db, "after.jsonl", "fine-tune", 1, "files/after.jsonl", "1" * 64)  # the lock died with it


def test_a_writer_killed_between_commits_loses_no_acknowledged_event(db: Database, train_file: FileRecord) -> None:
    job = store.create_job(db, "tiny", train_file.id)
    child = _child(_KILLED_WHILE_COMMITTING, db.url, job.id)
    assert child.stdout is not None
    acknowledged = 0
    while acknowledged < 30:
        acknowledged = int(child.stdout.readline())
    _kill(child)
    events = store.list_events(db, job.id, limit=10_000).data
    assert len(events) >= acknowledged
    assert [e.data["step"] for e in reversed(events) if e.data] == list(range(len(events)))
    if db.dialect.name == "sqlite":  # PostgreSQL's server outlives its client: no file for the client to spoil
        assert _integrity(Path(db.url)) == "ok"
