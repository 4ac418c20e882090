"""The serving engine: one base model, any number of adapters on it, one generation at a time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.errors import RunError
from tuneforge.generation import Completion, Messages, SamplingParams, generate, stream, use_adapter
from tuneforge.models import load_adapter, load_model, load_tokenizer, pick_device
from tuneforge.train.checkpoint import MODEL_DIR, RUN_INFO


@dataclass(frozen=True)
class ServedModel:
    """A model id clients can ask for, and the adapter behind it (None: the base model)."""

    id: str
    adapter: str | None
    created: int


class Engine:
    """Loads the base model once, attaches each run's adapter, and serialises generation."""

    def __init__(self, run_dirs: list[Path]) -> None:
        if not run_dirs:
            raise RunError("no run directory to serve", "pass at least one run directory, e.g. runs/contracts")
        infos = [_run_info(d) for d in run_dirs]
        bases = {i["base_model"] for i in infos}
        if len(bases) > 1:
            raise RunError(
                f"the runs were trained on different base models {sorted(bases)}",
                "serve runs of one base model per server",
            )
        self.base_id = bases.pop()
        self.tokenizer = load_tokenizer(self.base_id, infos[0].get("revision"))
        model = load_model(self.base_id, infos[0].get("revision"), device=pick_device())
        now = int(time.time())
        self.models: dict[str, ServedModel] = {}
        for run_dir, info in zip(run_dirs, infos, strict=True):
            name = info.get("run") or run_dir.name
            if name in self.models:
                raise RunError(f"two runs are named {name!r}", "serve runs with different names")
            model = load_adapter(model, run_dir / MODEL_DIR, name)
            self.models[name] = ServedModel(name, name, int((run_dir / MODEL_DIR).stat().st_mtime))
        self.models[self.base_id] = ServedModel(self.base_id, None, now)
        self.model = model.eval()
        self.default_id = next(iter(self.models))
        self._lock = threading.Lock()

    def complete(self, model_id: str, messages: Messages, params: SamplingParams) -> Completion:
        """One whole answer."""
        with self._lock, use_adapter(self.model, self.models[model_id].adapter):
            return generate(self.model, self.tokenizer, [messages], params)[0]

    def stream(self, model_id: str, messages: Messages, params: SamplingParams) -> Iterator[str | Completion]:
        """Text pieces, then the final Completion; holds the model for the whole answer."""
        with self._lock, use_adapter(self.model, self.models[model_id].adapter):
            yield from stream(self.model, self.tokenizer, messages, params)


def _run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MODEL_DIR / RUN_INFO
    if not path.is_file():
        raise RunError(
            f"{run_dir} has no trained model ({path} missing)", f"train it first: `tuneforge train {run_dir}`"
        )
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if info.get("task") == "classify":
        raise RunError(
            f"{run_dir} holds a classifier (train.task=classify): it answers with class probabilities, not chat",
            f"score texts with `tuneforge evaluate {run_dir}` (predictions.jsonl holds the probabilities)",
        )
    if not info.get("adapter", True):
        raise RunError(
            f"{run_dir} holds a whole fine-tuned model (train.method={info.get('method')}), not an adapter; the "
            "server attaches adapters to one base model",
            "train with train.method=lora or dora to serve the result; the whole model folder "
            f"({run_dir / MODEL_DIR}) also works as model.name of a new run",
        )
    return info
