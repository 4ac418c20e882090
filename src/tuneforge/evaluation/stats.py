"""Bootstrap confidence intervals and the paired bootstrap test (Koehn 2004) for any registered metric.

The test set is resampled with replacement `resamples` times (the same resamples for every model, so a
comparison is paired); an interval is the 2.5th and 97.5th percentile of the metric over the resamples. Metrics
that are means of per-example scores resample a vector; corpus metrics (BLEU, chrF, F1) are recomputed on each
resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneforge.metrics import Metric

ALPHA = 0.05  # 95% intervals; a difference is significant when p < ALPHA


@dataclass(frozen=True)
class Comparison:
    """Model B minus model A on one metric: the difference, its 95% interval, and the two-sided p-value."""

    delta: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def to_json(self) -> dict[str, Any]:
        return {
            "delta": round(self.delta, 4),
            "interval": [round(self.low, 4), round(self.high, 4)],
            "p_value": round(self.p_value, 4),
            "significant": self.significant,
        }


def resample_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """`resamples` rows of `n` example indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def per_example_scores(metric: Metric, predictions: Sequence[Any], references: Sequence[Any]) -> np.ndarray | None:
    """Each example's own score, for a metric that is their mean (None for one that is not)."""
    if metric.per_example is None:
        return None
    return np.array([metric.per_example(p, r) for p, r in zip(predictions, references, strict=True)], dtype=float)


def resampled_scores(
    metric: Metric,
    predictions: Sequence[Any],
    references: Sequence[Any],
    indices: np.ndarray,
    per_example: np.ndarray | None = None,
) -> np.ndarray:
    """The metric on each resample (one row of `indices` each); `per_example`: the examples' own scores when the
    caller has them already."""
    if metric.resampled is not None:
        return metric.resampled(predictions, references, indices)
    if per_example is None:
        per_example = per_example_scores(metric, predictions, references)
    if per_example is not None:
        return np.asarray(per_example[indices].mean(axis=1))
    preds, refs = list(predictions), list(references)
    return np.array([metric.score([preds[i] for i in row], [refs[i] for i in row]) for row in indices])


def interval(scores: np.ndarray) -> tuple[float, float]:
    """The central 95% of resampled scores."""
    low, high = np.percentile(scores, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(low), float(high)


def compare(a: np.ndarray, b: np.ndarray, observed: float) -> Comparison:
    """B minus A from their scores on the same resamples; `observed`: the difference on the whole test set.

    The p-value is two-sided: twice the share of resamples on the far side of zero (at most 1).
    """
    deltas = b - a
    low, high = interval(deltas)
    p_value = min(1.0, 2 * min(float((deltas <= 0).mean()), float((deltas >= 0).mean())))
    if np.all(deltas == 0):
        p_value = 1.0
    return Comparison(observed, low, high, p_value)


def paired(pairs: dict[str, dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """From comparisons keyed "a|b" (b minus a, as `Comparison.to_json` writes them): b minus a, turned around when
    it was measured as a minus b; None when the two were not compared."""
    if f"{a}|{b}" in pairs:
        return pairs[f"{a}|{b}"]
    found = pairs.get(f"{b}|{a}")
    if found is None:
        return None
    low, high = found["interval"]
    return {**found, "delta": -found["delta"], "interval": [-high, -low]}
