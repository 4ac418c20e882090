"""One generation helper shared by evaluation, chat and serve: batched generation and token streaming."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tuneforge.cpu.weight_packs import packed_weights
from tuneforge.data.records import Messages
from tuneforge.data.tokenize import encode_prompt


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens: greedy when temperature is 0."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these strings


@dataclass
class Completion:
    """One generated answer with token counts and why it ended ('stop' or 'length')."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    classification: dict[str, Any] | None = None  # a classifier's answer: {"label", "probabilities"}


@contextlib.contextmanager
def use_adapter(model: Any, adapter: str | None, merge: bool = False) -> Iterator[None]:
    """Run the block with `adapter` active, or with adapters off (the base model) when it is None.

    merge=True folds the adapter into the base weights for the block, so it costs nothing per token (generation
    ~15% faster on CPU). Unmerging leaves float round-off in the base weights, so a long-lived server does not
    merge per request; a one-off pass such as evaluation does. A quantized base (QLoRA's 4-bit) is never merged
    into: that would requantize its weights and change what the adapter was trained on.
    """
    if not hasattr(model, "peft_config"):
        yield
        return
    if adapter is None:
        with model.disable_adapter():
            yield
        return
    model.set_adapter(adapter)
    if not merge or getattr(model.get_base_model(), "hf_quantizer", None) is not None:
        yield
        return
    model.merge_adapter([adapter])
    try:
        yield
    finally:
        model.unmerge_adapter()


def generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Messages],
    params: SamplingParams = SamplingParams(),
    follow: list[TokenQueue | None] | None = None,
) -> list[Completion]:
    """Answer each conversation; all are generated in one left-padded batch (on CPU with packed weights, made for this
    call unless a `packed_weights` block around it shares them).

    `follow` streams rows: row i's new tokens go to follow[i] as they are generated (None: a row nobody follows), and
    setting that queue's `cancel` ends the row's generation (the others go on). The caller ends the queues."""
    prompts = [encode_prompt(tokenizer, c) for c in conversations]
    width = max(len(p) for p in prompts)
    pad = int(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    rows: dict[str, Any] = {}
    if follow is not None:
        for row_tokens, prompt in zip(follow, prompts, strict=True):
            if row_tokens is not None:
                row_tokens.prompt_tokens = len(prompt)
        rows = {"streamer": _Rows(follow), "stopping_criteria": StoppingCriteriaList([_Cancelled(follow)])}
    with packed_weights(model) as packs, torch.no_grad(), packs.decode_rows(len(prompts)):
        out = model.generate(input_ids=ids, attention_mask=mask, **_generate_kwargs(tokenizer, params), **rows)
    eos = eos_ids(tokenizer)
    results = []
    for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
        end = next((i for i, t in enumerate(row) if t in eos), None)
        tokens = row if end is None else row[:end]
        text = _decode(tokenizer, tokens)
        cut = _find_stop(text, params.stop)
        finish = "length" if end is None and cut < 0 else "stop"
        results.append(
            Completion(text if cut < 0 else text[:cut], len(prompt), len(tokens) + (end is not None), finish)
        )
    return results


def generate_texts(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Messages],
    params: SamplingParams,
    batch_size: int,
    label: str | None = None,
) -> list[str]:
    """The answers' texts, `batch_size` conversations at a time, the weights packed once for all the batches (a
    progress bar "generate (label)" when `label` is given)."""
    texts: list[str] = []
    starts = range(0, len(conversations), batch_size)
    bar = tqdm(starts, desc=f"generate ({label})", unit="batch", dynamic_ncols=True, disable=label is None)
    with packed_weights(model):
        for start in bar:
            texts += [c.text for c in generate(model, tokenizer, conversations[start : start + batch_size], params)]
    return texts


