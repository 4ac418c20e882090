"""The run directory: the contract between stages. Atomic writes, and loading a run's config back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from tuneforge.config import RunConfig, apply_override, dump_config, validate_config
from tuneforge.errors import RunError

# Every file and folder of a run directory, named once (relative to runs/<name>/ unless said otherwise).
CONFIG_FILE = "config.yaml"  # the resolved config, exactly as run
DATA_DIR = "data"  # the prepared splits: <split>.jsonl
DATA_REPORT = "data/data_report.json"  # what prepare found (counts, tokens, issues, personal data, estimate)
TEST_LOCK = "data/test.lock.json"  # the locked test split's hash (data.lock_test)
CHECKPOINTS = "checkpoints"  # step-N/ folders
BEST = "checkpoints/best"  # weights of the best validation loss so far (early stopping)
MODEL_DIR = "model"  # the final adapter or whole model
RUN_INFO = "tuneforge.json"  # inside MODEL_DIR: base model, method, task, classes
REFERENCE_LOGPS = "reference_logps.json"  # DPO's reference log-probabilities
METRICS = "metrics.jsonl"  # one line per optimizer step
EVAL = "eval.json"  # scores per split and model
PREDICTIONS = "predictions.jsonl"  # every scored answer beside its reference
GENERATIONS = "generations.json"  # the evaluation's answers, reused while nothing that decides them changes
COMPARE = "compare.json"  # the bake-off: every approach's scores, costs and the advice
COMPARE_DIR = "compare"  # its prompts.jsonl, predictions.jsonl, answers.json and the RAFT run (raft/)
REPORT = "report.html"  # the self-contained report page
MODEL_CARD = "MODEL_CARD.md"  # the model card (Hugging Face format): lineage, data, evaluation, limits
TUNE_DIR = "tune"  # the hyperparameter search: trials and best.yaml
SPLITS = ("train", "val", "test")
TUNED = "tuned"  # eval.json's name for the run's own trained model (beside base, majority, compared runs)


def split_path(run_dir: Path, split: str) -> Path:
    """The prepared file of one split (train, val or test) of a run."""
    return run_dir / DATA_DIR / f"{split}.jsonl"


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[IO[str]]:
    """A text file to stream into; it replaces `path` only when the block ends without an exception."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a half-written one."""
    with atomic_open(path) as fh:
        fh.write(text)


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomically write `data` as indented UTF-8 JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Atomically write one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by tuneforge (trusted: produced by the prepare stage)."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def save_config(cfg: RunConfig) -> Path:
    """Write the resolved config into the run directory, exactly as it runs."""
    path = cfg.run_dir / CONFIG_FILE
    atomic_write_text(path, dump_config(cfg))
    return path


def load_run(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load the config of an existing run directory (optionally with key=value overrides)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not a tuneforge run directory (no {CONFIG_FILE})",
            "pass a folder created by `tuneforge run` or `tuneforge prepare`, e.g. runs/contracts",
        )
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    # The run may have been moved: its location wins over the output_dir recorded in it.
    raw["output_dir"] = str(run_dir.resolve().parent)
    raw["name"] = run_dir.resolve().name
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def require(run_dir: Path, relative: str, produced_by: str) -> Path:
    """Path of an artifact of the run, or a RunError naming the stage that produces it."""
    path = run_dir / relative
    if not path.exists():
        raise RunError(f"{path} does not exist", f"run `tuneforge {produced_by} {run_dir}` first")
    return path


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> dict[str, Any]:
    """The tuneforge that runs: its version, and its git commit (with whether the checkout had changes) when it runs
    from a git checkout."""
    from tuneforge import __version__

    here = Path(__file__).parent
    out: dict[str, Any] = {"tuneforge": __version__, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            status = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            )  # fmt: skip
            out |= {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        pass  # no git: the version alone
    return out


def lineage_record(cfg: RunConfig) -> dict[str, Any]:
    """What produced a model, recorded when it is saved: the code, the config's hash, and each prepared split's hash
    and record count (the exact rows it trained and was scored on)."""
    splits = {}
    for split in SPLITS:
        path = split_path(cfg.run_dir, split)
        if path.is_file():
            with path.open("rb") as fh:
                records = sum(1 for line in fh if line.strip())
            splits[split] = {"sha256": file_sha256(path), "records": records}
    config = cfg.run_dir / CONFIG_FILE
    return {
        "code": code_version(),
        "config_sha256": file_sha256(config) if config.is_file() else None,
        "splits": splits,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
