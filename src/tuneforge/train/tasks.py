"""Training tasks: a registry from `train.task` to how a prepared split becomes batches and a loss.

A task reads the rows of a prepared split into examples, collates examples into a `Batch`, and sums its loss
over a batch's loss units: tokens for the language-modelling tasks (`sft`, `pretrain`, see lm.py), examples
weighted by class for `classify` (classify.py), preference pairs for `dpo` (dpo.py). The training loop divides
each step's summed loss by the step's units, so gradient accumulation and data parallelism equal one big batch
whatever the task. `multitask` (multitask.py) mixes the language-modelling tasks of several datasets.

A task sees only the config sections it needs: `TaskContext` (the data and train sections and the run directory) to
read a split, and the train section for its loss. The registry is filled by the task modules, which the package's
`__init__` imports.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from tuneforge.config import DataConfig, RunConfig, TrainConfig
from tuneforge.data.labels import class_labels
from tuneforge.data.records import Kind
from tuneforge.errors import DataError
from tuneforge.rundir import read_jsonl


@dataclass
class Batch:
    """Collated examples: padded tensors, the loss units they carry and their real (non-padding) tokens.

    `position_ids` is set for packed rows (several examples in one row, positions restarting at each);
    `extra` holds what a task's loss needs besides (class weights, reference log-probabilities). A `filler`
    batch's loss counts zero: it only keeps processes in step (see `collate_step`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor
    n_loss: float
    n_tokens: int
    position_ids: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    filler: bool = False
    examples: list[Any] = field(default_factory=list)  # what a rollout samples from (grpo's prompts)

    def to(self, device: str) -> Batch:
        """The same batch with its tensors on `device`."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=move(self.attention_mask),
            labels=self.labels.to(device),
            position_ids=move(self.position_ids),
            extra={k: v.to(device) for k, v in self.extra.items()},
        )


@dataclass(frozen=True)
class TaskContext:
    """What a task reads besides the split itself: the data and train config sections, and the run directory
    (the classes of a classifier and DPO's reference log-probabilities live there)."""

    data: DataConfig
    train: TrainConfig
    run_dir: Path

    @classmethod
    def of(cls, cfg: RunConfig) -> TaskContext:
        """The context of a run."""
        return cls(cfg.data, cfg.train, cfg.run_dir)


@dataclass(frozen=True)
class Task:
    """What one `train.task` does with data and model.

    load(path, tokenizer, context) -> examples of a prepared split; collate(examples, pad_id) -> Batch;
    loss(model, batch, train) -> the loss summed over the batch's units; units(example) -> the loss units one
    example carries; length(example) -> its tokens (for length grouping and memory; by default those of its
    `input_ids`); head: the model class; reads: the kind of records its prepared splits hold.
    """

    load: Callable[[Path, Any, TaskContext], list[Any]]
    collate: Callable[[list[Any], int], Batch]
    loss: Callable[[Any, Batch, TrainConfig], torch.Tensor]
    units: Callable[[Any], float]
    length: Callable[[Any], int] = lambda example: len(example.input_ids)
    head: Literal["causal", "classifier"] = "causal"
    reads: Kind = "chat"
    generative: bool = True  # evaluation generates answers (else it scores the head or pairs)
    # setup(model, splits, context, device, pad_id, fresh, log): once before the first step (dpo's reference)
    setup: Callable[[Any, dict[str, list[Any]], TaskContext, str, int, bool, Any], None] | None = None
    mix: Callable[[list[Any], TaskContext], list[Any]] | None = None  # resamples the training split (multitask)
    group: Callable[[Any], str] | None = None  # the group an example is scored under (multitask: its task)
    labels: tuple[str, ...] | None = None  # a head of fixed outputs (reward: one score) instead of data's classes
    # rollout(model, a step's micro-batches, train) -> the micro-batches the loss trains on: samples answers first
    # (grpo), outside autocast
    rollout: Callable[[Any, list[Batch], TrainConfig], list[Batch]] | None = None
    # validate(model, examples, train, device) -> metrics.jsonl fields with the "val_loss" early stopping follows
    validate: Callable[[Any, list[Any], TrainConfig, str], dict[str, float]] | None = None
    stats: Callable[[list[Any]], dict[str, float]] | None = None  # (training split) -> this step's own figures


TASKS: dict[str, Task] = {}


def register(name: str, task: Task) -> Task:
    """Add a task to the registry under `name`."""
    TASKS[name] = task
    return task


def head_labels(context: TaskContext) -> list[str] | None:
    """The outputs of the task's head in order: the classes of a classifier, one score for a reward model; None for
    a language model."""
    task = TASKS[context.train.task]
    if task.head != "classifier":
        return None
    return list(task.labels) if task.labels is not None else class_labels(context.data, context.run_dir)


def rows_with(path: Path, key: str, what: str, hint: str) -> list[dict[str, Any]]:
    """The rows of a prepared split, which must be of the kind the task reads (they carry `key`)."""
    rows = read_jsonl(path)
    if rows and key not in rows[0]:
        raise DataError(f"{path}: the prepared data are not {what} (keys: {sorted(rows[0])})", hint)
    return rows


def step_groups(lengths: list[int], per_step: int, seed: int, by_length: bool) -> list[list[int]]:
    """The example indices of each optimizer step of one epoch; depends only on the lengths and `seed`.

    In random order, or with `by_length` examples of similar length grouped (sorted inside windows of 32 steps,
    then the steps are shuffled), so a batch carries little padding: on the contracts example padding falls from
    13.9% to 1.0% of the tokens. Being a plain list, a resumed run skips the steps it already made without
    building their batches.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = per_step * 32 if by_length else per_step
    groups: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        groups += [chunk[i : i + per_step] for i in range(0, len(chunk), per_step)]
    rng.shuffle(groups)
    return groups


def micro_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Positions of `lengths` (one process's examples of a step) grouped into micro-batches: runs of at most
    `batch_size`, each split further, shortest first, into parts of at most `max_tokens` tokens (rows x the
    longest's length; a part holds at least one example). The summed loss is the same however a step is split."""
    parts: list[list[int]] = []
    for start in range(0, len(lengths), batch_size):
        run = range(start, min(start + batch_size, len(lengths)))
        if max_tokens is None:
            parts.append(list(run))
            continue
        part: list[int] = []
        for i in sorted(run, key=lambda i: lengths[i]):
            if part and (len(part) + 1) * lengths[i] > max_tokens:
                parts.append(part)
                part = []
            part.append(i)
        parts.append(part)
    return parts


def largest_micro_batch(lengths: list[int], batch_size: int, max_tokens: int | None) -> list[int]:
    """Of the micro-batches `lengths` make, the one of most tokens (rows x the longest): the memory peak."""
    parts = micro_batches(lengths, batch_size, max_tokens)
    return max(parts, key=lambda part: len(part) * max(lengths[i] for i in part))


def collate_step(
    task: Task,
    examples: list[Any],
    batch_size: int,
    pad_id: int,
    rank: int = 0,
    world: int = 1,
    max_tokens: int | None = None,
) -> list[Batch]:
    """The micro-batches of process `rank` (of `world`) in one optimizer step over `examples`.

    Its share is every world-th example, cut into `micro_batches`. Every process gets as many micro-batches as
    the largest share needs, since each backward is a collective operation of the engine: a share that runs short
    (the last, smaller step of an epoch, or fewer token-limited splits) is topped up with filler batches, whose
    loss counts zero.
    """
    lengths = [task.length(e) for e in examples]
    splits = [micro_batches(lengths[r::world], batch_size, max_tokens) for r in range(world)]
    mine = examples[rank::world]
    batches = [task.collate([mine[i] for i in part], pad_id) for part in splits[rank]]
    missing = max(len(s) for s in splits) - len(batches)
    return batches + [replace(task.collate(examples[:1], pad_id), filler=True)] * missing if missing else batches


def mean_loss(
    model: Any, task: Task, examples: list[Any], train: TrainConfig, batch_size: int, pad_id: int, device: str = "cpu"
) -> float:
    """The task's loss per unit over `examples` (no gradients, model in eval mode)."""
    return group_losses(model, task, examples, train, batch_size, pad_id, device)[""]


@torch.no_grad()
def group_losses(
    model: Any, task: Task, examples: list[Any], train: TrainConfig, batch_size: int, pad_id: int, device: str = "cpu"
) -> dict[str, float]:
    """The loss per unit over all `examples` (key "") and, for a task with groups, over each group's."""
    was_training = model.training
    model.eval()
    groups: dict[str, list[Any]] = {}
    for e in examples:
        groups.setdefault(task.group(e) if task.group else "", []).append(e)
    sums: dict[str, tuple[float, float]] = {}  # group -> (summed loss, units)
    for name, members in groups.items():
        total, units = 0.0, 0.0
        for start in range(0, len(members), batch_size):
            batch = task.collate(members[start : start + batch_size], pad_id).to(device)
            total += float(task.loss(model, batch, train))
            units += batch.n_loss
        sums[name] = (total, units)
    model.train(was_training)
    sums[""] = (sum(t for t, _ in sums.values()), sum(c for _, c in sums.values()))
    return {name: total / count if count else 0.0 for name, (total, count) in sums.items()}
