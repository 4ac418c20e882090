"""Readers by file type and record formats beyond chat: every row keeps its file and line."""

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.config import DataConfig
from tuneforge.data.files import Skipped
from tuneforge.data.formats import EXAMPLES, convert
from tuneforge.data.reader import read_records
from tuneforge.data.records import Issue, Record, Source
from tuneforge.errors import DataError

SRC = Source("d.jsonl", 1)
REVIEWS = [
    ("Lieferung kam zwei Wochen zu spät, Verpackung beschädigt.", "negativ"),
    ("Great fit, fabric feels premium, would buy again.", "positive"),
    ("Der Kundenservice hat sofort geholfen, danke!", "positiv"),
]


def read(path: Path | str, **data: object) -> tuple[list[Record], list[Issue], list[Skipped]]:
    items = list(read_records(str(path), DataConfig(**data)))
    return (
        [i for i in items if isinstance(i, Record)],
        [i for i in items if isinstance(i, Issue)],
        [i for i in items if isinstance(i, Skipped)],
    )


def test_every_documented_example_converts_to_its_kind() -> None:
    kinds = {}
    for name, line in EXAMPLES.items():
        kind, data, issues = convert(json.loads(line), SRC)
        assert issues == [] and kind is not None, name
        kinds[name] = kind
    assert kinds == {
        "chat": "chat",
        "sharegpt": "chat",
        "alpaca": "chat",
        "openai_preference": "preference",
        "preference": "preference",
        "completion": "chat",
        "prompt": "chat",
        "classification": "classification",
        "text": "text",
    }


def test_preference_formats_become_prompt_chosen_rejected_messages() -> None:
    user = [{"role": "user", "content": "Wie kündige ich?"}]
    good, bad = (
        [{"role": "assistant", "content": "Schriftlich, 3 Monate vorher."}],
        [{"role": "assistant", "content": "Keine Ahnung."}],
    )
    expected = {"prompt": user, "chosen": good, "rejected": bad}
    trl = {"prompt": "Wie kündige ich?", "chosen": good[0]["content"], "rejected": bad[0]["content"]}
    implicit = {"chosen": user + good, "rejected": user + bad}  # TRL's implicit prompt: the shared beginning
    openai = {"input": {"messages": user}, "preferred_output": good, "non_preferred_output": bad}
    for row in (trl, implicit, openai):
        assert convert(row, SRC) == ("preference", expected, [])
    _, _, issues = convert({"prompt": "Q", "chosen": "A", "rejected": "A"}, SRC)
    assert "'chosen' and 'rejected' are identical (same_answers)" in str(issues[0])
    _, _, issues = convert({**openai, "non_preferred_output": []}, SRC)
    assert "[non_preferred_output]" in str(issues[0]) and "missing_output" in str(issues[0])


def test_chat_keeps_weights_and_tools_and_checks_weights() -> None:
    tools = [{"type": "function", "function": {"name": "get_order", "parameters": {"type": "object"}}}]
    row = {
        "messages": [
            {"role": "user", "content": "Wo ist Bestellung 42?"},
            {"role": "assistant", "content": "Moment.", "weight": 0},
            {"role": "assistant", "content": "Sie ist unterwegs.", "weight": 1},
        ],
        "tools": tools,
    }
    kind, data, issues = convert(row, SRC)
    assert issues == [] and data["tools"] == tools and data["messages"][1]["weight"] == 0
    row["messages"][0]["weight"] = 1
    assert "[messages[0].weight]: weight 1 on a user message (bad_weight)" in str(convert(row, SRC).issues[0])
    row["messages"][0].pop("weight")
    row["messages"][2]["weight"] = 0.5
    assert "bad_weight" in str(convert(row, SRC).issues[0])


def test_classification_labels_are_strings_and_checked() -> None:
    assert convert({"text": "gut", "label": 1}, SRC).data == {"text": "gut", "label": "1"}
    assert "no 'label' (missing_label)" in str(convert({"text": "gut", "label": ""}, SRC).issues[0])
    assert "(bad_label)" in str(convert({"text": "gut", "label": [1]}, SRC).issues[0])


