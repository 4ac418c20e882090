"""A reward model's parity: the merged model with its one-output head through
`transformers.pipeline("text-classification", function_to_apply="none")` (the raw score, as TRL and vLLM's reward
task read it) against tuneforge's own rewards of the run's held-out conversations, chosen and rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from tuneforge.data.tokenize import render
from tuneforge.export.parity import LOSSLESS_TOLERANCE, SHOWN, Parity
from tuneforge.export.runs import Run
from tuneforge.rundir import read_jsonl, split_path
from tuneforge.train.reward import REWARD, pair_rewards
from tuneforge.train.tasks import TaskContext


def check_reward_model(run: Run, model: Any, tokenizer: Any, out: Path, limit: int) -> Parity:
    """Compare the pipeline's raw scores with tuneforge's rewards on up to `limit` test pairs (both answers)."""
    from transformers import pipeline

    cfg = run.cfg
    path = split_path(cfg.run_dir, "test")
    rows = read_jsonl(path)[:limit]
    pairs = REWARD.load(path, tokenizer, TaskContext.of(cfg))[: len(rows)]
    ours = pair_rewards(model, pairs, cfg.evaluate.batch_size, int(tokenizer.pad_token_id), "cpu")
    texts = [
        render(tokenizer, r["prompt"] + r[side], False, r.get("tools")) for r in rows for side in ("chosen", "rejected")
    ]
    score = pipeline("text-classification", model=str(out), tokenizer=str(out), device=-1)
    found = cast(list[dict[str, Any]], score(texts, function_to_apply="none", add_special_tokens=False))
    theirs = np.array([d["score"] for d in found]).reshape(-1, 2)
    result = Parity("transformers.pipeline(text-classification, raw score)", len(rows), same_prompt=len(rows))
    same = np.sign(ours[:, 0] - ours[:, 1]) == np.sign(theirs[:, 0] - theirs[:, 1])
    result.same_answers = int(same.sum())
    result.max_logprob_diff = float(np.max(np.abs(ours - theirs))) if len(rows) else 0.0
    result.metrics["pair_accuracy"] = {
        "tuneforge": round(float((ours[:, 0] > ours[:, 1]).mean()), 4),
        "export": round(float((theirs[:, 0] > theirs[:, 1]).mean()), 4),
    }
    for i in np.flatnonzero(~same)[:SHOWN]:
        result.examples.append(
            {"pair": int(i), "tuneforge": ours[i].round(4).tolist(), "export": theirs[i].round(4).tolist()}
        )
    if result.max_logprob_diff > LOSSLESS_TOLERANCE:
        result.problems.append(
            f"rewards differ by up to {result.max_logprob_diff:.3g} (tolerance {LOSSLESS_TOLERANCE:g}): the pipeline "
            "does not see the tuned reward model (head, chat template or padding differ)"
        )
    return result
