"""Continued pre-training (train.task=pretrain) on a folder of German and English domain documents."""

from pathlib import Path

import pytest

from tuneforge.data import prepare
from tuneforge.errors import DataError
from tuneforge.evaluation import evaluate
from tuneforge.models import load_tokenizer
from tuneforge.train import train
from tuneforge.train.estimate import estimate_training
from tuneforge.train.lm import blocks

CLAUSES = [
    "Der Mieter zahlt die Miete monatlich im Voraus, spätestens am dritten Werktag des Monats.",
    "Die Kündigungsfrist beträgt drei Monate zum Ende eines Kalendervierteljahres.",
    "The tenant pays the rent monthly in advance, no later than the third working day of the month.",
    "Either party may terminate this agreement with three months' notice to the end of a quarter.",
]


# Templated contracts are near duplicates of each other by design: the tests switch the MinHash checks off.
NO_NEAR = ["clean.near_dup_threshold=0", "clean.leakage_threshold=0"]


def write_docs(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"vertrag_{i}.txt").write_text(f"Vertrag {i}.\n" + "\n".join(CLAUSES[j % 4] for j in range(i, i + 6)))
    return folder


def test_pretrain_packs_documents_into_blocks(tmp_path: Path, tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    cut = blocks(["Die Miete ist fällig.", "The rent is due."], tokenizer, 8)
    ids = [t for b in cut for t in b.input_ids]
    expected = tokenizer("Die Miete ist fällig.")["input_ids"] + [tokenizer.eos_token_id]
    expected += tokenizer("The rent is due.")["input_ids"] + [tokenizer.eos_token_id]
    assert ids == expected  # every token once, documents closed by end-of-text, nothing padded
    assert all(len(b.input_ids) == 8 for b in cut[:-1]) and all(b.labels == b.input_ids for b in cut)


def test_pretrain_on_documents_lowers_their_perplexity(tiny_config, tmp_path: Path) -> None:
    docs = write_docs(tmp_path / "docs", 40)
    cfg = tiny_config(
        f"data.path={docs}",
        "train.task=pretrain",
        "train.block_size=64",
        "train.epochs=4",
        "evaluate.split=val",
        *NO_NEAR,
    )
    result = prepare(cfg, estimate=estimate_training)
    estimate = result.report["estimate"]  # measured on blocks of the texts, as training reads them
    assert result.report["kind"] == "text" and estimate["task"] == "pretrain" and estimate["tokens_per_s"] > 0
    trained = train(cfg, log=lambda *a: None)
    assert trained.val_loss is not None
    report = evaluate(cfg, log=lambda *a: None)
    base, tuned = report.scores["base"], report.scores["tuned"]
    assert tuned["val_perplexity"] < 0.5 * base["val_perplexity"], (base, tuned)
    assert "json_valid" not in tuned and not (cfg.run_dir / "predictions.jsonl").exists()


def test_the_wrong_task_for_the_data_says_which_to_use(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("train.task=pretrain")  # chat data
    prepare(cfg)
    with pytest.raises(DataError, match="not text records") as err:
        train(cfg, log=lambda *a: None)
    assert "train.task=sft" in err.value.hint
    docs = write_docs(tmp_path / "docs", 20)
    cfg = tiny_config(f"data.path={docs}", "name=docs", *NO_NEAR)
    prepare(cfg)
    with pytest.raises(DataError, match="not chat examples") as err:
        train(cfg, log=lambda *a: None)
    assert "train.task=pretrain" in err.value.hint
