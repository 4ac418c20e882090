"""Evaluating the language-model tasks (sft, pretrain, multitask): losses and perplexities of the held-out splits
(per task for multitask) and, for chat tasks, generated answers scored by evaluate.metrics, with bootstrap intervals
and tuned-vs-base significance."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tuneforge.config import RunConfig
from tuneforge.data.records import chat_prompts
from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.evaluation.forgetting import forgetting_check
from tuneforge.evaluation.generations import Answerer
from tuneforge.evaluation.predictions import write_predictions
from tuneforge.evaluation.scores import EvalReport, chosen_metrics
from tuneforge.generation import SamplingParams, use_adapter
from tuneforge.metrics import LOSS_METRICS, json_extraction
from tuneforge.models import device_of
from tuneforge.rundir import split_path
from tuneforge.train.lm import token_logps
from tuneforge.train.tasks import TASKS, Task, TaskContext


def evaluate_language_model(
    cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, answer: Answerer
) -> EvalReport:
    """Score every model on the split's losses and (chat tasks) on its generated answers; write predictions.jsonl."""
    task = TASKS[cfg.train.task]
    prompts, references = chat_prompts(rows) if task.generative else ([], [])
    params = SamplingParams(
        max_new_tokens=cfg.evaluate.max_new_tokens,
        temperature=cfg.evaluate.temperature,
        top_p=cfg.evaluate.top_p,
        seed=cfg.train.seed if cfg.evaluate.temperature > 0 else None,
    )
    report = EvalReport(cfg.evaluate.split, len(rows))
    outputs: dict[str, list[str]] = {}
    losses: dict[str, dict[str, np.ndarray]] = {}  # split (or split_group) -> variant -> (summed loss, tokens) rows
    loss_sets = _loss_sets(cfg, tokenizer)
    for variant, model in models.items():
        with use_adapter(model, None if variant == "base" else variant, merge=True):
            for split, encoded in loss_sets.items():
                _split_losses(losses, split, variant, model, task, encoded, cfg, int(tokenizer.pad_token_id))
            if task.generative:
                outputs[variant] = answer(variant, model, prompts, params)
    for name in sorted(losses, key=lambda n: (not n.startswith("val"), n)):  # val before the scored split
        per_split = {f"{name}_{measure}": metric for measure, metric in LOSS_METRICS.items()}
        rows_of = {variant: list(split_rows) for variant, split_rows in losses[name].items()}
        report.score(per_split, rows_of, [None] * len(next(iter(rows_of.values()))), cfg.evaluate.bootstrap)
    if task.generative:
        _score_answers(cfg, report, rows, outputs, references)
    report.forgetting = forgetting_check(cfg, models, tokenizer, answer)
    return report


def _split_losses(
    losses: dict[str, dict[str, np.ndarray]],
    split: str,
    variant: str,
    model: Any,
    task: Task,
    encoded: list[Any],
    cfg: RunConfig,
    pad_id: int,
) -> None:
    """Add one model's per-example losses on one split to `losses`, for the split and (multitask) each task."""
    split_rows = example_losses(model, task, encoded, cfg.evaluate.batch_size, pad_id, device_of(model))
    groups = np.array([task.group(e) if task.group else "" for e in encoded])
    for group in [""] + sorted(set(groups) - {""}):
        name = f"{split}_{group}" if group else split
        losses.setdefault(name, {})[variant] = split_rows[groups == group] if group else split_rows


def _score_answers(
    cfg: RunConfig,
    report: EvalReport,
    rows: list[dict[str, Any]],
    outputs: dict[str, list[str]],
    references: list[str],
) -> None:
    """Score the generated answers (per field too, for JSON extraction) and write them to predictions.jsonl."""
    metrics = chosen_metrics(cfg)
    report.score(metrics, outputs, references, cfg.evaluate.bootstrap)
    variants = list(outputs)
    if any(name.startswith(("json", "field")) for name in metrics):
        for variant in variants:
            per_field = json_extraction(outputs[variant], references)["field_accuracy"]
            report.details[variant] = {"field_accuracy": {k: round(v, 4) for k, v in per_field.items()}}
    write_predictions(
        cfg,
        [
            {
                "source": r.get("source"),
                **({"task": r["task"]} if "task" in r else {}),
                "reference": ref,
                **{v: outputs[v][i] for v in variants},
                "scores": {
                    v: {name: round(float(values[i]), 4) for name, values in report.per_example.get(v, {}).items()}
                    for v in variants
                },
            }
            for i, (r, ref) in enumerate(zip(rows, references, strict=True))
        ],
    )


@torch.no_grad()
def example_losses(model: Any, task: Any, examples: list[Any], batch_size: int, pad_id: int, device: str) -> np.ndarray:
    """(summed loss, loss tokens) of each example of a language-model task, in order: a split's loss is the ratio of
    their sums (what `group_losses` computes in batches), and resampling the rows gives its interval."""
    was_training = model.training
    model.eval()
    rows: list[tuple[float, float]] = []
    for start in range(0, len(examples), batch_size):
        batch = task.collate(examples[start : start + batch_size], pad_id).to(device)
        tokens = (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
        rows += zip((-token_logps(model, batch)).tolist(), tokens.tolist(), strict=True)
    model.train(was_training)
    return np.array(rows, dtype=float).reshape(-1, 2)


def _loss_sets(cfg: RunConfig, tokenizer: Any) -> dict[str, list[Any]]:
    """Encoded examples of the validation split (when there is one) and of the scored split, for their losses."""
    paths = {s: split_path(cfg.run_dir, s) for s in dict.fromkeys(["val", cfg.evaluate.split])}
    load, context = TASKS[cfg.train.task].load, TaskContext.of(cfg)
    return {
        s: load(p, tokenizer, context)[: cfg.evaluate.limit]
        for s, p in paths.items()
        if p.is_file() and p.stat().st_size
    }
