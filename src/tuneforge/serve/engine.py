"""The serving engine: one base model, any number of adapters on it, concurrent requests answered in batches.

One thread, the engine's own, loads the model and runs every generation. PyTorch's OpenMP runtime (libgomp) keeps a
pool of worker threads for each thread that has computed, for as long as that thread lives; once it manages more
threads than there are cores, it stops letting idle workers spin and every small operator waits on a wake-up. A web
server's request threads each computing would leave a pool each: the server answered 5.5 tokens/s that way, 13.6-14.8
with one model thread (bench/serve.py, one request at a time), and a decode loop in one thread ran 2-3x slower while
another thread that had generated was alive. So request threads only queue work and wait, and `close` ends the thread.

Requests for whole answers queue while the model is busy; its next turn takes the oldest one together with the queued
requests that can share its batch (same model, same sampling settings, no seed), up to `max_batch`, so eight clients
at once are answered by one batched generation instead of eight in a row (bench/serve.py measures both). A request
that finds the model idle waits up to GATHER_S for others sent with it (clients that send at once arrive tens of
milliseconds apart: without the wait the first would run alone and hold up the rest). Streamed answers are batched
the same way, with whole ones too: the model thread hands each streamed row's tokens to its request thread as they are
generated, and a row ends as soon as its reader has its answer (or has gone) while the rest of the batch goes on.

Adapters are never merged (unmerging leaves round-off in the base weights); on CPU a batch's decode steps run on packed
weights with the batch's adapter folded in (tuneforge/cpu/weight_packs.py), so an adapter costs no more per step
than the base model, and the packs stay for later batches of any size (one set per adapter, while memory allows).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuneforge.config import ServeConfig
from tuneforge.cpu.weight_packs import packed_weights
from tuneforge.data.tokenize import encode_prompt
from tuneforge.errors import RunError
from tuneforge.generation import Completion, Messages, SamplingParams, TokenQueue, follow, generate, use_adapter
from tuneforge.models import load_adapter, load_model, load_tokenizer, pick_device
from tuneforge.rundir import MODEL_DIR, RUN_INFO

GATHER_S = 0.1  # how long a request that finds the model idle waits for others to join its batch
# transformers' model_max_length when a tokenizer does not know its model's (int(1e30)): any length above is unknown
_UNKNOWN_LENGTH = 10**12


@dataclass(frozen=True)
class ServedModel:
    """A model id clients can ask for, the adapter behind it (None: the base model), and the run directory it was
    trained in (None: the base model) for its report."""

    id: str
    adapter: str | None
    created: int
    run_dir: Path | None = None


class ServingEngine(Protocol):
    """What the app and its routes use of an engine: the Engine below, or a test's fake."""

    @property
    def models(self) -> dict[str, ServedModel]: ...  # model id -> what answers as it

    base_id: str
    default_id: str
    batch_sizes: Counter[int]  # batch size -> how many batches of it ran
    context_length: int | None  # the most tokens a prompt and its answer take together (None: unknown)

    def prompt_tokens(self, messages: Messages, at_most: int) -> int | None: ...

    def text_tokens(self, text: str) -> int: ...

    def complete(self, model_id: str, messages: Messages, params: SamplingParams) -> Completion: ...

    def stream(self, model_id: str, messages: Messages, params: SamplingParams) -> Iterator[str | Completion]: ...

    def close(self) -> None: ...


@dataclass(eq=False)
class _Request:
    """A queued request, for a whole answer or streamed (`tokens`); `done` is set once `result` or `error` is."""

    adapter: str | None
    messages: Messages
    params: SamplingParams
    tokens: TokenQueue | None = None
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: Completion | None = None
    error: BaseException | None = None

    def joins(self, first: _Request) -> bool:
        """Whether this request can be answered in `first`'s batch (a seeded answer is generated alone: its tokens
        must not depend on what else ran with it)."""
        return self.adapter == first.adapter and self.params == first.params and first.params.seed is None


@dataclass(eq=False)
class _Task:
    """A callable for the model thread to run between batches (the tests use one to hold the thread busy)."""

    run: Callable[[], None]