def stream(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages,
    params: SamplingParams = SamplingParams(),
) -> Iterator[str | Completion]:
    """Yield text pieces as they are generated (by a thread of its own), then one final Completion with the whole
    text and counts. (The serving engine streams through `follow` instead: its model thread generates.)"""
    tokens = TokenQueue()
    finished = threading.Event()

    def work() -> None:
        error = None
        try:
            generate(model, tokenizer, [messages], params, follow=[tokens])
        except BaseException as exc:  # raised in the reader's thread by follow()
            error = exc
        finally:
            tokens.end(error)
            finished.set()

    threading.Thread(target=work, daemon=True).start()
    try:
        yield from follow(tokenizer, tokens, params)
    finally:  # also when the reader stops early: never leave generate() running, the caller may use the model next
        finished.wait()


def follow(
    tokenizer: PreTrainedTokenizerBase, tokens: TokenQueue, params: SamplingParams
) -> Iterator[str | Completion]:
    """Decode a streamed answer as its tokens arrive: text pieces, then the Completion. Leaving early (the client has
    gone), or reaching the end of the answer (EOS or a stop string), cancels the rest of its generation."""
    eos = eos_ids(tokenizer)
    # Text that could be the start of a stop string is held back until it is known not to be one.
    hold = max((len(s) for s in params.stop), default=1) - 1
    answer: list[int] = []
    text, sent, finish, counted = "", 0, "length", 0
    try:
        for token in tokens:
            counted += 1
            if token in eos:
                finish = "stop"
                break
            answer.append(token)
            text = _decode(tokenizer, answer)
            if (cut := _find_stop(text, params.stop)) >= 0:
                text, finish = text[:cut], "stop"
                break
            safe = len(text) - hold
            # An incomplete multi-byte character decodes as U+FFFD until its next token arrives.
            if safe > sent and "\ufffd" not in text[sent:safe]:
                yield text[sent:safe]
                sent = safe
        else:  # the generation ended: at max_new_tokens, or failed
            if tokens.error is not None:
                raise tokens.error
    finally:
        tokens.cancel.set()
    if len(text) > sent:
        yield text[sent:]
    yield Completion(text, tokens.prompt_tokens, counted, finish)


class TokenQueue:
    """One streamed answer's token ids: put by the thread that generates, read (iterated) by the one that decodes.
    Setting `cancel` asks the generation to stop this answer; `end` closes the queue, with the generation's error
    if it failed (raised to the reader by `follow`). `generate` sets `prompt_tokens` before the first token."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        self.prompt_tokens = 0

    def put(self, token: int) -> None:
        self._queue.put(token)

    def end(self, error: BaseException | None = None) -> None:
        self.error = error
        self._queue.put(None)

    def __iter__(self) -> Iterator[int]:
        while (token := self._queue.get()) is not None:
            yield token


class _Rows(BaseStreamer):
    """generate()'s streamer for a batch: each row's new token goes to its queue (None: a row nobody follows)."""

    def __init__(self, queues: list[TokenQueue | None]) -> None:
        self.queues = queues
        self.prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self.prompt:  # generate() first sends the prompts
            self.prompt = False
            return
        for tokens, token in zip(self.queues, value.reshape(-1).tolist(), strict=True):
            if tokens is not None:
                tokens.put(int(token))

    def end(self) -> None:
        """Nothing: the caller ends the queues once it knows whether the generation failed."""


class _Cancelled(StoppingCriteria):
    """Ends the rows whose reader has cancelled them (the other rows go on)."""

    def __init__(self, queues: list[TokenQueue | None]) -> None:
        self.queues = queues

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        done = [tokens is not None and tokens.cancel.is_set() for tokens in self.queues]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _decode(tokenizer: PreTrainedTokenizerBase, tokens: list[int]) -> str:
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    assert isinstance(text, str)  # one sequence in, one string out
    return text


def _find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    return min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)


def eos_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return ids


def _generate_kwargs(tokenizer: PreTrainedTokenizerBase, params: SamplingParams) -> dict[str, Any]:
    if params.seed is not None:
        torch.manual_seed(params.seed)
    sampling = params.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "do_sample": sampling,
        "pad_token_id": int(tokenizer.pad_token_id),
        "eos_token_id": sorted(eos_ids(tokenizer)),
    }
    if sampling:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    else:  # silence the model's own sampling defaults
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs
