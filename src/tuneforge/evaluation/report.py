"""report.html: one self-contained page per run, rendered from the run directory's saved files.

It reads what the stages wrote (config.yaml, data/data_report.json, metrics.jsonl, eval.json, predictions.jsonl)
and loads no model, so `tuneforge report runs/<name>` re-renders it in a second. The page has no scripts and
fetches nothing: charts are inline SVG, styles are inline, and every text from the data is HTML-escaped.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml

from tuneforge import __version__
from tuneforge.config import PrivacyConfig
from tuneforge.errors import RunError
from tuneforge.evaluation.bakeoff_view import bakeoff_view
from tuneforge.evaluation.charts import COLOURS, curve, histograms, score_bars
from tuneforge.evaluation.predictions import redactor
from tuneforge.metrics import is_loss, lower_is_better
from tuneforge.rundir import (
    CONFIG_FILE,
    DATA_REPORT,
    EVAL,
    METRICS,
    PREDICTIONS,
    REPORT,
    TUNED,
    atomic_write_text,
    read_jsonl,
    require,
    split_path,
)

EXAMPLES = 6  # test examples shown side by side
SHOWN_CHARS = 1500  # longer texts are cut on the page (predictions.jsonl keeps them whole)
KEY_SETTINGS = [
    ("model", "name"),
    ("train", "task"),
    ("train", "method"),
    ("train", "lora_r"),
    ("train", "epochs"),
    ("train", "learning_rate"),
    ("train", "batch_size"),
    ("train", "grad_accum"),
    ("data", "max_seq_len"),
    ("evaluate", "split"),
]


def write_report(run_dir: Path) -> Path:
    """Render runs/<name>/report.html from the run's saved files and return its path."""
    run_dir = Path(run_dir)
    # Older runs, and tasks scored without answers (pretrain) or without a base (compare_base: false), lack parts.
    optional: dict[str, Any] = {
        "split": "test",
        "n": 0,
        "models": {},
        "comparison": None,
        "intervals": {},
        "details": {},
    }
    bakeoff = bakeoff_view(run_dir)
    # a run that was only compared (tuneforge compare) has no eval.json: its page shows the bake-off
    evaluated = _read_json(require(run_dir, EVAL, "evaluate")) if bakeoff is None or (run_dir / EVAL).is_file() else {}
    evaluation = optional | {"forgetting": None, "seconds": None} | evaluated
    config_path = require(run_dir, CONFIG_FILE, "prepare")
    config_text = config_path.read_text(encoding="utf-8")
    config = yaml.safe_load(config_text) or {}
    models = list(evaluation.get("models", {}))
    page = {
        "name": run_dir.resolve().name,
        "version": __version__,
        "generated": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "evaluation": evaluation,
        "models": models,
        "colours": {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(models)},
        "settings": [(f"{a}.{b}", config.get(a, {}).get(b)) for a, b in KEY_SETTINGS],
        "config_text": config_text,
        "headline": headline(evaluation),
        "metrics": metric_rows(evaluation),
        "details": detail_rows(evaluation),
        "bars": _bars(evaluation),
        "confusion": confusion_view(evaluation),
        "rewards": reward_view(evaluation),
        "examples": examples(run_dir, evaluation, _redactor(config)),
        "forgetting": evaluation.get("forgetting"),
        "training": training_view(run_dir),
        "data": _optional_json(run_dir / DATA_REPORT),
        "bakeoff": bakeoff,
        "colours_for": {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(bakeoff["names"] if bakeoff else [])},
    }
    path = run_dir / REPORT
    atomic_write_text(path, _template().render(**page))
    return path


def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # predictions and data are user text: never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt
    env.filters["p"] = p_value
    return env.get_template("report.html.j2")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(
            f"{path} cannot be read as JSON ({exc})", "run `tuneforge evaluate` again to rewrite it"
        ) from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a JSON object", "run `tuneforge evaluate` again to rewrite it")
    return data


