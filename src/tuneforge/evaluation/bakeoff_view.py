"""The report's bake-off section, from compare.json (written by `tuneforge compare`): the advice, one row per
approach (quality with intervals, latency, tokens, costs), the pairwise significance matrix, a chart, the examples
where the approaches disagree most, and every approach's prompt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.evaluation.charts import score_bars
from tuneforge.evaluation.stats import paired
from tuneforge.metrics import lower_is_better
from tuneforge.rundir import COMPARE

SHOWN_CHARS = 1500  # longer answers are cut on the page (compare/predictions.jsonl keeps them whole)
PROMPT_CHARS = 6000  # a prompt with retrieved passages is long; compare/prompts.jsonl keeps it whole


def bakeoff_view(run_dir: Path) -> dict[str, Any] | None:
    """What the page shows of compare.json, or None when the run has no bake-off."""
    path = run_dir / COMPARE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged compare.json loses its section, not the whole page
    approaches: dict[str, Any] = data.get("approaches") or {}
    metric = data.get("metric")
    names = list(approaches)
    advice = data.get("advice") or {}
    findings = advice.get("findings", [])
    return {
        "data": data,
        "names": names,
        "metric": metric,
        "lower_is_better": bool(metric and lower_is_better(metric)),
        "metrics": data.get("metrics") or [],
        "recommendation": next((f["text"] for f in findings if f["rule"] == "recommendation"), None),
        "fired": [f for f in findings if f["fired"] and f["rule"] != "recommendation"],
        "quiet": [f for f in findings if not f["fired"]],
        "matrix": _matrix(names, data.get("pairs") or {}),
        "chart": _chart(approaches, metric, data.get("metrics") or []),
        "examples": [_cut_example(e) for e in data.get("disagreements") or []],
        "prompts": [(name, _prompt_text(row.get("example_prompt") or {})) for name, row in approaches.items()],
    }


def _matrix(names: list[str], pairs: dict[str, Any]) -> list[tuple[str, list[dict[str, Any] | None]]]:
    """Row approach minus column approach on the ranking metric, for every ordered pair that was compared."""
    return [(a, [paired(pairs, b, a) if a != b else None for b in names]) for a in names]


def _chart(approaches: dict[str, Any], metric: str | None, metrics: list[str]) -> str | None:
    """Bars of the 0-1 metrics per approach with their intervals (the ranking metric first)."""
    scores = {name: row.get("scores", {}) for name, row in approaches.items()}
    intervals = {name: row.get("intervals", {}) for name, row in approaches.items()}
    shown = [
        m
        for m in dict.fromkeys(([metric] if metric else []) + metrics)
        if scores and all(isinstance(s.get(m), int | float) and 0.0 <= s[m] <= 1.0 for s in scores.values())
    ][:4]
    return score_bars(shown, list(scores), scores, intervals) if shown else None


def _cut(text: Any) -> str:
    text = str(text)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f" … ({len(text) - SHOWN_CHARS} more characters)"


def _cut_example(example: dict[str, Any]) -> dict[str, Any]:
    return {
        **example,
        "input": _cut(example.get("input", "")),
        "reference": _cut(example.get("reference", "")),
        "answers": {name: {**a, "text": _cut(a.get("text", ""))} for name, a in example.get("answers", {}).items()},
    }


def _prompt_text(prompt: dict[str, Any]) -> str:
    """A prompt as the model got it, one message per block (or the fixed answer given without the model)."""
    parts = [f"[{m.get('role')}]\n{m.get('content')}" for m in prompt.get("messages", [])]
    if prompt.get("answer") is not None:
        parts.append(f"[answered without the model]\n{prompt['answer']}")
    text = "\n\n".join(parts)
    return (
        text if len(text) <= PROMPT_CHARS else text[:PROMPT_CHARS] + f" … ({len(text) - PROMPT_CHARS} more characters)"
    )
