"""The training loop: setup -> train -> save. Progress bar, metrics.jsonl, checkpoints, final adapter."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from tuneforge.config import RunConfig
from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.models import load_model, load_tokenizer, pick_device
from tuneforge.rundir import atomic_write_json, atomic_write_text, require, save_config
from tuneforge.train.auto import Hyper, resolve, resolve_batch
from tuneforge.train.classify import class_labels
from tuneforge.train.methods import METHODS, count_parameters
from tuneforge.train.parallel import Parallel, detect
from tuneforge.train.tasks import TASKS, Batch, Task, collate_step, group_losses, step_groups
from tuneforge.train.tracking import Trackers

MODEL_DIR = "model"
BEST = Path("checkpoints") / "best"  # weights of the best validation loss so far (with early stopping)
SCHEDULES: dict[str, Callable[[Any, int, int], Any]] = {
    "cosine": get_cosine_schedule_with_warmup,
    "linear": get_linear_schedule_with_warmup,
    "constant": lambda optimizer, warmup, total: get_constant_schedule_with_warmup(optimizer, warmup),
}
RUN_INFO = "tuneforge.json"


class TrainingError(TuneforgeError):
    """Training cannot go on (for example the loss became NaN)."""


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
    model, hp = setup_model(cfg, device, precision, log, lengths, _loss_share(task, train_set, pad_id))
    _check_memory(model, task, train_set, hp.batch_size, device, precision, log)
    if task.setup is not None:
        task.setup(model, {"train": train_set, "val": val_set}, cfg, device, pad_id, checkpoint is None, log)
    per_epoch = math.ceil(len(train_set) / (hp.batch_size * cfg.train.grad_accum * par.world))
    total_steps = cfg.train.max_steps or max(1, math.ceil(per_epoch * hp.epochs))
    if par.world > 1:
        how = "weights, gradients and optimizer state sharded (FSDP2)" if par.sharded else "a whole model in each"
        log(f"data parallel: {par.world} processes, {hp.batch_size} examples per process per micro-batch, {how}")
    model, params, optimizer, scheduler, state = _optimization(model, cfg, hp, total_steps, checkpoint, par)
    if checkpoint is not None:
        log(f"resuming from {checkpoint} (step {state.step} of {total_steps})")
    metrics_path = run_dir / "metrics.jsonl"
    if par.main:
        _trim_metrics(metrics_path, state.step)
    trackers = Trackers(cfg, active=par.main)
    model.train()
    start = time.perf_counter() - state.elapsed
    bar = tqdm(
        total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True, disable=not par.main
    )
    stream = _endless_steps(task, train_set, cfg, hp.batch_size, pad_id, state.step, par)
    with metrics_path.open("a", encoding="utf-8") if par.main else contextlib.nullcontext() as metrics:
        while state.step < total_steps:
            group, n_loss, n_tokens, n_examples = next(stream)
            loss = optimizer_step(model, group, optimizer, scheduler, params, cfg, device, precision, n_loss, par)
            state.record(loss, n_examples, n_tokens)
            row = state.row(scheduler.get_last_lr()[0], len(train_set), time.perf_counter() - start)
            every = cfg.train.eval_steps or per_epoch
            if val_set and (state.step % every == 0 or state.step == total_steps):
                inner = par.unwrap(model)
                row.update(_validate(inner, val_set, state, cfg, hp.batch_size, device, precision, pad_id, par))
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
        _load_weights(model, run_dir / BEST)
        log(f"keeping the best model: step {state.best_step}, val_loss {state.best_val}")
        state.val_loss = state.best_val
    whole = par.full_state(model)  # a sharded model's weights, gathered by every process
    model_dir = save_model(run_dir, model, tokenizer, cfg, whole) if par.main else run_dir / MODEL_DIR
    par.barrier()
    seconds = time.perf_counter() - start
    return TrainResult(model_dir, state.step, state.last_loss, state.val_loss, state.tokens, seconds, precision)


def _optimization(
    model: Any, cfg: RunConfig, hp: Hyper, total_steps: int, checkpoint: Path | None, par: Parallel
) -> tuple[Any, list[Any], Any, Any, _State]:
    """The model as the engine runs it, its trainable parameters, AdamW, the schedule and the progress, restored
    from `checkpoint` when resuming (weights before the engine wraps the model, the rest after: FSDP2 replaces the
    parameters by shards, so the optimizer is built on the wrapped model)."""
    if checkpoint is not None:
        _checkpoint_part(checkpoint, lambda: _load_weights(model, checkpoint))
    model = par.wrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=cfg.train.weight_decay)
    scheduler = SCHEDULES[cfg.train.lr_scheduler](optimizer, round(cfg.train.warmup_ratio * total_steps), total_steps)
    state = load_checkpoint(checkpoint, model, optimizer, scheduler, par) if checkpoint is not None else _State()
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

    hp, batch_notes = resolve_batch(hp, model, lengths, loss_share, precision, available_memory(device))
    for note in notes + batch_notes:
        log(note)
    trainable, total = count_parameters(model)
    log(
        f"model {cfg.model.name}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%), method {cfg.train.method}, {precision} on {device}"
    )
    return model, hp


def _check_memory(
    model: Any, task: Task, train_set: list[Any], batch_size: int, device: str, precision: str, log: Any
) -> None:
    """Log the memory training will need at its peak; refuse before the first step when it cannot fit."""
    from tuneforge.train.estimate import available_memory, memory_need

    longest = sorted(train_set, key=task.length)[-batch_size:]
    batch = task.collate(longest, 0)
    rows, width = batch.input_ids.shape
    need = memory_need(model, rows, width, _logit_rows(batch), precision)
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


class _State:
    """Progress of one training run: steps, examples and tokens seen, latest losses (saved with checkpoints)."""

    def __init__(self) -> None:
        self.step = 0
        self.examples = 0
        self.tokens = 0
        self.last_loss = float("nan")
        self.val_loss: float | None = None
        self.elapsed = 0.0
        self.best_val: float | None = None
        self.best_step = 0
        self.bad_evals = 0  # evaluations since val_loss last improved

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _State:
        state = cls()
        for key, value in data.items():
            if hasattr(state, key):
                setattr(state, key, value)
        return state

    def record(self, loss: float, examples: int, tokens: int) -> None:
        self.step += 1
        self.examples += examples
        self.tokens += tokens
        self.last_loss = loss

    def row(self, lr: float, n_train: int, elapsed: float) -> dict[str, Any]:
        """The metrics.jsonl line of the latest step."""
        return {
            "step": self.step,
            "epoch": round(self.examples / n_train, 4),
            "loss": round(self.last_loss, 5),
            "lr": lr,
            "tokens_per_s": round(self.tokens / elapsed, 1),
            "elapsed_s": round(elapsed, 2),
        }


def _validate(
    model: Any,
    val_set: list[Any],
    state: _State,
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
            _save_weights(model, cfg.run_dir / BEST)
    else:
        state.bad_evals += 1
    return {"val_loss": state.val_loss, **{f"val_loss_{g}": round(v, 5) for g, v in sorted(losses.items())}}


def _save_weights(model: Any, target: Path) -> None:
    """The trainable weights (adapter or whole model) to `target`, replaced atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".best-", dir=target.parent))
    model.save_pretrained(tmp)
    _swap_in(tmp, target)


