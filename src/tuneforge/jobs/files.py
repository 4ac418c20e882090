"""Uploaded files: written atomically under the data directory, recorded in the store, and (purpose fine-tune)
validated by tuneforge's data stage, whose findings become the file's status ("processed" or "error").

A file's bytes live at `files/<random name>` inside the data directory: the name a client sends is kept only as the
record's `filename` and never reaches a path, and every path read back from the store is checked to stay inside the
data directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuneforge.config import load_config
from tuneforge.data import prepare
from tuneforge.errors import TuneforgeError
from tuneforge.jobs.db import Database, open_database
from tuneforge.jobs.errors import InvalidRequestError, NotFoundError
from tuneforge.jobs.records import FilePurpose, FileRecord
from tuneforge.jobs.store import create_file, delete_file, get_file, set_file_status

FILES_DIR = "files"
RUNS_DIR = "runs"  # DATA_DIR/runs/<job id>: each job's run directory
VALIDATION_DIR = "validation"  # prepare --check's report per file: validation/<file id>/data/data_report.json
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")  # what the data stage reads
MAX_BYTES = 512 * 1024 * 1024  # OpenAI's limit for a fine-tuning file
SHOWN_FINDINGS = 5  # findings quoted in status_details (the whole report is in the validation folder)


class FileStore:
    """The files of one data directory: save an upload, validate it, read it back, delete it."""

    def __init__(self, data_dir: Path, db: Database, model: str, max_bytes: int = MAX_BYTES) -> None:
        self.data_dir, self.db, self.model, self.max_bytes = Path(data_dir), db, model, max_bytes

    def save(self, filename: str, purpose: FilePurpose, chunks: Iterable[bytes]) -> FileRecord:
        """Write an upload (streamed in `chunks`) atomically, record it, and validate it when it is training data."""
        if "\x00" in filename:  # PostgreSQL stores no NUL in text, and no file system has one in a name
            raise InvalidRequestError("the file name holds a NUL character", "rename the file", param="file")
        suffix = Path(filename).suffix.lower()
        if purpose == "fine-tune" and suffix not in SUFFIXES:
            raise InvalidRequestError(
                f"file {filename!r}: fine-tuning data must be one of {', '.join(SUFFIXES)}",
                "upload JSONL with one example per line (chat messages, prompt/completion, ...)",
                param="file",
            )
        folder = self.data_dir / FILES_DIR
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"{FILES_DIR}/{secrets.token_hex(16)}{suffix if suffix in SUFFIXES else ''}"
        size, digest = self._write(folder / f".upload-{secrets.token_hex(8)}", self.data_dir / relative, chunks)
        try:
            record = create_file(self.db, filename, purpose, size, relative, digest)
        except BaseException:
            (self.data_dir / relative).unlink(missing_ok=True)
            raise
        return self.validate(record) if purpose == "fine-tune" else record

    def _write(self, tmp: Path, final: Path, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Stream `chunks` to `tmp`, then rename it to `final`: a reader sees the whole file or none."""
        digest, size = hashlib.sha256(), 0
        try:
            with tmp.open("wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise InvalidRequestError(
                            f"the file is larger than {self.max_bytes:,} bytes", "split it into smaller files", "file"
                        )
                    digest.update(chunk)
                    fh.write(chunk)
            if size == 0:
                raise InvalidRequestError("the file is empty", "upload a file with at least one example", "file")
            tmp.replace(final)
        finally:
            tmp.unlink(missing_ok=True)
        return size, digest.hexdigest()

    def validate(self, record: FileRecord) -> FileRecord:
        """Run the data stage's checks on a fine-tuning file: processed, or error with the findings."""
        cfg = load_config(
            None,
            [
                f"model.name={self.model}",
                f"data.path={self.path(record)}",
                f"output_dir={self.data_dir / VALIDATION_DIR}",
                f"name={record.id}",
                "data.estimate=false",
            ],
        )
        try:
            result = prepare(cfg, check=True)
        except TuneforgeError as exc:  # unreadable at all: the reader's own message says where and what
            return set_file_status(self.db, record.id, "error", str(exc).replace(str(self.data_dir), "<data>"))
        except Exception as exc:  # noqa: BLE001  # e.g. JSON nested too deep for the parser: the file is bad, not us
            logging.getLogger(__name__).exception("validating %s", record.id)
            return set_file_status(self.db, record.id, "error", f"the file cannot be read ({type(exc).__name__})")
        if result.ok:
            return set_file_status(self.db, record.id, "processed", _summary(result.report))
        return set_file_status(self.db, record.id, "error", _findings(result.report))

    def path(self, record: FileRecord) -> Path:
        """The bytes of a file, refused if the stored path would lead outside the data directory."""
        root = self.data_dir.resolve()
        path = (root / record.path).resolve()
        if not path.is_relative_to(root / FILES_DIR):
            raise NotFoundError(f"file {record.id} has no content inside the data directory", param="file_id")
        return path

    def content(self, file_id: str) -> Path:
        """The path of a file's content (NotFoundError for an unknown id or missing bytes)."""
        path = self.path(get_file(self.db, file_id))
        if not path.is_file():
            raise NotFoundError(f"file {file_id}'s content is gone from the data directory", param="file_id")
        return path

    def delete(self, file_id: str) -> bool:
        """Remove a file's record, its bytes and its validation report; whether it existed."""
        record = get_file(self.db, file_id)
        path = self.path(record)
        existed = delete_file(self.db, file_id)
        path.unlink(missing_ok=True)
        shutil.rmtree(self.data_dir / VALIDATION_DIR / file_id, ignore_errors=True)
        return existed


