"""best_of_n: the best sampled answer of each prompt is kept (by the run's reward) and trained on; the picks are
saved, read back on resume, and the tuned model's answers score higher than the base model's."""

import json
from pathlib import Path

import numpy as np
import pytest

from tuneforge.data import prepare
from tuneforge.errors import TrainingError
from tuneforge.evaluation import evaluate
from tuneforge.train import train
from tuneforge.train.best_of_n import PICKS

from helpers import toy_rows, write_jsonl

QUIET = {"log": lambda *a: None}


def quotes_reward(tmp_path: Path) -> Path:
    path = tmp_path / "rewards.py"
    path.write_text("def quotes(answer, reference):\n    return sum(c == '\"' for c in answer) / max(len(answer), 1)\n")
    return path


def test_best_of_n_trains_on_each_prompts_best_answer(tiny_config, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "prompts.jsonl", toy_rows(40))
    reward = f"train.rewards={{{quotes_reward(tmp_path)}:quotes: 1}}"
    cfg = tiny_config(
        f"data.path={data}", "train.task=best_of_n", "data.estimate=false", reward,
        "train.num_generations=6", "train.max_completion_length=12", "train.epochs=4", "train.learning_rate=0.01",
    )  # fmt: skip
    prepare(cfg)
    train(cfg, **QUIET)
    lines = (cfg.run_dir / PICKS).read_text().splitlines()
    picks = [json.loads(line) for line in lines[1:]]
    assert "fingerprint" in json.loads(lines[0])
    train_picks = [p for p in picks if p["split"] == "train"]
    assert len(train_picks) == len(list((cfg.run_dir / "data" / "train.jsonl").read_text().splitlines()))
    for p in picks:  # the kept answer is the best of its samples
        assert len(p["rewards"]) == 6 and p["reward"] == pytest.approx(max(p["rewards"]), abs=1e-4)
    assert np.mean([p["reward"] for p in picks]) > np.mean([np.mean(p["rewards"]) for p in picks])
    report = evaluate(cfg, **QUIET)
    assert report.scores["tuned"]["reward"] > report.scores["base"]["reward"], report.scores
    # a floor no answer reaches leaves nothing to train on: said clearly
    high = tiny_config(f"data.path={data}", "train.task=best_of_n", "data.estimate=false", "name=floor",
                       f"train.rewards={{{quotes_reward(tmp_path)}:quotes: 1}}", "train.best_of_n_min_reward=2",
                       "train.max_completion_length=4")  # fmt: skip
    prepare(high)
    with pytest.raises(TrainingError, match="no prompt's best answer reached train.best_of_n_min_reward=2"):
        train(high, **QUIET)
