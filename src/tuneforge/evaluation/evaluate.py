"""The evaluate stage: base vs tuned on the same held-out split, saved to eval.json and predictions.jsonl."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tuneforge.config import RunConfig
from tuneforge.errors import RunError
from tuneforge.evaluation.metrics import json_extraction, perplexity
from tuneforge.generation import SamplingParams, generate, use_adapter
from tuneforge.models import load_adapter, load_model, load_tokenizer, pick_device
from tuneforge.rundir import atomic_write_json, read_jsonl, require, write_jsonl
from tuneforge.train.checkpoint import MODEL_DIR
from tuneforge.train.classify import class_labels
from tuneforge.train.tasks import TASKS, group_losses

TUNED = "tuned"


@dataclass
class EvalReport:
    """Scores per model ('base', 'tuned') on one split."""

    split: str
    n: int
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "n": self.n, "models": self.scores, "seconds": round(self.seconds, 2)}


def evaluate(cfg: RunConfig, log: Any = print) -> EvalReport:
    """Score the tuned model (and the base model) of a run on its held-out split, as its task is scored."""
    run_dir = cfg.run_dir
    split_path = require(run_dir, f"data/{cfg.evaluate.split}.jsonl", "prepare")
    model_dir = require(run_dir, MODEL_DIR, "train")
    rows = read_jsonl(split_path)[: cfg.evaluate.limit]
    if not rows:
        raise RunError(f"{split_path} holds no examples", f"prepare the data with data.{cfg.evaluate.split}_size > 0")
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    models = _models(cfg, model_dir)
    start = time.perf_counter()
    report = EVALUATORS.get(cfg.train.task, _language_model)(cfg, models, rows, tokenizer)
    report.seconds = time.perf_counter() - start
    atomic_write_json(run_dir / "eval.json", report.to_json())
    return report


def _language_model(cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> EvalReport:
    """sft, pretrain, multitask: losses and perplexities (per task for multitask) and, for chat tasks, generated
    answers (with JSON extraction scores when evaluate.task=json)."""
    task = TASKS[cfg.train.task]
    generative = task.generative
    prompts = [_prompt(r["messages"]) for r in rows] if generative else []
    references = [r["messages"][-1]["content"] for r in rows] if generative else []
    loss_sets = _loss_sets(cfg, tokenizer)
    params = SamplingParams(max_new_tokens=cfg.evaluate.max_new_tokens)
    report = EvalReport(cfg.evaluate.split, len(rows))
    outputs: dict[str, list[str]] = {}
    variants = [v for v in ("base", TUNED) if v in models]
    pad_id = int(tokenizer.pad_token_id)
    for variant in variants:
        scores: dict[str, Any] = {}
        model = models[variant]
        with use_adapter(model, None if variant == "base" else TUNED, merge=True):
            for split, encoded in loss_sets.items():
                losses = group_losses(model, task, encoded, cfg, cfg.evaluate.batch_size, pad_id, _device(model))
                for group, loss in sorted(losses.items()):
                    name = f"{split}_{group}" if group else split
                    scores[f"{name}_loss"], scores[f"{name}_perplexity"] = round(loss, 4), round(perplexity(loss), 3)
            outputs[variant] = _predict(model, tokenizer, prompts, params, cfg.evaluate.batch_size, variant)
        if cfg.evaluate.task == "json" and generative:
            scores.update(json_extraction(outputs[variant], references))
        report.scores[variant] = scores
    if generative:
        write_jsonl(
            cfg.run_dir / "predictions.jsonl",
            [
                {
                    "source": r.get("source"),
                    **({"task": r["task"]} if "task" in r else {}),
                    "reference": ref,
                    **{v: outputs[v][i] for v in variants},
                }
                for i, (r, ref) in enumerate(zip(rows, references, strict=True))
            ],
        )
    return report


def _classifier(cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> EvalReport:
    """classify: accuracy and macro F1 from the head's probabilities, beside always answering the most frequent
    training class (the base model has no trained head to compare with); probabilities go to predictions.jsonl."""
    from sklearn.metrics import accuracy_score, f1_score

    from tuneforge.train.classify import class_labels, probabilities

    labels = class_labels(cfg)
    examples = TASKS["classify"].load(cfg.run_dir / "data" / f"{cfg.evaluate.split}.jsonl", tokenizer, cfg)
    examples = examples[: len(rows)]
    model = models[TUNED]
    with use_adapter(model, TUNED, merge=True):
        probs = probabilities(model, examples, cfg.evaluate.batch_size, int(tokenizer.pad_token_id), _device(model))
    truth = [e.label for e in examples]
    predicted = probs.argmax(1).tolist()
    train_counts = Counter(str(r["label"]) for r in read_jsonl(cfg.run_dir / "data" / "train.jsonl"))
    majority = labels.index(max(labels, key=lambda label: train_counts[label]))
    report = EvalReport(cfg.evaluate.split, len(rows))
    every = list(range(len(labels)))
    for name, guess in (("majority", [majority] * len(truth)), (TUNED, predicted)):
        report.scores[name] = {
            "accuracy": round(float(accuracy_score(truth, guess)), 4),
            "macro_f1": round(float(f1_score(truth, guess, labels=every, average="macro", zero_division=0)), 4),
        }
    write_jsonl(
        cfg.run_dir / "predictions.jsonl",
        [
            {
                "source": r.get("source"),
                "text": r["text"],
                "reference": labels[t],
                "prediction": labels[g],
                "probabilities": {label: round(float(p), 5) for label, p in zip(labels, row, strict=True)},
            }
            for r, t, g, row in zip(rows, truth, predicted, probs, strict=True)
        ],
    )
    return report


def _preference(cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any) -> EvalReport:
    """dpo: how often each model gives the chosen answer a higher log-probability per token than the rejected one
    (per token: a longer answer is not penalised for its length), the mean margin per token, and (tuned against
    base as the reference) the DPO loss and reward accuracy."""
    from tuneforge.train.dpo import answer_logps
    from tuneforge.train.lm import loss_tokens

    pairs = TASKS["dpo"].load(cfg.run_dir / "data" / f"{cfg.evaluate.split}.jsonl", tokenizer, cfg)[: len(rows)]
    pad_id = int(tokenizer.pad_token_id)
    logps: dict[str, np.ndarray] = {}
    for variant in [v for v in ("base", TUNED) if v in models]:
        model = models[variant]
        with use_adapter(model, None if variant == "base" else TUNED, merge=True):
            logps[variant] = np.array(answer_logps(model, pairs, cfg.evaluate.batch_size, pad_id, _device(model)))
    report = EvalReport(cfg.evaluate.split, len(rows))
    lengths = np.array([[max(loss_tokens(p.chosen), 1), max(loss_tokens(p.rejected), 1)] for p in pairs])
    for variant, values in logps.items():
        per_token = values / lengths
        margin = per_token[:, 0] - per_token[:, 1]
        report.scores[variant] = {
            "pair_accuracy": round(float((margin > 0).mean()), 4),
            "mean_margin": round(float(margin.mean()), 4),
        }
    if "base" in logps:
        rewards = (logps[TUNED] - logps["base"]) * cfg.train.dpo_beta
        gap = rewards[:, 0] - rewards[:, 1]
        report.scores[TUNED]["reward_accuracy"] = round(float((gap > 0).mean()), 4)
        report.scores[TUNED]["dpo_loss"] = round(float(np.logaddexp(0, -gap).mean()), 4)
    return report


EVALUATORS: dict[str, Callable[[RunConfig, dict[str, Any], list[dict[str, Any]], Any], EvalReport]] = {
    "classify": _classifier,
    "dpo": _preference,
}


def _device(model: Any) -> str:
    return str(next(model.parameters()).device.type)


def _models(cfg: RunConfig, model_dir: Path) -> dict[str, Any]:
    """The model behind each variant: one base model with the adapter switched on and off, or (after full or
    freeze training) the base model and the saved whole model. A classifier has no base variant (no head)."""
    device = pick_device()
    task = TASKS[cfg.train.task]
    labels = class_labels(cfg) if task.head == "classifier" else None
    compare = cfg.evaluate.compare_base and labels is None
    if (model_dir / "adapter_config.json").is_file():
        base = load_model(cfg.model.name, cfg.model.revision, device=device, labels=labels)
        model = load_adapter(base, model_dir, TUNED).eval()
        return {"base": model, TUNED: model} if compare else {TUNED: model}
    models = {TUNED: load_model(str(model_dir), device=device, head=task.head).eval()}
    if compare:
        models["base"] = load_model(cfg.model.name, cfg.model.revision, device=device).eval()
    return models


def _loss_sets(cfg: RunConfig, tokenizer: Any) -> dict[str, list[Any]]:
    """Encoded examples of the validation split (when there is one) and of the scored split, for their losses."""
    splits = dict.fromkeys(["val", cfg.evaluate.split])
    paths = {s: cfg.run_dir / "data" / f"{s}.jsonl" for s in splits}
    load = TASKS[cfg.train.task].load
    return {
        s: load(p, tokenizer, cfg)[: cfg.evaluate.limit] for s, p in paths.items() if p.is_file() and p.stat().st_size
    }


def _prompt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its last assistant answer."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def _predict(
    model: Any, tokenizer: Any, prompts: list[Any], params: SamplingParams, batch_size: int, label: str
) -> list[str]:
    texts: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=f"generate ({label})", unit="batch", dynamic_ncols=True):
        texts += [c.text for c in generate(model, tokenizer, prompts[start : start + batch_size], params)]
    return texts


def summary_rows(report: EvalReport) -> list[tuple[str, list[str]]]:
    """(metric, [value per model]) rows for a side-by-side table, in a stable order."""
    models = list(report.scores)
    losses = [k for k in report.scores[models[-1]] if k.endswith(("_loss", "_perplexity"))]
    keys = losses + ["json_valid", "exact_match", "mean_field_accuracy", "accuracy", "macro_f1"]
    keys += ["pair_accuracy", "mean_margin", "reward_accuracy", "dpo_loss"]
    rows = [(k, [_fmt(report.scores[m].get(k)) for m in models]) for k in keys if k in report.scores[models[-1]]]
    fields = report.scores[models[-1]].get("field_accuracy", {})
    rows += [(f"  {f}", [_fmt(report.scores[m]["field_accuracy"].get(f)) for m in models]) for f in fields]
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
