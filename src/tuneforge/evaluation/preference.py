"""Evaluating preference tuning (train.task=dpo): how often each model gives the chosen answer a higher
log-probability per token than the rejected one (per token: a longer answer is not penalised for its length), the
mean margin per token, and (tuned against base as the reference) the DPO loss and reward accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.evaluation.forgetting import forgetting_check
from tuneforge.evaluation.generations import Answerer
from tuneforge.evaluation.scores import TUNED, EvalReport
from tuneforge.generation import use_adapter
from tuneforge.metrics import Metric
from tuneforge.models import device_of
from tuneforge.rundir import split_path
from tuneforge.train.dpo import DPO, answer_logps
from tuneforge.train.lm import loss_tokens
from tuneforge.train.tasks import TaskContext


def _won(margin: float, _: Any) -> float:
    return float(margin > 0)


def _margin(margin: float, _: Any) -> float:
    return float(margin)


PREFERENCE_METRICS = {
    "pair_accuracy": Metric("text", lambda m, r: float(np.mean([x > 0 for x in m])) if len(m) else 0.0, _won),
    "mean_margin": Metric("text", lambda m, r: float(np.mean(m)) if len(m) else 0.0, _margin),
}


def evaluate_preference(
    cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, answer: Answerer
) -> EvalReport:
    """Score the base and the tuned model on the held-out preference pairs."""
    pairs = DPO.load(split_path(cfg.run_dir, cfg.evaluate.split), tokenizer, TaskContext.of(cfg))[: len(rows)]
    pad_id = int(tokenizer.pad_token_id)
    logps: dict[str, np.ndarray] = {}
    for variant in [v for v in ("base", TUNED) if v in models]:
        model = models[variant]
        with use_adapter(model, None if variant == "base" else TUNED, merge=True):
            logps[variant] = np.array(answer_logps(model, pairs, cfg.evaluate.batch_size, pad_id, device_of(model)))
    report = EvalReport(cfg.evaluate.split, len(rows))
    lengths = np.array([[max(loss_tokens(p.chosen), 1), max(loss_tokens(p.rejected), 1)] for p in pairs])
    margins = {
        variant: list(values[:, 0] / lengths[:, 0] - values[:, 1] / lengths[:, 1]) for variant, values in logps.items()
    }
    # Both measures are means over pairs of their per-token margin: intervals and the tuned-vs-base test come
    # from the same bootstrap as every other metric.
    report.score(PREFERENCE_METRICS, margins, [0.0] * len(pairs), cfg.evaluate.bootstrap)
    if "base" in logps:
        rewards = (logps[TUNED] - logps["base"]) * cfg.train.dpo_beta
        gap = rewards[:, 0] - rewards[:, 1]
        report.scores[TUNED]["reward_accuracy"] = round(float((gap > 0).mean()), 4)
        report.scores[TUNED]["dpo_loss"] = round(float(np.logaddexp(0, -gap).mean()), 4)
    report.forgetting = forgetting_check(cfg, models, tokenizer, answer)
    return report
