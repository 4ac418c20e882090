"""An evaluation's scores: per model and metric, with bootstrap intervals and the tuned model's comparison with its
baseline (`EvalReport`), and the side-by-side table the CLI prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError
from tuneforge.evaluation.stats import compare, interval, per_example_scores, resample_indices, resampled_scores
from tuneforge.metrics import Kind, Metric, chosen
from tuneforge.rundir import TUNED
from tuneforge.train.tasks import TASKS


@dataclass
class EvalReport:
    """Scores per model ('base', 'tuned') on one split, their 95% bootstrap intervals, the comparison of the
    tuned model with its baseline (base, or the majority class) and per-model details (per class, confusion)."""

    split: str
    n: int
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    intervals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    comparison: dict[str, dict[str, Any]] = field(default_factory=dict)
    baseline: str | None = None
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    resamples: int = 0
    forgetting: dict[str, Any] | None = None
    page: Path | None = None  # report.html
    # each example's own score per model and mean metric (for predictions.jsonl; not in eval.json)
    per_example: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"split": self.split, "n": self.n, "models": self.scores}
        if self.intervals:
            out["intervals"] = self.intervals
        if self.comparison:
            out["comparison"] = {
                "baseline": self.baseline,
                "model": TUNED,
                "resamples": self.resamples,
                "metrics": self.comparison,
            }
        if self.details:
            out["details"] = self.details
        if self.forgetting:
            out["forgetting"] = self.forgetting
        return {**out, "seconds": round(self.seconds, 2)}

    def score(
        self,
        metrics: dict[str, Metric],
        outputs: Mapping[str, Sequence[Any]],
        references: Sequence[Any],
        resamples: int,
    ) -> None:
        """Score every model's outputs with every metric, with bootstrap intervals (`resamples` > 0) on shared
        resamples, and compare the tuned model with the first model (its baseline)."""
        indices = resample_indices(len(references), resamples) if resamples and len(references) else None
        self.resamples = resamples if indices is not None else 0
        samples: dict[tuple[str, str], Any] = {}
        raw: dict[tuple[str, str], float] = {}
        for variant, predictions in outputs.items():
            scores = self.scores.setdefault(variant, {})
            for name, metric in metrics.items():
                raw[variant, name] = metric.score(predictions, references)
                scores[name] = round(raw[variant, name], 4)
                values = per_example_scores(metric, predictions, references)
                if values is not None:
                    self.per_example.setdefault(variant, {})[name] = values
                if indices is not None:
                    samples[variant, name] = resampled_scores(metric, predictions, references, indices, values)
                    low, high = interval(samples[variant, name])
                    self.intervals.setdefault(variant, {})[name] = [round(low, 4), round(high, 4)]
        baseline = next(iter(outputs))
        if indices is None or baseline == TUNED or TUNED not in outputs:
            return
        self.baseline = baseline
        for name in metrics:
            observed = raw[TUNED, name] - raw[baseline, name]
            self.comparison[name] = compare(samples[baseline, name], samples[TUNED, name], observed).to_json()


def summary_columns(report: EvalReport) -> list[str]:
    """The columns of `summary_rows`: the models, then the tuned model's difference to its baseline."""
    columns = list(report.scores)
    return columns + ([f"{TUNED}-{report.baseline}"] if report.comparison else [])


def summary_rows(report: EvalReport) -> list[tuple[str, list[str]]]:
    """(metric, [value per model, difference]) rows for a side-by-side table: every score with its 95% interval,
    the tuned model's difference to its baseline (* when significant), then per-field and per-class details."""
    models = list(report.scores)
    rows = []
    for key, value in report.scores[models[-1]].items():
        if not isinstance(value, int | float):
            continue
        cells = [_fmt(report.scores[m].get(key), report.intervals.get(m, {}).get(key)) for m in models]
        if report.comparison:
            cells.append(_difference(report.comparison.get(key)))
        rows.append((key, cells))
    pad = [""] if report.comparison else []
    fields = report.details.get(models[-1], {}).get("field_accuracy", {})
    for name in fields:
        values = [_fmt(report.details.get(m, {}).get("field_accuracy", {}).get(name)) for m in models]
        rows.append((f"  {name}", values + pad))
    classes = report.details.get(models[-1], {}).get("per_class", {})
    for name in classes:
        values = [_fmt(report.details[m]["per_class"][name]["f1"]) for m in models]
        rows.append((f"  f1 {name} ({classes[name]['support']})", values + pad))
    return rows


def _fmt(value: Any, bounds: list[float] | None = None) -> str:
    """A score, with its 95% interval when it has one: 0.396 [0.25,0.54]."""
    if value is None:
        return "-"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return f"{text} [{bounds[0]:.2f},{bounds[1]:.2f}]" if bounds else text


def _difference(comparison: dict[str, Any] | None) -> str:
    """The difference, with * when it is significant (its interval and p-value are in eval.json)."""
    if comparison is None:
        return "-"
    return f"{comparison['delta']:+.3f}" + (" *" if comparison["significant"] else "")


def chosen_metrics(cfg: RunConfig) -> dict[str, Metric]:
    """The metrics evaluate.metrics names (default: those of evaluate.task, or of classification), checked against
    what the run's task produces (generated text, or class probabilities)."""
    task = TASKS[cfg.train.task]
    kind: Kind = "class" if task.head == "classifier" else "text"
    if cfg.train.task in ("dpo", "kto", "orpo", "reward") or (kind == "text" and not task.generative):
        if cfg.evaluate.metrics:
            raise ConfigError(
                f"train.task={cfg.train.task} is scored by its own measures (losses, preference accuracy), not by "
                f"evaluate.metrics",
                "remove evaluate.metrics",
            )
        return {}
    return chosen(cfg.evaluate.metrics, "class" if kind == "class" else cfg.evaluate.task, kind, cfg.train.task)
