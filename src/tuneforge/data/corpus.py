"""The dataset-level steps of `prepare`, once the streaming pass (scan.py) has every record: duplicates, the checks of
the whole set (enough examples, labels balanced, personal data gate), the split, leakage between splits, and the
split files written from the scratch file."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.data.dedup import exact_duplicates, leaks, near_duplicates
from tuneforge.data.records import Issue, error, warning
from tuneforge.data.report import token_stats
from tuneforge.data.scan import Scan
from tuneforge.data.split import TEST, TRAIN, VAL, assign
from tuneforge.data.validate import check_count, check_labels, check_privacy
from tuneforge.rundir import SPLITS, TEST_LOCK, atomic_open, atomic_write_json, file_sha256, split_path


def deduplicate(scan: Scan) -> None:
    """Remove exact, then near duplicates: the first occurrence stays (a locked test record always does)."""
    scan.out.flush()
    if scan.signatures is not None:
        scan.signatures.close()
    scan.removed = np.zeros(len(scan.keys), dtype=bool)
    keep = np.asarray(scan.fixed, dtype=bool) if scan.locked else None
    if scan.cfg.clean.dedup and len(scan.keys):
        first = exact_duplicates(np.asarray(scan.exact, dtype=np.int64), keep)
        scan.removed = first >= 0
        _count_removed(scan, "duplicate", first, None)
        if scan.kind == "classification":
            _conflicting_labels(scan, first)
    threshold = scan.cfg.clean.near_dup_threshold
    if threshold > 0 and scan.signatures is not None and len(scan.keys):
        dup_of, sims = near_duplicates(scan.signatures.path, threshold, scan.removed, keep)
        scan.removed |= dup_of >= 0
        _count_removed(scan, "near_duplicate", dup_of, sims)


def _count_removed(scan: Scan, reason: str, of: np.ndarray, sims: np.ndarray | None) -> None:
    gone = np.flatnonzero(of >= 0).tolist()
    for n, j in enumerate(gone):
        if not scan.findings.wants_sample(reason):
            scan.findings.count_removed(reason, len(gone) - n)
            break
        earlier = scan.record(int(of[j])).source
        how = f"{sims[j]:.2f} similar to" if sims is not None else "after normalising case and spaces, same as"
        scan.findings.remove(reason, scan.record(j), f"{how} {earlier}")


def _conflicting_labels(scan: Scan, first: np.ndarray) -> None:
    labels = np.asarray(scan.labels, dtype=np.int64)
    copies = np.flatnonzero(first >= 0)
    for j in copies[labels[copies] != labels[first[copies]]].tolist():  # codes differ: compare real labels
        later, earlier = scan.record(j), scan.record(int(first[j]))
        if later.label != earlier.label:
            scan.findings.add(
                warning(
                    "conflicting_label",
                    later.source,
                    "label",
                    f"the same text occurred at {earlier.source} with label {earlier.label!r}, here {later.label!r}",
                    "decide which label is right; this later copy was dropped",
                )
            )


def finish_checks(scan: Scan) -> None:
    """Dataset-level checks once every record is in: enough examples, labels balanced."""
    fixed = np.asarray(scan.fixed, dtype=bool)
    free = int((~fixed & ~scan.removed).sum())
    has_test = bool((fixed & ~scan.removed).any())
    data = scan.cfg.data
    minimum = 1 + (data.val_size > 0) + (0 if has_test else data.test_size > 0) + 1
    if scan.findings.severities["error"] == 0 and (few := check_count(free, minimum, source_name(scan.cfg))):
        scan.findings.add(few)
    if data.datasets and scan.kind not in (None, "chat"):
        scan.findings.add(
            error(
                "multitask_not_chat",
                None,
                None,
                f"train.task=multitask mixes chat datasets, and these are {scan.kind} records",
                "give data.datasets chat data (messages, alpaca, sharegpt or prompt/completion)",
            )
        )
    privacy = scan.cfg.privacy
    if gate := check_privacy(privacy.mode, privacy.gate, scan.findings.pii, scan.findings.pii_records):
        scan.findings.add(gate)
    if scan.kind == "classification":
        labels = np.asarray(scan.labels)[~scan.removed].tolist()
        for issue in check_labels(labels, scan.label_names, data.imbalance_ratio, data.labels):
            scan.findings.add(issue)


def assign_splits(cfg: RunConfig, scan: Scan) -> np.ndarray:
    """The split code of every kept record: fixed test records stay test, the rest is drawn by key."""
    keys, fixed = np.asarray(scan.keys, dtype=np.int64), np.asarray(scan.fixed, dtype=bool)
    labels = np.asarray(scan.labels, dtype=np.int64) if scan.label_names and cfg.data.stratify else None
    codes = np.full(len(keys), TEST, dtype=np.int8)
    codes[scan.removed] = -1
    test_size = 0.0 if (fixed & ~scan.removed).any() else cfg.data.test_size
    free = np.flatnonzero(~fixed & ~scan.removed)
    codes[free] = assign(keys[free], cfg.data.val_size, test_size, None if labels is None else labels[free])
    return codes


def write_splits(
    cfg: RunConfig, scan: Scan, codes: np.ndarray
) -> tuple[dict[str, int], dict[str, int], dict[str, Any], dict[str, Any]]:
    """Stream the scratch file into the split files, lock the test split, and count what each split holds."""
    run_dir = cfg.run_dir
    locked = cfg.data.lock_test and (run_dir / TEST_LOCK).is_file()
    names = [*SPLITS] if not locked else ["train", "val"]
    with contextlib.ExitStack() as stack, scan.scratch.open(encoding="utf-8") as lines:
        files = {n: stack.enter_context(atomic_open(split_path(run_dir, n))) for n in names}
        for line, code in zip(lines, codes, strict=True):
            if code >= 0 and SPLITS[code] in files:
                files[SPLITS[code]].write(line)
    if cfg.data.lock_test and not locked:
        test = split_path(run_dir, "test")
        atomic_write_json(run_dir / TEST_LOCK, {"sha256": file_sha256(test), "count": int((codes == TEST).sum())})
    tokens = np.asarray(scan.tokens, dtype=np.int64)
    inverse = {v: k for k, v in scan.label_names.items()}
    counts: dict[str, int] = {}
    sums: dict[str, int] = {}
    stats: dict[str, Any] = {}
    per_label: dict[str, Any] = {}
    for index, split in enumerate(SPLITS):
        part = tokens[codes == index]
        counts[split], sums[split] = len(part), int(part.sum())
        stats[split] = token_stats(part)
        if scan.label_names:  # classes, or the tasks of data.datasets
            per_label[split] = dict(Counter(inverse[c] for c in np.asarray(scan.labels)[codes == index]))
    return counts, sums, stats, per_label


def leakage(scan: Scan, codes: np.ndarray, threshold: float) -> Iterator[Issue]:
    """Warnings for train/val records nearly identical to a test record, and train records nearly identical to a
    validation record (MinHash, verified): either would flatter the held-out scores."""
    if threshold <= 0 or scan.signatures is None or not len(codes):
        return
    test, val, train = codes == TEST, codes == VAL, codes == TRAIN
    for index, queries, name in ((test, train | val, "test"), (val, train, "validation")):
        best, sims = leaks(scan.signatures.path, threshold, index, queries)
        for j in np.flatnonzero(best >= 0).tolist():
            yield warning(
                "leakage",
                scan.record(j).source,
                None,
                f"{sims[j]:.2f} similar to {name} record {scan.record(int(best[j])).source}",
                "drop one of the two, or group them with data.group_by so they share a split",
            )


def source_name(cfg: RunConfig) -> str:
    """The data a run reads, for messages."""
    return cfg.data.path or ", ".join(d.path for d in cfg.data.datasets)
