"""Everything a training run builds before its first step: the splits, the model with its method applied and every
"auto" resolved, the memory check, and the optimizer with its schedule (restored when resuming)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.errors import ConfigError, TrainingError
from tuneforge.models import load_model
from tuneforge.rundir import split_path
from tuneforge.train.auto import CPU_MICRO_BATCH_TOKENS_BY_TASK, Hyper, resolve, resolve_batch
from tuneforge.train.checkpoint import Progress, load_checkpoint, restore_weights
from tuneforge.train.memory import available_memory, memory_need
from tuneforge.train.methods import METHODS, count_parameters
from tuneforge.train.parallel import Parallel
from tuneforge.train.precision import bf16_copy_bytes
from tuneforge.train.tasks import TASKS, Batch, Task, TaskContext, head_labels, largest_micro_batch

# Micro-batch token limit on CPU. bench/train.py's LoRA run (batches of 8 examples of 25-426 tokens), limits 512 /
# 1024 / 2048 / none: 213 / 227 / 181 / 136 real tokens/s at 2817 / 4134 / 6033 / 8693 MiB peak RSS. Small
# micro-batches also spare the allocator's page faults (a third of a whole-batch step's time went to the kernel).
CPU_MICRO_BATCH_TOKENS = 512


def micro_batch_tokens(train: TrainConfig, device: str) -> int | None:
    """The token limit of one micro-batch (`train.micro_batch_tokens`; 'auto': 512 on CPU or the task's own limit
    there, none on GPUs)."""
    chosen = train.micro_batch_tokens
    if chosen == "auto":
        return CPU_MICRO_BATCH_TOKENS_BY_TASK.get(train.task, CPU_MICRO_BATCH_TOKENS) if device == "cpu" else None
    return chosen


def load_splits(tokenizer: Any, context: TaskContext) -> tuple[list[Any], list[Any]]:
    """The task's examples of the train split (mixed, for a task that mixes) and of the validation split."""
    task = TASKS[context.train.task]
    train_path, val_path = split_path(context.run_dir, "train"), split_path(context.run_dir, "val")
    train_set = task.load(train_path, tokenizer, context)
    val_set = task.load(val_path, tokenizer, context) if val_path.is_file() else []
    if not train_set:
        raise TrainingError(f"{train_path} holds no examples", "run `tuneforge prepare` with more data")
    if context.train.early_stopping_patience and not val_set:
        raise ConfigError(
            "train.early_stopping_patience needs a validation split, and this run has none",
            "prepare with data.val_size > 0, or unset train.early_stopping_patience",
        )
    return (task.mix(train_set, context) if task.mix else train_set), val_set


def setup_model(
    cfg: RunConfig, device: str, precision: str, log: Any, lengths: list[int], loss_share: float
) -> tuple[Any, Hyper]:
    """The base model wrapped by the training method, and the hyperparameters with every "auto" resolved
    (`lengths`: token counts of the training examples; `loss_share`: the part of their tokens that carry loss)."""
    method, task = METHODS[cfg.train.method], TASKS[cfg.train.task]
    options = method.load_options(device) if method.load_options else None
    labels = head_labels(TaskContext.of(cfg))
    base = load_model(cfg.model.name, cfg.model.revision, device=device, options=options, labels=labels)
    if labels is not None and task.labels is None:
        log(f"classification head: {len(labels)} classes {labels[:10]}")
    hp, notes = resolve(cfg, len(lengths), sum(p.numel() for p in base.parameters()))
    model = method.apply(base, cfg.train, hp)
    if cfg.train.gradient_checkpointing:
        inner: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inner.config.use_cache = False
    max_tokens = micro_batch_tokens(cfg.train, device)
    copies = bf16_copy_bytes(model, device, precision, cfg.train.method)
    hp, batch_notes = resolve_batch(
        hp, model, lengths, loss_share, precision, available_memory(device), max_tokens, copies
    )
    for note in notes + batch_notes:
        log(note)
    trainable, total = count_parameters(model)
    log(
        f"model {cfg.model.name}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%), method {cfg.train.method}, {precision} on {device}"
    )
    return model, hp


def check_memory(
    model: Any,
    task: Task,
    train_set: list[Any],
    batch_size: int,
    max_tokens: int | None,
    device: str,
    precision: str,
    copies: int,
    log: Any,
) -> None:
    """Log the memory training will need at its peak; refuse before the first step when it cannot fit."""
    longest = sorted(train_set, key=task.length)[-batch_size:]
    part = largest_micro_batch([task.length(e) for e in longest], batch_size, max_tokens)
    batch = task.collate([longest[i] for i in part], 0)
    rows, width = batch.input_ids.shape
    need = memory_need(model, rows, width, logit_rows(batch), precision, copies)
    have = available_memory(device)
    gib = {k: v / 2**30 for k, v in need.items()}
    log(
        f"memory: ~{gib['total']:.1f} GiB at the peak (weights {gib['weights']:.1f}, gradients and optimizer "
        f"{gib['gradients_and_optimizer']:.1f}, activations {gib['activations'] + gib['logits']:.1f} for the "
        f"{len(longest)} longest examples), {have / 2**30:.1f} GiB available on {device}"
    )
    if need["total"] > have:
        raise TrainingError(
            f"training needs ~{gib['total']:.1f} GiB at its peak but only {have / 2**30:.1f} GiB is available",
            "lower train.batch_size (raise train.grad_accum to keep the effective batch), lower data.max_seq_len, "
            "or use train.method=lora instead of full",
        )


def logit_rows(batch: Batch) -> int:
    """Positions of a batch where the vocabulary-wide output layer runs (none for a classification head)."""
    return int((batch.labels != IGNORE_INDEX).sum()) if batch.labels.dim() == 2 else 0


def loss_share(task: Task, examples: list[Any], pad_id: int) -> float:
    """The share of tokens where the output layer runs (from up to 256 examples): for the auto batch size."""
    batch = task.collate(examples[:256], pad_id)
    return logit_rows(batch) / max(batch.n_tokens, 1)


def lr_multiplier(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """The share of the peak learning rate that optimizer step `step` (from 0) runs at.

    Warm-up step k of w runs at (k + 1) / (w + 1), so no step runs at 0: transformers' schedules start the first step
    at learning rate 0, a wasted step (on BENCHMARKS.md's 9-step LoRA run ~0.03 of held-out loss). Then cosine or
    linear decay from the peak towards 0 (the last step still above it), or constant.
    """

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress if schedule == "linear" else 1.0

    return multiplier


def optimization(
    model: Any, train: TrainConfig, hp: Hyper, total_steps: int, checkpoint: Path | None, par: Parallel
) -> tuple[Any, list[Any], Any, Any, Progress]:
    """The model as the engine runs it, its trainable parameters, AdamW, the schedule and the progress, restored
    from `checkpoint` when resuming (weights before the engine wraps the model, the rest after: FSDP2 replaces the
    parameters by shards, so the optimizer is built on the wrapped model; DeepSpeed wraps model and optimizer
    together)."""
    if checkpoint is not None:
        restore_weights(checkpoint, model)
    model = par.wrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=train.weight_decay)
    warmup = round(train.warmup_ratio * total_steps)
    scheduler = LambdaLR(optimizer, lr_multiplier(train.lr_scheduler, warmup, total_steps))
    model = par.start(model, optimizer, hp.batch_size, train.max_grad_norm)  # DeepSpeed's engine, if asked for
    state = load_checkpoint(checkpoint, model, optimizer, scheduler, par) if checkpoint is not None else Progress()
    return model, params, optimizer, scheduler, state
