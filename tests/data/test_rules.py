"""Every rule of the data checks, each with a realistic German or English example: the finding names the rule,
the line and the field, and no rule exists without an example here."""

import ast
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.data import preparation, prepare

from helpers import ROOT, chat, toy_rows, write_jsonl

SRC = ROOT / "src" / "tuneforge" / "data"
ASK = {"role": "user", "content": "Wann wird meine Bestellung 4711 geliefert?"}
ANSWER = {"role": "assistant", "content": "Ihre Bestellung kommt voraussichtlich am Freitag."}


def line(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


# rule -> (file name, content, extra settings, line, field). The content is one bad row after nothing else
# unless it is a list of rows; line 0 means the finding is about the file or the dataset.
ROW_CASES: dict[str, tuple[str, str | bytes, list[str], int, str | None]] = {
    "invalid_json": ("d.jsonl", '{"messages": [{"role": "user", "content": "Wo ist mein Paket?"}', [], 1, None),
    "bad_encoding": (
        "d.jsonl",
        line({"text": "Kündigung zum Monatsende", "label": "k"}).encode("latin-1"),
        [],
        1,
        None,
    ),
    "bom": ("d.jsonl", "\ufeff" + line({"messages": [ASK, ANSWER]}), [], 1, None),
    "not_an_object": ("d.jsonl", line(["Where is my parcel?", "It ships on Friday."]), [], 1, None),
    "unknown_format": ("d.jsonl", line({"question": "Where is my parcel?", "answer": "Friday."}), [], 1, None),
    "missing_messages": ("d.jsonl", line({"conversation": [ASK, ANSWER]}), ["data.format=chat"], 1, "messages"),
    "messages_not_list": ("d.jsonl", line({"messages": "Hallo, ich brauche Hilfe"}), [], 1, "messages"),
    "message_not_object": ("d.jsonl", line({"messages": ["Hallo", ANSWER]}), [], 1, "messages[0]"),
    "missing_role": (
        "d.jsonl",
        line({"messages": [{"content": "Where is my parcel?"}, ANSWER]}),
        [],
        1,
        "messages[0].role",
    ),
    "unknown_role": (
        "d.jsonl",
        line({"messages": [ASK, {"role": "bot", "content": "Friday."}]}),
        [],
        1,
        "messages[1].role",
    ),
    "missing_content": ("d.jsonl", line({"messages": [{"role": "user"}, ANSWER]}), [], 1, "messages[0].content"),
    "content_not_string": (
        "d.jsonl",
        line({"messages": [{"role": "user", "content": 4711}, ANSWER]}),
        [],
        1,
        "messages[0].content",
    ),
    "empty_content": ("d.jsonl", line({"messages": [ASK, {"role": "assistant", "content": " "}]}), [], 1, None),
    "unknown_key": (
        "d.jsonl",
        line({"messages": [{**ASK, "timestamp": "2024-05-01"}, ANSWER]}),
        [],
        1,
        "messages[0]",
    ),
    "bad_weight": ("d.jsonl", line({"messages": [ASK, {**ANSWER, "weight": 0.5}]}), [], 1, "messages[1].weight"),
    "no_assistant": ("d.jsonl", line({"messages": [ASK]}), [], 1, "messages"),
    "bad_tools": ("d.jsonl", line({"messages": [ASK, ANSWER], "tools": "get_weather"}), [], 1, "tools"),
    "conversations_not_list": ("d.jsonl", line({"conversations": "human: Hallo"}), [], 1, "conversations"),
    "missing_field": (
        "d.jsonl",
        line({"instruction": "Übersetze ins Englische", "output": None}),
        ["data.format=alpaca"],
        1,
        "output",
    ),
    "not_a_string": ("d.jsonl", line({"prompt": "Capital of France?", "completion": 7}), [], 1, "completion"),
    "missing_output": (
        "d.jsonl",
        line({"input": {"messages": [ASK]}, "preferred_output": []}),
        ["data.format=openai_preference"],
        1,
        None,
    ),
    "missing_prompt": (
        "d.jsonl",
        line({"chosen": [ANSWER], "rejected": [{"role": "assistant", "content": "Keine Ahnung."}]}),
        [],
        1,
        "prompt",
    ),
    "not_an_answer": (
        "d.jsonl",
        line({"prompt": [ASK], "chosen": [ASK], "rejected": [{"role": "assistant", "content": "Keine Ahnung."}]}),
        [],
        1,
        "chosen",
    ),
    "same_answers": (
        "d.jsonl",
        line({"prompt": "Wo ist mein Paket?", "chosen": "Unterwegs.", "rejected": "Unterwegs."}),
        [],
        1,
        None,
    ),
    "bad_margin": (
        "d.jsonl",
        line(
            {"prompt": "Wo ist mein Paket?", "chosen": "Unterwegs, Ankunft Freitag.", "rejected": "?", "margin": "groß"}
        ),
        [],
        1,
        "margin",
    ),
    "missing_label": ("d.jsonl", line({"text": "Lieferung kam zu spät."}), ["data.format=classification"], 1, "label"),
    "bad_label": ("d.jsonl", line({"text": "Great service, fast delivery.", "label": ["pos"]}), [], 1, "label"),
    "unknown_label": (
        "d.jsonl",
        line({"text": "Great service, fast delivery.", "label": "positiv"}),
        ["data.labels=[positive,negative]"],
        1,
        "label",
    ),
    "missing_group": (
        "d.jsonl",
        line({"messages": [ASK, ANSWER]}),
        ["data.group_by=customer_id"],
        1,
        "customer_id",
    ),
    "mixed_kinds": (
        "d.jsonl",
        [line({"messages": [ASK, ANSWER]}), line({"text": "Great service.", "label": "positive"})],
        [],
        2,
        None,
    ),
    "not_an_array": ("d.json", line({"messages": [ASK, ANSWER]}), [], 1, None),
    "invalid_csv": ("d.csv", 'text,label\n"Lieferung kam zu spät, label\n', [], 2, None),
    "extra_cells": ("d.csv", "text,label\nLieferung kam zu spät,negative,extra\n", [], 2, None),
    "invalid_parquet": ("d.parquet", b"PAR1 this is not a parquet file", [], 0, None),
    "empty_folder": ("empty", "", [], 0, None),
    "empty_file": ("d.csv", "text,label\n", [], 0, None),
    "too_long": (
        "d.jsonl",
        line({"messages": [{"role": "user", "content": "Bitte fassen Sie zusammen: " + "Vertrag " * 400}, ANSWER]}),
        [],
        1,
        "messages",
    ),
}


def _write(tmp_path: Path, name: str, content: str | bytes | list[str]) -> Path:
    path = tmp_path / name
    if name == "empty":
        path.mkdir()
    elif isinstance(content, list):
        path.write_text("\n".join(content) + "\n", encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content + (b"\n" if name.endswith(".jsonl") else b""))
    else:
        path.write_text(content + ("\n" if name.endswith(".jsonl") else ""), encoding="utf-8")
    return path


def findings(cfg) -> list[dict]:
    return prepare(cfg, check=True).report["issues"]


@pytest.mark.parametrize("rule", sorted(ROW_CASES))
def test_each_row_rule_names_line_and_field(rule: str, tiny_config, tmp_path: Path) -> None:
    name, content, settings, at, field = ROW_CASES[rule]
    path = _write(tmp_path, name, content)
    found = [
        i for i in findings(tiny_config(f"data.path={path}", "data.estimate=false", *settings)) if i["rule"] == rule
    ]
    assert found, f"no {rule} finding"
    assert found[0]["line"] == at and found[0]["file"] == str(path)
    if field is not None:
        assert found[0]["field"] == field
    assert found[0]["hint"] and found[0]["message"]


def test_parquet_rows_are_read(tiny_config, tmp_path: Path) -> None:
    table = pa.table({"text": ["Lieferung kam zu spät.", "Great service!"] * 10, "label": ["neg", "pos"] * 10})
    pq.write_table(table, tmp_path / "r.parquet")
    result = prepare(tiny_config(f"data.path={tmp_path / 'r.parquet'}", "data.estimate=false"), check=True)
    assert result.report["kind"] == "classification" and result.report["read"] == 20
    assert result.report["kept"] == 2 and result.report["removed"] == {"duplicate": 18}


def reviews(texts: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"text": t, "label": label} for t, label in texts]


