"""The prepare stage: read -> clean -> anonymise -> de-duplicate -> measure tokens -> split -> write data/.

Streams: records flow one at a time through the checks into a scratch file (scan.py), their MinHash signatures into
a second one, and per record only a few numbers stay in memory. Duplicates are then found on those arrays and
signatures, the split is chosen on the arrays, and the scratch file is streamed into train/val/test.jsonl
(corpus.py). Everything found goes into data_report.json, with the training estimate when an `Estimator` is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.config import DataConfig, RunConfig
from tuneforge.data.corpus import (
    assign_splits,
    deduplicate,
    finish_checks,
    leakage,
    source_name,
    write_splits,
)
from tuneforge.data.estimation import Estimator, TrainingData
from tuneforge.data.files import HF_PREFIX
from tuneforge.data.privacy import PII_TYPES
from tuneforge.data.report import Findings, render
from tuneforge.data.scan import Scan
from tuneforge.data.split import TRAIN, VAL
from tuneforge.errors import ConfigError, DataError, TuneforgeError
from tuneforge.models import load_tokenizer
from tuneforge.rundir import (
    DATA_DIR,
    DATA_REPORT,
    SPLITS,
    TEST_LOCK,
    atomic_write_json,
    file_sha256,
    save_config,
    split_path,
)

SCRATCH = ".records.jsonl"


@dataclass
class PrepareResult:
    """Where the splits were written, how many examples and tokens each holds, and the full report."""

    data_dir: Path
    counts: dict[str, int]
    tokens: dict[str, int]
    report: dict[str, Any]
    ok: bool

    def text(self, strict: bool = False) -> str:
        """The human-readable report."""
        return render(self.report, strict)


def prepare(
    cfg: RunConfig, check: bool = False, strict: bool = False, estimate: Estimator | None = None
) -> PrepareResult:
    """Validate, clean and split the data of `cfg` into the run's data/ folder.

    Raises DataError when errors (with `strict`, also warnings) remain, unless `check` is set: then nothing but
    the report is written and the result says whether the data passed. `estimate` (with data.estimate on) measures
    training time and memory on the prepared training split (the CLI passes the train stage's).
    """
    specs = _sources(cfg)
    data_dir = cfg.run_dir / DATA_DIR
    save_config(cfg)
    scan = Scan(cfg, load_tokenizer(cfg.model.name, cfg.model.revision), data_dir / SCRATCH)
    estimated: dict[str, Any] | None = None
    try:
        for spec, fixed_test, data, task in specs:
            scan.read(spec, fixed_test, data, task)
        deduplicate(scan)
        finish_checks(scan)
        splits: tuple[dict[str, int], dict[str, int], dict[str, Any], dict[str, Any]] = ({}, {}, {}, {})
        if scan.findings.n_blocking(strict) == 0:
            codes = assign_splits(cfg, scan)
            for issue in leakage(scan, codes, cfg.clean.leakage_threshold):
                scan.findings.add(issue)
            ok = scan.findings.n_blocking(strict) == 0
            if ok and not check:
                splits = write_splits(cfg, scan, codes)
            if ok and cfg.data.estimate and estimate is not None:
                estimated = _estimate(cfg, scan, codes, estimate)
    finally:
        scan.close()
    ok = scan.findings.n_blocking(strict) == 0
    report = {**_report(cfg, scan, *splits), "estimate": estimated}
    atomic_write_json(cfg.run_dir / DATA_REPORT, report)
    if not ok and not check:
        _remove_stale_splits(cfg)
        raise DataError(_summary(scan.findings, strict, cfg.run_dir), "fix the records named above, then prepare again")
    return PrepareResult(data_dir, splits[0], splits[1], report, ok)


def _remove_stale_splits(cfg: RunConfig) -> None:
    """Split files of an earlier prepare must not be trained on after this one failed (a locked test stays)."""
    locked = cfg.data.lock_test and (cfg.run_dir / TEST_LOCK).is_file()
    for split in SPLITS:
        if not (split == "test" and locked):
            split_path(cfg.run_dir, split).unlink(missing_ok=True)


def _sources(cfg: RunConfig) -> list[tuple[str, bool, DataConfig, str | None]]:
    """(source, is fixed test data, how to read it, task name of data.datasets) in reading order: fixed test
    data first, so that its duplicates leave the training data."""
    if cfg.data.path is None and not cfg.data.datasets:
        raise ConfigError("data.path is not set", "set data.path in the config or pass data.path=FILE")
    named = [(f"data.datasets[{d.name}].path", d.path) for d in cfg.data.datasets]
    for key, spec in [("data.path", cfg.data.path), ("data.test_path", cfg.data.test_path), *named]:
        if spec and not spec.startswith(HF_PREFIX) and not Path(spec).exists():
            raise DataError(
                f"{key}: not found: {spec}", "check the path (relative paths resolve against the config file)"
            )
    locked = cfg.run_dir / TEST_LOCK
    specs: list[tuple[str, bool, DataConfig, str | None]] = []
    if cfg.data.lock_test and locked.is_file():  # written by tuneforge: canonical records, read as they are
        canonical = cfg.data.model_copy(update={"format": "auto", "columns": {}, "group_by": None})
        specs.append((str(_locked_test(locked)), True, canonical, None))
    elif cfg.data.test_path:
        specs.append((cfg.data.test_path, True, cfg.data, None))
    if cfg.data.datasets:
        return specs + [
            (d.path, False, cfg.data.model_copy(update={"path": d.path, "format": d.format}), d.name)
            for d in cfg.data.datasets
        ]
    assert cfg.data.path is not None  # checked above
    return [*specs, (cfg.data.path, False, cfg.data, None)]


def _locked_test(lock: Path) -> Path:
    """The locked test file, after checking it is unchanged since it was locked."""
    test = lock.parent / "test.jsonl"  # TEST_LOCK lies beside the split files
    info = json.loads(lock.read_text(encoding="utf-8"))
    if not test.is_file() or file_sha256(test) != info["sha256"]:
        raise DataError(
            f"{test} changed or vanished after it was locked ({lock})",
            f"restore it, or delete {lock} to draw a new test split",
        )
    return test


def _estimate(cfg: RunConfig, scan: Scan, codes: np.ndarray, estimate: Estimator) -> dict[str, Any]:
    """Training time and memory from a measured probe on the training split (or why there is none)."""
    tokens = np.asarray(scan.tokens, dtype=np.int64)
    train = np.flatnonzero(codes == TRAIN)
    if not len(train) or scan.kind is None:
        return {"unavailable": "the training split is empty"}
    labels = sorted(scan.label_names) if scan.kind == "classification" else []
    data = TrainingData(scan.kind, tokens[train], tokens[codes == VAL], lambda k: scan.record(int(train[k])), labels)
    try:
        return estimate(cfg, data)
    except (RuntimeError, ValueError, MemoryError, TuneforgeError) as exc:  # the data are fine: say why no estimate
        return {"unavailable": f"the training probe failed: {str(exc).splitlines()[0][:200]}"}


def _report(
    cfg: RunConfig, scan: Scan, counts: dict[str, int], tokens: dict[str, int], stats: dict[str, Any], labels: dict
) -> dict[str, Any]:
    return {
        "source": source_name(cfg),
        "test_source": cfg.data.test_path,
        "kind": scan.kind,
        "read": scan.read_count,
        "kept": int((~scan.removed).sum()),
        "counts": counts,
        "tokens": tokens,
        "token_stats": stats,
        "labels": labels,
        "privacy": {
            "mode": cfg.privacy.mode,
            "found": {t: scan.findings.pii[t] for t in PII_TYPES if scan.findings.pii[t]},
            "records": scan.findings.pii_records,
        },
        **scan.findings.to_json(),
    }


def _summary(findings: Findings, strict: bool, run_dir: Path) -> str:
    blocking = findings.errors(strict)
    shown = "\n".join(f"  - {e}" for e in blocking[:15])
    n = findings.n_blocking(strict)
    more = f"\n  ... and {n - 15} more" if n > 15 else ""
    what = "data error(s) and warning(s) (--strict)" if strict and findings.severities["warning"] else "data error(s)"
    return f"{n} {what}:\n{shown}{more}\n  (all findings: {run_dir / DATA_REPORT})"
