"""KTO and ORPO: their losses are the papers' formulas on hand-computed log-probabilities, and each learns to prefer
the chosen answers of the toy pairs."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_dpo import dpo_config, pairs_file, preference_rows  # noqa: F401  (pairs_file is a fixture)

from tuneforge.data import prepare
from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.evaluation import evaluate
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train import train
from tuneforge.train.dpo import DPO, collate
from tuneforge.train.preference_losses import kto_loss, orpo_loss
from tuneforge.train.tasks import TaskContext

QUIET = {"log": lambda *a: None}


def answer_logps(model, encoded) -> tuple[float, int]:
    """log p(answer | prompt) from the full logits of one sequence, and the answer's tokens."""
    logits = model(input_ids=torch.tensor([encoded.input_ids])).logits[0, :-1]
    targets = torch.tensor(encoded.labels[1:])
    picked = F.log_softmax(logits, -1).gather(1, targets.clamp(min=0)[:, None])[:, 0]
    return float(picked[targets != IGNORE_INDEX].sum()), int((targets != IGNORE_INDEX).sum())


@pytest.fixture
def four_pairs(tiny_config, tiny_model_dir: Path, pairs_file: Path):  # noqa: F811
    cfg = dpo_config(tiny_config, pairs_file, "train.task=kto", "train.dpo_beta=0.5")
    prepare(cfg)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pairs = DPO.load(cfg.run_dir / "data" / "train.jsonl", tokenizer, TaskContext.of(cfg))[:4]
    for k, pair in enumerate(pairs):
        pair.reference = (-30.0 - k, -20.0 + k)
    return cfg, pairs, load_model(str(tiny_model_dir)).eval(), int(tokenizer.pad_token_id)


def test_the_kto_loss_is_the_papers(four_pairs) -> None:
    cfg, pairs, model, pad = four_pairs
    with torch.no_grad():
        ours = float(kto_loss(model, collate(pairs, pad), cfg.train))
        ratios = [
            (answer_logps(model, p.chosen)[0] - p.reference[0], answer_logps(model, p.rejected)[0] - p.reference[1])
            for p in pairs
        ]
    z = max(0.0, sum(c + r for c, r in ratios) / (2 * len(ratios)))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = sum((1 - sig(0.5 * (c - z))) + (1 - sig(0.5 * (z - r))) for c, r in ratios)
    assert ours == pytest.approx(expected, rel=1e-4)


def test_the_orpo_loss_is_the_papers(four_pairs) -> None:
    cfg, pairs, model, pad = four_pairs
    with torch.no_grad():
        ours = float(orpo_loss(model, collate(pairs, pad), cfg.train))
        expected = 0.0
        for pair in pairs:
            (lc, nc), (lr, nr) = answer_logps(model, pair.chosen), answer_logps(model, pair.rejected)
            mc, mr = lc / nc, lr / nr
            odds = (mc - math.log1p(-math.exp(mc))) - (mr - math.log1p(-math.exp(mr)))
            expected += -mc - 0.5 * math.log(1 / (1 + math.exp(-odds)))
    assert ours == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("task", ["kto", "orpo"])
def test_kto_and_orpo_prefer_the_chosen_answers(tiny_config, pairs_file: Path, task: str) -> None:  # noqa: F811
    cfg = dpo_config(tiny_config, pairs_file, f"train.task={task}", "train.learning_rate=0.002", "train.epochs=2")
    prepare(cfg)
    train(cfg, **QUIET)
    report = evaluate(cfg, **QUIET)
    base, tuned = report.scores["base"], report.scores["tuned"]
    assert tuned["pair_accuracy"] >= 0.9 and tuned["pair_accuracy"] > base["pair_accuracy"] + 0.3, report.scores
    assert (cfg.run_dir / "reference_logps.json").is_file() == (task == "kto")  # ORPO needs no reference model
