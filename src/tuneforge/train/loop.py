"""The training loop: setup -> steps -> save. Progress bar, metrics.jsonl, checkpoints, final adapter.

`train` reads top to bottom: `_setup` builds a `_Run` (what setup.py makes: splits, model, optimizer, restored
progress), `_steps` runs optimizer steps until the budget or early stopping ends them, `_finish` keeps the best
model and saves the final one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from tqdm import tqdm

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, TrainingError
from tuneforge.models import load_tokenizer, pick_device
from tuneforge.rundir import BEST, CHECKPOINTS, DATA_DIR, METRICS, MODEL_DIR, require, save_config
from tuneforge.train.auto import Hyper
from tuneforge.train.checkpoint import Progress, latest_checkpoint, load_weights, save_checkpoint, save_model
from tuneforge.train.parallel import Parallel, detect
from tuneforge.train.precision import CpuBf16, autocast, cpu_bf16, precision_note, resolve_precision
from tuneforge.train.setup import check_memory, load_splits, loss_share, micro_batch_tokens, optimization, setup_model
from tuneforge.train.steps import answer_scorer, endless_steps, optimizer_step, trim_metrics, validate
from tuneforge.train.tasks import TASKS, Batch, Task, TaskContext
from tuneforge.train.tracking import Trackers


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


@dataclass
class _Run:
    """One training run's setup and state, from `_setup` to `_finish`."""

    cfg: RunConfig
    log: Any
    device: str
    precision: str
    par: Parallel
    tokenizer: Any
    task: Task
    train_set: list[Any]
    val_set: list[Any]
    model: Any
    hp: Hyper
    max_tokens: int | None
    fast: CpuBf16
    per_epoch: int
    total_steps: int
    params: list[Any]
    optimizer: Any
    scheduler: Any
    state: Progress
    start: float = 0.0
    answers_scored: Callable[[Any], dict[str, float]] | None = None

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)


def train(cfg: RunConfig, log: Any = print, resume: bool = False) -> TrainResult:
    """Fine-tune the model of `cfg` on the run's prepared data and save the adapter to runs/<name>/model.

    `resume`: continue from the newest checkpoint (weights, optimizer, scheduler, RNG and data position).
    """
    run = _setup(cfg, log, resume)
    metrics_path = cfg.run_dir / METRICS
    if run.par.main:
        trim_metrics(metrics_path, run.state.step)
    trackers = Trackers(cfg, active=run.par.main)
    run.model.train()
    run.start = time.perf_counter() - run.state.elapsed
    with run.fast, metrics_path.open("a", encoding="utf-8") if run.par.main else contextlib.nullcontext() as metrics:
        _steps(run, metrics, trackers)
    trackers.close()
    return _finish(run)


def _setup(cfg: RunConfig, log: Any, resume: bool) -> _Run:
    """Everything before the first step: environment, splits, model, memory check, task setup, optimizer."""
    checkpoint = _checkpoint(cfg, resume)
    device, par, precision, log = _environment(cfg, log)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    task, context = TASKS[cfg.train.task], TaskContext.of(cfg)
    train_set, val_set = load_splits(tokenizer, context)
    pad_id = int(tokenizer.pad_token_id)
    # the output layer's share of the tokens matters only to the auto batch size: counted only then
    share = loss_share(task, train_set, pad_id) if cfg.train.batch_size == "auto" else 0.5
    model, hp = setup_model(cfg, device, precision, log, [task.length(e) for e in train_set], share)
    max_tokens = micro_batch_tokens(cfg.train, device)
    fast = cpu_bf16(model, device, precision, cfg.train.method, par.world, cfg.train.compile)
    check_memory(model, task, train_set, hp.batch_size, max_tokens, device, precision, fast.copy_bytes, log)
    if task.setup is not None:  # DPO's reference log-probabilities: computed as the training steps compute
        with autocast(device, precision), fast:
            task.setup(model, {"train": train_set, "val": val_set}, context, device, pad_id, checkpoint is None, log)
    per_epoch = math.ceil(len(train_set) / (hp.batch_size * cfg.train.grad_accum * par.world))
    total_steps = cfg.train.max_steps or max(1, math.ceil(per_epoch * hp.epochs))
    if par.world > 1:
        log(
            f"data parallel: {par.world} processes, {hp.batch_size} examples per process per micro-batch, "
            + par.describe()
        )
    model, params, optimizer, scheduler, state = optimization(model, cfg.train, hp, total_steps, checkpoint, par)
    if checkpoint is not None:
        log(f"resuming from {checkpoint} (step {state.step} of {total_steps})")
    scorer = answer_scorer(cfg, tokenizer) if cfg.train.eval_generate and val_set else None
    return _Run(
        cfg=cfg,
        log=log,
        device=device,
        precision=precision,
        par=par,
        tokenizer=tokenizer,
        task=task,
        train_set=train_set,
        val_set=val_set,
        model=model,
        hp=hp,
        max_tokens=max_tokens,
        fast=fast,
        per_epoch=per_epoch,
        total_steps=total_steps,
        params=params,
        optimizer=optimizer,
        scheduler=scheduler,
        state=state,
        answers_scored=scorer,
    )


