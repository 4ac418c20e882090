"""The `best_of_n` task: rejection-sampling fine-tuning, the cheaper alternative to reinforcement learning (Llama 2's
rejection sampling; RAFT, Dong et al., 2023).

Before the first step, the starting model samples train.num_generations answers to every prompt of the training and
validation splits, the run's reward (train.rewards, as for grpo) scores them, and the best answer of each prompt is
kept (none where even the best scores below train.best_of_n_min_reward); then the model is fine-tuned on those
answers exactly as `sft` trains (loss on the answer tokens). No sampling during training and no KL term: one
generation pass, then ordinary supervised steps. The picks go to runs/<name>/best_of_n.jsonl (every sample with its
reward), which a resumed run reads back instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tuneforge.data.tokenize import IGNORE_INDEX, Encoded
from tuneforge.errors import TrainingError, TuneforgeError
from tuneforge.generation import eos_ids
from tuneforge.rundir import atomic_write_text
from tuneforge.train.grpo import Prompt, load_grpo, longest_rows, sample
from tuneforge.train.lm import collate as collate_rows
from tuneforge.train.lm import loss_sum, loss_tokens
from tuneforge.train.rewards import combined_rewards
from tuneforge.train.tasks import Batch, Task, TaskContext, register

PICKS = "best_of_n.jsonl"


@dataclass
class Picked:
    """A prompt and, once sampled and scored, its best answer as a supervised example."""

    prompt: Prompt
    example: Encoded | None = None


def load_best_of_n(path: Path, tokenizer: Any, context: TaskContext) -> list[Picked]:
    """The prompts of a prepared chat split (answers, if any, are references for the rewards)."""
    return [Picked(p) for p in load_grpo(path, tokenizer, context)]


def collate(examples: list[Picked], pad_id: int) -> Batch:
    """The best answers as supervised rows (before they are picked: stand-ins of the longest they may be)."""
    return collate_rows([e.example or longest_rows(e.prompt, 1)[0] for e in examples], pad_id)


def _length(e: Picked) -> int:
    """The example's tokens once picked; before, the prompt's and the longest answer's."""
    return len(e.example.input_ids) if e.example is not None else e.prompt.tokens // e.prompt.policy.generations


def pick_best(
    model: Any, splits: dict[str, list[Picked]], context: TaskContext, device: str, pad_id: int, fresh: bool, log: Any
) -> None:
    """Sample, score and keep each prompt's best answer (fresh run), or read the picks back (resumed run); prompts
    without a pick leave the splits."""
    train = context.train
    path = context.run_dir / PICKS
    settings = ("rewards", "reward_model", "reward_regex", "reward_length_budget", "num_generations",
                "generation_temperature", "max_completion_length", "best_of_n_min_reward", "seed")  # fmt: skip
    key = _fingerprint(splits, json.dumps({k: getattr(train, k) for k in settings}, sort_keys=True))
    if fresh:
        rows = []
        for name, examples in splits.items():
            rows += _sample_split(model, name, examples, train, log)
        atomic_write_text(path, json.dumps({"fingerprint": key}) + "\n" + "".join(json.dumps(r) + "\n" for r in rows))
    else:
        rows = _read_picks(path, key)
    best = {(r["split"], r["index"]): r for r in rows}
    for name, examples in splits.items():
        for i, e in enumerate(examples):
            row = best.get((name, i))
            if row is not None and row["kept"]:
                ids, answer = e.prompt.input_ids, row["answer_ids"]
                e.example = Encoded(ids + answer, [IGNORE_INDEX] * len(ids) + answer)
        examples[:] = [e for e in examples if e.example is not None]
    if not splits.get("train"):
        raise TrainingError(
            f"no prompt's best answer reached train.best_of_n_min_reward={train.best_of_n_min_reward}",
            "lower train.best_of_n_min_reward, or raise train.num_generations",
        )


def _sample_split(model: Any, name: str, examples: list[Picked], train: Any, log: Any) -> list[dict[str, Any]]:
    """Every prompt's samples and rewards, the best one marked."""
    rows: list[dict[str, Any]] = []
    if not examples:
        return rows
    policy = examples[0].prompt.policy
    ends = eos_ids(policy.tokenizer)
    n = train.num_generations
    log(f"best_of_n: sampling {n} answers to each of {len(examples)} {name} prompts")
    for start in tqdm(range(0, len(examples), 8), desc=f"best of {n} ({name})", unit="batch", leave=False):
        part = examples[start : start + 8]
        answers = sample(model, policy.tokenizer, [e.prompt.input_ids for e in part], n, train)
        for k, e in enumerate(part):
            group = answers[k * n : (k + 1) * n]
            texts = [policy.tokenizer.decode([t for t in a if t not in ends], skip_special_tokens=True) for a in group]
            total, _ = combined_rewards(
                policy.rewards, policy.weights, e.prompt.messages, texts, e.prompt.reference, [len(a) for a in group]
            )
            best = int(np.argmax(total))
            floor = train.best_of_n_min_reward
            rows.append({
                "split": name, "index": start + k, "answer_ids": group[best], "answer": texts[best],
                "reward": float(total[best]), "rewards": [round(float(v), 5) for v in total],
                "kept": floor is None or float(total[best]) >= floor,
            })  # fmt: skip
    kept = [r["reward"] for r in rows if r["kept"]]
    mean_best = float(np.mean(kept)) if kept else 0.0
    everything = float(np.mean([np.mean(r["rewards"]) for r in rows]))
    log(f"best_of_n: {len(kept)} of {len(rows)} {name} prompts kept, mean best reward {mean_best:.4f}")
    log(f"best_of_n: mean reward of all {name} samples {everything:.4f}")
    return rows


def _read_picks(path: Path, key: str) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        found = json.loads(lines[0]).get("fingerprint")
    except (OSError, ValueError, IndexError):
        found = None
    if found != key:
        raise TuneforgeError(
            f"{path} is missing or belongs to other data or settings, and the starting model is gone",
            "train again without --resume",
        )
    return [json.loads(line) for line in lines[1:]]


def _fingerprint(splits: dict[str, list[Picked]], settings: str) -> str:
    digest = hashlib.sha256(settings.encode())
    for name, examples in sorted(splits.items()):
        digest.update(name.encode())
        for e in examples:
            digest.update(json.dumps(e.prompt.input_ids).encode())
    return digest.hexdigest()[:16]


BEST_OF_N = register(
    "best_of_n",
    Task(
        load_best_of_n,
        collate,
        loss_sum,
        lambda e: loss_tokens(e.example) if e.example is not None else 0.0,
        _length,
        setup=pick_best,
    ),
)
