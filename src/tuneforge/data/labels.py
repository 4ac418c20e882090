"""The classes of a classification run, in the order of its model's head."""

from __future__ import annotations

from pathlib import Path

from tuneforge.config import DataConfig
from tuneforge.rundir import SPLITS, read_jsonl, split_path


def class_labels(data: DataConfig, run_dir: Path) -> list[str]:
    """The classes in head order: data.labels when given, else every label of the run's prepared splits, sorted."""
    if data.labels:
        return list(data.labels)
    found: set[str] = set()
    for split in SPLITS:
        path = split_path(run_dir, split)
        if path.is_file():
            found.update(str(row["label"]) for row in read_jsonl(path) if "label" in row)
    return sorted(found)