def test_dataset_rules(tiny_config, tmp_path: Path) -> None:
    """one_label, unused_label, label_imbalance, conflicting_label, too_few_examples, personal_data."""
    same = reviews([(f"Paket {i} kam pünktlich an.", "positiv") for i in range(12)])
    path = write_jsonl(tmp_path / "one.jsonl", same)
    rules = {i["rule"] for i in findings(tiny_config(f"data.path={path}", "data.labels=[positiv,negativ]"))}
    assert {"one_label", "unused_label"} <= rules

    skewed = reviews([(f"Order {i} arrived on time.", "pos") for i in range(40)] + [("Order 99 broke.", "neg")] * 1)
    skewed += reviews([("Order 3 arrived on time.", "neg")])  # the same text as row 4, another label
    path = write_jsonl(tmp_path / "skewed.jsonl", skewed)
    issues = findings(tiny_config(f"data.path={path}"))
    conflict = next(i for i in issues if i["rule"] == "conflicting_label")
    assert conflict["line"] == 42 and f"{path}:4" in conflict["message"] and "'pos'" in conflict["message"]
    assert any(i["rule"] == "label_imbalance" for i in issues)

    path = write_jsonl(tmp_path / "few.jsonl", toy_rows(2))
    assert any(i["rule"] == "too_few_examples" for i in findings(tiny_config(f"data.path={path}")))

    rows = toy_rows(20) + [chat("Bitte rufen Sie mich an: 0171 2345678, Grüße Anna Schmidt", "Gern, Frau Schmidt.")]
    path = write_jsonl(tmp_path / "pii.jsonl", rows)
    gate = [i for i in findings(tiny_config(f"data.path={path}", "privacy.gate=block")) if i["rule"] == "personal_data"]
    assert gate[0]["severity"] == "error" and "PHONE 1" in gate[0]["message"] and "0171" not in json.dumps(gate)


