"""Evaluating a reward model (train.task=reward) on held-out preference pairs: how often it gives the chosen answer
the higher reward (pairwise accuracy, with its bootstrap interval), against the length-only baseline that prefers
the longer answer (long answers win many human comparisons, so a reward model must beat that, not 50%), the
reward distribution of chosen and rejected answers, and its agreement with each annotator where pairs name one."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.evaluation.generations import Answerer
from tuneforge.evaluation.scores import TUNED, EvalReport
from tuneforge.metrics import Metric
from tuneforge.models import device_of
from tuneforge.rundir import split_path
from tuneforge.train.reward import REWARD, pair_rewards
from tuneforge.train.tasks import TaskContext

LENGTH_BASELINE = "longer_answer"


def _won(margin: float, _: Any = None) -> float:
    """1 when the chosen answer scores higher, 1/2 for a tie (the length baseline's equal lengths), else 0."""
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


REWARD_METRICS = {
    "pair_accuracy": Metric("text", lambda m, r: float(np.mean([_won(x) for x in m])) if len(m) else 0.0, _won),
}


def _answer_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


def distribution(values: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    """Quartiles, mean and a histogram of rewards on shared bin edges."""
    counts, _ = np.histogram(values, bins=edges)
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0]) if len(values) else np.zeros(5)
    return {
        "mean": round(float(values.mean()), 4) if len(values) else 0.0,
        "quartiles": [round(float(v), 4) for v in q],
        "histogram": counts.tolist(),
    }


def evaluate_reward_model(
    cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, answer: Answerer
) -> EvalReport:
    """Score the tuned reward model (and the length baseline) on the held-out pairs."""
    pairs = REWARD.load(split_path(cfg.run_dir, cfg.evaluate.split), tokenizer, TaskContext.of(cfg))[: len(rows)]
    model = models[TUNED]
    rewards = pair_rewards(model, pairs, cfg.evaluate.batch_size, int(tokenizer.pad_token_id), device_of(model))
    margins = list(rewards[:, 0] - rewards[:, 1])
    lengths = [float(_answer_chars(r["chosen"]) - _answer_chars(r["rejected"])) for r in rows]
    report = EvalReport(cfg.evaluate.split, len(rows))
    report.score(REWARD_METRICS, {LENGTH_BASELINE: lengths, TUNED: margins}, [0.0] * len(rows), cfg.evaluate.bootstrap)
    report.scores[TUNED]["mean_margin"] = round(float(np.mean(margins)), 4)
    edges = np.linspace(float(rewards.min()), float(rewards.max()) + 1e-9, 21)
    report.details[TUNED] = {
        "rewards": {"chosen": distribution(rewards[:, 0], edges), "rejected": distribution(rewards[:, 1], edges)},
        "bin_edges": [round(float(e), 4) for e in edges],
        "annotators": annotator_agreement(rows, margins),
    }
    return report


def annotator_agreement(rows: list[dict[str, Any]], margins: list[float]) -> dict[str, dict[str, float]]:
    """Per annotator named in the pairs: how many of their pairs the model orders as they did."""
    by: dict[str, list[float]] = {}
    for row, margin in zip(rows, margins, strict=True):
        if row.get("annotator"):
            by.setdefault(str(row["annotator"]), []).append(_won(margin))
    return {name: {"pairs": len(won), "agreement": round(float(np.mean(won)), 4)} for name, won in sorted(by.items())}
