"""Pure metric functions and their registry: predictions and references in, one number out.

A metric scores either generated text against reference text (`kind` "text") or a classifier's probabilities
against the true class ids (`kind` "class"). Where a score is the mean of per-example scores, `per_example` gives
those (bootstrap intervals then resample a vector instead of recomputing the metric). BLEU and chrF use sacrebleu's
0-100 scale, as published results do; every other score lies in 0-1. A user's own metric is named
"module:function" or "path/to/file.py:function": function(prediction: str, reference: str) -> float, averaged.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tuneforge.errors import ConfigError

Kind = Literal["text", "class"]


@dataclass(frozen=True)
class Metric:
    """One registered metric: its kind, the corpus score and (for means) the per-example score."""

    kind: Kind
    score: Callable[[Sequence[Any], Sequence[Any]], float]
    per_example: Callable[[Any, Any], float] | None = None
    about: str = ""
    # (predictions, references, resample indices) -> the score on every resample at once, where that is much
    # faster than `score` per resample (F1 and friends from per-resample confusion counts)
    resampled: Callable[[Sequence[Any], Sequence[Any], np.ndarray], np.ndarray] | None = None


def perplexity(mean_loss: float) -> float:
    """exp(loss), capped so a diverged model prints as a number instead of overflowing."""
    return math.exp(min(mean_loss, 50.0))


# --- text ----------------------------------------------------------------------------------------------------


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


def _rouge(kind: str) -> Callable[[str, str], float]:
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
        "json_valid": _mean(json_valid, predictions, references),
        "json_exact_match": _mean(json_exact_match, predictions, references),
        "field_accuracy": per_field,
        "mean_field_accuracy": sum(per_field.values()) / max(len(per_field), 1),
    }


# --- classification: predictions are probability rows, references class ids --------------------------------------


def _argmax(probabilities: Sequence[Any]) -> np.ndarray:
    return np.asarray(probabilities, dtype=float).reshape(len(probabilities), -1).argmax(1)


def _classes(probabilities: Sequence[Any]) -> list[int]:
    return list(range(np.asarray(probabilities[0]).shape[-1])) if len(probabilities) else []


def accuracy(probabilities: Sequence[Any], labels: Sequence[int]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, _argmax(probabilities))) if len(labels) else 0.0


def _f1(average: str, what: str = "f1") -> Callable[[Sequence[Any], Sequence[int]], float]:
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


def _resampled_f1(average: str, what: str = "f1") -> Callable[[Sequence[Any], Sequence[int], np.ndarray], np.ndarray]:
    """The `_f1(average, what)` score of every resample from its confusion counts, as scikit-learn computes it with
    every class listed and zero_division=0 (tests compare the two on random resamples)."""

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


# --- registry ------------------------------------------------------------------------------------------------


def _mean(fn: Callable[[Any, Any], float], predictions: Sequence[Any], references: Sequence[Any]) -> float:
    pairs = list(zip(predictions, references, strict=True))
    return sum(fn(p, r) for p, r in pairs) / len(pairs) if pairs else 0.0


def _averaged(fn: Callable[[Any, Any], float], about: str) -> Metric:
    return Metric("text", lambda p, r: _mean(fn, p, r), fn, about)


def _top_class_right(probabilities: Any, label: int) -> float:
    return float(int(np.argmax(probabilities)) == int(label))


METRICS: dict[str, Metric] = {
    "exact_match": _averaged(exact_match, "answer equals the reference after normalising case, punctuation, spaces"),
    "token_f1": _averaged(token_f1, "F1 of the words answer and reference share (SQuAD-style)"),
    "bleu": Metric("text", bleu, None, "corpus BLEU, sacrebleu, 0-100"),
    "chrf": Metric("text", chrf, None, "corpus chrF, sacrebleu, 0-100"),
    "rouge1": _averaged(_rouge("rouge1"), "ROUGE-1 F-measure (rouge-score, every letter kept)"),
    "rouge2": _averaged(_rouge("rouge2"), "ROUGE-2 F-measure"),
    "rougeL": _averaged(_rouge("rougeL"), "ROUGE-L F-measure (longest common subsequence)"),
    "json_valid": _averaged(json_valid, "answer is exactly one JSON object"),
    "json_exact_match": _averaged(json_exact_match, "JSON object with exactly the reference's fields, all right"),
    "field_accuracy": _averaged(field_accuracy, "share of the reference object's fields the answer has right"),
    "accuracy": Metric("class", accuracy, _top_class_right, "share of examples whose top class is the true one"),
    "macro_f1": Metric(
        "class", _f1("macro"), None, "F1 averaged over classes (each class counts the same)", _resampled_f1("macro")
    ),
    "micro_f1": Metric(
        "class",
        _f1("micro"),
        None,
        "F1 over all decisions (equals accuracy for one label each)",
        _resampled_f1("micro"),
    ),
    "weighted_f1": Metric(
        "class", _f1("weighted"), None, "F1 averaged over classes weighted by support", _resampled_f1("weighted")
    ),
    "macro_precision": Metric(
        "class", _f1("macro", "precision"), None, "precision averaged over classes", _resampled_f1("macro", "precision")
    ),
    "macro_recall": Metric(
        "class", _f1("macro", "recall"), None, "recall averaged over classes", _resampled_f1("macro", "recall")
    ),
    "ece": Metric("class", ece, None, "expected calibration error of the top probability (15 bins; lower is better)"),
}

DEFAULTS: dict[str, list[str]] = {
    "json": ["json_valid", "json_exact_match", "field_accuracy", "token_f1"],
    "chat": ["exact_match", "token_f1", "chrf", "rougeL"],
    "class": ["accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall", "ece"],
}
LOWER_IS_BETTER = {"ece"}


def is_loss(name: str) -> bool:
    """Whether a score is a split's loss or perplexity (val_loss, test_perplexity, test_<task>_loss)."""
    return name.endswith(("_loss", "_perplexity"))


