"""Pure metric functions: predictions and references in, numbers out."""

from __future__ import annotations

import json
import math
from typing import Any


def perplexity(mean_loss: float) -> float:
    """exp(loss), capped so a diverged model prints as a number instead of overflowing."""
    return math.exp(min(mean_loss, 50.0))


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The answer as a JSON object if the whole answer is exactly one, else None (strict format check)."""
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def same_value(predicted: Any, expected: Any) -> bool:
    """Field equality: numbers by value (24 == 24.0), strings after trimming, everything else exactly."""
    if isinstance(expected, bool) or isinstance(predicted, bool):
        return predicted is expected
    if isinstance(expected, int | float) and isinstance(predicted, int | float):
        return math.isclose(float(predicted), float(expected), rel_tol=0, abs_tol=1e-6)
    if isinstance(expected, str) and isinstance(predicted, str):
        return predicted.strip() == expected.strip()
    return bool(predicted == expected)


def json_extraction(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """JSON validity rate, per-field exact-match accuracy and whole-object exact match."""
    n = len(references)
    if n == 0:
        return {"json_valid": 0.0, "exact_match": 0.0, "field_accuracy": {}, "mean_field_accuracy": 0.0}
    valid = 0
    exact = 0
    hits: dict[str, int] = {}
    for pred_text, ref_text in zip(predictions, references, strict=True):
        ref = parse_json_object(ref_text) or {}
        pred = parse_json_object(pred_text)
        valid += pred is not None
        correct = {k: pred is not None and k in pred and same_value(pred[k], v) for k, v in ref.items()}
        for key, ok in correct.items():
            hits[key] = hits.get(key, 0) + ok
        exact += pred is not None and all(correct.values()) and set(pred) == set(ref)
    field_accuracy = {k: v / n for k, v in hits.items()}
    return {
        "json_valid": valid / n,
        "exact_match": exact / n,
        "field_accuracy": field_accuracy,
        "mean_field_accuracy": sum(field_accuracy.values()) / max(len(field_accuracy), 1),
    }