def _optional_json(path: Path) -> dict[str, Any] | None:
    return _read_json(path) if path.is_file() else None


def fmt(value: Any, digits: int = 3) -> str:
    """A number as the page shows it: floats to `digits` decimals (large ones fewer), None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:,.{min(digits, 1)}f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def p_value(value: float, resamples: int) -> str:
    """A two-sided bootstrap p-value; 0 (no resample on the far side of zero) means below the resolution of
    `resamples` resamples, so it prints as "<0.002" (1000 resamples) rather than as 0."""
    return f"<{2 / resamples:.2g}" if value == 0 and resamples else f"{value:.3f}"


def headline(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """The first four compared metrics as cards: baseline -> tuned, the difference and its significance."""
    comparison = evaluation.get("comparison") or {}
    baseline, model = comparison.get("baseline"), comparison.get("model")
    scores = evaluation.get("models", {})
    cards: list[dict[str, Any]] = []
    compared = comparison.get("metrics", {})
    # the task's own metrics first; losses only where there is room (they lead for pretrain, which has nothing else)
    for name, result in sorted(compared.items(), key=lambda item: is_loss(item[0])):
        before, after = scores[baseline].get(name), scores[model].get(name)
        if len(cards) == 4 or any((c["before"], c["after"]) == (before, after) for c in cards):
            continue  # micro F1 repeats accuracy for single-label classifiers
        cards.append({"metric": name, "baseline": baseline, "before": before, "after": after, **_judged(name, result)})
    return cards


def _judged(metric: str, result: dict[str, Any]) -> dict[str, Any]:
    """A comparison with its verdict for the page: "better", "worse" (significant either way) or "unclear"."""
    if not result.get("significant"):
        return {**result, "verdict": "unclear"}
    better = result["delta"] < 0 if lower_is_better(metric) else result["delta"] > 0
    return {**result, "verdict": "better" if better else "worse"}


def metric_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """Every score of every model with its interval, and the tuned model's difference to its baseline."""
    scores: dict[str, dict[str, Any]] = evaluation.get("models", {})
    intervals = evaluation.get("intervals", {})
    compared = (evaluation.get("comparison") or {}).get("metrics", {})
    names: list[str] = []
    for values in scores.values():
        names += [k for k, v in values.items() if isinstance(v, int | float) and k not in names]
    return [
        {
            "metric": name,
            "cells": [{"value": scores[m].get(name), "interval": intervals.get(m, {}).get(name)} for m in scores],
            "difference": _judged(name, compared[name]) if name in compared else None,
        }
        for name in names
    ]


def detail_rows(evaluation: dict[str, Any]) -> dict[str, Any]:
    """Per-field accuracies (extraction) and per-class precision/recall/F1 (classifiers), per model."""
    details: dict[str, dict[str, Any]] = evaluation.get("details", {})
    models = list(details)
    fields = sorted({f for d in details.values() for f in d.get("field_accuracy", {})})
    last = details[models[-1]] if models else {}
    classes = list(last.get("per_class", {}))
    return {
        "models": models,
        "fields": [(f, [details[m].get("field_accuracy", {}).get(f) for m in models]) for f in fields],
        "classes": [(c, last["per_class"][c]) for c in classes],
    }


def _bars(evaluation: dict[str, Any]) -> str | None:
    """The bar chart of the compared scores that lie on a 0-1 scale (not BLEU/chrF's 0-100, not losses: a loss
    below 1 is not a share)."""
    scores = evaluation.get("models", {})
    intervals = evaluation.get("intervals", {})
    metrics = [
        name
        for name in (evaluation.get("comparison") or {}).get("metrics", {})
        if not is_loss(name) and all(0.0 <= float(s.get(name, 0.0)) <= 1.0 for s in scores.values())
    ]
    labels = {m: f"{m} (lower is better)" if lower_is_better(m) else m for m in metrics}
    return score_bars(metrics, list(scores), scores, intervals, labels) if metrics else None


