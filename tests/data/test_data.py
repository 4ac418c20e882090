import json
from pathlib import Path

import pytest

from tuneforge.config import DataConfig
from tuneforge.data import prepare
from tuneforge.data.formats import convert
from tuneforge.data.reader import read_records
from tuneforge.data.records import Issue, Source
from tuneforge.data.tokenize import IGNORE_INDEX, encode_chat
from tuneforge.errors import DataError
from tuneforge.models import load_tokenizer
from tuneforge.rundir import read_jsonl

from helpers import ROOT, chat, toy_rows, write_jsonl

GOOD = chat("Hello", "Hi there")


def read_issues(tmp_path: Path, lines: list[str] | bytes) -> list[str]:
    path = tmp_path / "d.jsonl"
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [str(i) for i in read_records(str(path), DataConfig()) if isinstance(i, Issue)]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"messages": [', "d.jsonl:1: invalid JSON: Expecting value at column 15 (invalid_json)"),
        ("[1, 2]", "d.jsonl:1: expected a JSON object, got list (not_an_object)"),
        ('{"txt": "x"}', "d.jsonl:1: no known record format (keys: ['txt']) (unknown_format)"),
        (
            '{"prompt": "Hi", "chosen": "Hello!"}',
            "d.jsonl:1: no known record format (keys: ['chosen', 'prompt']); a preference record would need "
            "'rejected' too",
        ),
        ('{"prompt": "Hi", "chosen": "Hello!", "rejected": ""}', "d.jsonl:1 [rejected]: 'rejected' is empty"),
        ('{"messages": []}', "d.jsonl:1 [messages]: 'messages' must be a non-empty list"),
        (
            '{"messages": [{"role": "bot", "content": "x"}]}',
            "d.jsonl:1 [messages[0].role]: unknown role 'bot' (unknown_role)",
        ),
        ('{"messages": [{"content": "x"}]}', "d.jsonl:1 [messages[0].role]: no 'role' (missing_role)"),
        ('{"messages": [{"role": "user"}]}', "d.jsonl:1 [messages[0].content]: no 'content' (missing_content)"),
        ('{"messages": [{"role": "user", "content": "  "}]}', "d.jsonl:1 [messages[0].content]: content is empty"),
        ('{"messages": [{"role": "user", "content": 5}]}', "content must be a string, got int (content_not_string)"),
        ('{"messages": [{"role": "user", "content": "x", "mood": 1}]}', "unknown key(s) ['mood'] (unknown_key)"),
        (
            '{"messages": [{"role": "user", "content": "x"}]}',
            "d.jsonl:1 [messages]: no assistant message (roles: ['user'])",
        ),
    ],
)
def test_each_bad_line_is_named_with_file_line_field_and_fix(tmp_path: Path, line: str, expected: str) -> None:
    issues = read_issues(tmp_path, [json.dumps(GOOD), line])
    assert len(issues) == 1
    assert expected.replace("d.jsonl:1", f"{tmp_path / 'd.jsonl'}:2") in issues[0]
    assert "; fix: " in issues[0]