def _swap_in(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` in the place of `final` (the old one goes only after the new one is in)."""
    old = final.with_name(f".{final.name}-old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _endless_steps(
    task: Task, train_set: list[Any], cfg: RunConfig, batch_size: int, pad_id: int, done: int, par: Parallel
) -> Iterator[tuple[list[Batch], float, int, int]]:
    """Optimizer steps epoch after epoch (the step budget decides when to stop), the first `done` skipped.

    Each step: this process's micro-batches, and the loss units, tokens and examples of the whole step across
    all processes (every process sees the step's full list of examples, so no communication is needed).
    """
    lengths = [task.length(e) for e in train_set]
    per_step, epoch = batch_size * cfg.train.grad_accum * par.world, 0
    while True:
        groups = step_groups(lengths, per_step, seed=cfg.train.seed + epoch)
        for group in groups[done:]:
            examples = [train_set[i] for i in group]
            mine = collate_step(task, par.shard(examples), batch_size, pad_id)
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
    world = par.world if par is not None else 1  # the engine averages gradients over processes: undo that
    task = TASKS[cfg.train.task]
    total = 0.0
    for batch in group:
        batch = batch.to(device)
        with autocast(device, precision):
            loss = task.loss(model, batch, cfg) / n_loss
        (loss * world).backward()
        total += float(loss.detach())
    if par is not None:
        total = par.total(total)
    if not math.isfinite(total):
        raise TrainingError(
            f"the training loss became {total} at step {scheduler.last_epoch + 1}",
            "lower train.learning_rate, or use train.precision=fp32",
        )
    torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def resolve_precision(choice: str, device: str) -> str:
    """'bf16' or 'fp32': what `train.precision` means on this hardware."""
    if choice != "auto":
        return choice
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    # A CPU without AMX tiles emulates bf16 matmuls: measured 122 vs 172 GFLOP/s for fp32 on an AVX512-BF16 core.
    return "bf16" if torch.cpu._is_amx_tile_supported() else "fp32"


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when `precision` is bf16, else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save_checkpoint(
    run_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: _State, keep: int, par: Parallel | None = None
) -> Path:
    """Write checkpoints/step-N atomically (weights, optimizer, scheduler, RNG, progress); keep the newest `keep`.

    Every process calls it (a sharded model's state is gathered from all of them); the main one writes. The folder
    is written under a temporary name and renamed when complete: a run killed while saving leaves the previous
    checkpoints intact and nothing that --resume would mistake for a checkpoint.
    """
    par = par or Parallel()
    root = run_dir / "checkpoints"
    final = root / f"step-{state.step}"
    weights, optimizer_state = par.full_state(model), par.optimizer_state(model, optimizer)
    if not par.main:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".step-", dir=root))
    model.save_pretrained(tmp, state_dict=weights)
    torch.save(
        {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()},
        tmp / "training_state.pt",
    )
    atomic_write_json(tmp / "trainer_state.json", {**state.to_json(), "python_rng": list(random.getstate()[1])})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    done = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(done, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest finished checkpoint of a run, or None."""
    done = _checkpoints(run_dir)
    return done[-1] if done else None


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, par: Parallel | None = None) -> _State:
    """Restore optimizer, scheduler and RNG from a checkpoint (the weights are loaded before the model is wrapped);
    returns the progress it recorded."""

    def read() -> tuple[dict[str, Any], dict[str, Any]]:
        saved = torch.load(path / "training_state.pt", weights_only=True)
        return saved, json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))

    saved, info = _checkpoint_part(path, read)
    (par or Parallel()).load_optimizer_state(model, optimizer, saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate((3, tuple(info.pop("python_rng")), None))
    return _State.from_json(info)


def _checkpoint_part(path: Path, read: Callable[[], Any]) -> Any:
    """read() a part of a checkpoint; a damaged checkpoint becomes a TrainingError that says what to do."""
    try:
        return read()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TrainingError(
            f"checkpoint {path} cannot be loaded: {str(exc).splitlines()[0]}",
            "delete this checkpoint folder to resume from the one before, or train without --resume",
        ) from None


def _load_weights(model: Any, path: Path) -> None:
    """Load saved weights into `model`: a PEFT adapter, or a whole model's safetensors (one file or shards)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if (path / "adapter_model.safetensors").is_file():
        set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
        return
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(path / name))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:  # a tied head is saved once
        raise ValueError(f"weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


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


def save_model(
    run_dir: Path, model: Any, tokenizer: Any, cfg: RunConfig, state_dict: dict[str, Any] | None = None
) -> Path:
    """Write the final adapter (PEFT) or whole model (full, freeze), safetensors, with tokenizer and chat template,
    to runs/<name>/model atomically (`state_dict`: a sharded model's gathered weights)."""
    final = run_dir / MODEL_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=run_dir))
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(
        tmp / RUN_INFO,
        {
            "base_model": cfg.model.name,
            "revision": cfg.model.revision,
            "method": cfg.train.method,
            "adapter": METHODS[cfg.train.method].adapter,
            "task": cfg.train.task,
            "run": cfg.name,
        },
    )
    _swap_in(tmp, final)
    return final
