"""Helpers the tests share (imported as `from helpers import ...`); the fixtures live in conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository


def chat(user: str, answer: str, system: str | None = None) -> dict[str, object]:
    """One chat example as a JSONL row."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def toy_rows(n: int) -> list[dict[str, object]]:
    """A learnable toy task: answer the colour of a numbered item with a fixed JSON shape."""
    colours = ["red", "green", "blue", "black"]
    return [chat(f"Item {i}: what colour?", json.dumps({"item": i, "colour": colours[i % 4]})) for i in range(n)]


def review_rows(n_pos: int, n_neg: int) -> list[dict[str, str]]:
    """A learnable sentiment task (German and English): the label follows from a few words."""
    good = ["great", "excellent", "wunderbar", "love it", "sehr gut"]
    bad = ["broken", "terrible", "kaputt", "refund", "schlecht"]
    pos = [f"Order {i}: {good[i % 5]}, arrived on day {i % 7}." for i in range(n_pos)]
    neg = [f"Order {i}: {bad[i % 5]}, arrived on day {i % 7}." for i in range(n_neg)]
    return [{"text": t, "label": "pos"} for t in pos] + [{"text": t, "label": "neg"} for t in neg]


def full_logits_loss(model, batch):
    """Summed next-token cross-entropy over the model's whole logits: what tuneforge's faster losses replace."""
    import torch.nn.functional as F

    from tuneforge.data.tokenize import IGNORE_INDEX

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
