"""How long training will take and how much memory it needs, from a short measured probe on this machine.

The probe builds the real model with the real method, then runs the real optimizer step of the training loop on
micro-batches of the prepared training split, read by the task's own reader (chat for sft and multitask, texts in
blocks for pretrain, labelled texts for classify, pairs for dpo): first on the longest examples (the memory peak,
sampled while it runs), then on a few typical ones, length-grouped as training groups them (the speed, in real
tokens per second). The estimate scales that speed to the split's token count and the configured epochs; one
no-gradient pass times validation (and DPO's reference pass). Nothing of the probe is kept: the model is thrown away.

`prepare` calls it through the `Estimator` it is given (the data stage does not import the train stage).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.config import RunConfig
from tuneforge.data.estimation import TrainingData
from tuneforge.models import load_tokenizer, pick_device
from tuneforge.rundir import write_jsonl
from tuneforge.train.memory import available_memory, memory_need, peak_memory
from tuneforge.train.precision import autocast, cpu_bf16, resolve_precision
from tuneforge.train.setup import micro_batch_tokens, setup_model
from tuneforge.train.steps import optimizer_step
from tuneforge.train.tasks import TASKS, Task, TaskContext, largest_micro_batch, micro_batches

PROBE_BATCHES = 3  # timed typical micro-batches (after one untimed warm-up on the longest)


def _unmeasurable(cfg: RunConfig, task: Task, data: TrainingData) -> str | None:
    """Why no estimate can be made: records of another kind, or a task whose time goes to sampling answers (grpo,
    best_of_n), which a few probe steps on stand-in rows would not measure."""
    if task.reads != data.kind:
        return f"train.task={cfg.train.task} trains on {task.reads} records, these are {data.kind}"
    if task.rollout is not None or (task.setup is not None and task.reads == "chat"):
        return f"train.task={cfg.train.task} samples its answers while it trains; bench/grpo.py measures its steps"
    return None


def estimate_training(cfg: RunConfig, data: TrainingData) -> dict[str, Any]:
    """Measured speed and peak memory of training `cfg` on the prepared training split `data` describes.

    Returns the figures the data report shows, or {"unavailable": why} when train.task reads other records.
    """
    task = TASKS[cfg.train.task]
    if (why := _unmeasurable(cfg, task, data)) is not None:
        return {"unavailable": why}
    cfg, context = _probe_config(cfg, data.labels)
    device = pick_device()
    precision = resolve_precision(cfg.train.precision, device)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    lengths = data.lengths
    # the answers' share of the tokens is unknown before encoding; half is typical of chat data
    model, hp = setup_model(cfg, device, precision, lambda _: None, lengths.tolist(), 0.5)
    probe = _Probe(cfg, task, context, tokenizer, model, device, precision, data)
    longest, typical = probe_batches(lengths, hp.batch_size, cfg.train.seed)
    fast = cpu_bf16(model, device, precision, cfg.train.method)
    with fast:  # as the training loop runs
        with peak_memory(device) as peak:
            probe.step(longest, hp.batch_size)
        timed = [probe.step(ids, hp.batch_size) for ids in typical]
        eval_per_token = probe.eval_seconds_per_token(typical[0], hp.batch_size)
    seconds, tokens = sum(t for t, _ in timed), sum(n for _, n in timed)
    per_token = seconds / max(tokens, 1)
    total_steps, epochs, train_tokens, eval_s = _scaled(cfg, task, data, hp.batch_size, hp.epochs, eval_per_token)
    parts = probe.memory(longest, hp.batch_size, fast.copy_bytes)
    return {
        "device": device,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "method": cfg.train.method,
        "task": cfg.train.task,
        "batch_size": hp.batch_size,
        "learning_rate": hp.learning_rate,
        "steps": total_steps,
        "epochs": round(epochs, 2),
        "tokens_per_s": round(1 / per_token, 1),
        "train_seconds": round(per_token * train_tokens * epochs, 3),
        "eval_seconds": round(eval_s, 3),  # tiny runs validate in milliseconds
        "peak_memory_bytes": int(peak["bytes"]),
        "weights_bytes": parts["weights"],
        "optimizer_bytes": parts["gradients_and_optimizer"],
        "longest_tokens": int(lengths.max()),
        "available_memory_bytes": available_memory(device),
        "probe_tokens": int(tokens),
    }


def _scaled(
    cfg: RunConfig, task: Task, data: TrainingData, batch_size: int, hp_epochs: float, eval_per_token: float
) -> tuple[int, float, float, float]:
    """The run's optimizer steps, epochs and training tokens, and its validation seconds (DPO's reference pass
    included) from the measured seconds per token of a no-gradient pass."""
    per_epoch = math.ceil(_training_examples(cfg, data.lengths) / (batch_size * cfg.train.grad_accum))
    total_steps = cfg.train.max_steps or max(1, math.ceil(per_epoch * hp_epochs))
    epochs = total_steps / per_epoch
    evals = math.ceil(epochs)  # the loop scores validation at every epoch end and at the last step
    scale = 2.0 if task.reads == "preference" else 1.0  # a pair trains its chosen and its rejected answer
    train_tokens, val_tokens = scale * float(data.lengths.sum()), scale * float(data.val_lengths.sum())
    eval_s = eval_per_token * val_tokens * evals
    if cfg.train.task in ("dpo", "kto") and cfg.train.dpo_reference == "model":  # the reference pass over both splits
        eval_s += eval_per_token * (train_tokens + val_tokens)
    return total_steps, epochs, train_tokens, eval_s


def probe_batches(lengths: np.ndarray, batch_size: int, seed: int) -> tuple[list[int], list[list[int]]]:
    """The longest micro-batch, and PROBE_BATCHES typical ones: runs of neighbours in length order (as the
    length-grouped training batches are) at seeded random places."""
    order = np.argsort(lengths, kind="stable")
    size = min(batch_size, len(order))
    longest = order[len(order) - size :].tolist()
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(order) - size + 1, PROBE_BATCHES)
    return longest, [order[s : s + size].tolist() for s in starts]


def _probe_config(cfg: RunConfig, labels: list[str]) -> tuple[RunConfig, TaskContext]:
    """`cfg` as the probe trains it: a classifier's classes as prepare found them (the splits may not be written
    yet: `prepare --check`), and no class weights (they change no timing, and 'balanced' reads the written split)."""
    data = cfg.data.model_copy(update={"labels": labels}) if labels and not cfg.data.labels else cfg.data
    train = cfg.train.model_copy(update={"class_weights": "none"})
    probe = cfg.model_copy(update={"data": data, "train": train})
    return probe, TaskContext.of(probe)


def _training_examples(cfg: RunConfig, lengths: np.ndarray) -> int:
    """How many examples an epoch has: one per record, but for pretrain its blocks of the concatenated texts
    (each text closed by an end-of-text token)."""
    if cfg.train.task != "pretrain":
        return len(lengths)
    size = cfg.train.block_size or cfg.data.max_seq_len
    return max(1, math.ceil(float(lengths.sum() + len(lengths)) / size))


class _Probe:
    """The probe's model, optimizer and reader: examples are read from records by the task's own reader, through a
    scratch file of prepared rows."""

    def __init__(
        self,
        cfg: RunConfig,
        task: Task,
        context: TaskContext,
        tokenizer: Any,
        model: Any,
        device: str,
        precision: str,
        data: TrainingData,
    ) -> None:
        self.cfg, self.task, self.context, self.tokenizer = cfg, task, context, tokenizer
        self.model, self.device, self.precision, self.data = model, device, precision, data
        self.pad_id = int(tokenizer.pad_token_id)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # learning rate 0: the same work per step, and a throwaway model that cannot diverge whatever train.* says
        self.optimizer = torch.optim.AdamW(self.params, lr=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.max_tokens = micro_batch_tokens(cfg.train, device)
        model.train()

    def examples(self, ids: list[int], size: int) -> list[Any]:
        """`size` examples read from the records `ids` (fewer when they hold fewer; pretrain's blocks can be more)."""
        with tempfile.TemporaryDirectory(prefix="tuneforge-probe-") as folder:
            path = Path(folder) / "probe.jsonl"
            write_jsonl(path, [self.data.fetch(k).to_json() for k in ids])
            return self.task.load(path, self.tokenizer, self.context)[:size]

    def step(self, ids: list[int], size: int) -> tuple[float, int]:
        """Seconds and real tokens of one optimizer step on the examples of records `ids`."""
        examples = self.examples(ids, size)
        parts = micro_batches([self.task.length(e) for e in examples], len(examples), self.max_tokens)
        group = [self.task.collate([examples[i] for i in part], self.pad_id) for part in parts]
        start = time.perf_counter()
        optimizer_step(self.model, group, self.optimizer, self.scheduler, self.params, self.cfg.train, self.device,
                       self.precision)  # fmt: skip
        return time.perf_counter() - start, sum(b.n_tokens for b in group)

    @torch.no_grad()
    def eval_seconds_per_token(self, ids: list[int], size: int) -> float:
        """Seconds per real token of a no-gradient pass (validation, DPO's reference)."""
        batch = self.task.collate(self.examples(ids, size), self.pad_id).to(self.device)
        self.model.eval()
        start = time.perf_counter()
        with autocast(self.device, self.precision):
            self.task.loss(self.model, batch, self.cfg.train)
        self.model.train()
        return (time.perf_counter() - start) / max(batch.n_tokens, 1)

    def memory(self, longest: list[int], size: int, copies: int) -> dict[str, int]:
        """The estimated memory of the longest micro-batch, by part (`memory_need`)."""
        lengths = [self.task.length(e) for e in self.examples(longest, size)]
        part = largest_micro_batch(lengths, len(lengths), self.max_tokens)
        return memory_need(self.model, len(part), max(lengths[i] for i in part), 0, self.precision, copies)
