"""How much memory training needs and has: the estimate from the model's shape, the memory available, and the peak
measured while a block runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import torch

from tuneforge.train.linear_ce import CHUNK_ELEMENTS
from tuneforge.train.lm import PLAIN_HEAD


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, int]]:
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
    checks it against the probe's measured peak on the embedded model (within 30%; BENCHMARKS.md: ~10% low).
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
