"""The `multitask` task: several chat datasets (data.datasets), one per task, trained into one model.

Every record carries its task's name (prepare writes it). The training split is resampled once into a mix with
task shares ~ weight x size^(1/T) (`data.datasets[].weight`, `train.mixture_temperature`): T=1 keeps the
natural proportions, a larger T lifts small tasks, a weight of 2 doubles a task's share. A task drawn more
often than it has examples repeats them in shuffled rounds. Validation stays as it is, and its loss is
reported per task (val_loss_<task> in metrics.jsonl), so a task that gets worse is seen.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.data.tokenize import Encoded, encode_chat
from tuneforge.train.lm import collate, loss_sum, loss_tokens, pack
from tuneforge.train.tasks import Task, TaskContext, register, rows_with


@dataclass
class TaskExample(Encoded):
    """An encoded chat example and the task it belongs to."""

    task: str = ""


def load_multitask(path: Path, tokenizer: Any, context: TaskContext) -> list[TaskExample]:
    """Encode a prepared split of tagged chat records (packed per task when train.packing)."""
    rows = rows_with(
        path, "task", "tagged multitask records", "prepare the run again with data.datasets and train.task=multitask"
    )
    by_task: dict[str, list[Encoded]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(encode_chat(tokenizer, row["messages"], row.get("tools")))
    out: list[TaskExample] = []
    for name, examples in by_task.items():
        if context.train.packing:
            examples = pack(examples, context.data.max_seq_len)
        out += [TaskExample(e.input_ids, e.labels, e.position_ids, task=name) for e in examples]
    return out


def shares(sizes: dict[str, int], weights: dict[str, float], temperature: float) -> dict[str, float]:
    """Each task's share of the training mix: ~ weight x size^(1/temperature), summing to 1."""
    raw = {t: weights.get(t, 1.0) * n ** (1 / temperature) for t, n in sizes.items() if n}
    total = sum(raw.values())
    return {t: v / total for t, v in raw.items()}


def mix(examples: list[TaskExample], context: TaskContext) -> list[TaskExample]:
    """The training split resampled to the configured task shares (as many examples as it holds)."""
    by_task: dict[str, list[TaskExample]] = defaultdict(list)
    for e in examples:
        by_task[e.task].append(e)
    weights = {d.name: d.weight for d in context.data.datasets}
    share = shares({t: len(v) for t, v in by_task.items()}, weights, context.train.mixture_temperature)
    rng = random.Random(context.train.seed)
    out: list[TaskExample] = []
    for task in sorted(share):
        want, pool = max(1, round(share[task] * len(examples))), by_task[task]
        drawn: list[TaskExample] = []
        while len(drawn) < want:  # whole shuffled rounds: no example repeats before every other was drawn
            drawn += rng.sample(pool, len(pool))
        out += drawn[:want]
    return out


MULTITASK = register(
    "multitask",
    Task(
        load_multitask,
        collate,
        loss_sum,
        loss_tokens,
        mix=mix,
        group=lambda e: e.task,
    ),
)
