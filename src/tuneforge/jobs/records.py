"""The jobs service's records, named as in OpenAI's API objects, and the checks their fields must pass.

Files (`FileObject`), jobs (`FineTuningJob`), events (`FineTuningJobEvent`) and checkpoints
(`FineTuningJobCheckpoint`), plus tuneforge's own job fields. JSON fields are plain dicts and lists here; the database
holds them as TEXT.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import time
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Generic, Literal, TypeVar, get_args

from tuneforge.jobs.db import Row
from tuneforge.jobs.errors import InvalidRequestError

FileStatus = Literal["uploaded", "processed", "error"]
FilePurpose = Literal[
    "assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results", "vision", "user_data"
]
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
EventLevel = Literal["info", "warn", "error"]
EventType = Literal["message", "metrics"]
FINISHED: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # OpenAI's limits
_ALPHABET = string.ascii_letters + string.digits
T = TypeVar("T")


@dataclass(frozen=True)
class FileRecord:
    """An uploaded file; `path` is relative to the data directory."""

    id: str
    filename: str
    purpose: FilePurpose
    bytes: int
    created_at: int
    status: FileStatus
    status_details: str | None
    path: str
    sha256: str


@dataclass(frozen=True)
class JobError:
    """Why a job failed: a machine-readable code, a message and the parameter at fault (if one)."""

    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class Job:
    """A fine-tuning job: OpenAI's fields, then tuneforge's own (run_dir, tuneforge options, worker, heartbeat)."""

    id: str
    model: str
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any] | None
    suffix: str | None
    seed: int
    metadata: dict[str, str] | None
    status: JobStatus
    error: JobError | None
    fine_tuned_model: str | None
    trained_tokens: int | None
    result_files: list[str]
    estimated_finish: int | None
    created_at: int
    finished_at: int | None
    run_dir: str | None
    tuneforge: dict[str, Any]
    worker_pid: int | None
    heartbeat_at: int | None


@dataclass(frozen=True)
class JobEvent:
    """One line of a job's log: a message, or a step's metrics in `data`."""

    id: str
    job_id: str
    created_at: int
    level: EventLevel
    message: str
    type: EventType
    data: dict[str, Any] | None


@dataclass(frozen=True)
class Checkpoint:
    """A saved, usable model of a job at one step; `path` is relative to the data directory."""

    id: str
    job_id: str
    step_number: int
    metrics: dict[str, Any]
    fine_tuned_model_checkpoint: str
    path: str
    created_at: int


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, in the list's order; pass `last_id` as `after` to get the next."""

    data: list[T]
    has_more: bool

    @property
    def first_id(self) -> str | None:
        """The id of the page's first record (OpenAI's `first_id`), or None for an empty page."""
        return getattr(self.data[0], "id", None) if self.data else None

    @property
    def last_id(self) -> str | None:
        """The id of the page's last record (OpenAI's `last_id`), or None for an empty page."""
        return getattr(self.data[-1], "id", None) if self.data else None


def new_id(prefix: str) -> str:
    """An unguessable id such as `file-` + 24 base62 characters (about 143 random bits)."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def now_s(now: int | None = None) -> int:
    """`now` if given (tests), else the current Unix time in whole seconds."""
    return int(time.time()) if now is None else now


def dumps(value: Any) -> str | None:
    """A JSON column's text (None stays NULL)."""
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def loads(text: str | None) -> Any:
    """A JSON column's value (NULL stays None)."""
    return None if text is None else json.loads(text)


def check_choice(value: str, choices: Any, param: str) -> None:
    """Refuse a value outside a Literal's choices."""
    allowed = get_args(choices)
    if value not in allowed:
        raise InvalidRequestError(f"{param} {value!r} is not one of {', '.join(allowed)}", param=param)


def check_limit(limit: int, maximum: int = 10_000) -> None:
    """Refuse a page size outside 1..maximum."""
    if not 1 <= limit <= maximum:
        raise InvalidRequestError(
            f"limit must be between 1 and {maximum}, got {limit}", f"ask for at most {maximum}", param="limit"
        )


def check_relative_path(path: str, param: str = "path") -> None:
    """Refuse a path that could reach outside the data directory: absolute, with `..`, or with a drive."""
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if not path or posix.is_absolute() or windows.drive or windows.root or ".." in posix.parts + windows.parts:
        raise InvalidRequestError(
            f"{param} must be relative to the data directory without '..', got {path!r}",
            "store paths such as files/<id>.jsonl",
            param=param,
        )


