"""predictions.jsonl: every scored example beside its reference and each model's answer, with personal data masked
where the data still hold it.

With privacy.mode=report (the default) prepare counts personal data but leaves it in the splits, so the test inputs,
references and answers would reach predictions.jsonl and report.html as they are. Both mask what the detector finds
there ([EMAIL], [PHONE], ...) unless evaluate.show_personal_data asks for the raw text. With mask, pseudonymize or drop
the splits hold none to begin with; with privacy.mode=off nothing is looked for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.config import PrivacyConfig, RunConfig
from tuneforge.data.privacy import detect, mask
from tuneforge.rundir import PREDICTIONS, write_jsonl

KEPT = frozenset({"source", "task"})  # fields that are the run's own words (file:line, task name), never masked


def redactor(privacy: PrivacyConfig, show_personal_data: bool) -> Callable[[str], str]:
    """How a text of the data (or an answer to it) is shown: masked where privacy.mode=report left personal data in
    the splits, unless show_personal_data; else as it is."""
    if privacy.mode != "report" or show_personal_data:
        return lambda text: text
    types = tuple(privacy.types)
    return lambda text: mask(text, detect(text, types))


def write_predictions(cfg: RunConfig, rows: list[dict[str, Any]]) -> Path:
    """Write runs/<name>/predictions.jsonl, every text field passed through the run's `redactor`."""
    shown = redactor(cfg.privacy, cfg.evaluate.show_personal_data)
    path = cfg.run_dir / PREDICTIONS
    write_jsonl(
        path, [{k: shown(v) if isinstance(v, str) and k not in KEPT else v for k, v in r.items()} for r in rows]
    )
    return path
