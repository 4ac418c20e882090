"""A classifier's parity: the merged classification model through `transformers.pipeline("text-classification")`
against tuneforge's own class probabilities on the run's held-out texts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np

from tuneforge.export.parity import LOSSLESS_TOLERANCE, SHOWN, Parity
from tuneforge.export.runs import Run
from tuneforge.rundir import read_jsonl, split_path
from tuneforge.train.classify import CLASSIFY, probabilities
from tuneforge.train.tasks import TaskContext


def check_classifier(run: Run, model: Any, tokenizer: Any, out: Path, limit: int) -> Parity:
    """Compare the pipeline's probabilities with tuneforge's on up to `limit` test texts."""
    from transformers import pipeline

    cfg, labels = run.cfg, run.labels or []
    path = split_path(cfg.run_dir, "test")
    rows = read_jsonl(path)[:limit]
    examples = CLASSIFY.load(path, tokenizer, TaskContext.of(cfg))[: len(rows)]
    ours = probabilities(model, examples, cfg.evaluate.batch_size, int(tokenizer.pad_token_id), "cpu")
    classify = pipeline("text-classification", model=str(out), tokenizer=str(out), top_k=None, device=-1)
    texts = [r["text"] for r in rows]
    found = cast(list[list[dict[str, Any]]], classify(texts, truncation=True, max_length=cfg.data.max_seq_len))
    theirs = np.array([[next(d["score"] for d in row if d["label"] == label) for label in labels] for row in found])
    result = Parity("transformers.pipeline(text-classification)", len(rows), same_prompt=len(rows))
    same = ours.argmax(1) == theirs.argmax(1)
    result.same_answers = int(same.sum())
    result.max_logprob_diff = float(np.max(np.abs(np.log(ours + 1e-12) - np.log(theirs + 1e-12)))) if len(rows) else 0
    truth = np.array([e.label for e in examples])
    result.metrics["accuracy"] = {
        "tuneforge": round(float((ours.argmax(1) == truth).mean()), 4),
        "export": round(float((theirs.argmax(1) == truth).mean()), 4),
    }
    for i in np.flatnonzero(~same)[:SHOWN]:
        result.examples.append({"text": rows[i]["text"][:200], "tuneforge": labels[int(ours[i].argmax())],
                                "export": labels[int(theirs[i].argmax())]})  # fmt: skip
    if result.max_logprob_diff > LOSSLESS_TOLERANCE:
        result.problems.append(
            f"class log-probabilities differ by up to {result.max_logprob_diff:.3g} (tolerance "
            f"{LOSSLESS_TOLERANCE:g}): the pipeline does not see the tuned classifier (labels, head or padding differ)"
        )
    return result
