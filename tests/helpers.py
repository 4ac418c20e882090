"""Helpers the tests share (imported as `from helpers import ...`); the fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tuneforge.cpu import weight_packs
from tuneforge.generation import Completion, Messages, SamplingParams
from tuneforge.serve.engine import ServedModel

ROOT = Path(__file__).resolve().parents[1]  # the repository


def chat(user: str, answer: str, system: str | None = None) -> dict[str, object]:
    """One chat example as a JSONL row."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def toy_rows(n: int) -> list[dict[str, object]]:
    """A learnable toy task: answer the colour of a numbered item with a fixed JSON shape."""
    colours = ["red", "green", "blue", "black"]
    return [chat(f"Item {i}: what colour?", json.dumps({"item": i, "colour": colours[i % 4]})) for i in range(n)]


def review_rows(n_pos: int, n_neg: int) -> list[dict[str, str]]:
    """A learnable sentiment task (German and English): the label follows from a few words."""
    good = ["great", "excellent", "wunderbar", "love it", "sehr gut"]
    bad = ["broken", "terrible", "kaputt", "refund", "schlecht"]
    pos = [f"Order {i}: {good[i % 5]}, arrived on day {i % 7}." for i in range(n_pos)]
    neg = [f"Order {i}: {bad[i % 5]}, arrived on day {i % 7}." for i in range(n_neg)]
    return [{"text": t, "label": "pos"} for t in pos] + [{"text": t, "label": "neg"} for t in neg]


def full_logits_loss(model, batch):
    """Summed next-token cross-entropy over the model's whole logits: what tuneforge's faster losses replace."""
    import torch.nn.functional as F

    from tuneforge.data.tokenize import IGNORE_INDEX

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


# .ci/run sets it: there the tests of MKL's packed sgemm must run (and fail where it is missing), not skip.
REQUIRE_MKL = "TUNEFORGE_REQUIRE_MKL"


def has_mkl_packs() -> bool:
    """Whether this torch has MKL's packed sgemm (x86 builds do; ARM ones do not)."""
    return weight_packs.available(torch.nn.Linear(2, 2))


needs_mkl = pytest.mark.skipif(
    not has_mkl_packs() and not os.environ.get(REQUIRE_MKL),
    reason=f"this torch has no MKL packed sgemm (set {REQUIRE_MKL}=1 to fail instead)",
)


def use_mkl_or_skip() -> None:
    """Skip the calling test where this torch has no MKL packed sgemm; fail there when REQUIRE_MKL is set (CI)."""
    if has_mkl_packs():
        return
    if os.environ.get(REQUIRE_MKL):
        pytest.fail(f"{REQUIRE_MKL} is set but this torch has no MKL packed sgemm (torch.ops.mkl._mkl_linear)")
    pytest.skip(f"this torch has no MKL packed sgemm (set {REQUIRE_MKL}=1 to fail instead)")


def stand_in_mkl(monkeypatch: pytest.MonkeyPatch) -> None:
    """MKL's packed sgemm replaced by plain torch (a pack is a copy of the weight, the product F.linear), so the packs'
    bookkeeping (what is packed, folded, kept, dropped) runs on any CPU; the real MKL tests check MKL's own numbers."""
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.ops.mkl, "_mkl_reorder_linear_weight", lambda weight, rows: weight.detach().clone(), raising=False
    )
    monkeypatch.setattr(
        torch.ops.mkl, "_mkl_linear", lambda x, pack, weight, bias, rows: F.linear(x, pack, bias), raising=False
    )


class FakeEngine:
    """The serving engine's interface (tuneforge.serve.engine.ServingEngine) with canned, deterministic answers and no
    model, for tests of HTTP behaviour (like the mock model of Simon Willison's llm); tests of generation use the real
    Engine on the tiny model.

    Four characters of a message make a token (each message costs 4 more, the generation prompt 2). The answer is
    `reply(messages)` (default: "You said: " and the last message), cut at the first stop string and to max_new_tokens
    tokens. What a real engine fails on, it fails on too: text that is not UTF-8, a seed torch refuses, a temperature
    whose sampling breaks, and a prompt plus answer beyond the context (a model with learned positions would index out
    of range): so a fuzz of the app with it finds the requests that would break the real one."""

    def __init__(
        self,
        runs: tuple[str, ...] = ("toy",),
        base_id: str = "fake/base",
        context_length: int | None = 256,
        reply: Callable[[Messages], str] | None = None,
    ) -> None:
        self.models = {name: ServedModel(name, name, 0) for name in runs} | {base_id: ServedModel(base_id, None, 0)}
        self.base_id, self.default_id = base_id, runs[0] if runs else base_id
        self.context_length = context_length
        self.batch_sizes: Counter[int] = Counter()
        self.reply = reply or (lambda messages: f"You said: {messages[-1]['content']}")
        self.asked: list[tuple[str, Messages, SamplingParams]] = []  # every complete/stream call, in order
        self.closed = False

    def prompt_tokens(self, messages: Messages, at_most: int) -> int | None:
        """Tokens of the prompt, or None when its characters alone show it takes more than `at_most`."""
        texts = [m["content"] for m in messages]
        "".join(texts).encode("utf-8")  # a tokenizer takes Unicode text only (lone surrogates raise here)
        if sum(map(len, texts)) > at_most * 4:
            return None
        return sum(-(-len(t) // 4) + 4 for t in texts) + 2

    def text_tokens(self, text: str) -> int:
        """Four characters make a token."""
        return -(-len(text) // 4)

    def complete(self, model_id: str, messages: Messages, params: SamplingParams) -> Completion:
        """The canned answer."""
        self.models[model_id]  # an unknown model fails as in the Engine
        self.asked.append((model_id, messages, params))
        prompt = self.prompt_tokens(messages, 10**9) or 0
        if params.seed is not None:
            torch.Generator().manual_seed(params.seed)  # as generation seeds torch (out of range: RuntimeError)
        if params.temperature > 0:  # sampling's last step, as transformers takes it
            torch.multinomial(torch.softmax(torch.tensor([0.5, 30.0]) / params.temperature, -1), 1)
        if self.context_length is not None and prompt + params.max_new_tokens > self.context_length:
            raise IndexError(f"position {prompt + params.max_new_tokens} is past the context ({self.context_length})")
        whole = self.reply(messages)
        text = whole[: 4 * params.max_new_tokens]
        cut = min((i for s in params.stop if s and (i := text.find(s)) >= 0), default=-1)
        finish = "length" if cut < 0 and len(text) < len(whole) else "stop"
        text = text if cut < 0 else text[:cut]
        self.batch_sizes[1] += 1
        return Completion(text, prompt, -(-len(text) // 4), finish)

    def stream(self, model_id: str, messages: Messages, params: SamplingParams) -> Iterator[str | Completion]:
        """The canned answer in four-character pieces, then its Completion."""
        final = self.complete(model_id, messages, params)
        yield from (final.text[i : i + 4] for i in range(0, len(final.text), 4))
        yield final

    def close(self) -> None:
        self.closed = True