def check_sha256(digest: str) -> None:
    """Refuse anything but 64 lowercase hexadecimal characters."""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InvalidRequestError(f"sha256 must be 64 lowercase hex characters, got {digest!r}", param="sha256")


def check_metadata(metadata: dict[str, str] | None) -> None:
    """Refuse metadata beyond OpenAI's limits: 16 string keys of <= 64 characters, string values of <= 512."""
    if metadata is None:
        return
    problems = [f"{len(metadata)} keys (at most {MAX_METADATA_KEYS})"] if len(metadata) > MAX_METADATA_KEYS else []
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY:
            problems.append(f"key {key!r} must be a string of 1 to {MAX_METADATA_KEY} characters")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            problems.append(f"value of {key!r} must be a string of at most {MAX_METADATA_VALUE} characters")
        elif "\x00" in key + value:  # PostgreSQL stores no NUL in text
            problems.append(f"{key!r} holds a NUL character")
    if problems:
        raise InvalidRequestError(
            "metadata is invalid: " + "; ".join(problems), "pass up to 16 short string pairs", param="metadata"
        )


def file_from_row(row: Row) -> FileRecord:
    """A file record from its database row."""
    return FileRecord(**{name: row[name] for name in FileRecord.__dataclass_fields__})


def job_from_row(row: Row) -> Job:
    """A job record from its database row (JSON columns decoded)."""
    fields = {name: row[name] for name in Job.__dataclass_fields__}
    for name in ("hyperparameters", "method", "metadata", "result_files", "tuneforge"):
        fields[name] = loads(fields[name])
    error = loads(fields["error"])
    fields["error"] = None if error is None else JobError(**error)
    return Job(**fields)


def event_from_row(row: Row) -> JobEvent:
    """An event record from its database row."""
    fields = {name: row[name] for name in JobEvent.__dataclass_fields__}
    return JobEvent(**{**fields, "data": loads(fields["data"])})


def checkpoint_from_row(row: Row) -> Checkpoint:
    """A checkpoint record from its database row."""
    fields = {name: row[name] for name in Checkpoint.__dataclass_fields__}
    return Checkpoint(**{**fields, "metrics": loads(fields["metrics"])})


# The run-config options a job's `tuneforge.config` extension may set: how to train on the uploaded file, never where
# to read or write (files stay inside the data directory) nor code to run (a metric can name a .py file).
OPTION_SECTIONS = ("train", "data", "clean", "privacy", "evaluate")
DENIED_OPTIONS = frozenset(
    {"data.path", "data.test_path", "data.datasets", "data.hf_subset", "data.hf_split", "data.format",
     "evaluate.compare", "evaluate.metrics"}
)  # fmt: skip
# what the server can serve when the job is done: adapters of its base model, answering chat
SERVABLE = {"train.method": ("lora", "dora"), "train.task": ("sft", "dpo")}
_KEY = re.compile(r"[a-z_]+\.[a-z0-9_]+")


def allowed_options() -> frozenset[str]:
    """Every section.field of OPTION_SECTIONS but the denied ones."""
    from tuneforge.config import RunConfig

    keys = set()
    for section in OPTION_SECTIONS:
        model = RunConfig.model_fields[section].annotation
        keys |= {f"{section}.{name}" for name in getattr(model, "model_fields", {})}
    return frozenset(keys - DENIED_OPTIONS)


def check_options(config: dict[str, Any]) -> None:
    """Refuse a job's `tuneforge.config` keys that are not plain train/data/clean/privacy/evaluate fields, that would
    reach outside the data directory or run code, or that would make a model the server cannot serve."""
    allowed = allowed_options()
    for key, value in config.items():
        if not _KEY.fullmatch(key) or key not in allowed:
            raise InvalidRequestError(
                f"tuneforge.config cannot set {key!r}: a job trains on its uploaded files, in its own run directory",
                f"set train.*, data.*, clean.*, privacy.* or evaluate.* fields by their exact names, not "
                f"{', '.join(sorted(DENIED_OPTIONS))}",
                param=f"tuneforge.config.{key}",
            )
        if key in SERVABLE and value not in SERVABLE[key]:
            raise InvalidRequestError(
                f"tuneforge.config {key}={value!r}: the server serves the adapters its jobs train",
                f"choose {key} from {', '.join(SERVABLE[key])} (train other kinds with `tuneforge train`)",
                param=f"tuneforge.config.{key}",
            )
