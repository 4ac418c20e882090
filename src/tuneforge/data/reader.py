"""Rows -> records: column mapping, format conversion, groups, label and kind checks. Streams."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from tuneforge.config import DataConfig
from tuneforge.data.files import Row, Skipped, read_rows
from tuneforge.data.formats import convert
from tuneforge.data.records import Issue, Kind, Record, Source, error

Item = Record | Issue | Skipped


def read_records(spec: str, cfg: DataConfig, kind: Kind | None = None) -> Iterator[Item]:
    """Records of one data source; `kind` (if known from another source) is the kind every record must have."""
    renames = {user: field for field, user in cfg.columns.items()}
    first: tuple[Kind, Source] | None = (kind, Source(spec, 0)) if kind else None
    for item in read_rows(spec, cfg.hf_subset, cfg.hf_split):
        if not isinstance(item, Row):
            yield item
            continue
        record, issues = _to_record(item, cfg, renames)
        if record is None:
            yield from (_as_written(i, cfg.columns) for i in issues)
            continue
        if first is None:
            first = (record.kind, record.source)
        elif record.kind != first[0]:
            yield error(
                "mixed_kinds",
                record.source,
                None,
                f"a {record.kind} record among {first[0]} records (first at {first[1]})",
                "keep one kind of example per dataset (chat, preference, classification or text), or set data.format",
            )
            continue
        yield record


def _to_record(row: Row, cfg: DataConfig, renames: dict[str, str]) -> tuple[Record | None, list[Issue]]:
    value: Any = row.value
    raw = value if isinstance(value, dict) else {}
    if renames and isinstance(value, dict):
        value = {renames.get(k, k): v for k, v in value.items()}
    group = row.group
    if cfg.group_by and isinstance(value, dict):
        if raw.get(cfg.group_by) in (None, ""):
            hint = "give every row its group value, or unset data.group_by"
            return None, [error("missing_group", row.source, cfg.group_by, f"no '{cfg.group_by}'", hint)]
        group = str(raw[cfg.group_by])
    kind, data, issues = convert(value, row.source, cfg.format)
    if kind is None:
        return None, issues
    if kind == "classification" and cfg.labels is not None and data["label"] not in cfg.labels:
        return None, [
            error(
                "unknown_label",
                row.source,
                "label",
                f"label {data['label']!r} is not in data.labels",
                f"use one of {cfg.labels}, or add it to data.labels",
            )
        ]
    return Record(kind, data, row.source, group), []


def _as_written(issue: Issue, columns: dict[str, str]) -> Issue:
    """The issue with its field named as the user's column when data.columns renamed it."""
    if not issue.field or not columns:
        return issue
    head, dot, rest = issue.field.partition(".")
    base, bracket, index = head.partition("[")
    if base in columns:
        field = columns[base] + bracket + index + dot + rest
        return replace(issue, field=field, hint=f"{issue.hint} (column {columns[base]!r} is data.columns.{base})")
    return issue
