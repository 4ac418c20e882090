"""The parity check: the exported model, loaded by its target runtime, against tuneforge's own on the run's held-out
prompts. Per prompt it compares the prompt's tokens (the chat template), the next-token log-probabilities (the
reference's 10 likeliest tokens) and the greedy answer, including where it stops (the end-of-turn token); and it
scores both sets of answers with the run's own metrics, so a quantisation's loss is said in the run's terms.

A different prompt or an answer that runs on where tuneforge's stops is a template or EOS mismatch: the check fails
loudly. Log-probabilities must agree within LOSSLESS_TOLERANCE for a lossless target (merged, peft, classifier); a
GGUF reports how far they moved (llama.cpp keeps its attention cache in f16, so even an f32 file moves ~1e-2).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from tuneforge.cpu.weight_packs import packed_weights
from tuneforge.data.records import chat_prompts
from tuneforge.data.tokenize import encode_prompt
from tuneforge.errors import RunError
from tuneforge.evaluation.scores import chosen_metrics
from tuneforge.generation import Messages, SamplingParams, eos_ids, generate
from tuneforge.rundir import read_jsonl, split_path

LOSSLESS_TOLERANCE = 1e-3  # max |log p| difference on the likeliest tokens, fp32 against fp32 (round-off only)
TOP_TOKENS = 10
SHOWN = 3  # disagreements quoted in the report


@dataclass
class Answer:
    text: str
    stopped: bool  # ended at an end token (False: ran to max_new_tokens)


class Runtime(Protocol):
    """A model in some runtime, as the check uses it."""

    name: str

    def prompt_ids(self, messages: Messages) -> list[int]: ...

    def next_logprobs(self, ids: list[int]) -> np.ndarray: ...

    def answer(self, messages: Messages, max_new_tokens: int) -> Answer: ...

    def stops_at(self, ids: set[int]) -> set[int]: ...


class TuneforgeRuntime:
    """tuneforge's own: its prompt encoding, its generation (the end tokens it stops at), its model."""

    name = "tuneforge"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self._packs = contextlib.ExitStack()
        self._packs.enter_context(packed_weights(model))

    def prompt_ids(self, messages: Messages) -> list[int]:
        return encode_prompt(self.tokenizer, messages)

    @torch.no_grad()
    def next_logprobs(self, ids: list[int]) -> np.ndarray:
        return _last_logprobs(self.model, ids)

    def answer(self, messages: Messages, max_new_tokens: int) -> Answer:
        # generate() uses the packed weights entered in __init__: one set for every prompt, as a server keeps them
        done = generate(self.model, self.tokenizer, [messages], SamplingParams(max_new_tokens=max_new_tokens))[0]
        return Answer(done.text, done.finish_reason == "stop")

    def stops_at(self, ids: set[int]) -> set[int]:
        return ids & eos_ids(self.tokenizer)


