"""The streaming pass of `prepare`: every record is read, cleaned, anonymised, measured and appended to a scratch file.

Per record only a sort key, a content hash, a file offset, a label code, a token count and a split flag stay in
memory (arrays, ~40 bytes each), and its MinHash signature goes to a second scratch file; the dataset-level steps
(corpus.py) work on those.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.config import DataConfig, RunConfig
from tuneforge.data.clean import exact_key, fingerprint_text, n_chars, normalize, strip_html
from tuneforge.data.dedup import Signatures
from tuneforge.data.files import Skipped
from tuneforge.data.privacy import detect, mask, pseudonymize
from tuneforge.data.reader import read_records
from tuneforge.data.records import Issue, Kind, Record, Source, error
from tuneforge.data.report import Findings
from tuneforge.data.split import order_key
from tuneforge.data.tokenize import count_tokens
from tuneforge.data.validate import check_length
from tuneforge.rundir import TEST_LOCK

CHUNK = 256  # records tokenized per batched call


class Scan:
    """One streaming pass: every record is checked, cleaned and appended to the scratch file or counted out."""

    def __init__(self, cfg: RunConfig, tokenizer: Any, scratch: Path) -> None:
        self.cfg, self.tokenizer, self.scratch = cfg, tokenizer, scratch
        self.findings = Findings()
        self.kind: Kind | None = None
        self.read_count = 0
        self._last_issue_at: Source | None = None
        self.locked = cfg.data.lock_test and (scratch.parent.parent / TEST_LOCK).is_file()
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
                if self.cfg.clean.drop_too_long:
                    self.findings.remove("too_long", record, f"{n} tokens")
                else:
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

    def close(self) -> None:
        """Remove the scratch files (the splits hold what was kept)."""
        self.out.close()
        self.scratch.unlink(missing_ok=True)
        if self.signatures is not None:
            self.signatures.delete()


def _parse(line: bytes, kind: Kind) -> Record:
    """A record of the scratch file."""
    row = json.loads(line)
    source = row.pop("source")
    file, _, num = source.rpartition(":")
    return Record(kind, row, Source(file, int(num)) if num.isdigit() else Source(source, 0))
