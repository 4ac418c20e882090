"""What the feedback routes serve: reward models (train.task=reward runs) and one annotation session, whose two
answers per prompt come from a served model through the engine."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from tuneforge.data.records import Messages
from tuneforge.feedback import Annotation, Item
from tuneforge.feedback.session import Sampler
from tuneforge.generation import SamplingParams
from tuneforge.rundir import MODEL_DIR, RUN_INFO
from tuneforge.serve.engine import ServingEngine
from tuneforge.train.rewards import RewardModel


def is_reward_model(run_dir: Path) -> bool:
    """Whether a run directory holds a trained reward model (train.task=reward)."""
    info = run_dir / MODEL_DIR / RUN_INFO
    return info.is_file() and json.loads(info.read_text(encoding="utf-8")).get("task") == "reward"


class RewardService:
    """Reward models by name (their run directory's), each loaded on its first request."""

    def __init__(self, run_dirs: list[Path]) -> None:
        self.models = {d.resolve().name: RewardModel.at(str(d)) for d in run_dirs}
        self._lock = threading.Lock()  # one scoring at a time: the models are not thread-safe while loading

    def score(self, name: str, prompts: list[Messages], answers: list[str]) -> list[float]:
        """The reward of each answer to its prompt."""
        with self._lock:
            return [self.models[name].score(p, [a])[0] for p, a in zip(prompts, answers, strict=True)]


def engine_sampler(engine: ServingEngine, model_id: str, temperature: float, max_new_tokens: int) -> Sampler:
    """Two answers per prompt from a served model, each sampled with its own seed (drawn from the prompt's)."""

    def sample(prompt: Messages, seed: int) -> list[str]:
        answers: list[str] = []
        for k in range(2):
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed + 7919 * k)
            answers.append(engine.complete(model_id, prompt, params).text)
        return answers

    return sample


class AnnotationService:
    """One annotation session of the web UI; items are found by id when a judgement comes back."""

    def __init__(self, session: Annotation) -> None:
        self.session = session
        self.items = {item.id: item for item in session.items}
        self._lock = threading.Lock()  # sampling a new item's answers happens once, whoever asks first

    def next_item(self, annotator: str) -> Item | None:
        with self._lock:
            return self.session.next_item(annotator)