def reward_view(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """A reward model's rewards of chosen against rejected answers and its agreement per annotator; a policy's KL
    from its base. None for other runs."""
    tuned = evaluation.get("details", {}).get("tuned", {})
    if "rewards" not in tuned and "kl_to_base_per_token" not in tuned:
        return None
    chart = None
    if "rewards" in tuned:
        counts = {name: tuned["rewards"][name]["histogram"] for name in ("chosen", "rejected")}
        chart = histograms("rewards of held-out answers", tuned["bin_edges"], counts, "reward")
    return {"chart": chart, "annotators": tuned.get("annotators", {}), "kl": tuned.get("kl_to_base_per_token")}


def confusion_view(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The tuned classifier's confusion matrix with each cell's share of its true class (for the shading)."""
    matrix = evaluation.get("details", {}).get("tuned", {}).get("confusion_matrix")
    if not matrix:
        return None
    rows = []
    for label, counts in zip(matrix["labels"], matrix["rows"], strict=True):
        total = sum(counts) or 1
        rows.append((label, [(c, c / total) for c in counts], sum(counts)))
    return {"labels": matrix["labels"], "rows": rows}


def _redactor(config: dict[str, Any]) -> Any:
    """How the page shows the test inputs: masked as predictions.jsonl's texts are (see predictions.redactor)."""
    privacy = PrivacyConfig.model_validate(config.get("privacy") or {})
    return redactor(privacy, bool((config.get("evaluate") or {}).get("show_personal_data", False)))


def examples(run_dir: Path, evaluation: dict[str, Any], redact: Any = str) -> dict[str, Any] | None:
    """A handful of test examples side by side: for generated answers, those where the models answered
    differently (the tuned model's regressions first, then its biggest and smallest gains in turn, so the page
    shows what it learned and what it still gets wrong); for a classifier, its most confident mistakes. None when
    the run saved no predictions."""
    path = run_dir / PREDICTIONS
    if not path.is_file():
        return None
    predictions = read_jsonl(path)
    models = list(evaluation.get("models", {}))
    if predictions and "probabilities" in predictions[0]:
        return _classifier_examples(predictions)
    if not predictions or not all(m in predictions[0] for m in models):
        return None
    inputs = _inputs(split_path(run_dir, evaluation.get("split", "test")), len(predictions))
    differing = [i for i, row in enumerate(predictions) if len({row[m] for m in models}) > 1]
    metric, gains = _telling_metric(predictions, differing, models[0])
    worse = sorted((g, i) for g, i in zip(gains, differing, strict=True) if g < 0)[:2]
    rest = sorted(((g, i) for g, i in zip(gains, differing, strict=True) if g >= 0), key=lambda d: (-d[0], d[1]))
    chosen = worse + [rest.pop(0 if k % 2 == 0 else -1) for k in range(min(len(rest), EXAMPLES - len(worse)))]
    shown = []
    for gain, i in chosen:
        row = predictions[i]
        scores = row.get("scores", {})
        shown.append(
            {
                "index": i + 1,
                "source": row.get("source"),
                "input": _cut(redact(inputs[i])) if i < len(inputs) else "",
                "reference": _cut(row["reference"]),
                "answers": [(m, _cut(row[m]), scores.get(m, {}).get(metric) if metric else None) for m in models],
                "gain": gain,
            }
        )
    return {"kind": "text", "metric": metric, "differing": len(differing), "total": len(predictions), "rows": shown}


def _telling_metric(
    predictions: list[dict[str, Any]], rows: list[int], baseline: str
) -> tuple[str | None, list[float]]:
    """The per-example metric whose tuned-minus-baseline change varies most over `rows` (a metric every answer
    gains the same on, like json_valid after tuning, tells the examples apart least), and those changes."""
    names = list(predictions[0].get("scores", {}).get(TUNED, {})) if predictions else []
    best: tuple[float, str | None, list[float]] = (-1.0, None, [0.0] * len(rows))
    for name in names:
        gains = [
            predictions[i]["scores"][TUNED][name] - predictions[i]["scores"].get(baseline, {}).get(name, 0.0)
            for i in rows
        ]
        spread = float(np.var(gains)) if gains else 0.0
        if spread > best[0]:
            best = (spread, name, gains)
    return best[1], best[2]


def _classifier_examples(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    mistakes = [p for p in predictions if p["prediction"] != p["reference"]]
    mistakes.sort(key=lambda p: -max(p["probabilities"].values()))
    rows = [
        {
            "source": p.get("source"),
            "input": _cut(p["text"]),
            "reference": p["reference"],
            "prediction": p["prediction"],
            "confidence": max(p["probabilities"].values()),
            "probabilities": p["probabilities"],
        }
        for p in mistakes[:EXAMPLES]
    ]
    return {"kind": "class", "wrong": len(mistakes), "total": len(predictions), "rows": rows}


def _inputs(split_path: Path, n: int) -> list[str]:
    """What each scored example asked: the last user message before the answer (chat records)."""
    if not split_path.is_file():
        return []
    texts = []
    for row in read_jsonl(split_path)[:n]:
        messages = row.get("messages") or []
        users = [m["content"] for m in messages[:-1] if m.get("role") == "user"]
        texts.append(users[-1] if users else "")
    return texts


def _cut(text: Any) -> str:
    text = str(text)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f" … ({len(text) - SHOWN_CHARS} more characters)"


def training_view(run_dir: Path) -> dict[str, Any] | None:
    """Training curves (loss, learning rate, tokens/s, validation metrics) from metrics.jsonl, and its totals."""
    path = run_dir / METRICS
    if not path.is_file():
        return None
    by_step: dict[int, dict[str, Any]] = {}
    for row in read_jsonl(path):
        if isinstance(row.get("step"), int):
            by_step[row["step"]] = row  # a resumed run logs its steps again: the last entry wins
    rows = [by_step[s] for s in sorted(by_step)]
    if not rows:
        return None

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(float(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
        return [p[0] for p in points], [p[1] for p in points]

    losses = {"train": series("loss")}
    val_keys = sorted({k for r in rows for k in r if k.startswith("val_")})
    losses.update({k.removeprefix("val_").replace("loss", "validation", 1): series(k) for k in val_keys if "loss" in k})
    positive = [y for _, ys in losses.values() for y in ys if y > 0]
    charts = [curve("loss", losses, "cross-entropy", log_y=bool(positive) and max(positive) > 20 * min(positive))]
    other_val = {k: series(k) for k in val_keys if "loss" not in k}
    if other_val:
        charts.append(curve("validation metrics (generated answers)", other_val, "score"))
    if any("reward" in r for r in rows):  # reinforcement learning: the reward, and what it cost
        rewards = {"sampled answers": series("reward"), "held-out (greedy)": series("val_reward")}
        charts.append(curve("reward", {k: v for k, v in rewards.items() if v[0]}, "mean reward"))
        charts.append(curve("KL to the starting model", {"KL per token": series("kl")}, "nats", from_zero=True))
        charts.append(
            curve("answers", {"tokens": series("answer_tokens"), "entropy": series("entropy")}, "", from_zero=True)
        )
    charts.append(curve("learning rate", {"lr": series("lr")}, "learning rate", from_zero=True))
    charts.append(curve("throughput", {"tokens/s": series("tokens_per_s")}, "tokens per second", from_zero=True))
    speeds = series("tokens_per_s")[1]
    val_losses = series("val_loss")[1]
    return {
        "charts": charts,
        "steps": rows[-1]["step"],
        "epochs": rows[-1].get("epoch"),
        "seconds": rows[-1].get("elapsed_s"),
        "final_loss": rows[-1].get("loss"),
        "best_val_loss": min(val_losses) if val_losses else None,
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
    }
