"""Metrics of generated text against reference text: exact match, word F1, BLEU, chrF, ROUGE, JSON extraction."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any


def normalize(text: str) -> str:
    """Compatibility-normalised, case-folded, punctuation deleted ("forty-two" -> "fortytwo"), whitespace
    collapsed: SQuAD's normalisation for any language (Unicode punctuation, no English article stripping)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answers are equal after `normalize`."""
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the normalised tokens both answers share (multiset overlap, as SQuAD's token F1)."""
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, 0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (character 6-grams, beta 2; sacrebleu, 0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


class _WordTokenizer:
    """rouge-score's tokenizer keeps only [a-z0-9] (German "Größe" becomes "gr e"); this one keeps every letter."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())


def rouge(kind: str) -> Callable[[str, str], float]:
    def score(prediction: str, reference: str) -> float:
        from rouge_score.rouge_scorer import RougeScorer

        scorer = RougeScorer([kind], tokenizer=_WordTokenizer())
        return float(scorer.score(reference, prediction)[kind].fmeasure)

    score.__name__ = kind
    return score


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


def _fields(prediction: str, reference: str) -> tuple[dict[str, Any] | None, dict[str, bool]]:
    """The parsed answer and, per field of the reference object, whether the answer has it right."""
    expected = parse_json_object(reference) or {}
    answer = parse_json_object(prediction)
    return answer, {k: answer is not None and k in answer and same_value(answer[k], v) for k, v in expected.items()}


def json_valid(prediction: str, reference: str) -> float:
    """1.0 when the whole answer is one JSON object."""
    return float(parse_json_object(prediction) is not None)


def json_exact_match(prediction: str, reference: str) -> float:
    """1.0 when the answer is a JSON object with exactly the reference's fields, each right."""
    answer, correct = _fields(prediction, reference)
    return float(answer is not None and all(correct.values()) and set(answer) == set(correct))


def field_accuracy(prediction: str, reference: str) -> float:
    """The share of the reference object's fields the answer has right."""
    _, correct = _fields(prediction, reference)
    return sum(correct.values()) / len(correct) if correct else float(parse_json_object(prediction) is not None)


def json_extraction(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """JSON validity rate, whole-object exact match, and per-field accuracy (each field over all examples)."""
    n = len(references)
    hits: Counter[str] = Counter()
    for prediction, reference in zip(predictions, references, strict=True):
        hits.update({k: int(ok) for k, ok in _fields(prediction, reference)[1].items()})
    per_field = {k: v / n for k, v in hits.items()}
    return {
        "json_valid": mean_of(json_valid, predictions, references),
        "json_exact_match": mean_of(json_exact_match, predictions, references),
        "field_accuracy": per_field,
        "mean_field_accuracy": sum(per_field.values()) / max(len(per_field), 1),
    }


def mean_of(fn: Callable[[Any, Any], float], predictions: Sequence[Any], references: Sequence[Any]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(fn(p, r) for p, r in pairs) / len(pairs) if pairs else 0.0
