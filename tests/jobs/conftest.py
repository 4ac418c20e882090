"""Fixtures of the jobs store's tests: a fresh database in tmp_path, and uploaded files to train on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tuneforge.jobs import store
from tuneforge.jobs.db import Database, open_database
from tuneforge.jobs.records import FileRecord

AddFile = Callable[..., FileRecord]


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return open_database(tmp_path / "jobs.sqlite")


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