class TransformersRuntime:
    """A folder as plain transformers loads it: its tokenizer's chat template, its generation_config's end tokens."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.eos = set(_as_list(model.generation_config.eos_token_id))

    def prompt_ids(self, messages: Messages) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(i) for i in ids]

    @torch.no_grad()
    def next_logprobs(self, ids: list[int]) -> np.ndarray:
        return _last_logprobs(self.model, ids)

    @torch.no_grad()
    def answer(self, messages: Messages, max_new_tokens: int) -> Answer:
        ids = torch.tensor([self.prompt_ids(messages)])
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None)  # fmt: skip
        new = out[0, ids.shape[1] :].tolist()
        end = next((i for i, t in enumerate(new) if t in self.eos), None)
        text = self.tokenizer.decode(new if end is None else new[:end], skip_special_tokens=True)
        return Answer(text.strip(), end is not None)

    def stops_at(self, ids: set[int]) -> set[int]:
        return ids & self.eos


def _as_list(value: Any) -> list[int]:
    return [] if value is None else [int(v) for v in (value if isinstance(value, list | tuple) else [value])]


def _last_logprobs(model: Any, ids: list[int]) -> np.ndarray:
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, -1).numpy()


@dataclass
class Parity:
    """What the check found (see the module)."""

    runtime: str
    prompts: int
    same_prompt: int = 0
    same_answers: int = 0
    eos_mismatches: int = 0
    missing_end_tokens: list[int] = field(default_factory=list)  # tuneforge stops at them, the export does not
    max_logprob_diff: float = 0.0
    common_prefix: float = 1.0  # mean share of tuneforge's answer the export's repeats before they part
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {tuneforge, export}
    examples: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (
            f"parity ({self.runtime}): identical greedy answers {self.same_answers}/{self.prompts} (common prefix "
            f"{self.common_prefix:.0%}), same prompt "
            f"tokens {self.same_prompt}/{self.prompts}, max next-token log-prob difference {self.max_logprob_diff:.2g}"
        )
        scores = "; ".join(f"{name} {v['tuneforge']:.3f} -> {v['export']:.3f}" for name, v in self.metrics.items())
        return head + (f"; run's metrics (tuneforge -> export): {scores}" if scores else "")


def check_chat(
    cfg: Any, reference: Runtime, target: Runtime, limit: int, max_new_tokens: int, lossless: bool
) -> Parity:
    """Compare `target` with `reference` on the first `limit` prompts of the run's test split (see the module)."""
    prompts, references = held_out_prompts(cfg, limit)
    result = Parity(target.name, len(prompts))
    ends = reference.stops_at(set(range(_vocabulary(reference))))
    result.missing_end_tokens = sorted(ends - target.stops_at(ends))
    ours, theirs = [], []
    for messages in tqdm(prompts, desc=f"parity ({target.name})", unit="prompt", dynamic_ncols=True):
        ids_r, ids_t = reference.prompt_ids(messages), target.prompt_ids(messages)
        result.same_prompt += ids_r == ids_t
        lp_r, lp_t = reference.next_logprobs(ids_r), target.next_logprobs(ids_t)
        top = [int(t) for t in np.argsort(lp_r)[-TOP_TOKENS:] if t < len(lp_t)]
        diff = float(np.max(np.abs(lp_r[top] - lp_t[top]))) if top else math.inf
        result.max_logprob_diff = max(result.max_logprob_diff, diff)
        a, b = reference.answer(messages, max_new_tokens), target.answer(messages, max_new_tokens)
        ours.append(a.text)
        theirs.append(b.text)
        result.same_answers += a.text == b.text
        runs_on = a.stopped and not b.stopped and b.text.startswith(a.text)
        result.eos_mismatches += runs_on
        if (a.text != b.text or ids_r != ids_t) and len(result.examples) < SHOWN:
            result.examples.append({"prompt": messages[-1]["content"][:200], "tuneforge": a.text, "export": b.text,
                                    "same_prompt_tokens": ids_r == ids_t})  # fmt: skip
    for name, metric in chosen_metrics(cfg).items():
        if metric.kind == "text":
            result.metrics[name] = {
                "tuneforge": round(float(metric.score(ours, references)), 4),
                "export": round(float(metric.score(theirs, references)), 4),
            }
    shared = [len(os.path.commonprefix([a, b])) / max(len(a), 1) for a, b in zip(ours, theirs, strict=True)]
    result.common_prefix = round(float(np.mean(shared)), 4) if shared else 1.0
    _judge(result, lossless)
    return result


def held_out_prompts(cfg: Any, limit: int) -> tuple[list[Messages], list[str]]:
    """Up to `limit` prompts of the test split (else val) and their reference answers: chat rows up to their last
    answer, preference pairs' prompts with the chosen answer."""
    rows: list[dict[str, Any]] = []
    for split in ("test", "val"):
        path = split_path(cfg.run_dir, split)
        rows = read_jsonl(path)[:limit] if path.is_file() else []
        if rows:
            break
    if not rows or not ("messages" in rows[0] or "prompt" in rows[0]):
        raise RunError(
            f"{cfg.run_dir} has no held-out chat prompts to compare answers on (test or val split of chat or "
            "preference records)",
            "export with --no-check, or prepare a test split (data.test_size > 0)",
        )
    if "messages" in rows[0]:
        return chat_prompts(rows)
    return [r["prompt"] for r in rows], [str(r["chosen"][-1]["content"]) for r in rows]


def _judge(result: Parity, lossless: bool) -> None:
    if result.same_prompt < result.prompts:
        result.problems.append(
            f"chat template mismatch: {result.prompts - result.same_prompt} of {result.prompts} prompts are encoded "
            f"differently by {result.runtime} (the exported chat template or special tokens differ from training's)"
        )
    if result.missing_end_tokens:
        result.problems.append(
            f"EOS mismatch: token(s) {result.missing_end_tokens} end tuneforge's answers but not {result.runtime}'s "
            f"(the exported generation config or GGUF lacks the chat's end-of-turn token: answers would run on)"
        )
    elif result.eos_mismatches:
        result.problems.append(
            f"EOS mismatch: {result.eos_mismatches} answers run on past the point where tuneforge's stop (the "
            f"exported end-of-turn token is missing from the end tokens {result.runtime} stops at)"
        )
    if lossless and result.max_logprob_diff > LOSSLESS_TOLERANCE:
        result.problems.append(
            f"log-probabilities differ by up to {result.max_logprob_diff:.3g} (tolerance {LOSSLESS_TOLERANCE:g} for a "
            f"lossless export): the exported weights are not the tuned model's"
        )


def _vocabulary(runtime: Runtime) -> int:
    """The reference's vocabulary size (the ids whose end-token role is compared)."""
    return len(getattr(runtime, "tokenizer"))  # noqa: B009  # the reference is tuneforge's, which has a tokenizer
