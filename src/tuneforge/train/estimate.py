"""How long training will take and how much memory it needs, from a short measured probe on this machine.

The probe builds the real model with the real method, then runs the real optimizer step of the training loop on
micro-batches of the prepared training split: first on the longest examples (the memory peak, sampled while it
runs), then on a few typical ones, length-grouped as training groups them (the speed, in real tokens per
second). The estimate scales that speed to the split's token count and the configured epochs; one no-gradient
pass times validation. Nothing of the probe is kept: the model is thrown away.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import psutil
import torch

from tuneforge.config import RunConfig
from tuneforge.data.records import Record
from tuneforge.data.tokenize import Encoded, encode_chat
from tuneforge.models import load_tokenizer, pick_device
from tuneforge.train.linear_ce import CHUNK_ELEMENTS
from tuneforge.train.lm import PLAIN_HEAD, collate, loss_sum
from tuneforge.train.loop import micro_batch_tokens, optimizer_step, setup_model
from tuneforge.train.precision import autocast, cpu_bf16, resolve_precision
from tuneforge.train.tasks import largest_micro_batch, micro_batches

PROBE_BATCHES = 3  # timed typical micro-batches (after one untimed warm-up on the longest)


def estimate_training(
    cfg: RunConfig, lengths: np.ndarray, fetch: Callable[[int], Record], val_lengths: np.ndarray
) -> dict[str, Any]:
    """Measured speed and peak memory of training `cfg` on a split whose examples have `lengths` tokens.

    `fetch(k)` returns the k-th training record. Returns the figures the data report shows.
    """
    device = pick_device()
    precision = resolve_precision(cfg.train.precision, device)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)
    # the answers' share of the tokens is unknown before encoding; half is typical of chat data
    model, hp = setup_model(cfg, device, precision, lambda _: None, lengths.tolist(), 0.5)
    pad_id = int(tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    # learning rate 0: the same work per step, and a throwaway model that cannot diverge whatever train.* says
    optimizer = torch.optim.AdamW(params, lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model.train()

    max_tokens = micro_batch_tokens(cfg, device)

    def run(batch_ids: list[int]) -> tuple[float, int]:
        examples = [_encode(tokenizer, fetch(k)) for k in batch_ids]
        parts = micro_batches([len(e.input_ids) for e in examples], len(examples), max_tokens)
        group = [collate([examples[i] for i in part], pad_id) for part in parts]
        start = time.perf_counter()
        optimizer_step(model, group, optimizer, scheduler, params, cfg, device, precision)
        return time.perf_counter() - start, sum(b.n_tokens for b in group)

    longest, typical = probe_batches(lengths, hp.batch_size, cfg.train.seed)
    fast = cpu_bf16(model, device, precision, cfg.train.method)
    with fast:  # as the training loop runs
        with _peak_memory(device) as peak:
            run(longest)
        timed = [run(ids) for ids in typical]
        eval_per_token = _eval_seconds_per_token(model, tokenizer, typical[0], fetch, pad_id, device, precision)
    seconds, tokens = sum(t for t, _ in timed), sum(n for _, n in timed)
    per_token = seconds / max(tokens, 1)
    per_epoch = math.ceil(len(lengths) / (hp.batch_size * cfg.train.grad_accum))
    total_steps = cfg.train.max_steps or max(1, math.ceil(per_epoch * hp.epochs))
    epochs = total_steps / per_epoch
    evals = math.ceil(epochs)  # the loop scores validation at every epoch end and at the last step
    train_s = per_token * float(lengths.sum()) * epochs
    eval_s = eval_per_token * float(val_lengths.sum()) * evals
    peak_lengths = lengths[longest].tolist()
    part = largest_micro_batch(peak_lengths, len(longest), max_tokens)
    parts = memory_need(model, len(part), max(peak_lengths[i] for i in part), 0, precision, fast.copy_bytes)
    return {
        "device": device,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "method": cfg.train.method,
        "batch_size": hp.batch_size,
        "learning_rate": hp.learning_rate,
        "steps": total_steps,
        "epochs": round(epochs, 2),
        "tokens_per_s": round(1 / per_token, 1),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "peak_memory_bytes": int(peak["bytes"]),
        "weights_bytes": parts["weights"],
        "optimizer_bytes": parts["gradients_and_optimizer"],
        "longest_tokens": int(lengths.max()),
        "available_memory_bytes": available_memory(device),
        "probe_tokens": int(tokens),
    }


def probe_batches(lengths: np.ndarray, batch_size: int, seed: int) -> tuple[list[int], list[list[int]]]:
    """The longest micro-batch, and PROBE_BATCHES typical ones: runs of neighbours in length order (as the
    length-grouped training batches are) at seeded random places."""
    order = np.argsort(lengths, kind="stable")
    size = min(batch_size, len(order))
    longest = order[len(order) - size :].tolist()
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(order) - size + 1, PROBE_BATCHES)
    return longest, [order[s : s + size].tolist() for s in starts]


def _encode(tokenizer: Any, record: Record) -> Encoded:
    return encode_chat(tokenizer, record.data["messages"], record.data.get("tools"))


@torch.no_grad()
def _eval_seconds_per_token(
    model: Any, tokenizer: Any, ids: list[int], fetch: Callable[[int], Record], pad_id: int, device: str, precision: str
) -> float:
    batch = collate([_encode(tokenizer, fetch(k)) for k in ids], pad_id)
    batch = batch.to(device)
    model.eval()
    start = time.perf_counter()
    with autocast(device, precision):
        loss_sum(model, batch)
    return (time.perf_counter() - start) / max(batch.n_tokens, 1)


@contextmanager
def _peak_memory(device: str) -> Iterator[dict[str, int]]:
    """The peak memory of the block: GPU memory on CUDA, else resident memory sampled every 5 ms."""
    peak = {"bytes": 0}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        yield peak
        peak["bytes"] = torch.cuda.max_memory_allocated()
        return
    process, done = psutil.Process(), threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["bytes"] = max(peak["bytes"], process.memory_info().rss)
            done.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        peak["bytes"] = max(peak["bytes"], process.memory_info().rss)


def available_memory(device: str) -> int:
    """Memory a training process could use: free GPU memory, or available RAM plus what this process holds."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    return int(psutil.virtual_memory().available + psutil.Process().memory_info().rss)


