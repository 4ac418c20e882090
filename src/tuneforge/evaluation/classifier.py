"""Evaluating a classifier (train.task=classify): evaluate.metrics (default accuracy, F1, precision, recall, ECE) from
the head's probabilities, beside always answering the most frequent training class (the base model has no trained
head to compare with), per-class scores and the confusion matrix; probabilities go to predictions.jsonl."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.data.labels import class_labels
from tuneforge.evaluation.generations import Answerer
from tuneforge.evaluation.predictions import write_predictions
from tuneforge.evaluation.scores import TUNED, EvalReport, chosen_metrics
from tuneforge.generation import use_adapter
from tuneforge.metrics import confusion, per_class
from tuneforge.models import device_of
from tuneforge.rundir import read_jsonl, split_path
from tuneforge.train.classify import CLASSIFY, probabilities
from tuneforge.train.tasks import TaskContext


def evaluate_classifier(
    cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, answer: Answerer
) -> EvalReport:
    """Score the tuned classifier (and those of evaluate.compare) against the majority class."""
    labels = class_labels(cfg.data, cfg.run_dir)
    examples = CLASSIFY.load(split_path(cfg.run_dir, cfg.evaluate.split), tokenizer, TaskContext.of(cfg))[: len(rows)]
    truth = [e.label for e in examples]
    train_counts = Counter(str(r["label"]) for r in read_jsonl(split_path(cfg.run_dir, "train")))
    majority = np.eye(len(labels))[[labels.index(max(labels, key=lambda label: train_counts[label]))] * len(truth)]
    outputs: dict[str, Any] = {"majority": list(majority)}
    pad_id = int(tokenizer.pad_token_id)
    for variant, model in models.items():  # the tuned model, then those of evaluate.compare
        with use_adapter(model, variant, merge=True):
            outputs[variant] = list(probabilities(model, examples, cfg.evaluate.batch_size, pad_id, device_of(model)))
    compared = [v for v in models if v != TUNED]
    probs = np.array(outputs[TUNED])
    predicted = probs.argmax(1).tolist()
    report = EvalReport(cfg.evaluate.split, len(rows))
    report.score(chosen_metrics(cfg), outputs, truth, cfg.evaluate.bootstrap)
    for name, rows_of_probs in outputs.items():
        report.details[name] = {
            "per_class": per_class(rows_of_probs, truth, labels),
            "confusion_matrix": {"labels": labels, "rows": confusion(rows_of_probs, truth, len(labels))},
        }
    write_predictions(
        cfg,
        [
            {
                "source": r.get("source"),
                "text": r["text"],
                "reference": labels[t],
                "prediction": labels[g],
                "probabilities": {label: round(float(p), 5) for label, p in zip(labels, row, strict=True)},
                **{v: labels[int(np.argmax(outputs[v][i]))] for v in compared},  # the compared models' answers
            }
            for i, (r, t, g, row) in enumerate(zip(rows, truth, predicted, probs, strict=True))
        ],
    )
    return report