def test_latin1_file_is_an_encoding_error_and_bom_a_warning(tmp_path: Path) -> None:
    latin = json.dumps(chat("Grüße", "Danke"), ensure_ascii=False).encode("latin-1")
    issues = read_issues(tmp_path, latin + b"\n")
    assert len(issues) == 1 and "not UTF-8 (byte 0xfc; looks like Latin-1/Windows-1252)" in issues[0]
    assert "iconv -f cp1252 -t utf-8 d.jsonl > d.utf8.jsonl" in issues[0]
    bom = read_issues(tmp_path, b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert len(bom) == 1 and "byte-order mark (read correctly) (bom)" in bom[0]


def test_empty_file(tiny_config, tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=r"empty.jsonl: the file holds no records \(it is empty, blank"):
        prepare(tiny_config(f"data.path={path}"))


def test_prepare_stops_on_errors_and_reports_all_of_them(tiny_config, tmp_path: Path) -> None:
    rows = [json.dumps(r) for r in toy_rows(20)] + ["not json", '{"messages": [{"role": "user", "content": "x"}]}']
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    cfg = tiny_config(f"data.path={path}")
    with pytest.raises(DataError) as info:
        prepare(cfg)
    text = str(info.value)
    assert "2 data error(s)" in text and f"{path}:21: invalid JSON" in text and f"{path}:22 [messages]" in text
    report = json.loads((cfg.run_dir / "data" / "data_report.json").read_text())
    assert report["errors"] == 2 and {i["line"] for i in report["issues"]} == {21, 22}
    assert not (cfg.run_dir / "data" / "train.jsonl").exists()


def test_too_long_examples_are_errors_with_the_token_count(tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", toy_rows(20) + [chat("word " * 300, "ok")])
    with pytest.raises(
        DataError,
        match=r"long.jsonl:21 \[messages\]: \d+ tokens with the model's chat template, more "
        r"than data.max_seq_len=100",
    ):
        prepare(tiny_config(f"data.path={path}", "data.max_seq_len=100"))


def test_too_few_examples(tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "few.jsonl", toy_rows(3))
    with pytest.raises(DataError, match="3 valid example.s.; at least 4 are needed"):
        prepare(tiny_config(f"data.path={path}"))


def test_missing_data_file(tiny_config, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path: not found"):
        prepare(tiny_config(f"data.path={tmp_path / 'nope.jsonl'}"))


def test_prepare_writes_disjoint_seeded_splits_and_a_report(tiny_config) -> None:
    cfg = tiny_config("data.val_size=0.1", "data.test_size=0.2")
    result = prepare(cfg)
    assert result.counts == {"train": 42, "val": 6, "test": 12}
    parts = {s: [r["source"] for r in read_jsonl(cfg.run_dir / "data" / f"{s}.jsonl")] for s in result.counts}
    assert sum(len(v) for v in parts.values()) == len(set().union(*parts.values())) == 60
    report = json.loads((cfg.run_dir / "data" / "data_report.json").read_text())
    assert report["counts"] == result.counts and report["tokens"]["train"] > 0
    assert (cfg.run_dir / "config.yaml").is_file()
    again = prepare(cfg)
    assert [r["source"] for r in read_jsonl(again.data_dir / "test.jsonl")] == parts["test"]


def test_separate_test_file_is_the_whole_test_split(tiny_config, tmp_path: Path) -> None:
    test = write_jsonl(tmp_path / "test.jsonl", toy_rows(65)[60:])
    result = prepare(tiny_config(f"data.test_path={test}"))
    assert result.counts["test"] == 5 and result.counts["train"] + result.counts["val"] == 60
    copies = write_jsonl(tmp_path / "copies.jsonl", toy_rows(5))  # test examples also in the training data
    result = prepare(tiny_config(f"data.test_path={copies}"))
    assert result.counts["test"] == 5 and result.counts["train"] + result.counts["val"] == 55
    assert result.report["removed"] == {"duplicate": 5}


def test_loss_mask_covers_exactly_the_assistant_turns(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    messages = [
        {"role": "system", "content": "Be short."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "See you."},
    ]
    enc = encode_chat(tokenizer, messages)
    learned = tokenizer.decode([t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label != IGNORE_INDEX])
    assert learned == "Hello!<|im_end|>\nSee you.<|im_end|>\n"
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(enc.input_ids, enc.labels, strict=True))


def test_the_shipped_broken_example_reports_each_rule_once(tiny_config) -> None:
    """examples/broken/chat.jsonl is the README's bad-data demo: one line per rule, the first line valid."""
    broken = ROOT / "examples" / "broken" / "chat.jsonl"
    cfg = tiny_config(f"data.path={broken}", "data.max_seq_len=384")
    with pytest.raises(DataError, match="6 data error"):
        prepare(cfg)
    report = json.loads((cfg.run_dir / "data" / "data_report.json").read_text())
    rules = [(i["line"], i["rule"]) for i in report["issues"] if i["severity"] == "error"]
    expected = ["invalid_json", "unknown_role", "empty_content", "no_assistant", "unknown_format", "too_long"]
    assert rules == list(enumerate(expected, start=2))


SRC = Source("d.jsonl", 3)
ANSWER = {"role": "assistant", "content": "B"}


@pytest.mark.parametrize(
    ("record", "messages"),
    [
        ({"instruction": "Q", "output": "B"}, [{"role": "user", "content": "Q"}, ANSWER]),
        (
            {"instruction": "Q", "input": "ctx", "output": "B", "system": "S"},
            [{"role": "system", "content": "S"}, {"role": "user", "content": "Q\n\nctx"}, ANSWER],
        ),
        ({"instruction": "Q", "input": "", "output": "B"}, [{"role": "user", "content": "Q"}, ANSWER]),
        (
            {"instruction": "Q", "input": None, "output": "B", "system": None},
            [{"role": "user", "content": "Q"}, ANSWER],
        ),
        ({"prompt": "Q", "completion": "B"}, [{"role": "user", "content": "Q"}, ANSWER]),
        (
            {
                "conversations": [
                    {"from": "system", "value": "S"},
                    {"from": "human", "value": "Q"},
                    {"from": "gpt", "value": "B"},
                ]
            },
            [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, ANSWER],
        ),
        ({"messages": [{"role": "user", "content": "Q"}, ANSWER], "id": 7}, [{"role": "user", "content": "Q"}, ANSWER]),
    ],
    ids=["alpaca", "alpaca-input-system", "alpaca-empty-input", "alpaca-null-input", "completion", "sharegpt", "chat"],
)
def test_every_format_is_recognised_by_its_keys_and_converted(record: dict, messages: list) -> None:
    assert convert(record, SRC) == ("chat", {"messages": messages}, [])


@pytest.mark.parametrize(
    ("record", "fmt", "expected"),
    [
        ({"instruction": "Q"}, "auto", "d.jsonl:3 [output]: no 'output' (missing_field)"),
        ({"instruction": "Q", "output": "  "}, "auto", "d.jsonl:3 [output]: 'output' is empty (empty_content)"),
        ({"instruction": "Q", "output": "B", "input": 3}, "auto", "[input]: 'input' must be a string, got int"),
        ({"prompt": "Q", "completion": ["B"]}, "auto", "[completion]: 'completion' must be a string, got list"),
        ({"conversations": []}, "auto", "[conversations]: 'conversations' must be a non-empty list"),
        ({"conversations": [{"from": "bot", "value": "x"}]}, "auto", "[conversations[0].from]: unknown speaker 'bot'"),
        ({"conversations": [{"from": "human"}]}, "auto", "[conversations[0].value]: no 'value' (missing_field)"),
        ({"conversations": [{"from": "human", "value": "Q"}]}, "auto", "[conversations]: no 'gpt' turn (no_assistant)"),
        ({"prompt": "Q", "completion": "B"}, "chat", "[messages]: no 'messages' key (keys: ['completion', 'prompt'])"),
        ([1], "auto", "d.jsonl:3: expected a JSON object, got list (not_an_object)"),
    ],
)
def test_format_errors_name_the_field_the_user_wrote(record: object, fmt: str, expected: str) -> None:
    kind, data, issues = convert(record, SRC, fmt)
    assert kind is None and data == {} and len(issues) == 1
    assert expected in str(issues[0]) and "; fix: " in str(issues[0])


def test_prepare_reads_a_file_of_mixed_formats(tiny_config, tmp_path: Path) -> None:
    rows = toy_rows(20)
    rows += [{"instruction": f"Item {i}: what colour?", "output": "{}"} for i in range(5)]
    rows += [{"prompt": f"Item {i}?", "completion": "{}"} for i in range(5)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    result = prepare(tiny_config(f"data.path={path}"))
    assert sum(result.counts.values()) == 30
    lines = [
        json.loads(line) for split in ("train", "val", "test") for line in (result.data_dir / f"{split}.jsonl").open()
    ]
    assert all(row["messages"][-1]["role"] == "assistant" for row in lines)
    with pytest.raises(DataError, match="no 'messages' key"):
        prepare(tiny_config(f"data.path={path}", "data.format=chat"))
