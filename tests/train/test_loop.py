"""The training loop's options: schedules, evaluation every N steps, early stopping, gradient checkpointing."""

import json
from pathlib import Path

import pytest

from tuneforge.data import prepare
from tuneforge.errors import ConfigError
from tuneforge.models import load_adapter, load_model, load_tokenizer
from tuneforge.train import train
from tuneforge.train.lm import SFT, load_sft
from tuneforge.train.setup import lr_multiplier
from tuneforge.train.tasks import TaskContext, mean_loss

QUIET = {"log": lambda *a: None}


def metrics(cfg) -> list[dict]:
    return [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_learning_rate_schedules(schedule: str, tiny_config) -> None:
    cfg = tiny_config(f"train.lr_scheduler={schedule}", "train.max_steps=10", "train.warmup_ratio=0.2")
    prepare(cfg)
    train(cfg, **QUIET)
    lrs = [r["lr"] for r in metrics(cfg)]
    # each row: the rate its step ran at; 2 warm-up steps at 1/3 and 2/3 (none at 0), then the peak 0.01
    assert lrs[:3] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01])
    if schedule == "linear":
        assert lrs[5] == pytest.approx(0.01 * 5 / 8) and lrs[-1] == pytest.approx(0.01 / 8)  # the last above 0
    else:
        assert lrs[2:] == pytest.approx([0.01] * 8)


def test_cosine_schedule_warms_up_from_above_zero_and_ends_above_zero() -> None:
    rate = [lr_multiplier("cosine", 2, 10)(step) for step in range(10)]
    assert rate[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and rate[6] == pytest.approx(0.5)  # half-way: half
    assert all(a > b > 0 for a, b in zip(rate[2:], rate[3:], strict=False))
    assert lr_multiplier("cosine", 0, 4)(0) == 1.0  # no warm-up: the first step at the peak


def test_early_stopping_keeps_the_best_model(tiny_config, tiny_model_dir: Path) -> None:
    # min_delta so large that no evaluation after the first counts as an improvement: stops after 1 + patience
    settings = ["train.eval_steps=2", "train.early_stopping_patience=2", "train.early_stopping_min_delta=100"]
    cfg = tiny_config("train.epochs=5", *settings)
    prepare(cfg)
    lines: list[str] = []
    result = train(cfg, log=lines.append)
    rows = metrics(cfg)
    assert result.steps == 6 and [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6]
    best = rows[1]["val_loss"]
    assert result.val_loss == best and any("keeping the best model: step 2" in line for line in lines)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    saved = load_adapter(load_model(str(tiny_model_dir)), cfg.run_dir / "model", "t").eval()
    val = load_sft(cfg.run_dir / "data" / "val.jsonl", tokenizer, TaskContext.of(cfg))
    assert mean_loss(saved, SFT, val, cfg.train, 8, int(tokenizer.pad_token_id)) == pytest.approx(best, abs=1e-4)


def test_early_stopping_needs_a_validation_split(tiny_config) -> None:
    cfg = tiny_config("data.val_size=0", "train.early_stopping_patience=2")
    prepare(cfg)
    with pytest.raises(ConfigError, match="needs a validation split"):
        train(cfg, **QUIET)


def test_gradient_checkpointing_trains_the_same(tiny_config, monkeypatch) -> None:
    """The same losses, and checkpointing really on: each decoder layer runs its forward a second time in the
    backward pass (the recomputation), once per training micro-batch."""
    from tuneforge.models import decoder_layers
    from tuneforge.train import loop

    real, calls = loop.setup_model, []

    def counting(*args, **kwargs):
        model, hp = real(*args, **kwargs)
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        # a pre-hook inside the layer: transformers checkpoints the layer's forward (its own hooks run once), and
        # the recomputation stops as soon as it has what the backward needs
        attention = decoder_layers(inner)[0].self_attn
        attention.register_forward_pre_hook(lambda *_: calls.append(inner.is_gradient_checkpointing))
        return model, hp

    monkeypatch.setattr(loop, "setup_model", counting)
    losses, forwards = [], []
    for on in (False, True):
        calls.clear()
        settings = ["train.max_steps=4", "data.val_size=0", "train.micro_batch_tokens=null"]
        cfg = tiny_config(*settings, f"train.gradient_checkpointing={str(on).lower()}", f"name=gc{on}")
        prepare(cfg)
        train(cfg, **QUIET)
        losses.append([r["loss"] for r in metrics(cfg)])
        forwards.append(len(calls))
        assert set(calls) == {on}
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert forwards == [4, 8]  # 4 steps of one micro-batch; with checkpointing each is recomputed once


def test_deterministic_mode_reruns_bit_identically(tiny_config) -> None:
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    try:
        losses = []
        for name in ("d1", "d2"):
            cfg = tiny_config("train.max_steps=4", "train.deterministic=true", f"name={name}")
            prepare(cfg)
            train(cfg, **QUIET)
            assert torch.are_deterministic_algorithms_enabled()
            losses.append([(r["loss"], r.get("val_loss")) for r in metrics(cfg)])
        assert losses[0] == losses[1]  # exactly, not approximately
    finally:
        torch.use_deterministic_algorithms(before)


def test_a_diverging_loss_stops_with_a_clear_message(tiny_config, monkeypatch) -> None:
    from dataclasses import replace

    from tuneforge.errors import TrainingError
    from tuneforge.train.tasks import TASKS

    real, calls = TASKS["sft"].loss, []

    def diverging(model, batch, cfg):  # the loss of the third micro-batch overflows, as a too-high lr does
        calls.append(1)
        loss = real(model, batch, cfg)
        return loss * float("inf") if len(calls) == 3 else loss

    cfg = tiny_config("train.max_steps=6", "data.estimate=false", "train.micro_batch_tokens=null")  # 1 per step
    prepare(cfg)
    monkeypatch.setitem(TASKS, "sft", replace(TASKS["sft"], loss=diverging))
    with pytest.raises(TrainingError, match=r"the training loss became inf at step 3") as err:
        train(cfg, **QUIET)
    assert "lower train.learning_rate" in err.value.hint
    assert not (cfg.run_dir / "model").exists()  # nothing half-trained is saved as the result


def test_generated_answers_are_scored_at_each_validation(tiny_config, monkeypatch) -> None:
    """train.eval_generate: the metrics of evaluate.metrics on answers to the first N validation examples, logged
    as val_<metric> beside val_loss, from the model as it is at that step (in eval mode, then training again)."""
    from tuneforge.generation import generate as real_generate

    seen: list[tuple[bool, int]] = []

    def watched(model, tokenizer, prompts, params):
        seen.append((model.training, len(prompts)))
        return real_generate(model, tokenizer, prompts, params)

    monkeypatch.setattr("tuneforge.generation.generate", watched)
    cfg = tiny_config("train.epochs=2", "train.eval_generate=3", "evaluate.metrics=[json_valid,token_f1]")
    prepare(cfg)
    train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "val_loss" in r]
    assert len(scored) == 2 and all("val_json_valid" not in r for r in rows if "val_loss" not in r)
    for row in scored:
        assert 0 <= row["val_json_valid"] <= 1 and 0 <= row["val_token_f1"] <= 1
    assert seen == [(False, 3), (False, 3)]  # eval mode while generating; 3 answers each time
    with pytest.raises(ConfigError, match="train.eval_generate scores generated answers"):
        tiny_config("train.task=pretrain", "train.eval_generate=3")
