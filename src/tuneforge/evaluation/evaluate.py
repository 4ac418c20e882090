"""The evaluate stage: base vs tuned on the same held-out split, saved to eval.json and predictions.jsonl."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tuneforge.config import RunConfig
from tuneforge.errors import RunError
from tuneforge.evaluation.metrics import json_extraction, perplexity
from tuneforge.generation import SamplingParams, generate, use_adapter
from tuneforge.models import load_adapter, load_model, load_tokenizer, pick_device
from tuneforge.rundir import atomic_write_json, read_jsonl, require, write_jsonl
from tuneforge.train.loop import MODEL_DIR, block_size
from tuneforge.train.tasks import TASKS, mean_loss

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
    """Score the tuned adapter (and the base model) of a run on its held-out split."""
    run_dir = cfg.run_dir
    split_path = require(run_dir, f"data/{cfg.evaluate.split}.jsonl", "prepare")
    adapter_dir = require(run_dir, MODEL_DIR, "train")
    rows = read_jsonl(split_path)[: cfg.evaluate.limit]
    if not rows:
        raise RunError(f"{split_path} holds no examples", f"prepare the data with data.{cfg.evaluate.split}_size > 0")
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    models = _models(cfg, adapter_dir)
    start = time.perf_counter()
    generative = cfg.train.task == "sft"  # pretrain runs are scored by loss and perplexity only
    prompts = [_prompt(r["messages"]) for r in rows] if generative else []
    references = [r["messages"][-1]["content"] for r in rows] if generative else []
    loss_sets = _loss_sets(run_dir, cfg, tokenizer)
    params = SamplingParams(max_new_tokens=cfg.evaluate.max_new_tokens)
    report = EvalReport(cfg.evaluate.split, len(rows))
    outputs: dict[str, list[str]] = {}
    variants = (["base"] if cfg.evaluate.compare_base else []) + [TUNED]
    for variant in variants:
        scores: dict[str, Any] = {}
        model = models[variant]
        with use_adapter(model, None if variant == "base" else TUNED, merge=True):
            for split, encoded in loss_sets.items():
                loss = mean_loss(model, encoded, cfg.evaluate.batch_size, int(tokenizer.pad_token_id))
                scores[f"{split}_loss"], scores[f"{split}_perplexity"] = round(loss, 4), round(perplexity(loss), 3)
            outputs[variant] = _predict(model, tokenizer, prompts, params, cfg.evaluate.batch_size, variant)
        if cfg.evaluate.task == "json" and generative:
            scores.update(json_extraction(outputs[variant], references))
        report.scores[variant] = scores
    report.seconds = time.perf_counter() - start
    if generative:
        write_jsonl(
            run_dir / "predictions.jsonl",
            [
                {"source": r.get("source"), "reference": ref, **{v: outputs[v][i] for v in variants}}
                for i, (r, ref) in enumerate(zip(rows, references, strict=True))
            ],
        )
    atomic_write_json(run_dir / "eval.json", report.to_json())
    return report


def _models(cfg: RunConfig, model_dir: Path) -> dict[str, Any]:
    """The model behind each variant: one base model with the adapter switched on and off, or (after full or
    freeze training) the base model and the saved whole model."""
    device = pick_device()
    if (model_dir / "adapter_config.json").is_file():
        model = load_adapter(load_model(cfg.model.name, cfg.model.revision, device=device), model_dir, TUNED).eval()
        return {"base": model, TUNED: model}
    models = {TUNED: load_model(str(model_dir), device=device).eval()}
    if cfg.evaluate.compare_base:
        models["base"] = load_model(cfg.model.name, cfg.model.revision, device=device).eval()
    return models


def _loss_sets(run_dir: Path, cfg: RunConfig, tokenizer: Any) -> dict[str, list[Any]]:
    """Encoded examples of the validation split (when there is one) and of the scored split, for their losses."""
    splits = dict.fromkeys(["val", cfg.evaluate.split])
    paths = {s: run_dir / "data" / f"{s}.jsonl" for s in splits}
    load, block = TASKS[cfg.train.task], block_size(cfg)
    return {
        s: load(p, tokenizer, block)[: cfg.evaluate.limit] for s, p in paths.items() if p.is_file() and p.stat().st_size
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
    keys = losses + ["json_valid", "exact_match", "mean_field_accuracy"]
    rows = [(k, [_fmt(report.scores[m].get(k)) for m in models]) for k in keys if k in report.scores[models[-1]]]
    fields = report.scores[models[-1]].get("field_accuracy", {})
    rows += [(f"  {f}", [_fmt(report.scores[m]["field_accuracy"].get(f)) for m in models]) for f in fields]
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