RUNTIME_BYTES = 400 * 2**20  # Python, torch and transformers themselves (RSS of an idle process with them loaded)


def memory_need(
    model: Any, batch_size: int, longest: int, loss_tokens: int, precision: str, copies: int = 0
) -> dict[str, int]:
    """Bytes training needs at its peak, by part, from the model's shape (no probe: it runs before training);
    `copies`: the bytes of the bf16 copies of frozen weights the run holds besides (`precision.bf16_copy_bytes`).

    Activations follow a Llama-style block: per token and layer about 11 x hidden (norm inputs, q/k/v before and
    after the rotary embedding, attention output, residuals) + 4 x intermediate values are kept for the backward
    pass, plus attention statistics (heads x sequence length); the output layer keeps logits, their softmax and
    gradient for the loss tokens only (for one chunk of them where the loss is chunked: linear_ce). A slow test
    checks it against the probe's measured peak on the embedded model (README: within 10%).
    """
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    hidden = int(config.hidden_size)
    inter = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    layers, heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    width = 6 if precision == "bf16" else 4  # autocast keeps bf16 copies beside fp32 tensors
    tokens = batch_size * longest
    vocab = int(config.vocab_size)
    chunked = config.model_type in PLAIN_HEAD
    logit_rows = min(loss_tokens, max(1, CHUNK_ELEMENTS // vocab)) if chunked else loss_tokens
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parts = {
        "weights": sum(p.numel() * p.element_size() for p in model.parameters()) + copies,
        "gradients_and_optimizer": trainable * 12,  # fp32 gradient + AdamW's two moments
        "activations": tokens * layers * ((11 * hidden + 4 * inter) * width + heads * longest * 8),
        "logits": logit_rows * vocab * 12,
        "runtime": RUNTIME_BYTES,
    }
    return {**parts, "total": sum(parts.values())}
