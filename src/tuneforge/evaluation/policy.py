"""Evaluating a policy trained by reinforcement learning (train.task=grpo): the base and the tuned model answer the
held-out prompts, and every answer gets the run's own reward (train.rewards, each part too), with bootstrap
intervals and the tuned-vs-base test; where the prompts carry reference answers, evaluate.metrics score them as
well. The KL divergence of the tuned model from the base along the tuned model's answers says how far RL moved it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tuneforge.config import RunConfig
from tuneforge.data.records import Messages
from tuneforge.data.tokenize import IGNORE_INDEX, Encoded, encode_prompt
from tuneforge.evaluation.forgetting import forgetting_check
from tuneforge.evaluation.generations import Answerer
from tuneforge.evaluation.predictions import write_predictions
from tuneforge.evaluation.scores import TUNED, EvalReport, chosen_metrics
from tuneforge.generation import SamplingParams, use_adapter
from tuneforge.metrics import Metric
from tuneforge.models import device_of
from tuneforge.train.lm import collate, labelled_logits
from tuneforge.train.rewards import combined_rewards, reward_functions


def _mean(values: Any, _: Any) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _itself(value: float, _: Any) -> float:
    return float(value)


def policy_prompts(rows: list[dict[str, Any]]) -> tuple[list[Messages], list[str | None]]:
    """Each chat row's prompt (the conversation without its final answer) and that answer, if it has one."""
    prompts: list[Messages] = []
    references: list[str | None] = []
    for row in rows:
        messages = row["messages"]
        answered = messages[-1]["role"] == "assistant"
        prompts.append(messages[:-1] if answered else messages)
        references.append(messages[-1]["content"] if answered else None)
    return prompts, references


def evaluate_policy(
    cfg: RunConfig, models: dict[str, Any], rows: list[dict[str, Any]], tokenizer: Any, answer: Answerer
) -> EvalReport:
    """Score the base and the tuned model's answers with the run's reward (and evaluate.metrics where the prompts
    have references); write predictions.jsonl."""
    prompts, references = policy_prompts(rows)
    params = SamplingParams(
        max_new_tokens=cfg.evaluate.max_new_tokens,
        temperature=cfg.evaluate.temperature,
        top_p=cfg.evaluate.top_p,
        seed=cfg.train.seed if cfg.evaluate.temperature > 0 else None,
    )
    outputs: dict[str, list[str]] = {}
    for variant, model in models.items():
        with use_adapter(model, None if variant == "base" else variant, merge=True):
            outputs[variant] = answer(variant, model, prompts, params)
    rewards = answer_rewards(cfg, tokenizer, prompts, references, outputs)
    report = EvalReport(cfg.evaluate.split, len(rows))
    metrics = {name: Metric("text", _mean, _itself, f"mean {name}") for name in next(iter(rewards.values()))}
    report.score(metrics, {v: list(rewards[v]["reward"]) for v in outputs}, [0.0] * len(rows), cfg.evaluate.bootstrap)
    for name in metrics:  # each part with its interval, under the same test
        if name != "reward":
            report.score(
                {name: metrics[name]},
                {v: list(rewards[v][name]) for v in outputs},
                [0.0] * len(rows),
                cfg.evaluate.bootstrap,
            )
    known = [r for r in references if r is not None]
    if len(known) == len(references):
        report.score(chosen_metrics(cfg), outputs, known, cfg.evaluate.bootstrap)
    if "base" in models and TUNED in models:
        kl = kl_to_start(models, tokenizer, prompts, outputs[TUNED], cfg.evaluate.batch_size)
        report.details[TUNED] = {"kl_to_base_per_token": round(kl, 5)}
    _write(cfg, rows, references, outputs, report)
    report.forgetting = forgetting_check(cfg, models, tokenizer, answer)
    return report


def answer_rewards(
    cfg: RunConfig,
    tokenizer: Any,
    prompts: list[Messages],
    references: list[str | None],
    outputs: dict[str, list[str]],
) -> dict[str, dict[str, np.ndarray]]:
    """variant -> {"reward": the weighted sum, "reward_<name>": each part} per answer."""
    functions = reward_functions(cfg.train)
    variants = list(outputs)
    out: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for i, (prompt, reference) in enumerate(zip(prompts, references, strict=True)):
        answers = [outputs[v][i] for v in variants]
        tokens = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]
        total, parts = combined_rewards(functions, cfg.train.rewards, prompt, answers, reference, tokens)
        for k, v in enumerate(variants):
            out[v].setdefault("reward", []).append(float(total[k]))
            if len(parts) > 1:
                for name, values in parts.items():
                    out[v].setdefault(f"reward_{name}", []).append(float(values[k]))
    return {v: {name: np.array(values) for name, values in scores.items()} for v, scores in out.items()}


@torch.no_grad()
def kl_to_start(
    models: dict[str, Any], tokenizer: Any, prompts: list[Messages], answers: list[str], batch_size: int
) -> float:
    """Mean over the tuned model's answers of the per-token KL(tuned || base), summed over the whole vocabulary at
    each answer position: how far the policy moved from where it started, where it now goes."""
    ends = tokenizer.eos_token_id
    rows = []
    for prompt, text in zip(prompts, answers, strict=True):
        ids = encode_prompt(tokenizer, prompt)
        answer_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [ends]
        rows.append(Encoded(ids + answer_ids, [IGNORE_INDEX] * len(ids) + answer_ids))
    per_answer: list[float] = []
    pad = int(tokenizer.pad_token_id)
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad)
        logps = {}
        for variant in ("base", TUNED):
            model = models[variant]
            with use_adapter(model, None if variant == "base" else TUNED):
                logits, _, which = labelled_logits(model, batch.to(device_of(model)))
            logps[variant] = torch.log_softmax(logits.float(), -1)
        kl = (logps[TUNED].exp() * (logps[TUNED] - logps["base"])).sum(-1)
        sums = torch.zeros(batch.input_ids.size(0)).index_add(0, which.cpu(), kl.cpu())
        counts = torch.zeros(batch.input_ids.size(0)).index_add(0, which.cpu(), torch.ones_like(kl.cpu()))
        per_answer += (sums / counts.clamp_min(1)).tolist()
    return float(np.mean(per_answer)) if per_answer else 0.0


def _write(
    cfg: RunConfig,
    rows: list[dict[str, Any]],
    references: list[str | None],
    outputs: dict[str, list[str]],
    report: EvalReport,
) -> None:
    variants = list(outputs)
    write_predictions(
        cfg,
        [
            {
                "source": r.get("source"),
                "reference": ref or "",
                **{v: outputs[v][i] for v in variants},
                "scores": {
                    v: {name: round(float(values[i]), 4) for name, values in report.per_example.get(v, {}).items()}
                    for v in variants
                },
            }
            for i, (r, ref) in enumerate(zip(rows, references, strict=True))
        ],
    )