def test_csv_tsv_json_and_parquet_with_column_mapping(tmp_path: Path) -> None:
    rows = [{"review": t, "sentiment": s} for t, s in REVIEWS]
    for name, delimiter in (("r.csv", ","), ("r.tsv", "\t")):
        with (tmp_path / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, ["review", "sentiment"], delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    (tmp_path / "r.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    lines = {"r.csv": [2, 3, 4], "r.tsv": [2, 3, 4], "r.json": [2, 6, 10], "r.parquet": [1, 2, 3]}
    for name, expected_lines in lines.items():
        records, issues, _ = read(tmp_path / name, columns={"text": "review", "label": "sentiment"})
        assert issues == [], name
        assert [(r.data["text"], r.data["label"]) for r in records] == REVIEWS, name
        assert [r.source.line for r in records] == expected_lines, name


def test_table_errors_name_the_users_column_and_row(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text('review,sentiment\n"ok",positive\n"kaputt",\n"a","b",extra\n', encoding="utf-8")
    _, issues, _ = read(path, columns={"text": "review", "label": "sentiment"})
    text = [str(i) for i in issues]
    assert f"{path}:3 [sentiment]: no 'label' (missing_label)" in text[0] and "data.columns.label" in text[0]
    assert f"{path}:4: 1 more cell(s) than header columns (extra_cells)" in text[1]
    path.write_bytes("review,sentiment\nGrüße,positiv\n".encode("latin-1"))
    _, issues, _ = read(path)
    assert f"{path}:2: not UTF-8 (byte 0xfc)" in str(issues[0])


def test_csv_cells_may_hold_chat_messages_as_json(tmp_path: Path) -> None:
    path = tmp_path / "chat.csv"
    messages = [{"role": "user", "content": "Hi, ich bin's"}, {"role": "assistant", "content": "Hallo!"}]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["messages"], [json.dumps(messages, ensure_ascii=False)]])
    records, issues, _ = read(path)
    assert issues == [] and records[0].data["messages"] == messages


def test_json_array_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('{"text": "x"}')
    assert "must hold one JSON array (not_an_array)" in str(read(path)[1][0])
    path.write_text('[\n {"text": "a"},\n {"text": }\n]')
    records, issues, _ = read(path)
    assert len(records) == 1 and f"{path}:3: invalid JSON" in str(issues[0])


def test_damaged_parquet_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 not really")
    assert "not a readable Parquet file" in str(read(path)[1][0])


def test_folder_of_code_honours_gitignore_and_skips_binaries(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src" / "build").mkdir(parents=True)
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".gitignore").write_text("build/\n*.log\n")
    (repo / "src" / "app.py").write_text("def total(items):\n    return sum(i.price for i in items)\n")
    (repo / "src" / "build" / "out.py").write_text("generated = True\n")
    (repo / "src" / "debug.log").write_text("noise\n")
    (repo / "README.md").write_text("# Shop\n\nBerechnet Summen.\n")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (repo / "src" / ".gitignore").write_text("secret.py\n")
    (repo / "src" / "secret.py").write_text("KEY = 1\n")
    records, issues, skipped = read(repo)
    assert issues == []
    assert [r.group for r in records] == ["README.md", "src/app.py"]
    assert records[1].data["text"].startswith("def total(items):\n    return")  # indentation kept
    assert sorted((Path(s.path).name, s.reason) for s in skipped) == [
        ("debug.log", "gitignore"),
        ("logo.png", "binary"),
        ("secret.py", "gitignore"),
    ]


def test_a_plain_text_file_is_one_text_record(tmp_path: Path) -> None:
    path = tmp_path / "handbuch.txt"
    path.write_text("Kapitel 1\n\nDie Garantie beträgt zwei Jahre.\n", encoding="utf-8")
    records, issues, _ = read(path)
    assert issues == [] and records[0].kind == "text" and "Garantie" in records[0].data["text"]


def test_one_dataset_holds_one_kind(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"text": "gut", "label": "pos"}, {"prompt": "Q", "completion": "A"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    _, issues, _ = read(path)
    assert f"{path}:2: a chat record among classification records (first at {path}:1) (mixed_kinds)" in str(issues[0])


def test_unknown_label_when_labels_are_fixed(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "meh", "label": "neutral"}))
    _, issues, _ = read(path, labels=["positive", "negative"])
    assert "label 'neutral' is not in data.labels (unknown_label)" in str(issues[0])


def test_group_by_column_sets_the_group(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"conversation": "c1", "prompt": "Q", "completion": "A"}, {"prompt": "Q2", "completion": "B"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    records, issues, _ = read(path, group_by="conversation")
    assert records[0].group == "c1" and "no 'conversation' (missing_group)" in str(issues[0])


def test_local_hugging_face_dataset_folder_loads_through_load_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "reviews-ds" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"text": t, "label": s} for t, s in REVIEWS]), folder / "train.parquet")
    records, issues, _ = read(f"hf:{folder.parent}")
    assert issues == [] and [r.label for r in records] == [s for _, s in REVIEWS]
    assert str(records[0].source) == f"hf:{folder.parent}[train]:1"


def test_uncached_hub_dataset_offline_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="'tuneforge-nobody/none' .* is not in the local cache and the hub cannot"):
        read("hf:tuneforge-nobody/none")