def _checkpoint(cfg: RunConfig, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); the prepared data must be there either way."""
    require(cfg.run_dir, f"{DATA_DIR}/train.jsonl", "prepare")
    checkpoint = latest_checkpoint(cfg.run_dir) if resume else None
    if resume and checkpoint is None:
        raise TrainingError(
            f"nothing to resume: {cfg.run_dir / CHECKPOINTS} holds no finished checkpoint",
            f"train without --resume (checkpoints are written every train.save_steps={cfg.train.save_steps} steps)",
        )
    return checkpoint


def _environment(cfg: RunConfig, log: Any) -> tuple[str, Parallel, str, Any]:
    """The device, this process's place among the data-parallel ones (only the main one logs and writes the
    config), the precision, seeds, determinism and threads."""
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
    return device, par, precision, log


def _steps(run: _Run, metrics: IO[str] | None, trackers: Trackers) -> None:
    """Optimizer steps until the step budget is spent or early stopping ends the run: each logged to metrics.jsonl,
    the trackers and the progress bar, validated and checkpointed on schedule."""
    cfg, state, par = run.cfg, run.state, run.par
    bar = tqdm(
        total=run.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True, disable=not par.main
    )
    stream = endless_steps(
        run.task, run.train_set, cfg.train, run.hp.batch_size, run.max_tokens, run.pad_id, state.step, par
    )
    while state.step < run.total_steps:
        group, n_loss, n_tokens, n_examples = next(stream)
        lr = run.scheduler.get_last_lr()[0]  # the rate this step runs at
        loss = _optimizer_step(run, group, n_loss)
        state.record(loss, n_examples, n_tokens)
        row = state.row(lr, len(run.train_set), time.perf_counter() - run.start, run.total_steps)
        if run.task.stats is not None:
            row.update(run.task.stats(run.train_set))
        every = cfg.train.eval_steps or run.per_epoch
        if run.val_set and (state.step % every == 0 or state.step == run.total_steps):
            row.update(_validation(run))
            shown = f"val_reward {row['val_reward']}" if "val_reward" in row else f"val_loss {state.val_loss}"
            bar.write(f"step {state.step}: {shown}")
        if metrics is not None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
        trackers.log(row)
        postfix = {"reward": f"{row['reward']:.3f}"} if "reward" in row else {"loss": f"{loss:.4f}"}
        bar.set_postfix(**postfix, tok_s=f"{row['tokens_per_s']:.0f}")
        bar.update(1)
        if state.step % cfg.train.save_steps == 0 and state.step < run.total_steps:
            state.elapsed = time.perf_counter() - run.start
            save_checkpoint(
                cfg.run_dir, par.unwrap(run.model), run.optimizer, run.scheduler, state, cfg.train.save_total_limit, par
            )
            par.barrier()
        if cfg.train.early_stopping_patience and state.bad_evals >= cfg.train.early_stopping_patience:
            bar.write(
                f"early stopping at step {state.step}: val_loss has not improved on {state.best_val} "
                f"(step {state.best_step}) in {state.bad_evals} evaluations"
            )
            break
    bar.close()


def _optimizer_step(run: _Run, group: list[Batch], n_loss: float) -> float:
    """One optimizer step on `group`'s micro-batches (for grpo on the answers sampled for its prompts first,
    outside autocast); returns its loss."""
    cfg = run.cfg
    if run.task.rollout is not None:
        with run.fast.paused():
            group = run.task.rollout(run.par.unwrap(run.model), group, cfg.train)
    return optimizer_step(
        run.model,
        group,
        run.optimizer,
        run.scheduler,
        run.params,
        cfg.train,
        run.device,
        run.precision,
        n_loss,
        run.par,
    )


def _validation(run: _Run) -> dict[str, float]:
    """The validation losses (and scored answers, with train.eval_generate) of the model as it is now."""
    inner = run.par.unwrap(run.model)
    with run.fast.paused() if run.task.validate is not None else contextlib.nullcontext():
        row = validate(
            inner, run.val_set, run.state, run.cfg, run.hp.batch_size, run.device, run.precision, run.pad_id, run.par
        )
    if run.answers_scored is not None:
        with run.fast.paused():  # generation runs outside autocast, on the fp32 weights
            row.update(run.answers_scored(inner))
    return row


def _finish(run: _Run) -> TrainResult:
    """Keep the best model (early stopping), save the final one, and say what training produced."""
    cfg, state, par = run.cfg, run.state, run.par
    model = par.unwrap(run.model)
    if cfg.train.early_stopping_patience and state.best_step != state.step:
        par.barrier()
        load_weights(model, cfg.run_dir / BEST)
        run.log(f"keeping the best model: step {state.best_step}, val_loss {state.best_val}")
        state.val_loss = state.best_val
    whole = par.full_state(model)  # a sharded model's weights, gathered by every process
    model_dir = save_model(cfg.run_dir, model, run.tokenizer, cfg, whole) if par.main else cfg.run_dir / MODEL_DIR
    par.barrier()
    seconds = time.perf_counter() - run.start
    return TrainResult(model_dir, state.step, state.last_loss, state.val_loss, state.tokens, seconds, run.precision)


def _silent(*args: Any) -> None:
    """The log of processes other than the main one."""
