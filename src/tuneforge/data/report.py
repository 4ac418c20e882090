"""What the prepare stage found: issues, removals, skipped files, personal data. Counted in full, sampled in memory.

A million-line file with an error on every line must not hold a million Issues: each rule keeps its first
KEEP_PER_RULE issues and counts the rest; each removal reason keeps SAMPLES examples. Sample texts are shown with
personal data masked, whatever privacy.mode is, so the report never prints a detected value.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tuneforge.data.privacy import detect, mask
from tuneforge.data.records import Issue, Record

KEEP_PER_RULE = 200
SAMPLES = 3
SHOWN = 15
SNIPPET = 100


class Findings:
    """Issues and removals gathered while streaming through the data."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.rules: Counter[str] = Counter()
        self.severities: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.removed_samples: dict[str, list[dict[str, Any]]] = {}
        self.skipped: Counter[str] = Counter()
        self.skipped_samples: dict[str, list[str]] = {}
        self.pii: Counter[str] = Counter()
        self.pii_records = 0

    def add(self, issue: Issue) -> None:
        """Count an issue; keep it unless its rule already has KEEP_PER_RULE examples."""
        self.rules[issue.rule] += 1
        self.severities[issue.severity] += 1
        if self.rules[issue.rule] <= KEEP_PER_RULE:
            self.issues.append(issue)

    def remove(self, reason: str, record: Record, detail: str = "") -> None:
        """Count a record dropped by cleaning, with a masked sample of its text."""
        self.removed[reason] += 1
        samples = self.removed_samples.setdefault(reason, [])
        if len(samples) < SAMPLES:
            samples.append({"source": str(record.source), "text": snippet(record), "detail": detail})

    def wants_sample(self, reason: str) -> bool:
        """Whether a removal for `reason` would still be kept as a sample (read the record only then)."""
        return len(self.removed_samples.get(reason, [])) < SAMPLES

    def count_removed(self, reason: str, n: int = 1) -> None:
        """Count removals without a sample."""
        self.removed[reason] += n

    def skip(self, path: str, reason: str) -> None:
        """Count a file a folder walk left out (binary, empty, gitignored)."""
        self.skipped[reason] += 1
        samples = self.skipped_samples.setdefault(reason, [])
        if len(samples) < SAMPLES:
            samples.append(path)

    def errors(self, strict: bool) -> list[Issue]:
        """The kept issues that stop the run (warnings too when strict)."""
        return [i for i in self.issues if i.severity == "error" or strict]

    def n_blocking(self, strict: bool) -> int:
        """How many issues stop the run, counted in full."""
        return self.severities["error"] + (self.severities["warning"] if strict else 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "errors": self.severities["error"],
            "warnings": self.severities["warning"],
            "issues_by_rule": dict(self.rules.most_common()),
            "removed": dict(self.removed),
            "removed_samples": self.removed_samples,
            "skipped_files": dict(self.skipped),
            "skipped_samples": self.skipped_samples,
            "issues": [i.to_json() for i in self.issues],
        }


def token_stats(part: np.ndarray) -> dict[str, Any]:
    """min, mean, median, 95th percentile and max of token counts ({} when empty)."""
    if not len(part):
        return {}
    return {
        "min": int(part.min()),
        "mean": round(float(part.mean()), 1),
        "p50": int(np.percentile(part, 50)),
        "p95": int(np.percentile(part, 95)),
        "max": int(part.max()),
    }


def snippet(record: Record) -> str:
    """The start of a record's text, one line, personal data masked."""
    text = " | ".join(t.replace("\n", " ") for t in record.texts())[: SNIPPET * 2]
    text = mask(text, detect(text))
    return text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"


def render(report: dict[str, Any], strict: bool = False) -> str:
    """The data report as terminal text: splits, token statistics, removals, personal data, issues."""
    lines = [f"data: {report['source']} ({report.get('kind') or 'no valid'} records, {report['read']} read)"]
    if report["counts"]:
        column = "tasks" if report.get("kind") == "chat" else "labels"
        lines.append(f"  {'split':<6} {'examples':>9} {'tokens':>10} {'mean':>7} {'p95':>6} {'max':>6}  {column}")
        for split, n in report["counts"].items():
            st = report["token_stats"].get(split, {})
            labels = ", ".join(f"{k} {v}" for k, v in report["labels"].get(split, {}).items())
            lines.append(
                f"  {split:<6} {n:>9,} {report['tokens'][split]:>10,} {st.get('mean', 0):>7.1f} "
                f"{st.get('p95', 0):>6} {st.get('max', 0):>6}  {labels}"
            )
    for reason, n in report["removed"].items():
        lines.append(f"  removed {n:,} {reason.replace('_', ' ')}")
        for s in report["removed_samples"].get(reason, []):
            detail = f" ({s['detail']})" if s["detail"] else ""
            lines.append(f"    e.g. {s['source']}{detail}: {s['text']}")
    for reason, n in report["skipped_files"].items():
        lines.append(f"  skipped {n:,} {reason} file(s), e.g. {', '.join(report['skipped_samples'][reason])}")
    pii = report["privacy"]
    if pii["found"]:
        found = ", ".join(f"{k} {v:,}" for k, v in pii["found"].items())
        lines.append(f"  personal data ({pii['mode']}): {found} in {pii['records']:,} record(s); values never shown")
    if report.get("estimate"):
        lines.append(f"  {estimate_text(report['estimate'])}")
    if report["issues_by_rule"]:
        by_rule = ", ".join(f"{k} {v:,}" for k, v in report["issues_by_rule"].items())
        lines.append(f"  {report['errors']:,} error(s), {report['warnings']:,} warning(s): {by_rule}")
        shown = [i for i in report["issues"] if i["severity"] == "error" or strict] + [
            i for i in report["issues"] if i["severity"] == "warning" and not strict
        ]
        for i in shown[:SHOWN]:
            lines.append(f"  - {i['severity']}: {_issue_text(i)}")
        if len(shown) > SHOWN:
            lines.append(f"  ... {report['errors'] + report['warnings'] - SHOWN:,} more in data_report.json")
    else:
        lines.append("  no problems found")
    return "\n".join(lines)


def estimate_text(e: dict[str, Any]) -> str:
    """One line: how long training will take and how much memory it needs (from the measured probe)."""
    if "unavailable" in e:
        return f"training estimate: unavailable ({e['unavailable']})"
    where = f"{e['device']}, {e['precision']}" + (f", {e['threads']} threads" if e["device"] == "cpu" else "")
    need, have = e["peak_memory_bytes"] / 2**30, e["available_memory_bytes"] / 2**30
    fits = "fits" if e["peak_memory_bytes"] <= e["available_memory_bytes"] else "DOES NOT FIT"
    return (
        f"training estimate ({e['method']}, {where}): {e['steps']:,} steps, {e['epochs']:g} epoch(s), "
        f"~{duration(e['train_seconds'])} training + ~{duration(e['eval_seconds'])} validation at "
        f"{e['tokens_per_s']:,.0f} tokens/s; peak memory ~{need:.1f} GiB on the longest batch "
        f"({fits} in {have:.1f} GiB available)"
    )


def duration(seconds: float) -> str:
    """Seconds as '45 s', '12 min' or '3 h 20 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"


def _issue_text(i: dict[str, Any]) -> str:
    where = f"{i['file']}:{i['line']}" if i["line"] else (i["file"] or "data")
    at = f" [{i['field']}]" if i["field"] else ""
    return f"{where}{at}: {i['message']} ({i['rule']}); fix: {i['hint']}"
