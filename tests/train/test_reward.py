"""The reward task: the Bradley-Terry loss is the paper's, a reward model separates separable pairs and is scored
against the length baseline, HH-RLHF transcripts and pair extras are read."""

import json
import math
from pathlib import Path

import pytest
import torch

from tuneforge.data import prepare
from tuneforge.evaluation import evaluate
from tuneforge.models import load_model, load_tokenizer
from tuneforge.rundir import read_jsonl, split_path
from tuneforge.train import train
from tuneforge.train.reward import REWARD, bradley_terry, collate, loss_sum
from tuneforge.train.rewards import RewardModel
from tuneforge.train.tasks import TaskContext

from helpers import write_jsonl

QUIET = {"log": lambda *a: None}
COLOURS = ["red", "green", "blue", "black"]


def separable_pairs(n: int) -> list[dict[str, object]]:
    """Pairs a reward model must learn to order: the JSON answer is chosen over the same answer in words; the
    chosen answer is the shorter one, so the length baseline gets every pair wrong."""
    return [
        {
            "prompt": f"Item {i}: what colour?",
            "chosen": json.dumps({"colour": COLOURS[i % 4]}),
            "rejected": f"Item {i} is {COLOURS[i % 4]}, as far as anyone can tell.",
            "annotator": ["ann", "bob"][i % 2],
        }
        for i in range(n)
    ]


def test_the_bradley_terry_loss_is_minus_log_sigmoid_of_the_reward_gap() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])
    assert bradley_terry(chosen, rejected).tolist() == pytest.approx(
        [math.log(1 + math.exp(-1)), math.log(1 + math.exp(1)), math.log(2)]
    )
    margin = torch.tensor([0.5, 0.5, 0.0])  # Llama 2's margin: the gap must exceed it
    assert bradley_terry(chosen, rejected, margin)[0] == pytest.approx(math.log(1 + math.exp(-0.5)))


def test_the_reward_loss_scores_each_conversation_at_its_last_token(tiny_config, tiny_model_dir: Path, tmp_path):
    cfg = tiny_config(
        f"data.path={write_jsonl(tmp_path / 'p.jsonl', separable_pairs(20))}",
        "train.task=reward",
        "data.estimate=false",
        "train.reward_margin=0.5",
    )
    prepare(cfg)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = REWARD.load(split_path(cfg.run_dir, "train"), tokenizer, TaskContext.of(cfg))[:4]
    model = load_model(str(tiny_model_dir), labels=["reward"]).eval()
    with torch.no_grad():
        ours = float(loss_sum(model, collate(pairs, int(tokenizer.pad_token_id)), cfg.train))
        expected = 0.0
        for pair in pairs:  # one unpadded sequence at a time: transformers' own pooling of the last token
            r = [float(model(input_ids=torch.tensor([ids])).logits[0, 0]) for ids in (pair.chosen, pair.rejected)]
            expected += math.log(1 + math.exp(-(r[0] - r[1] - 0.5 * pair.margin)))
    assert ours == pytest.approx(expected, rel=1e-5)


def test_a_reward_model_learns_to_order_separable_pairs(tiny_config, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", separable_pairs(80))
    cfg = tiny_config(
        f"data.path={data}",
        "train.task=reward",
        "data.estimate=false",
        "evaluate.limit=null",
        "train.epochs=3",
        "train.learning_rate=0.003",
    )
    prepare(cfg)
    train(cfg, **QUIET)
    report = evaluate(cfg, **QUIET)
    tuned, length = report.scores["tuned"], report.scores["longer_answer"]
    assert tuned["pair_accuracy"] >= 0.9 and tuned["mean_margin"] > 0
    assert length["pair_accuracy"] == 0.0  # the chosen answers are the shorter ones
    low, high = report.intervals["tuned"]["pair_accuracy"]
    assert low <= tuned["pair_accuracy"] <= high
    details = report.details["tuned"]
    assert details["rewards"]["chosen"]["mean"] > details["rewards"]["rejected"]["mean"]
    assert sum(details["rewards"]["chosen"]["histogram"]) == report.n
    assert set(details["annotators"]) == {"ann", "bob"}
    page = report.page.read_text(encoding="utf-8") if report.page else ""
    assert 'id="reward-chart"' in page and 'id="annotators"' in page  # both distributions, agreement per annotator
    # the trained model scores new answers through the reward-model loader RL uses
    scorer = RewardModel.at(str(cfg.run_dir))
    prompt = [{"role": "user", "content": "Item 99: what colour?"}]
    good, bad = scorer.score(prompt, ['{"colour": "red"}', "Item 99 is red, as far as anyone can tell."])
    assert good > bad


def test_hh_rlhf_transcripts_become_prompt_and_answers(tiny_config, tmp_path: Path) -> None:
    shared = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke"
    rows = [
        {
            "chosen": f"{shared}\n\nAssistant: Why did the chicken cross the road?",
            "rejected": f"{shared}\n\nAssistant: No.",
            "margin": 2,
            "annotator": "ann",
        }
    ] * 1 + [
        {"chosen": f"\n\nHuman: Q{i}\n\nAssistant: A good answer {i}", "rejected": f"\n\nHuman: Q{i}\n\nAssistant: bad"}
        for i in range(9)
    ]
    cfg = tiny_config(
        f"data.path={write_jsonl(tmp_path / 'hh.jsonl', rows)}",
        "train.task=reward",
        "data.estimate=false",
        "data.val_size=0",
        "data.test_size=0",
    )
    prepare(cfg)
    first = next(r for r in read_jsonl(split_path(cfg.run_dir, "train")) if r.get("annotator"))
    assert first["prompt"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert first["chosen"] == [{"role": "assistant", "content": "Why did the chicken cross the road?"}]
    assert first["rejected"] == [{"role": "assistant", "content": "No."}] and first["margin"] == 2.0
