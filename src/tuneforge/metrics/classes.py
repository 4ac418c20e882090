"""Metrics of a classifier: probability rows against true class ids (accuracy, F1 family, calibration)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _argmax(probabilities: Sequence[Any]) -> np.ndarray:
    return np.asarray(probabilities, dtype=float).reshape(len(probabilities), -1).argmax(1)


def _classes(probabilities: Sequence[Any]) -> list[int]:
    return list(range(np.asarray(probabilities[0]).shape[-1])) if len(probabilities) else []


def accuracy(probabilities: Sequence[Any], labels: Sequence[int]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, _argmax(probabilities))) if len(labels) else 0.0


def f1_metric(average: str, what: str = "f1") -> Callable[[Sequence[Any], Sequence[int]], float]:
    def score(probabilities: Sequence[Any], labels: Sequence[int]) -> float:
        from sklearn.metrics import f1_score, precision_score, recall_score

        if not len(labels):
            return 0.0
        fn = {"f1": f1_score, "precision": precision_score, "recall": recall_score}[what]
        every = _classes(probabilities)
        return float(fn(labels, _argmax(probabilities), labels=every, average=average, zero_division=0))

    return score


def _resampled_counts(probabilities: Sequence[Any], labels: Sequence[int], indices: np.ndarray) -> np.ndarray:
    """Confusion counts (resamples, true class, predicted class) of every resample (rows of example `indices`)."""
    n_classes = len(_classes(probabilities))
    pairs = np.asarray(labels)[indices] * n_classes + _argmax(probabilities)[indices]
    offsets = np.arange(len(indices))[:, None] * n_classes * n_classes
    counts = np.bincount((pairs + offsets).ravel(), minlength=len(indices) * n_classes * n_classes)
    return counts.reshape(len(indices), n_classes, n_classes)


def resampled_f1(average: str, what: str = "f1") -> Callable[[Sequence[Any], Sequence[int], np.ndarray], np.ndarray]:
    """The `f1_metric(average, what)` score of every resample from its confusion counts, as scikit-learn computes it
    with every class listed and zero_division=0 (tests compare the two on random resamples)."""

    def scores(probabilities: Sequence[Any], labels: Sequence[int], indices: np.ndarray) -> np.ndarray:
        counts = _resampled_counts(probabilities, labels, indices)
        tp = np.diagonal(counts, axis1=1, axis2=2).astype(float)
        true, predicted = counts.sum(axis=2), counts.sum(axis=1)
        if average == "micro":
            tp, true, predicted = tp.sum(1, keepdims=True), true.sum(1, keepdims=True), predicted.sum(1, keepdims=True)
        denominator = {"precision": predicted, "recall": true, "f1": true + predicted}[what]
        value = np.divide((2 if what == "f1" else 1) * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        if average == "weighted":
            support = true.sum(1)
            return np.divide((value * true).sum(1), support, out=np.zeros(len(support)), where=support > 0)
        return np.asarray(value.mean(axis=1))

    return scores


def per_class(probabilities: Sequence[Any], labels: Sequence[int], names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of each class."""
    from sklearn.metrics import precision_recall_fscore_support

    every = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(labels, _argmax(probabilities), labels=every, zero_division=0)
    return {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(names)
    }


def confusion(probabilities: Sequence[Any], labels: Sequence[int], n_classes: int) -> list[list[int]]:
    """Confusion matrix: row = true class, column = predicted class."""
    from sklearn.metrics import confusion_matrix

    return [
        [int(v) for v in row] for row in confusion_matrix(labels, _argmax(probabilities), labels=list(range(n_classes)))
    ]


ECE_BINS = 15


def ece(probabilities: Sequence[Any], labels: Sequence[int]) -> float:
    """Expected calibration error: the examples binned by confidence (top probability, 15 equal-width bins), the
    gap between accuracy and mean confidence in each bin, weighted by the bin's share of examples (the binning of
    torchmetrics' MulticlassCalibrationError, which the tests compare with)."""
    if not len(labels):
        return 0.0
    probs = np.asarray(probabilities, dtype=float).reshape(len(labels), -1)
    confidence, predicted = probs.max(1), probs.argmax(1)
    correct = (predicted == np.asarray(labels)).astype(float)
    # bins [low, high) between ECE_BINS + 1 equally spaced edges; a confidence of exactly 1 gets a bin of its own
    bins = np.searchsorted(np.linspace(0, 1, ECE_BINS + 1), confidence, side="right") - 1
    total = 0.0
    for b in np.unique(bins):
        members = bins == b
        total += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(total)
