"""The training loop: setup -> train -> save. Progress bar, metrics.jsonl, checkpoints, final adapter."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from tuneforge.config import RunConfig
from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.errors import ConfigError, TrainingError
from tuneforge.models import load_model, load_tokenizer, pick_device
from tuneforge.rundir import BEST, METRICS, MODEL_DIR, atomic_write_text, require, save_config
from tuneforge.train.auto import Hyper, resolve, resolve_batch
from tuneforge.train.checkpoint import (
    Progress,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    restore_weights,
    save_checkpoint,
    save_model,
    save_weights,
)
from tuneforge.train.classify import class_labels
from tuneforge.train.methods import METHODS, count_parameters
from tuneforge.train.parallel import Parallel, detect
from tuneforge.train.precision import autocast, bf16_copy_bytes, cpu_bf16, precision_note, resolve_precision
from tuneforge.train.tasks import TASKS, Batch, Task, collate_step, group_losses, largest_micro_batch, step_groups
from tuneforge.train.tracking import Trackers

# Micro-batch token limit on CPU. bench/train.py's LoRA run (batches of 8 examples of 25-426 tokens), limits 512 /
# 1024 / 2048 / none: 213 / 227 / 181 / 136 real tokens/s at 2817 / 4134 / 6033 / 8693 MiB peak RSS. Small
# micro-batches also spare the allocator's page faults (a third of a whole-batch step's time went to the kernel).
CPU_MICRO_BATCH_TOKENS = 512


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


@dataclass
class TrainResult:
    """What training produced."""

    model_dir: Path
    steps: int
    train_loss: float
    val_loss: float | None
    tokens: int
    seconds: float
    precision: str


def train(cfg: RunConfig, log: Any = print, resume: bool = False) -> TrainResult:
    """Fine-tune the model of `cfg` on the run's prepared data and save the adapter to runs/<name>/model.

    `resume`: continue from the newest checkpoint (weights, optimizer, scheduler, RNG and data position).
    """
    run_dir = cfg.run_dir
    data_dir = require(run_dir, "data/train.jsonl", "prepare").parent
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        raise TrainingError(
            f"nothing to resume: {run_dir / 'checkpoints'} holds no finished checkpoint",
            f"train without --resume (checkpoints are written every train.save_steps={cfg.train.save_steps} steps)",
        )
    device = pick_device()
    par = detect(device, cfg.train.sharding)
    if par.engine != "ddp" and cfg.train.early_stopping_patience:
        raise ConfigError(
            f"train.early_stopping_patience with {par.describe()} is not supported yet (the best weights are not "
            "restored into a sharded model)",
            "stop by train.max_steps or train.epochs, or train without sharding",
        )
    if not par.main:
        log = _silent
    else:
        save_config(cfg)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
        torch.use_deterministic_algorithms(True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    precision = resolve_precision(cfg.train.precision, device)
    log(precision_note(cfg.train.precision, device, precision))
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    task = TASKS[cfg.train.task]
    train_set, val_set = _load_splits(data_dir, tokenizer, cfg)
    if cfg.train.early_stopping_patience and not val_set:
        raise ConfigError(
            "train.early_stopping_patience needs a validation split, and this run has none",
            "prepare with data.val_size > 0, or unset train.early_stopping_patience",
        )
    pad_id = int(tokenizer.pad_token_id)
    lengths = [task.length(e) for e in train_set]
    # the output layer's share of the tokens matters only to the auto batch size: counted only then
    share = _loss_share(task, train_set, pad_id) if cfg.train.batch_size == "auto" else 0.5
    model, hp = setup_model(cfg, device, precision, log, lengths, share)
    max_tokens = micro_batch_tokens(cfg, device)
    fast = cpu_bf16(model, device, precision, cfg.train.method, par.world, cfg.train.compile)
    _check_memory(model, task, train_set, hp.batch_size, max_tokens, device, precision, fast.copy_bytes, log)
    if task.setup is not None:  # DPO's reference log-probabilities: computed as the training steps compute
        with autocast(device, precision), fast:
            task.setup(model, {"train": train_set, "val": val_set}, cfg, device, pad_id, checkpoint is None, log)
    per_epoch = math.ceil(len(train_set) / (hp.batch_size * cfg.train.grad_accum * par.world))
    total_steps = cfg.train.max_steps or max(1, math.ceil(per_epoch * hp.epochs))
    if par.world > 1:
        log(
            f"data parallel: {par.world} processes, {hp.batch_size} examples per process per micro-batch, "
            f"{par.describe()}"
        )
    model, params, optimizer, scheduler, state = _optimization(model, cfg, hp, total_steps, checkpoint, par)
    if checkpoint is not None:
        log(f"resuming from {checkpoint} (step {state.step} of {total_steps})")
    metrics_path = run_dir / METRICS
    if par.main:
        _trim_metrics(metrics_path, state.step)
    trackers = Trackers(cfg, active=par.main)
    answers_scored = _answer_scorer(cfg, data_dir, tokenizer) if cfg.train.eval_generate and val_set else None
    model.train()
    start = time.perf_counter() - state.elapsed
    bar = tqdm(
        total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True, disable=not par.main
    )
    stream = _endless_steps(task, train_set, cfg, hp.batch_size, max_tokens, pad_id, state.step, par)
    with fast, metrics_path.open("a", encoding="utf-8") if par.main else contextlib.nullcontext() as metrics:
        while state.step < total_steps:
            group, n_loss, n_tokens, n_examples = next(stream)
            lr = scheduler.get_last_lr()[0]  # the rate this step runs at
            loss = optimizer_step(model, group, optimizer, scheduler, params, cfg, device, precision, n_loss, par)
            state.record(loss, n_examples, n_tokens)
            row = state.row(lr, len(train_set), time.perf_counter() - start)
            every = cfg.train.eval_steps or per_epoch
            if val_set and (state.step % every == 0 or state.step == total_steps):
                inner = par.unwrap(model)
                row.update(_validate(inner, val_set, state, cfg, hp.batch_size, device, precision, pad_id, par))
                if answers_scored is not None:
                    with fast.paused():  # generation runs outside autocast, on the fp32 weights
                        row.update(answers_scored(inner))
                bar.write(f"step {state.step}: val_loss {state.val_loss}")
            if metrics is not None:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            trackers.log(row)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            if state.step % cfg.train.save_steps == 0 and state.step < total_steps:
                state.elapsed = time.perf_counter() - start
                keep = cfg.train.save_total_limit
                save_checkpoint(run_dir, par.unwrap(model), optimizer, scheduler, state, keep, par)
                par.barrier()
            if cfg.train.early_stopping_patience and state.bad_evals >= cfg.train.early_stopping_patience:
                bar.write(
                    f"early stopping at step {state.step}: val_loss has not improved on {state.best_val} "
                    f"(step {state.best_step}) in {state.bad_evals} evaluations"
                )
                break
    bar.close()
    trackers.close()
    model = par.unwrap(model)
    if cfg.train.early_stopping_patience and state.best_step != state.step:
        par.barrier()
        load_weights(model, run_dir / BEST)
        log(f"keeping the best model: step {state.best_step}, val_loss {state.best_val}")
        state.val_loss = state.best_val
    whole = par.full_state(model)  # a sharded model's weights, gathered by every process
    model_dir = save_model(run_dir, model, tokenizer, cfg, whole) if par.main else run_dir / MODEL_DIR
    par.barrier()
    seconds = time.perf_counter() - start
    return TrainResult(model_dir, state.step, state.last_loss, state.val_loss, state.tokens, seconds, precision)


def _optimization(
    model: Any, cfg: RunConfig, hp: Hyper, total_steps: int, checkpoint: Path | None, par: Parallel
) -> tuple[Any, list[Any], Any, Any, Progress]:
    """The model as the engine runs it, its trainable parameters, AdamW, the schedule and the progress, restored
    from `checkpoint` when resuming (weights before the engine wraps the model, the rest after: FSDP2 replaces the
    parameters by shards, so the optimizer is built on the wrapped model; DeepSpeed wraps model and optimizer
    together)."""
    if checkpoint is not None:
        restore_weights(checkpoint, model)
    model = par.wrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=cfg.train.weight_decay)
    warmup = round(cfg.train.warmup_ratio * total_steps)
    scheduler = LambdaLR(optimizer, lr_multiplier(cfg.train.lr_scheduler, warmup, total_steps))
    model = par.start(model, optimizer, hp.batch_size, cfg.train.max_grad_norm)  # DeepSpeed's engine, if asked for
    state = load_checkpoint(checkpoint, model, optimizer, scheduler, par) if checkpoint is not None else Progress()
    return model, params, optimizer, scheduler, state


def setup_model(
    cfg: RunConfig, device: str, precision: str, log: Any, lengths: list[int], loss_share: float
) -> tuple[Any, Hyper]:
    """The base model wrapped by the training method, and the hyperparameters with every "auto" resolved
    (`lengths`: token counts of the training examples; `loss_share`: the part of their tokens that carry loss)."""
    method, task = METHODS[cfg.train.method], TASKS[cfg.train.task]
    options = method.load_options(device) if method.load_options else None
    labels = class_labels(cfg) if task.head == "classifier" else None
    base = load_model(cfg.model.name, cfg.model.revision, device=device, options=options, labels=labels)
    if labels is not None:
        log(f"classification head: {len(labels)} classes {labels[:10]}")
    hp, notes = resolve(cfg, len(lengths), sum(p.numel() for p in base.parameters()))
    model = method.apply(base, cfg.train, hp)
    if cfg.train.gradient_checkpointing:
        inner: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inner.config.use_cache = False
    from tuneforge.train.estimate import available_memory

    max_tokens = micro_batch_tokens(cfg, device)
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


def micro_batch_tokens(cfg: RunConfig, device: str) -> int | None:
    """The token limit of one micro-batch (`train.micro_batch_tokens`; 'auto': 512 on CPU, none on GPUs)."""
    chosen = cfg.train.micro_batch_tokens
    if chosen == "auto":
        return CPU_MICRO_BATCH_TOKENS if device == "cpu" else None
    return chosen


def _check_memory(
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
    from tuneforge.train.estimate import available_memory, memory_need

    longest = sorted(train_set, key=task.length)[-batch_size:]
    part = largest_micro_batch([task.length(e) for e in longest], batch_size, max_tokens)
    batch = task.collate([longest[i] for i in part], 0)
    rows, width = batch.input_ids.shape
    need = memory_need(model, rows, width, _logit_rows(batch), precision, copies)
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


def _load_splits(data_dir: Path, tokenizer: Any, cfg: RunConfig) -> tuple[list[Any], list[Any]]:
    """The task's examples of the train split (mixed, for a task that mixes) and of the validation split."""
    task = TASKS[cfg.train.task]
    train_set = task.load(data_dir / "train.jsonl", tokenizer, cfg)
    val_path = data_dir / "val.jsonl"
    val_set = task.load(val_path, tokenizer, cfg) if val_path.is_file() else []
    if not train_set:
        raise TrainingError(f"{data_dir / 'train.jsonl'} holds no examples", "run `tuneforge prepare` with more data")
    return (task.mix(train_set, cfg) if task.mix else train_set), val_set


