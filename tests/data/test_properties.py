"""Property-based tests: random and malformed files through every reader give records or clear issues, never a
traceback and never a silently dropped row."""

import csv
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.config import DataConfig
from tuneforge.data.files import Skipped
from tuneforge.data.reader import read_records
from tuneforge.data.records import Issue, Record

KEYS = [
    "messages", "role", "content", "weight", "tools", "conversations", "from", "value", "instruction", "input",
    "output", "system", "prompt", "completion", "chosen", "rejected", "preferred_output", "non_preferred_output",
    "text", "label", "x",
]  # fmt: skip
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=12)
values = st.recursive(
    scalars | st.sampled_from(["user", "assistant", "system", "human", "gpt", "bot", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)
rows = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)


def consume(path: Path, **data: object) -> list[Record | Issue | Skipped]:
    return list(read_records(str(path), DataConfig(**data)))


def lines_accounted(items: list, n_lines: int) -> set[int]:
    """1-based lines that produced a record or an error; must cover every non-blank line."""
    covered = {i.source.line for i in items if isinstance(i, Record)}
    covered |= {i.source.line for i in items if isinstance(i, Issue) and i.severity == "error" and i.source}
    return covered


@SETTINGS
@given(st.lists(rows | values | st.text(max_size=30), min_size=1, max_size=8))
def test_jsonl_every_line_is_a_record_or_an_error(lines: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        text = [json.dumps(v) if not isinstance(v, str) or v.startswith("{") else v for v in lines]
        path.write_text("\n".join(t.replace("\n", " ") for t in text) + "\n", encoding="utf-8")
        items = consume(path)
        raw_lines = path.read_bytes().split(b"\n")  # bytes: read_text would also split at a lone \r
        expected = {n for n, t in enumerate(raw_lines, start=1) if t.strip()}
        assert expected <= lines_accounted(items, len(lines))
        for item in items:
            if isinstance(item, Record):
                assert all(isinstance(t, str) for t in item.texts())


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".py"]))
def test_random_bytes_never_raise(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        path.write_bytes(data)
        for item in consume(path):
            assert isinstance(item, Record | Issue | Skipped)
            if isinstance(item, Issue):
                assert item.message and item.hint and item.rule


@SETTINGS
@given(
    st.lists(
        st.tuples(st.text(max_size=20), st.one_of(st.text(max_size=6), st.integers(0, 3))),
        min_size=1,
        max_size=6,
    )
)
def test_csv_every_row_is_a_record_or_an_error(table: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["review", "stars"])
            writer.writerows(table)
        items = consume(path, columns={"text": "review", "label": "stars"})
        with path.open(newline="", encoding="utf-8") as fh:
            n_rows = sum(1 for row in csv.reader(fh) if row) - 1  # csv skips blank rows; so does a spreadsheet
        outcomes = [i for i in items if isinstance(i, Record) or (isinstance(i, Issue) and i.severity == "error")]
        assert len({i.source.line for i in outcomes}) == n_rows
