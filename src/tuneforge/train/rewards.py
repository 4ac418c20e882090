"""The rewards of reinforcement learning (train.task=grpo): a weighted sum of a reward model's score and
verifiable rewards.

`train.rewards` maps names to weights. 'model' is the score of a trained reward model (train.task=reward, see
reward.py) on the prompt and answer; 'regex' and 'length' check the answer alone; every other name is an evaluate
metric scored per answer against the example's reference answer (json_valid, field_accuracy, exact_match, a user's
module:function), so what evaluation measures is what RL can optimise, with no second definition.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.config import TrainConfig
from tuneforge.data.records import Messages
from tuneforge.errors import ConfigError, ModelError
from tuneforge.metrics import resolve
from tuneforge.models import load_trained, pick_device
from tuneforge.rundir import MODEL_DIR, RUN_INFO
from tuneforge.train.reward import conversation_ids, score_conversations

# (prompt, answers, reference, answer tokens) -> one reward per answer
RewardFn = Callable[[Messages, list[str], str | None, list[int]], list[float]]


@dataclass
class RewardModel:
    """A trained reward model (its run's model folder), loaded on first use."""

    folder: Path
    batch_size: int = 8
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False)

    @classmethod
    def at(cls, named: str) -> RewardModel:
        """The reward model a run directory or model folder holds; refused when it holds another kind of model."""
        path = Path(named)
        folder = path / MODEL_DIR if (path / MODEL_DIR).is_dir() else path
        info_path = folder / RUN_INFO
        if not info_path.is_file():
            raise ConfigError(
                f"train.reward_model is {named}, which holds no trained model ({info_path} is missing)",
                "train one first: train.task=reward on preference pairs (docs/rlhf.md), then name runs/<name>",
            )
        task = json.loads(info_path.read_text(encoding="utf-8")).get("task")
        if task != "reward":
            raise ConfigError(
                f"train.reward_model is {named}, a train.task={task} model, not a reward model",
                "name a run trained with train.task=reward",
            )
        return cls(folder)

    def load(self) -> tuple[Any, Any]:
        """The model (eval mode) and its tokenizer."""
        if self._loaded is None:
            self._loaded = load_trained(self.folder, pick_device(), labels=["reward"])
        return self._loaded

    def score(self, prompt: Messages, answers: list[str]) -> list[float]:
        """The reward of each answer to `prompt`."""
        model, tokenizer = self.load()
        rows = [conversation_ids(tokenizer, prompt, [{"role": "assistant", "content": a}], None) for a in answers]
        device = str(next(model.parameters()).device)
        return score_conversations(model, rows, self.batch_size, int(tokenizer.pad_token_id), device)


def _metric_reward(name: str, base: Path | None) -> RewardFn:
    metric = resolve(name, base)
    if metric.kind != "text" or metric.per_example is None:
        raise ConfigError(
            f"train.rewards names {name!r}, which is not scored per answer",
            "use a per-answer metric (json_valid, field_accuracy, exact_match, token_f1, rougeL) or model/regex/length",
        )
    per_example = metric.per_example

    def reward(prompt: Messages, answers: list[str], reference: str | None, tokens: list[int]) -> list[float]:
        if reference is None:
            raise ConfigError(
                f"train.rewards uses {name!r}, which compares answers with a reference answer, and a prompt has none",
                "give every prompt its reference answer (chat data ending with the assistant's answer)",
            )
        return [float(per_example(a, reference)) for a in answers]

    return reward


def reward_functions(train: TrainConfig, base: Path | None = None) -> dict[str, RewardFn]:
    """Each reward of train.rewards as a function (the reward model is loaded on its first call)."""
    functions: dict[str, RewardFn] = {}
    for name in train.rewards:
        if name == "model":
            assert train.reward_model is not None  # the config refuses 'model' without it
            functions[name] = _model_reward(RewardModel.at(train.reward_model))
        elif name == "regex":
            functions[name] = _regex_reward(_compiled(train.reward_regex or ""))
        elif name == "length":
            functions[name] = _length_reward(train.reward_length_budget)
        else:
            functions[name] = _metric_reward(name, base)
    return functions


def _model_reward(model: RewardModel) -> RewardFn:
    def reward(prompt: Messages, answers: list[str], reference: str | None, tokens: list[int]) -> list[float]:
        return model.score(prompt, answers)

    return reward


def _regex_reward(pattern: re.Pattern[str]) -> RewardFn:
    def reward(prompt: Messages, answers: list[str], reference: str | None, tokens: list[int]) -> list[float]:
        return [float(pattern.search(a) is not None) for a in answers]

    return reward


def _length_reward(budget: int) -> RewardFn:
    def reward(prompt: Messages, answers: list[str], reference: str | None, tokens: list[int]) -> list[float]:
        return [min(1.0, budget / max(n, 1)) for n in tokens]

    return reward


def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"train.reward_regex {pattern!r} is not a valid regular expression: {exc}", "fix it"
        ) from None


def combined_rewards(
    functions: dict[str, RewardFn],
    weights: dict[str, float],
    prompt: Messages,
    answers: list[str],
    reference: str | None,
    tokens: list[int],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The weighted sum of every reward for each answer, and each reward on its own (for the logs)."""
    parts = {
        name: np.asarray(fn(prompt, answers, reference, tokens), dtype=np.float64) for name, fn in functions.items()
    }
    for name, values in parts.items():
        if not np.all(np.isfinite(values)):
            raise ModelError(f"the reward {name!r} returned {values.tolist()}", "a reward must be a finite number")
    total = sum((weights[name] * values for name, values in parts.items()), np.zeros(len(answers)))
    return total, parts
