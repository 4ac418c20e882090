"""Rated answers become preference pairs: every two differently rated answers, margin = the gap, clear errors."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.errors import DataError
from tuneforge.feedback import ratings_to_pairs

from helpers import write_jsonl


def test_ratings_and_thumbs_become_every_ordered_pair(tmp_path: Path) -> None:
    rows = [
        {
            "prompt": "Summarise the contract.",
            "answers": [
                {"text": "A two-year lease.", "rating": 5},
                {"text": "A lease.", "rating": 3},
                {"text": "No idea.", "rating": 1},
                {"text": "A contract.", "rating": 3},
            ],
            "annotator": "ann",
        },
        {"prompt": "Say hi.", "answer": "Hello!", "thumbs": "up"},
        {"prompt": "Say hi.", "answer": "Go away.", "thumbs": "👎"},
        {"prompt": "Only one.", "answer": "Lonely.", "rating": 4},
    ]
    result = ratings_to_pairs(write_jsonl(tmp_path / "rated.jsonl", rows))
    first = [p for p in result.pairs if p["prompt"][0]["content"] == "Summarise the contract."]
    assert len(first) == 5  # 4 choose 2 = 6, less the tie of the two rated 3
    best = next(p for p in first if p["rejected"][0]["content"] == "No idea.")
    assert best["margin"] in (4.0, 2.0) and best["annotator"] == "ann"
    assert all(p["chosen"] != p["rejected"] for p in first)
    hi = [p for p in result.pairs if p["prompt"][0]["content"] == "Say hi."]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"], p["margin"]) for p in hi] == [
        ("Hello!", "Go away.", 1.0)
    ]
    assert result.prompts == 3 and result.answers == 7 and result.unpaired == ["Only one."]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Hi", "answer": "Hello"}, r"rated.jsonl:1: the answer has no rating"),
        ({"prompt": "Hi", "answer": "Hello", "rating": "great"}, r"rated.jsonl:1 \[rating\]: rating 'great'"),
        ({"answer": "Hello", "rating": 2}, r"rated.jsonl:1: no prompt"),
        ({"prompt": "Hi", "answers": [{"rating": 2}]}, r"rated.jsonl:1 \[answers\[0\]\]: no answer text"),
    ],
)
def test_bad_rows_are_named_with_line_and_field(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ratings_to_pairs(write_jsonl(tmp_path / "rated.jsonl", [row]))


def test_the_preferences_command_writes_pairs_prepare_reads(tmp_path: Path) -> None:
    rated = write_jsonl(
        tmp_path / "rated.jsonl",
        [
            {"prompt": "Say hi.", "answer": "Hello!", "rating": 5},
            {"prompt": "Say hi.", "answer": "Go away.", "rating": 1},
        ],
    )
    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, ["preferences", str(rated), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 rated answers to 1 prompts -> 1 pairs" in result.output
    pair = json.loads(out.read_text())
    assert pair["margin"] == 4.0 and pair["chosen"][0]["content"] == "Hello!"
    bad = CliRunner().invoke(app, ["preferences", str(write_jsonl(tmp_path / "b.jsonl", [{"prompt": "x"}]))])
    assert bad.exit_code == 2 and "error:" in bad.output and "Traceback" not in bad.output
