"""Answering one approach's prompts, measured: the whole split in batches (quality, throughput, CPU time), a sample
of requests one at a time (latency), and the tokens of each prompt and answer. The answers and what was measured
are saved under a key of everything that decides them (compare/answers.json) and reused while it holds."""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.compare.approaches import Prompt
from tuneforge.config import RunConfig
from tuneforge.cpu.weight_packs import packed_weights
from tuneforge.data.tokenize import encode_prompt
from tuneforge.evaluation.generations import GenerationCache, generation_key
from tuneforge.generation import SamplingParams, generate, generate_texts
from tuneforge.models import device_of


@dataclass
class Measured:
    """One approach's answers with their measurements (generation only; retrieval is timed by the prompts)."""

    outputs: list[str]
    batch_seconds: float  # wall time of answering every asked prompt in batches
    cpu_seconds: float  # this process's CPU time (all threads) in that time
    latency: dict[int, float] = field(default_factory=dict)  # example index -> seconds answering it alone
    prompt_tokens: list[int] = field(default_factory=list)
    answer_tokens: list[int] = field(default_factory=list)
    reused: bool = False

    def extra(self) -> dict[str, Any]:
        """What answers.json keeps beside the outputs."""
        return {
            "batch_seconds": self.batch_seconds,
            "cpu_seconds": self.cpu_seconds,
            "latency": {str(k): v for k, v in self.latency.items()},
            "prompt_tokens": self.prompt_tokens,
            "answer_tokens": self.answer_tokens,
        }


def latency_sample(n: int, requests: int) -> list[int]:
    """`requests` example indices spread evenly over the split (all of them when it is smaller)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(n, requests)).round()}) if n else []


def answer_measured(
    cfg: RunConfig,
    name: str,
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    params: SamplingParams,
    trained: Path | None,
    cache: GenerationCache,
    log: Any,
) -> Measured:
    """Answer every prompt that asks the model (a fixed answer, RAG's refusal, is taken as it is), measured; reused
    from `cache` when the model, prompts, settings and the latency sample are the same as last time."""
    asked = [i for i, p in enumerate(prompts) if p.answer is None]
    conversations = [prompts[i].messages for i in asked]
    sample = [asked[i] for i in latency_sample(len(asked), cfg.compare.latency_requests)]
    # timings are the machine's: another machine (or the GPU) measures again
    key = generation_key(cfg, trained, [*conversations, sample, machine(), device_of(model)], params)
    saved = cache.entry(name, key, len(prompts))
    if saved is not None:
        log(f"{name}: reusing its {len(prompts)} saved answers and timings (same model, prompts and settings)")
        latency = {int(k): float(v) for k, v in saved["latency"].items()}
        return Measured(
            [str(o) for o in saved["outputs"]], saved["batch_seconds"], saved["cpu_seconds"], latency,
            saved["prompt_tokens"], saved["answer_tokens"], reused=True,
        )  # fmt: skip
    latency = {}
    with packed_weights(model):  # as a server holds them: packing the weights is not a request's cost
        if conversations:  # one untimed answer first: the first call's warm-up is not a request's cost either
            generate(model, tokenizer, conversations[:1], params)
        cpu, start = _cpu_time(), time.perf_counter()
        texts = generate_texts(model, tokenizer, conversations, params, cfg.evaluate.batch_size, name)
        _sync(model)
        batch_seconds, cpu_seconds = time.perf_counter() - start, _cpu_time() - cpu
        for i in sample:
            start = time.perf_counter()
            generate(model, tokenizer, [prompts[i].messages], params)
            _sync(model)
            latency[i] = time.perf_counter() - start
    outputs = [p.answer or "" for p in prompts]
    for i, text in zip(asked, texts, strict=True):
        outputs[i] = text
    measured = Measured(outputs, batch_seconds, cpu_seconds, latency)
    measured.prompt_tokens = [len(encode_prompt(tokenizer, p.messages)) if p.answer is None else 0 for p in prompts]
    measured.answer_tokens = [
        len(tokenizer(o, add_special_tokens=False)["input_ids"]) if p.answer is None else 0
        for p, o in zip(prompts, outputs, strict=True)
    ]
    cache.put(name, key, outputs, measured.extra())
    return measured


def _cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sync(model: Any) -> None:
    if device_of(model) == "cuda":
        torch.cuda.synchronize()


def machine() -> str:
    """The machine that answered, for the figures: the GPU's name, or the CPU's model and core count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPU cores"
