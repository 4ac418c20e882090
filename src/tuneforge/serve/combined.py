"""Every kind of run behind one server: the adapters of one base model (the chat engine), whole fine-tuned models
(full or freeze training: one engine each, a model of its own in memory) and classifiers, as one ServingEngine that
sends each model id to what serves it. Whole models cost their full size each: they are counted before any loads,
and what does not fit in the memory available is refused with the figures."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from safetensors import safe_open

from tuneforge.errors import RunError
from tuneforge.generation import Completion, Messages, SamplingParams
from tuneforge.rundir import MODEL_DIR, RUN_INFO
from tuneforge.serve.classifiers import ClassifierEngine
from tuneforge.serve.engine import Engine, ServedModel, ServingEngine

MEMORY_SHARE = 0.8  # of the available memory, whole models may take at most this share together
FP32 = 4  # bytes per parameter as served (whole models load in fp32)


def is_whole_model(run_dir: Path) -> bool:
    """Whether a chat run trained the whole model (full or freeze) rather than an adapter."""
    info = Path(run_dir) / MODEL_DIR / RUN_INFO
    return info.is_file() and not json.loads(info.read_text(encoding="utf-8")).get("adapter", True)


def serving_bytes(run_dir: Path) -> int:
    """The memory a whole model takes served: its parameters, in fp32, counted from the safetensors headers."""
    total = 0
    for path in sorted((Path(run_dir) / MODEL_DIR).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118  # safe_open is no mapping
                shape = weights.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= int(size)
                total += count * FP32
    return total


def load_whole_models(run_dirs: list[Path], max_batch: int) -> dict[str, tuple[ServingEngine, Path]]:
    """An engine per whole fine-tuned model (and its run directory), by run name; refused before any loads when
    they do not fit."""
    needs = {Path(d): serving_bytes(Path(d)) for d in run_dirs}
    available = psutil.virtual_memory().available
    if sum(needs.values()) > MEMORY_SHARE * available:
        each = ", ".join(f"{d.name} {n / 2**30:.2f} GiB" for d, n in needs.items())
        raise RunError(
            f"the {len(needs)} whole fine-tuned model(s) need {sum(needs.values()) / 2**30:.2f} GiB served ({each}); "
            f"{available / 2**30:.2f} GiB is available and at most {MEMORY_SHARE:.0%} of it is used",
            "serve fewer whole models per server, or train LoRA adapters (all served on one base model)",
        )
    engines: dict[str, tuple[ServingEngine, Path]] = {}
    for run_dir in needs:
        info = json.loads((run_dir / MODEL_DIR / RUN_INFO).read_text(encoding="utf-8"))
        name = str(info.get("run") or run_dir.name)
        if name in engines:
            raise RunError(f"two runs are named {name!r}", "serve runs with different names")
        engines[name] = (Engine([], max_batch, base=str(run_dir / MODEL_DIR)), run_dir)
    return engines


class CombinedEngine:
    """The chat engine (if any), whole models and classifiers as one ServingEngine (see the module); fine-tuning
    jobs' adapters go to the chat engine."""

    def __init__(
        self,
        chat: ServingEngine | None,
        classifiers: ClassifierEngine | None = None,
        whole: dict[str, tuple[ServingEngine, Path]] | None = None,
    ) -> None:
        self.chat, self.classifiers = chat, classifiers
        self.whole = {name: engine for name, (engine, _) in (whole or {}).items()}
        self._whole_models = {
            name: ServedModel(name, None, int((folder / MODEL_DIR).stat().st_mtime), folder)
            for name, (_, folder) in (whole or {}).items()
        }
        first = next(iter(self.models), "")
        self.base_id = chat.base_id if chat is not None else first
        self.default_id = chat.default_id if chat is not None else first
        self.batch_sizes: Counter[int] = chat.batch_sizes if chat is not None else Counter()
        self.context_length = chat.context_length if chat is not None else None

    @property
    def models(self) -> dict[str, ServedModel]:
        chat = self.chat.models if self.chat is not None else {}
        classifiers = self.classifiers.models if self.classifiers is not None else {}
        return {**chat, **self._whole_models, **classifiers}

    def _route(self, model_id: str) -> tuple[ServingEngine | None, str]:
        """The engine that answers as `model_id`, and the id it knows it by (None: the classifiers)."""
        if self.classifiers is not None and model_id in self.classifiers.models:
            return None, model_id
        if model_id in self.whole:
            return self.whole[model_id], self.whole[model_id].base_id
        if self.chat is None:
            raise RunError(f"no model {model_id!r} is served here", "list the models with GET /v1/models")
        return self.chat, model_id

    def prompt_tokens(self, messages: Messages, at_most: int) -> int | None:
        engine = self.chat or next(iter(self.whole.values()), None)
        return engine.prompt_tokens(messages, at_most) if engine is not None else None

    def text_tokens(self, text: str) -> int:
        engine = self.chat or next(iter(self.whole.values()), None)
        return engine.text_tokens(text) if engine is not None else len(text.split())

    def complete(self, model_id: str, messages: Messages, params: SamplingParams) -> Completion:
        engine, name = self._route(model_id)
        if engine is None:
            assert self.classifiers is not None
            return self.classifiers.answer(model_id, messages)
        return engine.complete(name, messages, params)

    def stream(self, model_id: str, messages: Messages, params: SamplingParams) -> Iterator[str | Completion]:
        engine, name = self._route(model_id)
        if engine is None:
            assert self.classifiers is not None
            done = self.classifiers.answer(model_id, messages)
            yield done.text
            yield done
            return
        yield from engine.stream(name, messages, params)

    def add_adapter(self, model_id: str, folder: Path, adapter: str | None = None, run_dir: Path | None = None) -> Any:
        if self.chat is None or not hasattr(self.chat, "add_adapter"):
            raise RunError("this server has no chat model to attach an adapter to", "serve a chat run or --model")
        return self.chat.add_adapter(model_id, folder, adapter=adapter, run_dir=run_dir)

    def remove(self, model_id: str) -> None:
        if self.chat is not None and hasattr(self.chat, "remove"):
            self.chat.remove(model_id)

    def close(self) -> None:
        for engine in [self.chat, *self.whole.values()]:
            if engine is not None:
                engine.close()
        if self.classifiers is not None:
            self.classifiers.close()
