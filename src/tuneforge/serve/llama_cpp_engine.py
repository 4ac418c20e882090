"""A GGUF export served by llama.cpp behind the same API (`tuneforge serve --gguf FILE`): the fast path for one
request at a time on a CPU (BENCHMARKS.md "Export and serving paths": 2.3-3x tuneforge's own decode at batch 1).

llama-cpp-python decodes one sequence at a time, so requests take turns (a lock); the prompt is built from the chat
template embedded in the file, as the export's parity check builds it, and the answer ends at the file's
end-of-generation tokens or a stop string.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import RunError
from tuneforge.export.gguf import LlamaCppRuntime
from tuneforge.generation import Completion, Messages, SamplingParams
from tuneforge.serve.engine import ServedModel

CONTEXT = 4096  # tokens of prompt and answer together (llama.cpp allocates its cache for this many)


class LlamaCppEngine:
    """The ServingEngine of one GGUF file, named after the run it was exported from (its export.json)."""

    def __init__(self, path: Path, context: int = CONTEXT) -> None:
        if not path.is_file() or path.suffix != ".gguf":
            raise RunError(f"{path} is no GGUF file", "export one: tuneforge export runs/<name> --to gguf")
        try:
            self.runtime = LlamaCppRuntime(path, context)
        except ImportError:
            raise RunError("serving a GGUF file needs llama.cpp", 'pip install -e ".[gguf]"') from None
        self.llm = self.runtime.llm
        self.base_id = _run_name(path.parent / "export.json") or path.stem
        self.models = {self.base_id: ServedModel(self.base_id, None, int(path.stat().st_mtime))}
        self.default_id = self.base_id
        self.batch_sizes: Counter[int] = Counter()
        self.context_length: int | None = context
        self._lock = threading.Lock()

    def prompt_tokens(self, messages: Messages, at_most: int) -> int | None:
        return len(self.runtime.prompt_ids(messages))

    def text_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def complete(self, model_id: str, messages: Messages, params: SamplingParams) -> Completion:
        pieces = list(self.stream(model_id, messages, params))
        done = pieces[-1]
        assert isinstance(done, Completion)
        return done

    def stream(self, model_id: str, messages: Messages, params: SamplingParams) -> Iterator[str | Completion]:
        """Text pieces as llama.cpp generates them, then the whole Completion."""
        prompt = self.runtime.prompt_ids(messages)
        options: dict[str, Any] = {
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stop": list(params.stop) or None,
            "stream": True,
        }
        if params.seed is not None:
            options["seed"] = params.seed
        if params.temperature == 0:
            options["top_k"] = 1  # greedy
        text, finish, count = "", "length", 0
        with self._lock:  # one sequence at a time
            self.batch_sizes[1] += 1
            for chunk in self.llm.create_completion(prompt, **options):
                choice: Any = chunk["choices"][0]  # type: ignore[index]
                piece = choice.get("text") or ""
                if piece:
                    count += 1
                    text += piece
                    yield piece
                if choice.get("finish_reason"):
                    finish = "stop" if choice["finish_reason"] == "stop" else "length"
        tokens = len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0
        yield Completion(text, len(prompt), max(tokens, count) + (finish == "stop"), finish)

    def close(self) -> None:
        self.llm.close()


def _run_name(report: Path) -> str | None:
    """The run an export came from (export.json's "run"), if the file sits in an export folder."""
    if not report.is_file():
        return None
    run = json.loads(report.read_text(encoding="utf-8")).get("run")
    return str(run) if run else None
