"""The forgetting guard: a small general-ability probe scored for the base and the tuned model.

The probe ships with tuneforge (`probes/general.json`, written for this project): easy general-knowledge questions
and plain prose, in English and German. Fine-tuning on a narrow task can erode what the base model could do
(catastrophic forgetting); the probe shows it as two numbers: the perplexity of the prose (does the model still read
ordinary language?) and the share of questions answered right (does it still answer them?). When either worsens
by more than `evaluate.forgetting_threshold`, the report warns and suggests mixing general data back in (replay).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from tuneforge.config import RunConfig
from tuneforge.generation import SamplingParams, use_adapter
from tuneforge.metrics import normalize

PROBE = Path(__file__).parent / "probes" / "general.json"
ANSWER_TOKENS = 24
SUFFIX = {"en": " Answer in a few words.", "de": " Antworte in wenigen Worten."}


def load_probe() -> dict[str, Any]:
    """The shipped probe: {"questions": [{lang, question, accept}], "texts": [{lang, text}]}."""
    probe: dict[str, Any] = json.loads(PROBE.read_text(encoding="utf-8"))
    return probe


def answered(answer: str, accept: list[str]) -> bool:
    """Whether the answer contains one of the accepted answers as whole words (after normalising)."""
    text = f" {normalize(answer)} "
    return any(f" {normalize(a)} " in text for a in accept)


def prompts(probe: dict[str, Any]) -> list[list[dict[str, str]]]:
    """The probe questions as one-turn chats."""
    return [[{"role": "user", "content": q["question"] + SUFFIX[q["lang"]]}] for q in probe["questions"]]


@torch.no_grad()
def perplexities(model: Any, tokenizer: Any, texts: list[dict[str, str]], max_len: int) -> dict[str, float]:
    """Token-weighted perplexity of the texts, over all and per language."""
    device = next(model.parameters()).device
    sums: dict[str, list[float]] = {}
    for item in texts:
        ids = tokenizer(item["text"], return_tensors="pt").input_ids[:, :max_len].to(device)
        loss = float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        n = ids.shape[1] - 1
        for key in ("all", item["lang"]):
            total, count = sums.setdefault(key, [0.0, 0.0])
            sums[key] = [total + loss * n, count + n]
    return {key: round(math.exp(min(total / count, 50.0)), 3) for key, (total, count) in sums.items()}


def accuracies(answers: list[str], probe: dict[str, Any]) -> dict[str, float]:
    """The share of probe questions answered right, over all and per language."""
    hits: dict[str, list[int]] = {}
    for answer, q in zip(answers, probe["questions"], strict=True):
        for key in ("all", q["lang"]):
            right, count = hits.setdefault(key, [0, 0])
            hits[key] = [right + answered(answer, q["accept"]), count + 1]
    return {key: round(right / count, 4) for key, (right, count) in hits.items()}


def verdict(scores: dict[str, dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Compare tuned with base: the relative rise of perplexity, the fall of accuracy, and a warning with a replay
    suggestion when either is above `threshold` (a share: 0.1 = perplexity up 10%, or accuracy down 0.1)."""
    base, tuned = scores["base"], scores["tuned"]
    rise = tuned["perplexity"]["all"] / base["perplexity"]["all"] - 1
    fall = base["accuracy"]["all"] - tuned["accuracy"]["all"]
    worst = max(rise, fall)
    result: dict[str, Any] = {
        "perplexity_change": round(rise, 4),
        "accuracy_change": round(-fall, 4),
        "threshold": threshold,
        "warning": None,
    }
    if worst > threshold:
        share = 0.1 if worst <= 2 * threshold else 0.25
        what = []
        if rise > threshold:
            what.append(f"general-text perplexity rose {100 * rise:.1f}%")
        if fall > threshold:
            what.append(f"general questions answered right fell by {fall:.2f}")
        result["replay_share"] = share
        result["warning"] = (
            f"possible forgetting: {' and '.join(what)} (threshold {threshold:g}); mix general chat data back in "
            f"(replay): e.g. data.datasets with your task and a general instruction set at about "
            f"{100 * share:.0f}% of the training examples (weight {share / (1 - share):.2f} beside your task's 1.0), "
            f"train.task=multitask, or train fewer epochs or with a lower learning rate"
        )
    return result


def forgetting_check(cfg: RunConfig, models: dict[str, Any], tokenizer: Any, answer: Any) -> dict[str, Any] | None:
    """Score the probe for base and tuned (`answer(variant, prompts, params)` generates, reusing saved answers);
    None when it does not apply (switched off, or no base model to compare with)."""
    if not cfg.evaluate.forgetting or "base" not in models:
        return None
    probe = load_probe()
    params = SamplingParams(max_new_tokens=ANSWER_TOKENS)
    scores: dict[str, dict[str, Any]] = {}
    answers: dict[str, list[str]] = {}
    for variant in ("base", "tuned"):
        model = models[variant]
        with use_adapter(model, None if variant == "base" else variant, merge=True):
            ppl = perplexities(model, tokenizer, probe["texts"], cfg.data.max_seq_len)
            answers[variant] = answer(f"probe-{variant}", model, prompts(probe), params)
        scores[variant] = {"perplexity": ppl, "accuracy": accuracies(answers[variant], probe)}
    return {
        "probe": {"questions": len(probe["questions"]), "texts": len(probe["texts"])},
        "models": scores,
        **verdict(scores, cfg.evaluate.forgetting_threshold),
        "examples": changed_answers(probe, answers["base"], answers["tuned"]),
    }


def changed_answers(probe: dict[str, Any], base: list[str], tuned: list[str], limit: int = 6) -> list[dict[str, Any]]:
    """Probe questions one model answered right and the other did not: the tuned model's losses first."""
    rows = []
    for q, before, after in zip(probe["questions"], base, tuned, strict=True):
        right = answered(before, q["accept"]), answered(after, q["accept"])
        if right[0] != right[1]:
            rows.append(
                {
                    "question": q["question"],
                    "base": before,
                    "tuned": after,
                    "base_right": right[0],
                    "tuned_right": right[1],
                }
            )
    rows.sort(key=lambda r: r["tuned_right"])  # stable: losses first, each group in probe order
    return rows[:limit]


def forgetting_summary(check: dict[str, Any]) -> str:
    """The forgetting check in two lines of text, for the terminal."""
    base, tuned = check["models"]["base"], check["models"]["tuned"]
    probe = check["probe"]
    line = (
        f"forgetting check ({probe['questions']} general questions, {probe['texts']} texts, English and German): "
        f"perplexity {base['perplexity']['all']:.2f} -> {tuned['perplexity']['all']:.2f} "
        f"({100 * check['perplexity_change']:+.1f}%), answered right {base['accuracy']['all']:.2f} -> "
        f"{tuned['accuracy']['all']:.2f} ({check['accuracy_change']:+.2f})"
    )
    if check["warning"]:
        return f"{line}\nwarning: {check['warning']}"
    return f"{line}: within the threshold ({check['threshold']:g})"
