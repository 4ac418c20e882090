"""sft packing: several examples per row, positions restarting, no attention across examples."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tuneforge.data import prepare
from tuneforge.data.tokenize import IGNORE_INDEX, encode_chat
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train import lm, train
from tuneforge.train.lm import collate, loss_sum, pack

from helpers import toy_rows


def examples(tokenizer, n: int = 24):
    """Chat examples of varied lengths."""
    rows = toy_rows(n)
    for i, row in enumerate(rows):
        row["messages"][0]["content"] += " please" * (i % 5)
    return [encode_chat(tokenizer, row["messages"]) for row in rows]


def test_pack_places_every_example_once_within_the_width(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    plain = examples(tokenizer)
    width = 3 * max(len(e.input_ids) for e in plain)
    packed = pack(plain, width)
    assert len(packed) < len(plain) / 2
    assert all(len(row.input_ids) <= width for row in packed)
    pieces = []
    for row in packed:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row.input_ids)]
        pieces += [tuple(row.input_ids[a:b]) for a, b in zip(starts, starts[1:], strict=False)]
        assert all(row.labels[s] == IGNORE_INDEX for s in starts[:-1])  # no loss spans two examples
    assert sorted(pieces) == sorted(tuple(e.input_ids) for e in plain)


@pytest.mark.parametrize("plain_head", [True, False], ids=["labelled-rows", "logits_to_keep"])
def test_packed_loss_equals_the_unpacked_loss(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, plain_head: bool
) -> None:
    if not plain_head:
        monkeypatch.setattr(lm, "PLAIN_HEAD", frozenset())
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir)).eval()
    plain = examples(tokenizer)
    packed = pack(plain, 3 * max(len(e.input_ids) for e in plain))
    pad = int(tokenizer.pad_token_id)
    with torch.no_grad():
        one_by_one = sum(float(loss_sum(model, collate([e], pad))) for e in plain)
        batch = collate(packed, pad)
        together = float(loss_sum(model, batch))
        # negative control: the same rows with positions running on, so attention crosses the examples
        leaky = replace(batch, position_ids=torch.arange(batch.input_ids.size(1)).expand_as(batch.input_ids))
        crossed = float(loss_sum(model, leaky))
    assert batch.attention_mask is None and batch.n_loss == sum(collate([e], pad).n_loss for e in plain)
    assert together == pytest.approx(one_by_one, rel=1e-5)
    assert abs(crossed - one_by_one) > 1e-3 * one_by_one


def test_training_with_packing(tiny_config) -> None:
    cfg = tiny_config("train.packing=true", "train.epochs=3", "train.batch_size=2", "data.estimate=false")
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    n_train = len((cfg.run_dir / "data" / "train.jsonl").read_text().splitlines())
    assert result.steps < 3 * n_train / 2 / 2  # fewer rows than examples: packed
    assert rows[-1]["loss"] < rows[0]["loss"] / 2
    assert result.val_loss is not None and result.val_loss < rows[0]["loss"] / 2


def test_packing_is_refused_where_it_means_nothing() -> None:
    from tuneforge.config import load_config
    from tuneforge.errors import ConfigError

    with pytest.raises(ConfigError, match="packs chat examples .task sft or multitask., not task dpo"):
        load_config(None, ["train.packing=true", "train.task=dpo"])
