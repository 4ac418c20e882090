"""Fixtures of the export tests: a trained run to export (the shared tiny LoRA run is read-only: exports go to
tmp_path), a tiny classifier run, and a tiny model with the embedded model's tokenizer (llama.cpp's converter knows
that tokenizer; it refuses the tests' home-made one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.config import EMBEDDED_MODEL, load_config
from tuneforge.data import prepare
from tuneforge.models import load_tokenizer
from tuneforge.train import train

from helpers import review_rows, write_jsonl


def trained(out: Path, *options: str) -> Path:
    cfg = load_config(None, [f"output_dir={out}", "train.precision=fp32", "data.estimate=false", *options])
    prepare(cfg)
    train(cfg, log=lambda *a: None)
    return cfg.run_dir


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    data = write_jsonl(tmp_path_factory.mktemp("reviews") / "reviews.jsonl", review_rows(40, 40))
    return trained(
        tmp_path_factory.mktemp("runs"), f"model.name={tiny_bert_dir}", f"data.path={data}", "name=reviews",
        "train.task=classify", "train.epochs=4", "train.learning_rate=0.003",
    )  # fmt: skip


@pytest.fixture(scope="session")
def smol_tokenized_run(tmp_path_factory: pytest.TempPathFactory, toy_data: Path) -> Path:
    """A LoRA run of a 2-layer random Llama that uses the embedded model's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-smol")
    tokenizer = load_tokenizer(EMBEDDED_MODEL)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return trained(
        tmp_path_factory.mktemp("runs"), f"model.name={folder}", f"data.path={toy_data}", "name=smol",
        "train.epochs=12", "train.learning_rate=0.01", "evaluate.max_new_tokens=24",
    )  # fmt: skip


@pytest.fixture(scope="session")
def full_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, toy_data: Path) -> Path:
    """A full fine-tune of the tiny model: a whole model of its own."""
    return trained(
        tmp_path_factory.mktemp("runs"), f"model.name={tiny_model_dir}", f"data.path={toy_data}", "name=whole",
        "train.method=full", "train.epochs=2", "train.learning_rate=0.001",
    )  # fmt: skip