class Engine:
    """Loads the base model once in its own thread, attaches each run's adapter, answers requests (see the module)."""

    def __init__(self, run_dirs: list[Path], max_batch: int = ServeConfig().max_batch, base: str | None = None) -> None:
        """Serve the runs' adapters on their base model; with no runs, the model `base` alone."""
        if not run_dirs and base is None:
            raise RunError("no run directory to serve", "pass at least one run directory, e.g. runs/contracts")
        infos = [_run_info(d) for d in run_dirs] or [{"base_model": base}]
        bases = {i["base_model"] for i in infos}
        if len(bases) > 1:
            raise RunError(
                f"the runs were trained on different base models {sorted(bases)}",
                "serve runs of one base model per server",
            )
        self.base_id = bases.pop()
        self.revision = infos[0].get("revision")
        now = int(time.time())
        self.models: dict[str, ServedModel] = {}
        self.model: Any = None  # set by the model thread once loaded
        adapters: list[tuple[Path, str]] = []
        for run_dir, info in zip(run_dirs, infos[: len(run_dirs)], strict=True):
            name = info.get("run") or run_dir.name
            if name in self.models:
                raise RunError(f"two runs are named {name!r}", "serve runs with different names")
            self.models[name] = ServedModel(name, name, int((run_dir / MODEL_DIR).stat().st_mtime), run_dir)
            adapters.append((run_dir / MODEL_DIR, name))
        self.models[self.base_id] = ServedModel(self.base_id, None, now)
        self.default_id = next(iter(self.models))
        self.tokenizer = load_tokenizer(self.base_id, self.revision)
        self.max_batch = max_batch
        self.batch_sizes: Counter[int] = Counter()  # how many batches of each size ran
        self._queue: list[_Request | _Task | None] = []  # None: the model thread ends
        self._wake = threading.Condition()
        self._closed = False
        loaded: Future[None] = Future()
        self._thread = threading.Thread(target=self._work, args=(adapters, loaded), name="tuneforge-model", daemon=True)
        self._thread.start()
        loaded.result()  # the loading thread's error (a missing or unfitting adapter) is raised here
        self.context_length = context_length(getattr(self.model, "config", None), self.tokenizer)
        self._longest_token = max(map(len, self.tokenizer.get_vocab()), default=1)  # in characters (or bytes)

    def prompt_tokens(self, messages: Messages, at_most: int) -> int | None:
        """Tokens of the conversation's prompt (chat template applied), counted in the calling thread; None when its
        characters alone show it takes more than `at_most` (then it is not tokenized: a huge prompt costs no tokenizer
        time; the bound holds as no token stands for more characters than the longest one of the vocabulary)."""
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        if chars > at_most * self._longest_token:
            return None
        return len(encode_prompt(self.tokenizer, messages))

    def text_tokens(self, text: str) -> int:
        """Tokens of a plain text (no chat template), counted in the calling thread."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def complete(self, model_id: str, messages: Messages, params: SamplingParams) -> Completion:
        """One whole answer, generated in a batch with the requests queued beside it."""
        request = _Request(self.models[model_id].adapter, messages, params)
        self._submit(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def stream(self, model_id: str, messages: Messages, params: SamplingParams) -> Iterator[str | Completion]:
        """Text pieces, then the final Completion: generated in a batch like `complete`'s answers, decoded in this
        thread as the tokens arrive (leaving early ends the answer's row of the batch)."""
        tokens = TokenQueue()
        self._submit(_Request(self.models[model_id].adapter, messages, params, tokens=tokens))
        yield from follow(self.tokenizer, tokens, params)

    def add_adapter(
        self, model_id: str, folder: Path, adapter: str | None = None, run_dir: Path | None = None
    ) -> ServedModel:
        """Serve the adapter in `folder` as `model_id` from now on (a finished fine-tuning job, `run_dir` its run),
        loaded by the model thread between batches under the name `adapter` (default `model_id`; PEFT refuses names
        with a '.', which fine-tuned model ids of such base models have); the packed weights of the adapters already
        served stay."""
        adapter = adapter or model_id
        if model_id in self.models:
            raise RunError(f"a model named {model_id!r} is served already", "give the new one another name")
        done: Future[None] = Future()

        def attach() -> None:
            try:
                self.model = load_adapter(self.model, folder, adapter).eval()
                done.set_result(None)
            except BaseException as exc:
                done.set_exception(exc)

        self._submit(_Task(attach))
        done.result()
        served = ServedModel(model_id, adapter, int(time.time()), run_dir)
        self.models = {**self.models, model_id: served}  # replaced, not changed: request threads iterate over it
        return served

    def remove(self, model_id: str) -> None:
        """Stop serving `model_id` (its adapter stays loaded until the server restarts; nothing routes to it)."""
        if model_id == self.base_id:
            raise RunError(f"the base model {model_id!r} cannot be removed", "name a fine-tuned model")
        self.models = {k: v for k, v in self.models.items() if k != model_id}

    def close(self) -> None:
        """End the model thread once the queued work is done, and wait for it: a thread that computed keeps an OpenMP
        pool while it lives, and a second pool slows every other computing thread (see the module)."""
        with self._wake:  # no request can be queued behind the end marker
            if not self._closed:
                self._closed = True
                self._queue.append(None)
                self._wake.notify()
        self._thread.join()

    def _submit(self, item: _Request | _Task) -> None:
        with self._wake:
            if self._closed:
                raise RunError("this engine is closed", "start a new Engine (or server) to generate again")
            self._queue.append(item)
            self._wake.notify()

    def _work(self, adapters: list[tuple[Path, str]], loaded: Future[None]) -> None:
        """The model thread: load, then take turns from the queue until `close` (a daemon: it ends with the process)."""
        try:
            model = load_model(self.base_id, self.revision, device=pick_device())
            for folder, name in adapters:
                model = load_adapter(model, folder, name)
            self.model = model.eval()
        except BaseException as exc:
            loaded.set_exception(exc)
            return
        loaded.set_result(None)
        # The packed weights (on CPU, a copy of the Linear weights per adapter state, see
        # tuneforge/cpu/weight_packs.py) are kept from batch to batch, for every batch size and, while memory allows,
        # for each adapter served; the engine never changes weights.
        with packed_weights(self.model):
            while (item := self._next()) is not None:
                if isinstance(item, _Task):
                    item.run()
                else:
                    self._answer(item)

    def _next(self) -> _Task | list[_Request] | None:
        """The oldest queued item, a request with those that can join its batch (in arrival order), taken off."""
        with self._wake:
            while not self._queue:
                self._wake.wait()
            first = self._queue[0]
            if not isinstance(first, _Request):
                del self._queue[0]
                return first
            while len(batch := self._joining(first)) < self.max_batch:  # others sent with it may still be arriving
                if (left := first.arrived + GATHER_S - time.monotonic()) <= 0:
                    break
                self._wake.wait(left)
            self._queue = [r for r in self._queue if r not in batch]
        return batch

    def _joining(self, first: _Request) -> list[_Request]:
        batch = [first, *(r for r in self._queue[1:] if isinstance(r, _Request) and r.joins(first))]
        return batch[: self.max_batch]

    def _answer(self, batch: list[_Request]) -> None:
        streamed = [r.tokens for r in batch] if any(r.tokens for r in batch) else None
        try:
            with use_adapter(self.model, batch[0].adapter):
                conversations = [r.messages for r in batch]
                answers = generate(self.model, self.tokenizer, conversations, batch[0].params, follow=streamed)
            for request, answer in zip(batch, answers, strict=True):
                request.result = answer
        except Exception as exc:  # every request of the batch gets the error; the engine goes on
            for request in batch:
                request.error = exc
        finally:
            self.batch_sizes[len(batch)] += 1
            for request in batch:
                if request.result is None and request.error is None:
                    request.error = RuntimeError("the generation was interrupted")
                if request.tokens is not None:
                    request.tokens.end(request.error)
                request.done.set()


def context_length(config: Any, tokenizer: Any) -> int | None:
    """The most tokens the model takes: the smaller of its config's max_position_embeddings and its tokenizer's
    model_max_length, whichever are known (None: neither is)."""
    lengths = (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None))
    known = [n for n in lengths if isinstance(n, int) and 0 < n < _UNKNOWN_LENGTH]
    return min(known, default=None)


def _run_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MODEL_DIR / RUN_INFO
    if not path.is_file():
        raise RunError(
            f"{run_dir} has no trained model ({path} missing)", f"train it first: `tuneforge train {run_dir}`"
        )
    info: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if info.get("task") == "classify":
        raise RunError(
            f"{run_dir} holds a classifier (train.task=classify): it answers with class probabilities, not chat",
            f"`tuneforge serve {run_dir}` serves it as a classifier (POST /v1/classifications, or chat on its name)",
        )
    if not info.get("adapter", True):
        raise RunError(
            f"{run_dir} holds a whole fine-tuned model (train.method={info.get('method')}), not an adapter; the "
            "server attaches adapters to one base model",
            f"`tuneforge serve {run_dir}` serves it as a whole model beside the adapters (a model of its own in "
            "memory)",
        )
    return info
