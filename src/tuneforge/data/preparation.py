"""The prepare stage: read -> clean -> anonymise -> de-duplicate -> measure tokens -> split -> write data/.

Streams: records flow one at a time through the checks into a scratch file, their MinHash signatures into a
second one, and per record only a sort key, a content hash, a file offset, a label code, a token count and a
split flag stay in memory (arrays, ~40 bytes each). Duplicates are then found on the arrays and signatures
(dedup.py), the split is chosen on the arrays, and the scratch file is streamed into train/val/test.jsonl.
Everything found goes into data_report.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.config import DataConfig, RunConfig
from tuneforge.data.clean import exact_key, fingerprint_text, n_chars, normalize, strip_html
from tuneforge.data.dedup import Signatures, exact_duplicates, leaks, near_duplicates
from tuneforge.data.files import HF_PREFIX, Skipped
from tuneforge.data.privacy import PII_TYPES, detect, mask, pseudonymize
from tuneforge.data.reader import read_records
from tuneforge.data.records import Issue, Kind, Record, Source, error, warning
from tuneforge.data.report import Findings, render, token_stats
from tuneforge.data.split import TEST, TRAIN, VAL, assign, order_key
from tuneforge.data.tokenize import count_tokens
from tuneforge.data.validate import check_count, check_labels, check_length, check_privacy
from tuneforge.errors import ConfigError, DataError, TrainingError
from tuneforge.models import load_tokenizer
from tuneforge.rundir import SPLITS, atomic_open, atomic_write_json, save_config

REPORT = "data_report.json"
LOCK = "test.lock.json"
SCRATCH = ".records.jsonl"
CHUNK = 256  # records tokenized per batched call


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


def prepare(cfg: RunConfig, check: bool = False, strict: bool = False) -> PrepareResult:
    """Validate, clean and split the data of `cfg` into the run's data/ folder.

    Raises DataError when errors (with `strict`, also warnings) remain, unless `check` is set: then nothing but
    the report is written and the result says whether the data passed.
    """
    specs = _sources(cfg)
    data_dir = cfg.run_dir / "data"
    save_config(cfg)
    scan = _Scan(cfg, load_tokenizer(cfg.model.name, cfg.model.revision), data_dir / SCRATCH)
    estimate: dict[str, Any] | None = None
    try:
        for spec, fixed_test, data, task in specs:
            scan.read(spec, fixed_test, data, task)
        scan.deduplicate()
        scan.finish_checks()
        splits: tuple[dict[str, int], dict[str, int], dict[str, Any], dict[str, Any]] = ({}, {}, {}, {})
        if scan.findings.n_blocking(strict) == 0:
            codes = _assign(cfg, scan)
            for issue in _leakage(scan, codes, cfg.clean.leakage_threshold):
                scan.findings.add(issue)
            ok = scan.findings.n_blocking(strict) == 0
            if ok and not check:
                splits = _write_splits(cfg, scan, codes, data_dir)
            if ok and cfg.data.estimate:
                estimate = _estimate(cfg, scan, codes)
    finally:
        scan.close()
    ok = scan.findings.n_blocking(strict) == 0
    report = {**_report(cfg, scan, *splits), "estimate": estimate}
    atomic_write_json(data_dir / REPORT, report)
    if not ok and not check:
        _remove_stale_splits(cfg, data_dir)
        raise DataError(_summary(scan.findings, strict, data_dir), "fix the records named above, then prepare again")
    return PrepareResult(data_dir, splits[0], splits[1], report, ok)


def _remove_stale_splits(cfg: RunConfig, data_dir: Path) -> None:
    """Split files of an earlier prepare must not be trained on after this one failed (a locked test stays)."""
    locked = cfg.data.lock_test and (data_dir / LOCK).is_file()
    for split in SPLITS:
        if not (split == "test" and locked):
            (data_dir / f"{split}.jsonl").unlink(missing_ok=True)


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
    locked = cfg.run_dir / "data" / LOCK
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


def _source_name(cfg: RunConfig) -> str:
    """The data a run reads, for messages."""
    return cfg.data.path or ", ".join(d.path for d in cfg.data.datasets)


def _locked_test(lock: Path) -> Path:
    """The locked test file, after checking it is unchanged since it was locked."""
    test = lock.parent / "test.jsonl"
    info = json.loads(lock.read_text(encoding="utf-8"))
    if not test.is_file() or _sha256(test) != info["sha256"]:
        raise DataError(
            f"{test} changed or vanished after it was locked ({lock})",
            f"restore it, or delete {lock} to draw a new test split",
        )
    return test


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Scan:
    """One streaming pass: every record is checked, cleaned and appended to the scratch file or counted out."""

    def __init__(self, cfg: RunConfig, tokenizer: Any, scratch: Path) -> None:
        self.cfg, self.tokenizer, self.scratch = cfg, tokenizer, scratch
        self.findings = Findings()
        self.kind: Kind | None = None
        self.read_count = 0
        self._last_issue_at: Source | None = None
        self.locked = cfg.data.lock_test and (scratch.parent / LOCK).is_file()
        searching = cfg.clean.near_dup_threshold > 0 or cfg.clean.leakage_threshold > 0
        self.signatures = Signatures(scratch.with_suffix(".minhash")) if searching else None
        self.keys, self.exact, self.offsets = array("q"), array("q"), array("q")
        self.tokens, self.labels, self.fixed = array("l"), array("l"), array("b")
        self.removed = np.zeros(0, dtype=bool)
        self.label_names: dict[str, int] = {}
        self.group_labels: dict[str, int] = {}
        scratch.parent.mkdir(parents=True, exist_ok=True)
        self.out = scratch.open("wb")
        self._offset = 0

    def read(self, spec: str, fixed_test: bool, data: DataConfig, task: str | None = None) -> None:
        """Stream one source through the checks (its records tagged with `task`, a data.datasets name)."""
        chunk: list[Record] = []
        for record in self._cleaned(read_records(spec, data, self.kind)):
            if task is not None:
                record.data["task"] = task
            chunk.append(record)
            if len(chunk) == CHUNK:
                self._keep(chunk, fixed_test)
                chunk = []
        self._keep(chunk, fixed_test)

    def _cleaned(self, items: Iterable[Record | Issue | Skipped]) -> Iterator[Record]:
        clean, privacy = self.cfg.clean, self.cfg.privacy
        for item in items:
            if isinstance(item, Skipped):
                self.findings.skip(item.path, item.reason)
                continue
            if isinstance(item, Issue):
                if item.source is not None and item.source.line > 0 and item.source != self._last_issue_at:
                    self.read_count += 1  # a row with several issues is one row read
                    self._last_issue_at = item.source
                self.findings.add(item)
                continue
            self.read_count += 1
            self.kind = self.kind or item.kind
            if clean.normalize:
                item.map_texts(lambda t: normalize(t, clean.strip_html))
            elif clean.strip_html:  # HTML stripping alone, without normalisation
                item.map_texts(strip_html)
            if privacy.mode != "off" and not self._anonymised(item):
                continue
            size = n_chars(item)
            if size < clean.min_chars or (clean.max_chars and size > clean.max_chars):
                self.findings.remove("too_short" if size < clean.min_chars else "too_long", item, f"{size} chars")
                continue
            yield item

    def _anonymised(self, record: Record) -> bool:
        """Detect (and per privacy.mode rewrite) personal data; False when the record is dropped."""
        mode, types = self.cfg.privacy.mode, tuple(self.cfg.privacy.types)
        found: Counter[str] = Counter()

        def handle(text: str) -> str:
            spans = detect(text, types)
            found.update(f.type for f in spans)
            if not spans or mode == "report":
                return text
            return mask(text, spans) if mode == "mask" else pseudonymize(text, spans, f"seed{self.cfg.data.seed}")

        record.map_texts(handle)
        if found:
            self.findings.pii.update(found)
            self.findings.pii_records += 1
        if found and mode == "drop":
            self.findings.remove("personal_data", record, ", ".join(sorted(found)))
            return False
        return True

    def _keep(self, chunk: list[Record], fixed_test: bool) -> None:
        """Measure tokens of a chunk, check lengths, append the survivors to the scratch file."""
        if not chunk:
            return
        try:
            lengths = count_tokens(self.tokenizer, chunk)
        except Exception:  # a template that cannot render one record: find which, one by one
            lengths = [self._count_one(r) for r in chunk]
        limited = self.kind in ("chat", "preference", "classification")
        for record, n in zip(chunk, lengths, strict=True):
            if n < 0:
                continue
            if limited and (too_long := check_length(n, self.cfg.data.max_seq_len, record.source)):
                self.findings.add(too_long)
                continue
            record.n_tokens = n
            self._append(record, fixed_test)

    def _count_one(self, record: Record) -> int:
        try:
            return count_tokens(self.tokenizer, [record])[0]
        except Exception as exc:  # jinja2 raises many types; the message is what the user needs
            self.findings.add(
                error(
                    "template_error",
                    record.source,
                    None,
                    f"the chat template of {self.cfg.model.name} cannot render this record: {exc}",
                    "remove what the template does not support (tool calls, roles), or choose another model",
                )
            )
            return -1

    def _append(self, record: Record, fixed_test: bool) -> None:
        label = -1
        stratum = record.label if record.label is not None else record.data.get("task")  # class, or multitask task
        if stratum is not None:
            label = self.label_names.setdefault(stratum, len(self.label_names))
        text = fingerprint_text(record)
        if record.group is not None and label >= 0:  # a group is stratified by its first record's label
            label = self.group_labels.setdefault(record.group, label)
        self.keys.append(order_key(self.cfg.data.seed, record.group or text))
        self.exact.append(exact_key(text))
        if self.signatures is not None:
            self.signatures.add(text)
        self.tokens.append(record.n_tokens)
        self.labels.append(label)
        self.fixed.append(1 if fixed_test else 0)
        line = (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        self.offsets.append(self._offset)
        self._offset += len(line)
        self.out.write(line)

    def record(self, index: int) -> Record:
        """The index-th record of the scratch file (as cleaned)."""
        assert self.kind is not None
        with self.scratch.open("rb") as fh:
            fh.seek(self.offsets[index])
            return _parse(fh.readline(), self.kind)

    def deduplicate(self) -> None:
        """Remove exact, then near duplicates: the first occurrence stays (a locked test record always does)."""
        self.out.flush()
        if self.signatures is not None:
            self.signatures.close()
        self.removed = np.zeros(len(self.keys), dtype=bool)
        keep = np.asarray(self.fixed, dtype=bool) if self.locked else None
        if self.cfg.clean.dedup and len(self.keys):
            first = exact_duplicates(np.asarray(self.exact, dtype=np.int64), keep)
            self.removed = first >= 0
            self._count_removed("duplicate", first, None)
            if self.kind == "classification":
                self._conflicting_labels(first)
        threshold = self.cfg.clean.near_dup_threshold
        if threshold > 0 and self.signatures is not None and len(self.keys):
            dup_of, sims = near_duplicates(self.signatures.path, threshold, self.removed, keep)
            self.removed |= dup_of >= 0
            self._count_removed("near_duplicate", dup_of, sims)

    def _count_removed(self, reason: str, of: np.ndarray, sims: np.ndarray | None) -> None:
        gone = np.flatnonzero(of >= 0).tolist()
        for n, j in enumerate(gone):
            if not self.findings.wants_sample(reason):
                self.findings.count_removed(reason, len(gone) - n)
                break
            earlier = self.record(int(of[j])).source
            how = f"{sims[j]:.2f} similar to" if sims is not None else "after normalising case and spaces, same as"
            self.findings.remove(reason, self.record(j), f"{how} {earlier}")

    def _conflicting_labels(self, first: np.ndarray) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        copies = np.flatnonzero(first >= 0)
        for j in copies[labels[copies] != labels[first[copies]]].tolist():  # codes differ: compare real labels
            later, earlier = self.record(j), self.record(int(first[j]))
            if later.label != earlier.label:
                self.findings.add(
                    warning(
                        "conflicting_label",
                        later.source,
                        "label",
                        f"the same text occurred at {earlier.source} with label {earlier.label!r}, "
                        f"here {later.label!r}",
                        "decide which label is right; this later copy was dropped",
                    )
                )

    def finish_checks(self) -> None:
        """Dataset-level checks once every record is in: enough examples, labels balanced."""
        fixed = np.asarray(self.fixed, dtype=bool)
        free = int((~fixed & ~self.removed).sum())
        has_test = bool((fixed & ~self.removed).any())
        data = self.cfg.data
        minimum = 1 + (data.val_size > 0) + (0 if has_test else data.test_size > 0) + 1
        if self.findings.severities["error"] == 0 and (few := check_count(free, minimum, _source_name(self.cfg))):
            self.findings.add(few)
        if data.datasets and self.kind not in (None, "chat"):
            self.findings.add(
                error(
                    "multitask_not_chat",
                    None,
                    None,
                    f"train.task=multitask mixes chat datasets, and these are {self.kind} records",
                    "give data.datasets chat data (messages, alpaca, sharegpt or prompt/completion)",
                )
            )
        privacy = self.cfg.privacy
        if gate := check_privacy(privacy.mode, privacy.gate, self.findings.pii, self.findings.pii_records):
            self.findings.add(gate)
        if self.kind == "classification":
            labels = np.asarray(self.labels)[~self.removed].tolist()
            for issue in check_labels(labels, self.label_names, data.imbalance_ratio, data.labels):
                self.findings.add(issue)

    def close(self) -> None:
        """Remove the scratch files (the splits hold what was kept)."""
        self.out.close()
        self.scratch.unlink(missing_ok=True)
        if self.signatures is not None:
            self.signatures.delete()


def _assign(cfg: RunConfig, scan: _Scan) -> np.ndarray:
    """The split code of every kept record: fixed test records stay test, the rest is drawn by key."""
    keys, fixed = np.asarray(scan.keys, dtype=np.int64), np.asarray(scan.fixed, dtype=bool)
    labels = np.asarray(scan.labels, dtype=np.int64) if scan.label_names and cfg.data.stratify else None
    codes = np.full(len(keys), TEST, dtype=np.int8)
    codes[scan.removed] = -1
    test_size = 0.0 if (fixed & ~scan.removed).any() else cfg.data.test_size
    free = np.flatnonzero(~fixed & ~scan.removed)
    codes[free] = assign(keys[free], cfg.data.val_size, test_size, None if labels is None else labels[free])
    return codes


def _write_splits(
    cfg: RunConfig, scan: _Scan, codes: np.ndarray, data_dir: Path
) -> tuple[dict[str, int], dict[str, int], dict[str, Any], dict[str, Any]]:
    """Stream the scratch file into the split files, lock the test split, and count what each split holds."""
    locked = cfg.data.lock_test and (data_dir / LOCK).is_file()
    names = [*SPLITS] if not locked else ["train", "val"]
    with contextlib.ExitStack() as stack, scan.scratch.open(encoding="utf-8") as lines:
        files = {n: stack.enter_context(atomic_open(data_dir / f"{n}.jsonl")) for n in names}
        for line, code in zip(lines, codes, strict=True):
            if code >= 0 and SPLITS[code] in files:
                files[SPLITS[code]].write(line)
    if cfg.data.lock_test and not locked:
        atomic_write_json(
            data_dir / LOCK, {"sha256": _sha256(data_dir / "test.jsonl"), "count": int((codes == 2).sum())}
        )
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


def _leakage(scan: _Scan, codes: np.ndarray, threshold: float) -> Iterator[Issue]:
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


def _estimate(cfg: RunConfig, scan: _Scan, codes: np.ndarray) -> dict[str, Any]:
    """Training time and memory from a measured probe (chat data: what train.task sft reads)."""
    if scan.kind != "chat" or cfg.train.task not in ("sft", "multitask"):
        return {
            "unavailable": "the training probe measures chat data with train.task sft or multitask so far "
            f"(here: {scan.kind} data, train.task={cfg.train.task})"
        }
    from tuneforge.train.estimate import estimate_training

    tokens = np.asarray(scan.tokens, dtype=np.int64)
    train = np.flatnonzero(codes == TRAIN)
    if not len(train):
        return {"unavailable": "the training split is empty"}
    try:
        return estimate_training(cfg, tokens[train], lambda k: scan.record(int(train[k])), tokens[codes == VAL])
    except (RuntimeError, ValueError, MemoryError, TrainingError) as exc:  # the data are fine: say why no estimate
        return {"unavailable": f"the training probe failed: {str(exc).splitlines()[0][:200]}"}


def _parse(line: bytes, kind: Kind) -> Record:
    """A record of the scratch file."""
    row = json.loads(line)
    source = row.pop("source")
    file, _, num = source.rpartition(":")
    return Record(kind, row, Source(file, int(num)) if num.isdigit() else Source(source, 0))


def _report(
    cfg: RunConfig, scan: _Scan, counts: dict[str, int], tokens: dict[str, int], stats: dict[str, Any], labels: dict
) -> dict[str, Any]:
    return {
        "source": _source_name(cfg),
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


def _summary(findings: Findings, strict: bool, data_dir: Path) -> str:
    blocking = findings.errors(strict)
    shown = "\n".join(f"  - {e}" for e in blocking[:15])
    n = findings.n_blocking(strict)
    more = f"\n  ... and {n - 15} more" if n > 15 else ""
    what = "data error(s) and warning(s) (--strict)" if strict and findings.severities["warning"] else "data error(s)"
    return f"{n} {what}:\n{shown}{more}\n  (all findings: {data_dir / REPORT})"
