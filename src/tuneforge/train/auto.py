"""`"auto"` hyperparameters: epochs, learning rate, LoRA rank and batch size chosen from data and model size.

The rules (docs/training.md lists them for users):
- epochs: 3, raised so that training sees at least 100 examples and lowered so that it sees at most 25,000
  (at most 25 epochs, at least 1): the rule of OpenAI's fine-tuning API for `n_epochs: "auto"`.
- learning_rate: 2e-4 for the adapter methods (lora, dora, qlora); for full and freeze 3e-5 below 1B
  parameters, 1e-5 from 1B on (whole-weight updates need smaller steps, larger models smaller still).
- lora_r: 8 below 1,000 training examples, 16 below 10,000, else 32 (more data can use more capacity);
  lora_alpha follows as 2 x r so that the scale alpha/r stays 2.
- batch_size: the largest power of two up to 16, at most a tenth of the training examples, whose estimated peak
  memory (train/memory.memory_need) fits in 80% of the memory available.
- group_by_length: on for task classify, off otherwise; micro_batch_tokens on CPU: 2048 for task classify, 512
  otherwise (see GROUPED_TASKS and CPU_MICRO_BATCH_TOKENS_BY_TASK).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.train.memory import memory_need
from tuneforge.train.tasks import largest_micro_batch

ADAPTER_METHODS = ("lora", "dora", "qlora")

# Tasks whose steps group examples of similar length by default. Classification texts are short and of varied
# length, and the loss is one term per example however long: on bench/train.py's reviews (6-65 tokens) a random step
# of 16 is 47% padding whole, 27% split at 512 tokens into 2 micro-batches (the CPU default of other tasks), 3%
# grouped and whole. SFT's steps stay in random order (see config/train.py: grouped steps cost held-out loss there).
GROUPED_TASKS = ("classify",)
# train.micro_batch_tokens 'auto' on CPU for the tasks that differ from setup.CPU_MICRO_BATCH_TOKENS. A classifier
# has no vocabulary-wide output layer and short batches, and each forward and backward streams every weight once
# whatever its rows: split at 512, its grouped steps took 1.09x the CPU time of whole ones. 2048 never splits batch
# 16 x max_seq_len 128 and still bounds the activations of longer texts.
CPU_MICRO_BATCH_TOKENS_BY_TASK = {"classify": 2048, "grpo": 2048}


@dataclass(frozen=True)
class Hyper:
    """The hyperparameters a run trains with, every "auto" replaced by a value."""

    epochs: float
    batch_size: int
    learning_rate: float
    lora_r: int
    lora_alpha: int


def resolve(cfg: RunConfig, n_train: int, n_params: int) -> tuple[Hyper, list[str]]:
    """Epochs, learning rate and LoRA rank of `cfg` with "auto" replaced (batch size: see resolve_batch); and a
    line per choice made."""
    t, notes = cfg.train, []
    epochs = t.epochs
    if epochs == "auto":
        epochs = 3
        if n_train * epochs < 100:
            epochs = min(25, math.ceil(100 / max(n_train, 1)))
        elif n_train * epochs > 25_000:
            epochs = max(1, 25_000 // n_train)
        notes.append(f"epochs auto -> {epochs} ({n_train:,} training examples)")
    lr = t.learning_rate
    if lr == "auto":
        if t.method in ADAPTER_METHODS:
            lr, why = 2e-4, f"method {t.method}"
        else:
            lr, why = (3e-5, "under 1B parameters") if n_params < 1e9 else (1e-5, "1B parameters or more")
            why = f"method {t.method}, {why}"
        notes.append(f"learning_rate auto -> {lr:g} ({why})")
    r, alpha = t.lora_r, t.lora_alpha
    if r == "auto":
        r = 8 if n_train < 1_000 else 16 if n_train < 10_000 else 32
        alpha = 2 * r
        notes.append(f"lora_r auto -> {r}, lora_alpha {alpha} ({n_train:,} training examples)")
    batch = 0 if t.batch_size == "auto" else int(t.batch_size)
    if t.group_by_length == "auto" and group_by_length(t):
        notes.append(f"group_by_length auto -> true (task {t.task}: steps of similar-length examples, less padding)")
    return Hyper(float(epochs), batch, float(lr), int(r), alpha), notes


def group_by_length(t: TrainConfig) -> bool:
    """Whether steps group examples of similar length: train.group_by_length, 'auto' on for GROUPED_TASKS."""
    return t.task in GROUPED_TASKS if t.group_by_length == "auto" else t.group_by_length


def resolve_batch(
    hp: Hyper,
    model: Any,
    lengths: list[int],
    loss_share: float,
    precision: str,
    available: int,
    max_tokens: int | None = None,
    copies: int = 0,
) -> tuple[Hyper, list[str]]:
    """`hp` with an auto batch size (0) replaced; `lengths` are the training examples' token counts, `max_tokens`
    the micro-batch token limit (the memory peak is the micro-batch of most tokens among the longest examples),
    `copies` the bytes of bf16 weight copies the run holds (see `memory_need`)."""
    if hp.batch_size:
        return hp, []
    ordered, size = sorted(lengths), 1
    for candidate in (16, 8, 4, 2):
        if candidate > max(1, len(ordered) // 10):
            continue
        longest = ordered[-candidate:]
        batch = [longest[i] for i in largest_micro_batch(longest, candidate, max_tokens)]
        need = memory_need(model, len(batch), max(batch), int(sum(batch) * loss_share), precision, copies)["total"]
        if need <= 0.8 * available:
            size = candidate
            break
    note = f"batch_size auto -> {size} (fits 80% of {available / 2**30:.1f} GiB; {len(ordered):,} training examples)"
    return replace(hp, batch_size=size), [note]
