"""The bake-off's scores: every approach on every metric with 95% bootstrap intervals (evaluation's own scoring),
the paired comparison of every two approaches on the ranking metric, and the examples where they disagree most."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError
from tuneforge.evaluation.scores import EvalReport, chosen_metrics
from tuneforge.evaluation.stats import compare, resample_indices, resampled_scores
from tuneforge.metrics import Metric, lower_is_better

MIN_TESTED = 10  # fewer test examples get no pairwise test: resamples of 2-5 examples call any difference significant


def ranking_metric(cfg: RunConfig, metrics: dict[str, Metric]) -> str:
    """compare.metric, or field_accuracy for JSON extraction, or the first metric."""
    chosen = cfg.compare.metric
    if chosen is None:
        chosen = "field_accuracy" if "field_accuracy" in metrics else next(iter(metrics))
    if chosen not in metrics:
        raise ConfigError(
            f"compare.metric={chosen!r} is not one of the metrics the answers are scored with ({', '.join(metrics)})",
            "name one of them, or add it to evaluate.metrics",
        )
    return chosen


def score_approaches(
    cfg: RunConfig, outputs: dict[str, list[str]], references: list[str]
) -> tuple[EvalReport, str, dict[str, dict[str, Any]]]:
    """Scores with intervals per approach and metric, the ranking metric, and each pair's paired comparison on it
    ("a|b": b minus a, its interval, p-value, significance)."""
    metrics = chosen_metrics(cfg)
    metric = ranking_metric(cfg, metrics)
    report = EvalReport(cfg.evaluate.split, len(references))
    report.score(metrics, outputs, references, cfg.evaluate.bootstrap)
    pairs: dict[str, dict[str, Any]] = {}
    if report.resamples and len(references) >= MIN_TESTED:
        indices = resample_indices(len(references), report.resamples)  # the same resamples as report.score's
        samples = {
            name: resampled_scores(
                metrics[metric], answers, references, indices, report.per_example.get(name, {}).get(metric)
            )
            for name, answers in outputs.items()
        }
        for a, b in combinations(outputs, 2):
            observed = report.scores[b][metric] - report.scores[a][metric]
            pairs[f"{a}|{b}"] = compare(samples[a], samples[b], observed).to_json()
    return report, metric, pairs


def ranked(scores: dict[str, float], metric: str) -> list[str]:
    """The approaches best first on `metric` (ties keep the order they were run in)."""
    sign = 1.0 if lower_is_better(metric) else -1.0
    return sorted(scores, key=lambda name: sign * scores[name])


def disagreements(report: EvalReport, metric: str, outputs: dict[str, list[str]], k: int) -> list[int]:
    """The `k` examples where the approaches disagree most: the widest spread of their scores on the ranking metric
    (when it is scored per example), then the most distinct answers."""
    names = list(outputs)
    n = len(next(iter(outputs.values()))) if outputs else 0
    per = [report.per_example.get(name, {}).get(metric) for name in names]
    spread = np.zeros(n)
    if all(p is not None for p in per) and n:
        stacked = np.vstack([p for p in per if p is not None])
        spread = stacked.max(axis=0) - stacked.min(axis=0)
    distinct = [len({outputs[name][i].strip() for name in names}) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-spread[i], -distinct[i], i))
    return [i for i in order if distinct[i] > 1][:k]
