"""Personal data: detection on realistic German/English text, the three anonymisation modes, the gate."""

import json
import sys
from pathlib import Path

import pytest

from tuneforge.data import prepare
from tuneforge.data.privacy import detect, mask, pseudonymize
from tuneforge.errors import DataError
from tuneforge.rundir import read_jsonl

from helpers import ROOT, chat, toy_rows, write_jsonl

sys.path.insert(0, str(ROOT / "bench"))
from privacy import load, score  # noqa: E402

LETTER = (
    "Sehr geehrte Frau Kowalczyk, bitte überweisen Sie 89,90 € auf DE89 3704 0044 0532 0130 00 "
    "oder rufen Sie 030 1234567 an. Rückfragen: j.weber@posteo.de"
)


def found(text: str) -> list[tuple[str, str]]:
    return [(f.type, text[f.start : f.end]) for f in detect(text)]


@pytest.mark.parametrize("name", ["labelled.txt", "heldout.txt"])
def test_precision_and_recall_on_the_labelled_sets(name: str) -> None:
    result = score(load(name))
    assert result["ALL"]["precision"] >= 0.95 and result["ALL"]["recall"] >= 0.9, result["ALL"]


def test_a_german_letter() -> None:
    assert found(LETTER) == [
        ("PERSON", "Frau Kowalczyk"),
        ("IBAN", "DE89 3704 0044 0532 0130 00"),
        ("PHONE", "030 1234567"),
        ("EMAIL", "j.weber@posteo.de"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "IBAN DE89 3704 0044 0532 0130 01 is mistyped",  # checksum fails
        "card 4111 1111 1111 1112 declined",  # Luhn fails
        "Vertrag vom 01.04.2022, Miete 850,00 Euro, Rechnung 1688.39",  # dates and amounts are not phones
        "Firmware version 10.4.2.1 released",  # a version, not an IP
        "The meeting moved to March 10, 2024 in Paris.",  # a date that is not a birth date
    ],
)
def test_lookalikes_are_not_personal_data(text: str) -> None:
    assert found(text) == []


def test_mask_and_consistent_pseudonyms() -> None:
    spans = detect(LETTER)
    assert mask(LETTER, spans) == (
        "Sehr geehrte [PERSON], bitte überweisen Sie 89,90 € auf [IBAN] oder rufen Sie [PHONE] an. Rückfragen: [EMAIL]"
    )
    once, twice = pseudonymize(LETTER, spans, "s"), pseudonymize(LETTER, spans, "s")
    assert once == twice and "Kowalczyk" not in once and "posteo" not in once and "@example.org" in once
    assert pseudonymize(LETTER, spans, "other salt") != once


def rows_with_pii() -> list[dict]:
    return toy_rows(20) + [
        chat("Bitte an j.weber@posteo.de schicken", "Gern, an j.weber@posteo.de."),
        chat("Meine Nummer: 0170/2345678", "Danke, notiert."),
    ]


def test_prepare_modes_mask_pseudonymize_drop(tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows_with_pii())
    for mode in ("mask", "pseudonymize", "drop"):
        cfg = tiny_config(f"data.path={path}", f"privacy.mode={mode}", "privacy.gate=block", f"name={mode}")
        result = prepare(cfg)
        assert result.report["privacy"]["found"] == {"EMAIL": 2, "PHONE": 1}
        text = "".join((cfg.run_dir / "data" / f"{s}.jsonl").read_text() for s in ("train", "val", "test"))
        assert "posteo" not in text and "2345678" not in text
        if mode == "mask":
            assert "Bitte an [EMAIL] schicken" in text
        if mode == "pseudonymize":  # the same address gets the same pseudonym in question and answer
            row = next(
                r
                for s in ("train", "val", "test")
                for r in read_jsonl(cfg.run_dir / "data" / f"{s}.jsonl")
                if "schicken" in r["messages"][0]["content"]
            )
            fake = row["messages"][0]["content"].split()[2]
            assert fake.endswith("@example.org") and fake in row["messages"][1]["content"]
        if mode == "drop":
            assert sum(result.counts.values()) == 20 and result.report["removed"]["personal_data"] == 2


def test_gate_blocks_and_values_never_reach_the_report(tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows_with_pii())
    cfg = tiny_config(f"data.path={path}", "privacy.gate=block")
    with pytest.raises(DataError, match="personal data remains in 2 record.s.: EMAIL 2, PHONE 1") as info:
        prepare(cfg)
    report = (cfg.run_dir / "data" / "data_report.json").read_text()
    for secret in ("posteo", "2345678"):
        assert secret not in report and secret not in str(info.value)
    assert json.loads(report)["privacy"]["found"] == {"EMAIL": 2, "PHONE": 1}
    warned = prepare(tiny_config(f"data.path={path}"))  # the default gate warns
    assert any(i["rule"] == "personal_data" and i["severity"] == "warning" for i in warned.report["issues"])