def _logit_rows(batch: Batch) -> int:
    """Positions of a batch where the vocabulary-wide output layer runs (none for a classification head)."""
    return int((batch.labels != IGNORE_INDEX).sum()) if batch.labels.dim() == 2 else 0


def _loss_share(task: Task, examples: list[Any], pad_id: int) -> float:
    """The share of tokens where the output layer runs (from up to 256 examples): for the auto batch size."""
    batch = task.collate(examples[:256], pad_id)
    return _logit_rows(batch) / max(batch.n_tokens, 1)


def _silent(*args: Any) -> None:
    """The log of processes other than the main one."""


def _validate(
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
    """Score the validation split (per task too, for multitask); track the best score (saving its weights when
    early stopping is on). Returns the metrics.jsonl fields."""
    with autocast(device, precision):
        losses = group_losses(model, TASKS[cfg.train.task], val_set, cfg, batch_size, pad_id, device)
    state.val_loss = round(losses.pop(""), 5)
    if state.best_val is None or state.val_loss < state.best_val - cfg.train.early_stopping_min_delta:
        state.best_val, state.best_step, state.bad_evals = state.val_loss, state.step, 0
        if cfg.train.early_stopping_patience and par.main:
            save_weights(model, cfg.run_dir / BEST)
    else:
        state.bad_evals += 1
    return {"val_loss": state.val_loss, **{f"val_loss_{g}": round(v, 5) for g, v in sorted(losses.items())}}


def _answer_scorer(cfg: RunConfig, data_dir: Path, tokenizer: Any) -> Callable[[Any], dict[str, float]]:
    """score(model): evaluate.metrics of the model's greedy answers to the first train.eval_generate validation
    examples, as val_<metric> fields (the model is put in eval mode for it and back in training mode)."""
    from tuneforge.evaluation.evaluate import chat_prompts, chosen_metrics
    from tuneforge.generation import SamplingParams, generate_texts
    from tuneforge.rundir import read_jsonl

    prompts, references = chat_prompts(read_jsonl(data_dir / "val.jsonl")[: cfg.train.eval_generate])
    metrics = chosen_metrics(cfg)
    params = SamplingParams(max_new_tokens=cfg.evaluate.max_new_tokens)
    size = cfg.evaluate.batch_size

    def score(model: Any) -> dict[str, float]:
        model.eval()
        answers = generate_texts(model, tokenizer, prompts, params, size)
        model.train()
        return {f"val_{name}": round(metric.score(answers, references), 4) for name, metric in metrics.items()}

    return score


def _endless_steps(
    task: Task,
    train_set: list[Any],
    cfg: RunConfig,
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
    per_step, epoch = batch_size * cfg.train.grad_accum * par.world, 0
    while True:
        groups = step_groups(lengths, per_step, cfg.train.seed + epoch, cfg.train.group_by_length)
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
    cfg: RunConfig,
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
    task = TASKS[cfg.train.task]
    total = 0.0
    for i, batch in enumerate(group):
        batch = batch.to(device)
        with autocast(device, precision):
            loss = task.loss(model, batch, cfg) / n_loss * (0.0 if batch.filler else 1.0)
        # the engine averages gradients over the processes, while the loss is already the whole step's: undo that
        par.backward(model, loss * par.world, last=i == len(group) - 1)
        total += float(loss.detach())
    total = par.total(total)
    if not math.isfinite(total):
        raise TrainingError(
            f"the training loss became {total} at step {scheduler.last_epoch + 1}",
            "lower train.learning_rate, or use train.precision=fp32",
        )
    par.step(model, optimizer, params, cfg.train.max_grad_norm)
    scheduler.step()
    return total


def _trim_metrics(path: Path, step: int) -> None:
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
