"""Classifier runs (train.task=classify) served beside the chat models: `POST /v1/classifications` answers a label and
every class's probability, and a chat completion on a classifier answers the label of the last user message, with
the probabilities in its `classification` field.

One thread computes, as the chat engine's does (each computing thread keeps an OpenMP pool: see engine.py); texts are
encoded and scored exactly as `tuneforge evaluate` scores them (train/classify.py), with the adapter merged once at
load (a classifier serves one adapter: nothing to switch).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import RunError
from tuneforge.export.runs import open_run, reference_model
from tuneforge.generation import Completion, Messages
from tuneforge.rundir import MODEL_DIR, RUN_INFO
from tuneforge.serve.engine import ServedModel
from tuneforge.train.classify import Labelled, probabilities

BATCH = 16  # texts scored together


@dataclass
class _Classifier:
    model: Any
    tokenizer: Any
    labels: list[str]
    max_tokens: int


@dataclass(frozen=True)
class Classification:
    label: str
    probabilities: dict[str, float]
    tokens: int


def is_classifier(run_dir: Path) -> bool:
    """Whether a run directory holds a trained classifier (its model's tuneforge.json says task classify)."""
    info = Path(run_dir) / MODEL_DIR / RUN_INFO
    return info.is_file() and json.loads(info.read_text(encoding="utf-8")).get("task") == "classify"


class ClassifierEngine:
    """The classifier runs of a server, by run name."""

    def __init__(self, run_dirs: list[Path]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-classify")
        self._classifiers: dict[str, _Classifier] = {}
        self.models: dict[str, ServedModel] = {}
        for run_dir in run_dirs:
            name, classifier = self._pool.submit(_load, Path(run_dir)).result()
            if name in self.models:
                raise RunError(f"two runs are named {name!r}", "serve runs with different names")
            self._classifiers[name] = classifier
            created = int((Path(run_dir) / MODEL_DIR).stat().st_mtime)
            self.models[name] = ServedModel(name, None, created, Path(run_dir))

    def classify(self, model_id: str, texts: list[str]) -> list[Classification]:
        """Each text's label and class probabilities."""
        return self._pool.submit(self._classify, self._classifiers[model_id], texts).result()

    def _classify(self, c: _Classifier, texts: list[str]) -> list[Classification]:
        encoded = c.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=c.max_tokens)["input_ids"]
        examples = [Labelled(list(ids), 0, 1.0) for ids in encoded]
        probs = probabilities(c.model, examples, BATCH, int(c.tokenizer.pad_token_id), "cpu")
        found = []
        for row, ids in zip(probs, encoded, strict=True):
            shares = {label: round(float(p), 6) for label, p in zip(c.labels, row, strict=True)}
            found.append(Classification(c.labels[int(row.argmax())], shares, len(ids)))
        return found

    def answer(self, model_id: str, messages: Messages) -> Completion:
        """A chat answer: the label of the last user message, its probabilities in `classification`."""
        text = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        found = self.classify(model_id, [text])[0]
        return Completion(
            found.label, found.tokens, 1, "stop", {"label": found.label, "probabilities": found.probabilities}
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _load(run_dir: Path) -> tuple[str, _Classifier]:
    """A classifier run's model as evaluation and export load it, its adapter merged once (nothing to switch)."""
    run = open_run(run_dir)
    model, tokenizer = reference_model(run)
    if run.adapter:
        model = model.merge_and_unload()
    return run.cfg.name, _Classifier(model.eval(), tokenizer, run.labels or [], run.cfg.data.max_seq_len)
