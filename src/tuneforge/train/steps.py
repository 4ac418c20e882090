"""The steps of a training run: the stream of optimizer steps, one optimizer step, and what runs between steps
(validation, generated answers scored, metrics.jsonl kept in step with a resumed run)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, TrainConfig
from tuneforge.data.records import chat_prompts
from tuneforge.errors import TrainingError
from tuneforge.generation import SamplingParams, generate_texts
from tuneforge.metrics import chosen
from tuneforge.rundir import BEST, atomic_write_text, read_jsonl, split_path
from tuneforge.train.auto import group_by_length
from tuneforge.train.checkpoint import Progress, save_weights
from tuneforge.train.parallel import Parallel
from tuneforge.train.precision import autocast
from tuneforge.train.tasks import TASKS, Batch, Task, collate_step, group_losses, step_groups


def endless_steps(
    task: Task,
    train_set: list[Any],
    train: TrainConfig,
    batch_size: int,
    max_tokens: int | None,
    pad_id: int,
    done: int,
    par: Parallel,
) -> Iterator[tuple[list[Batch], float, int, int]]:
    """Optimizer steps epoch after epoch (the step budget decides when to stop), the first `done` skipped.

    Each step: this process's micro-batches, and the loss units, tokens and examples of the whole step across
    all processes (every process sees the step's full list of examples, so no communication is needed).
    """
    lengths = [task.length(e) for e in train_set]
    per_step, epoch = batch_size * train.grad_accum * par.world, 0
    while True:
        groups = step_groups(lengths, per_step, train.seed + epoch, group_by_length(train))
        for group in groups[done:]:
            examples = [train_set[i] for i in group]
            mine = collate_step(task, examples, batch_size, pad_id, par.rank, par.world, max_tokens)
            yield mine, sum(task.units(e) for e in examples), sum(lengths[i] for i in group), len(group)
        done = max(0, done - len(groups))
        epoch += 1


def optimizer_step(
    model: Any,
    group: list[Batch],
    optimizer: Any,
    scheduler: Any,
    params: list[Any],
    train: TrainConfig,
    device: str,
    precision: str,
    n_loss: float | None = None,
    par: Parallel | None = None,
) -> float:
    """One optimizer step over the micro-batches of `group`; returns its loss.

    `n_loss`: loss units of the whole step over all processes (default: those of `group`).
    """
    # Normalise by all loss units of the step, so accumulation (and data parallelism) equals one big batch.
    n_loss = n_loss if n_loss is not None else sum(b.n_loss for b in group)
    n_loss = n_loss if n_loss > 0 else 1.0
    par = par or Parallel()
    task = TASKS[train.task]
    total = 0.0
    for i, batch in enumerate(group):
        batch = batch.to(device)
        with autocast(device, precision):
            loss = task.loss(model, batch, train) / n_loss * (0.0 if batch.filler else 1.0)
        # the engine averages gradients over the processes, while the loss is already the whole step's: undo that
        par.backward(model, loss * par.world, last=i == len(group) - 1)
        total += float(loss.detach())
    total = par.total(total)
    if not math.isfinite(total):
        raise TrainingError(
            f"the training loss became {total} at step {scheduler.last_epoch + 1}",
            "lower train.learning_rate, or use train.precision=fp32",
        )
    par.step(model, optimizer, params, train.max_grad_norm)
    scheduler.step()
    return total


def validate(
    model: Any,
    val_set: list[Any],
    state: Progress,
    cfg: RunConfig,
    batch_size: int,
    device: str,
    precision: str,
    pad_id: int,
    par: Parallel,
) -> dict[str, float]:
    """Score the validation split (per task too, for multitask; by its own measure for a task that has one, which
    runs outside autocast); track the best score (saving its weights when early stopping is on). Returns the
    metrics.jsonl fields."""
    train, task = cfg.train, TASKS[cfg.train.task]
    if task.validate is not None:  # a task scored by what it generates (grpo: the reward); no autocast
        fields = task.validate(model, val_set, train, device)
        state.val_loss = fields.pop("val_loss")
    else:
        with autocast(device, precision):
            losses = group_losses(model, task, val_set, train, batch_size, pad_id, device)
        state.val_loss = round(losses.pop(""), 5)
        fields = {f"val_loss_{g}": round(v, 5) for g, v in sorted(losses.items())}
    if state.best_val is None or state.val_loss < state.best_val - train.early_stopping_min_delta:
        state.best_val, state.best_step, state.bad_evals = state.val_loss, state.step, 0
        if train.early_stopping_patience and par.main:
            save_weights(model, cfg.run_dir / BEST)
    else:
        state.bad_evals += 1
    return {"val_loss": state.val_loss, **fields}


def answer_scorer(cfg: RunConfig, tokenizer: Any) -> Callable[[Any], dict[str, float]]:
    """score(model): evaluate.metrics of the model's greedy answers to the first train.eval_generate validation
    examples, as val_<metric> fields (the model is put in eval mode for it and back in training mode)."""
    rows = read_jsonl(split_path(cfg.run_dir, "val"))[: cfg.train.eval_generate]
    prompts, references = chat_prompts(rows)
    metrics = chosen(cfg.evaluate.metrics, cfg.evaluate.task, "text", cfg.train.task)
    params = SamplingParams(max_new_tokens=cfg.evaluate.max_new_tokens)
    size = cfg.evaluate.batch_size

    def score(model: Any) -> dict[str, float]:
        model.eval()
        answers = generate_texts(model, tokenizer, prompts, params, size)
        model.train()
        return {f"val_{name}": round(metric.score(answers, references), 4) for name, metric in metrics.items()}

    return score


def trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics of steps up to `step` (all gone for a fresh run): a resumed run appends after them."""
    if step == 0 or not path.is_file():
        path.unlink(missing_ok=True)
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):  # a line cut short by the kill is dropped
            if json.loads(line)["step"] <= step:
                kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