def lower_is_better(name: str) -> bool:
    """Whether a smaller score is the better one: ECE, and every loss and perplexity."""
    return name in LOWER_IS_BETTER or is_loss(name)


def _pooled_loss(rows: Sequence[Any], _: Sequence[Any]) -> float:
    """The token-weighted mean loss of (summed loss, loss tokens) rows: their ratio, as the split's loss is."""
    sums = np.asarray(rows, dtype=float).reshape(-1, 2).sum(axis=0)
    return float(sums[0] / sums[1]) if sums[1] else 0.0


# A split's loss and perplexity as metrics of per-example (summed loss, tokens) rows, so that they get bootstrap
# intervals and the tuned-vs-base test like every other score (resampling examples, not tokens).
LOSS_METRICS = {
    "loss": Metric("text", _pooled_loss, None, "token-weighted cross-entropy of the reference answers"),
    "perplexity": Metric("text", lambda r, _: perplexity(_pooled_loss(r, _)), None, "exp(loss)"),
}


def resolve(name: str, base: Path | None = None) -> Metric:
    """The metric called `name`: a registered one, or a user's "module:function" / "file.py:function"."""
    if name in METRICS:
        return METRICS[name]
    if ":" not in name:
        raise ConfigError(
            f"unknown metric {name!r}",
            f"choose from {', '.join(METRICS)}, or name your own as module:function or path/to/file.py:function",
        )
    return Metric("text", *_user_metric(name, base))


def _user_metric(name: str, base: Path | None) -> tuple[Callable[[Sequence[Any], Sequence[Any]], float], Any]:
    """A user's per-example metric function, imported from a module or a Python file (relative to `base`)."""
    where, _, attr = name.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where) if Path(where).is_absolute() or base is None else base / where
            spec = importlib.util.spec_from_file_location(f"tuneforge_user_metric_{path.stem}", path)
            if spec is None or spec.loader is None or not path.is_file():
                raise FileNotFoundError(path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        fn = getattr(module, attr)
    except (ImportError, FileNotFoundError, AttributeError, SyntaxError) as exc:
        raise ConfigError(
            f"metric {name!r} cannot be loaded: {type(exc).__name__}: {exc}",
            "name a function as module:function (importable) or path/to/file.py:function; it takes "
            "(prediction: str, reference: str) and returns a float",
        ) from None
    if not callable(fn):
        raise ConfigError(f"metric {name!r} is not a function", "point at a def taking (prediction, reference)")

    def checked(prediction: Any, reference: Any) -> float:
        value = fn(prediction, reference)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(
                f"metric {name!r} returned {value!r} for one example, not a finite number",
                "make it return a float (1.0 / 0.0 for yes / no)",
            )
        return float(value)

    return (lambda p, r: _mean(checked, p, r)), checked
