"""Fixtures of the jobs store's tests: a fresh database of either backend, and uploaded files to train on.

`db` and `database_url` run each test on SQLite (a file in tmp_path) and on PostgreSQL (a database of its own in a
throwaway cluster, started once per session: `jobs_backends`). Without PostgreSQL installed the second run skips,
unless TUNEFORGE_REQUIRE_POSTGRES is set (.ci/run), where it fails.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import jobs_backends
import pytest

from tuneforge.jobs import store
from tuneforge.jobs.db import Database, open_database
from tuneforge.jobs.records import FileRecord

AddFile = Callable[..., FileRecord]


@pytest.fixture(scope="session")
def postgres() -> Iterator[jobs_backends.Cluster]:
    """A throwaway PostgreSQL cluster for the whole session."""
    why = jobs_backends.missing()
    if why is not None:
        if os.environ.get(jobs_backends.REQUIRE_POSTGRES):
            pytest.fail(f"{jobs_backends.REQUIRE_POSTGRES} is set (.ci/run) but {why}")
        pytest.skip(why)
    cluster = jobs_backends.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres: jobs_backends.Cluster) -> Iterator[str]:
    """The URL of a new empty PostgreSQL database, dropped after the test."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new, not yet created jobs database of each backend lives."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.sqlite")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(database_url: str) -> Database:
    return open_database(database_url)


@pytest.fixture
def add_file(db: Database) -> AddFile:
    """Record a small uploaded file (the store never reads the bytes themselves)."""

    def add(name: str = "train.jsonl", purpose: str = "fine-tune") -> FileRecord:
        digest = hashlib.sha256(name.encode()).hexdigest()
        return store.create_file(db, name, purpose, 123, f"files/{name}", digest)  # type: ignore[arg-type]

    return add


@pytest.fixture
def train_file(add_file: AddFile) -> FileRecord:
    return add_file()
