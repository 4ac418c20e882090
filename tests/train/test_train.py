import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.data import prepare
from tuneforge.data.tokenize import IGNORE_INDEX, encode_chat
from tuneforge.models import load_adapter, load_model, load_tokenizer
from tuneforge.train import lm, train
from tuneforge.train.lm import SFT, collate, loss_sum
from tuneforge.train.tasks import collate_step, step_groups

from helpers import full_logits_loss


def test_loss_falls_lora_moves_and_base_stays(tiny_config, tiny_model_dir: Path) -> None:
    cfg = tiny_config("train.epochs=3", "train.save_steps=4", "train.save_total_limit=2")
    prepare(cfg)
    before = load_model(str(tiny_model_dir)).state_dict()
    result = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, result.steps + 1))
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in rows)

    model_dir = cfg.run_dir / "model"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tuneforge.json"):
        assert (model_dir / name).is_file(), name
    assert "<|im_start|>" in (model_dir / "chat_template.jinja").read_text()
    adapter = load_file(str(model_dir / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapter.items()), "LoRA B never moved"

    tuned = load_adapter(load_model(str(tiny_model_dir)), model_dir, "t")
    merged_base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v
        for k, v in tuned.state_dict().items()
        if "lora_" not in k
    }
    assert all(torch.equal(merged_base[k], v) for k, v in before.items()), "a frozen base weight changed"

    checkpoints = sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-12", "step-16"]  # 18 steps, every 4th saved, newest two kept
    state = torch.load(cfg.run_dir / "checkpoints" / "step-16" / "training_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "torch_rng"} <= set(state)


def test_reloaded_adapter_reproduces_the_trained_outputs(trained_run: Path, tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids = torch.tensor(
        [
            encode_chat(
                tokenizer, [{"role": "user", "content": "Item 3: what colour?"}, {"role": "assistant", "content": "{}"}]
            ).input_ids
        ]
    )
    first = load_adapter(load_model(str(tiny_model_dir)), trained_run / "model", "a").eval()
    second = load_adapter(load_model(str(tiny_model_dir)), trained_run / "model", "b").eval()
    base = load_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        a, b, c = first(input_ids=ids).logits, second(input_ids=ids).logits, base(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, c, atol=1e-3), "the adapter changes nothing"
    merged = first.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, a, atol=1e-4)


@pytest.mark.parametrize("plain_head", [True, False], ids=["labelled-rows", "logits_to_keep"])
def test_selective_logits_loss_equals_the_full_cross_entropy(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, plain_head: bool
) -> None:
    if not plain_head:  # the generic path every other architecture takes
        monkeypatch.setattr(lm, "PLAIN_HEAD", frozenset())
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir)).eval()
    examples = [
        encode_chat(
            tokenizer,
            [{"role": "user", "content": f"Item {i}: what colour?" * i}, {"role": "assistant", "content": "blue " * i}],
        )
        for i in range(1, 5)
    ]
    batch = collate(examples, int(tokenizer.pad_token_id))
    with torch.no_grad():
        fast = loss_sum(model, batch)
        full = full_logits_loss(model, batch)
    assert torch.allclose(fast, full, rtol=1e-5)
    assert batch.n_loss == int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


def steps(examples: list, batch_size: int, grad_accum: int, seed: int) -> list:
    """One epoch of length-grouped optimizer steps as the loop builds them (pad id 0)."""
    groups = step_groups([len(e.input_ids) for e in examples], batch_size * grad_accum, seed, by_length=True)
    return [collate_step(SFT, [examples[i] for i in g], batch_size, 0) for g in groups]


def test_steps_group_similar_lengths_and_cover_each_example_once(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    examples = [
        encode_chat(
            tokenizer, [{"role": "user", "content": "word " * (i * 7 % 40 + 1)}, {"role": "assistant", "content": "ok"}]
        )
        for i in range(64)
    ]
    epoch = steps(examples, batch_size=4, grad_accum=2, seed=1)
    assert len(epoch) == 8 and all(len(step) == 2 for step in epoch)
    seen = sorted(tuple(row[row != 0].tolist()) for step in epoch for b in step for row in b.input_ids)
    assert seen == sorted(tuple(t for t in e.input_ids if t != 0) for e in examples)
    grouped = sum(b.input_ids.numel() - b.n_tokens for step in epoch for b in step)
    shuffled = sum(b.input_ids.numel() - b.n_tokens for b in (collate(examples[i : i + 4], 0) for i in range(0, 64, 4)))
    assert grouped < shuffled / 3, (grouped, shuffled)
    assert [b.input_ids.tolist() for s in epoch for b in s] == [
        b.input_ids.tolist() for s in steps(examples, 4, 2, seed=1) for b in s
    ]
    lengths = [len(e.input_ids) for e in examples]
    plain = step_groups(lengths, 8, seed=1, by_length=False)  # train.group_by_length=false
    assert sorted(i for step in plain for i in step) == list(range(64)) and all(len(s) == 8 for s in plain)
    grouped = step_groups(lengths, 8, 1, by_length=True)
    spread = sum(max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in plain)
    assert spread > 3 * sum(max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in grouped)


def test_gradient_accumulation_matches_one_big_batch(tiny_config) -> None:
    cfg_big = tiny_config("name=big", "train.max_steps=2", "train.batch_size=8", "train.lora_dropout=0")
    cfg_acc = tiny_config(
        "name=acc", "train.max_steps=2", "train.batch_size=4", "train.grad_accum=2", "train.lora_dropout=0"
    )
    for cfg in (cfg_big, cfg_acc):
        prepare(cfg)
    # The same 8 examples feed the first step only if the order is the same; compare the step-1 loss.
    big, acc = (train(c, log=lambda *a: None) for c in (cfg_big, cfg_acc))
    rows = [json.loads((c.run_dir / "metrics.jsonl").read_text().splitlines()[0]) for c in (cfg_big, cfg_acc)]
    assert big.steps == acc.steps == 2
    assert abs(rows[0]["loss"] - rows[1]["loss"]) < 1e-4