def test_template_error_names_the_record(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = toy_rows(20) + [{"messages": [ASK, {"role": "tool", "content": "{}", "tool_call_id": "1"}, ANSWER]}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    template = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
    template += "{{ m.content }}{% endfor %}"  # a model whose template knows no tool messages
    original = preparation.load_tokenizer

    def with_template(name: str, revision: str | None = None) -> object:
        tokenizer = original(name, revision)
        tokenizer.chat_template = template
        return tokenizer

    monkeypatch.setattr(preparation, "load_tokenizer", with_template)
    issues = findings(tiny_config(f"data.path={path}", "data.estimate=false"))
    found = next(i for i in issues if i["rule"] == "template_error")
    assert found["line"] == 21 and "no tools" in found["message"]


def _rules_in_source() -> set[str]:
    rules = set()
    for f in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            fn = node.func
            names = [fn.body, fn.orelse] if isinstance(fn, ast.IfExp) else [fn]
            if any(getattr(n, "id", getattr(n, "attr", None)) in ("error", "warning") for n in names):
                rules.add(node.args[0].value)
    return rules


def test_every_rule_has_an_example_here() -> None:
    elsewhere = {  # rules whose example needs more than one row: see the tests named
        "one_label": "test_dataset_rules",
        "unused_label": "test_dataset_rules",
        "label_imbalance": "test_dataset_rules",
        "conflicting_label": "test_dataset_rules",
        "too_few_examples": "test_dataset_rules",
        "personal_data": "test_dataset_rules",
        "template_error": "test_template_error_names_the_record",
        "leakage": "test_prepare.py::test_leakage_between_a_separate_test_file_and_training_is_a_warning",
        "multitask_not_chat": "test_multitask.py::test_multitask_needs_chat_datasets",
    }
    missing = _rules_in_source() - set(ROW_CASES) - set(elsewhere)
    assert not missing, f"rules without an example: {sorted(missing)}"
    assert "personal_data" in _rules_in_source() and len(_rules_in_source()) > 40


def test_too_long_records_are_dropped_when_asked(tiny_config, tmp_path: Path) -> None:
    """clean.drop_too_long turns the too_long error into a removal the report counts (public sets' long tail)."""
    rows = toy_rows(20) + [chat("Bitte fassen Sie zusammen: " + "Vertrag " * 400, "Kurz.")]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    strict = findings(tiny_config(f"data.path={path}", "data.estimate=false"))
    assert [i["rule"] for i in strict if i["severity"] == "error"] == ["too_long"]
    result = prepare(tiny_config(f"data.path={path}", "data.estimate=false", "clean.drop_too_long=true"), check=True)
    assert result.report["removed"].get("too_long") == 1 and result.report["kept"] == 20
