"""The grpo task: advantages and loss are the paper's, and a run on a tiny model raises a verifiable reward."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge.data import prepare
from tuneforge.data.tokenize import IGNORE_INDEX, Encoded, encode_prompt
from tuneforge.errors import DataError
from tuneforge.evaluation import evaluate
from tuneforge.models import load_model, load_tokenizer
from tuneforge.rundir import METRICS
from tuneforge.train import train
from tuneforge.train.grpo import Policy, Prompt, group_advantages, loss_sum, step_stats
from tuneforge.train.lm import collate as collate_rows
from tuneforge.train.tasks import Batch

from helpers import toy_rows, write_jsonl

QUIET = {"log": lambda *a: None}


def test_group_advantages_are_rewards_against_their_group() -> None:
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    std = np.sqrt(4 * 0.5**2 / 3)  # the sample standard deviation of [1, 0, 0, 1] (as TRL's: n - 1)
    assert np.allclose(adv[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4))
    assert np.allclose(adv[1], 0.0)  # one reward for all: no signal
    std = np.sqrt((3 * 0.75**2 + 2.25**2) / 3)
    assert np.allclose(adv[2], (rewards[2] - 0.75) / (std + 1e-4))


def _rollout_batch(tokenizer, policy: Policy, advantages: list[float]) -> Batch:
    """Two prompts with two answers each, as `rollout` hands them to the loss."""
    prompts, rows = [], []
    for i in range(2):
        ids = encode_prompt(tokenizer, [{"role": "user", "content": f"Item {i}: what colour?"}])
        prompts.append(Prompt([], ids, None, policy, 0))
        for answer in ('{"colour": "red"}', "blue"):
            tokens = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append(Encoded(ids + tokens, [IGNORE_INDEX] * len(ids) + tokens))
    batch = collate_rows(rows, int(tokenizer.pad_token_id))
    batch.examples, batch.extra["advantage"] = prompts, torch.tensor(advantages)
    return batch


def _answer_logps(model, batch: Batch) -> list[torch.Tensor]:
    """log p of each answer token, row by row, from the full logits of one sequence at a time."""
    out = []
    for ids, labels, mask in zip(batch.input_ids, batch.labels, batch.attention_mask, strict=True):
        n = int(mask.sum())
        logits = model(input_ids=ids[None, :n]).logits[0, :-1]
        targets = labels[1:n]
        picked = torch.log_softmax(logits.float(), -1).gather(1, targets.clamp(min=0)[:, None])[:, 0]
        out.append(picked[targets != IGNORE_INDEX])
    return out


def test_the_grpo_loss_is_the_papers(tiny_config, tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model_dir))
    advantages = [1.0, -1.0, 0.5, -0.25]
    policy = Policy(tokenizer, {}, {})
    cfg = tiny_config("train.task=grpo", "train.rewards={json_valid: 1}", "train.num_generations=2")
    # the gradient: that of -A x (mean log p over the answer's tokens), averaged over each prompt's answers
    model = load_model(str(tiny_model_dir))
    batch = _rollout_batch(tokenizer, policy, advantages)
    loss = loss_sum(model, batch, cfg.train.model_copy(update={"grpo_beta": 0.0}))
    assert float(loss.detach()) == pytest.approx(-sum(advantages) / 2)  # the ratio is 1 at the sampling weights
    loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    manual = -sum(a * lp.mean() for a, lp in zip(advantages, _answer_logps(model, batch), strict=True)) / 2
    manual.backward()
    for mine, theirs in zip(ours, [p.grad for p in model.parameters()], strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)
    assert step_stats(batch.examples)["kl"] == 0.0  # beta 0: no reference pass, no KL
    # the KL term: beta x the mean over answer tokens of exp(ref - logp) - (ref - logp) - 1 against the start
    start = load_model(str(tiny_model_dir)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    policy.reference = start
    with torch.no_grad():
        value = loss_sum(model, batch, cfg.train.model_copy(update={"grpo_beta": 0.5}))
        kl = []
        for lp, ref in zip(_answer_logps(model, batch), _answer_logps(start, batch), strict=True):
            kl.append(float((torch.exp(ref - lp) - (ref - lp) - 1).mean()))
    assert min(kl) > 0
    assert float(value) == pytest.approx(-sum(advantages) / 2 + 0.5 * sum(kl) / 2, rel=1e-4)
    stats = step_stats(batch.examples)
    assert stats["kl"] == pytest.approx(np.mean(kl), rel=1e-3) and stats["entropy"] > 0


def test_grpo_raises_a_verifiable_reward(tiny_config, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", toy_rows(40))
    rewards = tmp_path / "rewards.py"
    rewards.write_text(
        "def quotes(answer, reference):\n    return sum(c == '\"' for c in answer) / max(len(answer), 1)\n"
    )
    cfg = tiny_config(
        f"data.path={data}",
        "train.task=grpo",
        "data.estimate=false",
        f"train.rewards={{{rewards}:quotes: 1.0}}",
        "train.max_completion_length=12",
        "train.num_generations=4",
        "train.max_steps=12",
        "train.batch_size=4",
        "train.learning_rate=0.05",
        "train.eval_steps=6",
    )
    prepare(cfg)
    train(cfg, **QUIET)
    rows = [json.loads(line) for line in (cfg.run_dir / METRICS).read_text().splitlines()]
    first, last = np.mean([r["reward"] for r in rows[:3]]), np.mean([r["reward"] for r in rows[-3:]])
    assert last > 2 * first + 0.05, [r["reward"] for r in rows]
    assert rows[-1]["kl"] > 0 and rows[-1]["entropy"] > 0 and rows[-1]["answer_tokens"] > 0
    assert rows[0]["kl"] == 0.0  # the first step samples from the starting model itself
    validated = [r for r in rows if "val_reward" in r]
    assert [r["step"] for r in validated] == [6, 12] and validated[0]["val_loss"] == -validated[0]["val_reward"]
    assert (cfg.run_dir / "model" / "adapter_config.json").is_file()
    report = evaluate(cfg, **QUIET)
    base, tuned = report.scores["base"], report.scores["tuned"]
    assert tuned["reward"] > base["reward"], (base, tuned)
    assert report.intervals["tuned"]["reward"][0] <= tuned["reward"] <= report.intervals["tuned"]["reward"][1]
    assert "reward" in report.comparison and report.details["tuned"]["kl_to_base_per_token"] > 0
    assert {"json_valid", "field_accuracy"} <= set(tuned)  # the prompts have references: evaluate.metrics too
    page = (cfg.run_dir / "report.html").read_text()
    assert "KL to the starting model" in page and "mean reward" in page


@pytest.mark.parametrize("method", ["dora", "full", "freeze"])
def test_grpo_trains_with_every_method(method: str, tiny_config, tmp_path: Path) -> None:
    """LoRA's reference is the base with its adapters off; DoRA's too; full and freeze keep a frozen copy of the
    starting model for the KL penalty: after one update the policy has moved away from it."""
    data = write_jsonl(tmp_path / "prompts.jsonl", toy_rows(16))
    rewards = tmp_path / "rewards.py"
    rewards.write_text(
        "def quotes(answer, reference):\n    return sum(c == '\"' for c in answer) / max(len(answer), 1)\n"
    )
    freeze = ["train.trainable_layers=1"] if method == "freeze" else []
    cfg = tiny_config(
        f"data.path={data}", "train.task=grpo", "data.estimate=false", f"train.rewards={{{rewards}:quotes: 1.0}}",
        f"train.method={method}", *freeze, "train.max_completion_length=8", "train.max_steps=3", "train.batch_size=4",
        "train.learning_rate=0.01", "data.val_size=0", "data.test_size=0",
    )  # fmt: skip
    prepare(cfg)
    train(cfg, **QUIET)
    rows = [json.loads(line) for line in (cfg.run_dir / METRICS).read_text().splitlines()]
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0, [r["kl"] for r in rows]
    assert (cfg.run_dir / "model" / ("adapter_config.json" if method == "dora" else "config.json")).is_file()


def test_prompts_without_answers_train_on_rewards_that_need_none(tiny_config, tmp_path: Path) -> None:
    """The prompt format (no answers) trains with a length reward; a reward that compares with a reference answer
    is refused before the first step, with the count of prompts lacking one."""
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Item {i}: what colour?"} for i in range(12)])
    common = [f"data.path={data}", "train.task=grpo", "data.estimate=false", "data.test_size=0", "data.val_size=0",
              "train.max_completion_length=6", "train.max_steps=1", "train.batch_size=4"]  # fmt: skip
    cfg = tiny_config(*common, "train.rewards={length: 1.0}", "train.reward_length_budget=3")
    prepare(cfg)
    train(cfg, **QUIET)
    assert json.loads((cfg.run_dir / METRICS).read_text().splitlines()[0])["reward"] > 0
    refused = tiny_config(*common, "train.rewards={json_valid: 1.0}", "name=refused")
    prepare(refused)
    with pytest.raises(
        DataError, match=r"12 of 12 prompts have no reference answer, and train.rewards \['json_valid'\]"
    ):
        train(refused, **QUIET)