DATABASE_ENV = "TUNEFORGE_DATABASE_URL"  # how a worker process learns the database (a URL may hold a password)


def database_url(data_dir: Path, database: str | None = None) -> str:
    """The jobs database: `database` (a postgresql:// URL), or DATABASE_ENV's, or the data directory's SQLite file."""
    return database or os.environ.get(DATABASE_ENV) or str(data_dir / "tuneforge.db")


def open_file_store(data_dir: Path, model: str, database: str | None = None) -> FileStore:
    """The uploads of a data directory (created if new), their records in `database` (default: the directory's
    tuneforge.db, SQLite), validated with `model`'s tokenizer."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return FileStore(data_dir, open_database(database_url(data_dir, database)), model)


def _summary(report: dict[str, Any]) -> str:
    """What validation found in a good file: how many examples of which kind, and its warnings."""
    kept, kind = report.get("kept", report.get("read")), report.get("kind", "records")
    warnings = report.get("warnings", 0)
    return f"{kept} {kind} records valid" + (
        f"; {warnings} warning(s): {_first(report, 'warning')}" if warnings else ""
    )


def _findings(report: dict[str, Any]) -> str:
    """The errors validation found, the first few quoted with their file:line."""
    return f"{report.get('errors', 0)} error(s): {_first(report, 'error')}"


def _first(report: dict[str, Any], severity: str) -> str:
    """The first findings of one severity as "line 3, messages[1].role: unknown role 'bot' (fix: ...)" (the file is
    the upload itself: its stored path is not the client's business)."""
    issues = [i for i in report.get("issues", []) if i.get("severity") == severity]
    shown = []
    for issue in issues[:SHOWN_FINDINGS]:
        where = ", ".join(
            str(p) for p in (f"line {issue['line']}" if issue.get("line") else None, issue.get("field")) if p
        )
        hint = f" (fix: {issue['hint']})" if issue.get("hint") else ""
        shown.append(f"{where + ': ' if where else ''}{issue.get('message')}{hint}")
    more = f"; {len(issues) - SHOWN_FINDINGS} more" if len(issues) > SHOWN_FINDINGS else ""
    return "; ".join(shown) + more
