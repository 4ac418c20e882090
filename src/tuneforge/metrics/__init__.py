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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tuneforge.errors import ConfigError
from tuneforge.metrics.classes import accuracy, confusion, ece, f1_metric, per_class, resampled_f1
from tuneforge.metrics.text import (
    bleu,
    chrf,
    exact_match,
    field_accuracy,
    json_exact_match,
    json_extraction,
    json_valid,
    mean_of,
    normalize,
    parse_json_object,
    rouge,
    same_value,
    token_f1,
)

__all__ = [
    "DEFAULTS",
    "LOSS_METRICS",
    "METRICS",
    "Kind",
    "Metric",
    "chosen",
    "confusion",
    "ece",
    "is_loss",
    "json_extraction",
    "lower_is_better",
    "normalize",
    "parse_json_object",
    "per_class",
    "perplexity",
    "resolve",
    "same_value",
]

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


def _averaged(fn: Callable[[Any, Any], float], about: str) -> Metric:
    return Metric("text", lambda p, r: mean_of(fn, p, r), fn, about)


def _top_class_right(probabilities: Any, label: int) -> float:
    return float(int(np.argmax(probabilities)) == int(label))


METRICS: dict[str, Metric] = {
    "exact_match": _averaged(exact_match, "answer equals the reference after normalising case, punctuation, spaces"),
    "token_f1": _averaged(token_f1, "F1 of the words answer and reference share (SQuAD-style)"),
    "bleu": Metric("text", bleu, None, "corpus BLEU, sacrebleu, 0-100"),
    "chrf": Metric("text", chrf, None, "corpus chrF, sacrebleu, 0-100"),
    "rouge1": _averaged(rouge("rouge1"), "ROUGE-1 F-measure (rouge-score, every letter kept)"),
    "rouge2": _averaged(rouge("rouge2"), "ROUGE-2 F-measure"),
    "rougeL": _averaged(rouge("rougeL"), "ROUGE-L F-measure (longest common subsequence)"),
    "json_valid": _averaged(json_valid, "answer is exactly one JSON object"),
    "json_exact_match": _averaged(json_exact_match, "JSON object with exactly the reference's fields, all right"),
    "field_accuracy": _averaged(field_accuracy, "share of the reference object's fields the answer has right"),
    "accuracy": Metric("class", accuracy, _top_class_right, "share of examples whose top class is the true one"),
    "macro_f1": Metric(
        "class",
        f1_metric("macro"),
        None,
        "F1 averaged over classes (each class counts the same)",
        resampled_f1("macro"),
    ),
    "micro_f1": Metric(
        "class",
        f1_metric("micro"),
        None,
        "F1 over all decisions (equals accuracy for one label each)",
        resampled_f1("micro"),
    ),
    "weighted_f1": Metric(
        "class", f1_metric("weighted"), None, "F1 averaged over classes weighted by support", resampled_f1("weighted")
    ),
    "macro_precision": Metric(
        "class",
        f1_metric("macro", "precision"),
        None,
        "precision averaged over classes",
        resampled_f1("macro", "precision"),
    ),
    "macro_recall": Metric(
        "class", f1_metric("macro", "recall"), None, "recall averaged over classes", resampled_f1("macro", "recall")
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


def chosen(names: list[str] | None, default: str, kind: Kind, task: str) -> dict[str, Metric]:
    """The metrics `names` lists, resolved (None: the DEFAULTS of `default`: json, chat or class), each checked to
    score what train.task=`task` produces (`kind`: generated text, or class probabilities)."""
    metrics = {name: resolve(name) for name in names or DEFAULTS[default]}
    wrong = [name for name, metric in metrics.items() if metric.kind != kind]
    if wrong:
        fitting = ", ".join(n for n, m in METRICS.items() if m.kind == kind)
        what = "class probabilities" if kind == "class" else "generated text"
        raise ConfigError(
            f"evaluate.metrics {wrong} cannot score train.task={task}, which produces {what}",
            f"choose from {fitting}" + (" or your own module:function" if kind == "text" else ""),
        )
    return metrics


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

    return (lambda p, r: mean_of(checked, p, r)), checked
