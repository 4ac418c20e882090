"""The evaluation's generated answers, reused from runs/<name>/generations.json while nothing that decides them
changed (base model, trained weights, prompts, sampling settings, batch size)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.generation import SamplingParams, generate_texts
from tuneforge.rundir import GENERATIONS, atomic_write_json


class GenerationCache:
    """Answers generated earlier (runs/<name>/generations.json, compare/answers.json), each under a key of
    everything that decides them: reused when the key matches, replaced when it does not; `extra` keeps what was
    measured while generating them (the bake-off's timings)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.saved: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            self.saved = {}  # a damaged cache is only a cache: generate again

    def get(self, variant: str, key: str, n: int) -> list[str] | None:
        """The `n` saved answers of `variant` under `key`, or None."""
        entry = self.entry(variant, key, n)
        return None if entry is None else [str(o) for o in entry["outputs"]]

    def entry(self, variant: str, key: str, n: int) -> dict[str, Any] | None:
        """The saved entry (outputs and extra) of `variant` under `key` with `n` answers, or None."""
        entry = self.saved.get(variant)
        if not isinstance(entry, dict) or entry.get("key") != key or len(entry.get("outputs", [])) != n:
            return None
        return entry

    def put(self, variant: str, key: str, outputs: list[str], extra: dict[str, Any] | None = None) -> None:
        """Save `variant`'s answers under `key` (replacing what was there), written atomically at once."""
        self.saved[variant] = {"key": key, "outputs": outputs, **(extra or {})}
        atomic_write_json(self.path, self.saved)


Answerer = Callable[[str, Any, list[Any], SamplingParams], list[str]]


def answerer(cfg: RunConfig, tokenizer: Any, folders: dict[str, Path], log: Any) -> Answerer:
    """answer(name, model, prompts, params): the model's answers, reused from generations.json when nothing that
    decides them changed (`name`: a variant, or probe-<variant>; `folders`: each variant's trained weights)."""
    cache = GenerationCache(cfg.run_dir / GENERATIONS)

    def answer(name: str, model: Any, prompts: list[Any], params: SamplingParams) -> list[str]:
        key = generation_key(cfg, folders.get(name.removeprefix("probe-")), prompts, params)
        saved = cache.get(name, key, len(prompts))
        if saved is not None:
            log(f"{name}: reusing its {len(prompts)} saved answers (same model, prompts and settings)")
            return saved
        outputs = generate_texts(model, tokenizer, prompts, params, cfg.evaluate.batch_size, name)
        cache.put(name, key, outputs)
        return outputs

    return answer


def generation_key(cfg: RunConfig, trained: Path | None, prompts: list[Any], params: SamplingParams) -> str:
    """A hash of what decides a variant's answers: the base model and the `trained` weights on it (their files'
    names, sizes and times), the prompts, the sampling settings and the batch size (padding changes greedy answers
    in the last decimals of the logits)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([cfg.model.name, cfg.model.revision, asdict(params), cfg.evaluate.batch_size]).encode())
    digest.update(json.dumps(prompts, sort_keys=True).encode())
    digest.update(str(trained.resolve() if trained else None).encode())
    for folder in [Path(cfg.model.name)] + ([trained] if trained else []):
        for file in sorted(folder.glob("*")) if folder.is_dir() else []:
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]
