"""Interactive terminal chat with a tuned run (or its base model)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TextIO

from tuneforge.generation import Completion, Messages, SamplingParams
from tuneforge.rag.answer import cited_numbers
from tuneforge.serve.engine import Engine
from tuneforge.serve.retrieval import RetrievalService, footer, refusal

HELP = (
    "commands: /reset clears the conversation, /system TEXT sets a system prompt, /exit quits; Ctrl-C stops an answer"
)


def chat_loop(
    engine: Engine,
    model_id: str,
    params: SamplingParams,
    read: Callable[[str], str],
    out: TextIO,
    system: str | None = None,
    retrieval: RetrievalService | None = None,
) -> int:
    """Read user turns until /exit or end of input, streaming each answer; returns the number of answers. With
    `retrieval`, each answer uses the passages found for its question and its sources are listed under it."""
    history: Messages = []
    answers = 0
    out.write(f"chatting with {model_id} ({HELP})\n")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return answers
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return answers
        if line == "/reset":
            history = []
            out.write("(conversation cleared)\n")
            continue
        if line.startswith("/system"):
            system = line[len("/system") :].strip() or None
            history = []
            out.write(f"(system prompt {'set' if system else 'removed'}; conversation cleared)\n")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        out.write("assistant> ")
        try:
            answers += _turn(engine, model_id, params, messages, history, out, retrieval)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat; the turn is forgotten
            history.pop()
            out.write(" [interrupted]\n")


def _turn(
    engine: Engine,
    model_id: str,
    params: SamplingParams,
    messages: Messages,
    history: Messages,
    out: TextIO,
    retrieval: RetrievalService | None,
) -> int:
    """One answer, with retrieval when there is an index (the history keeps the question, not the passages)."""
    if retrieval is None:
        return _answer(engine.stream(model_id, messages, params), history, out)
    sources, why = retrieval.sources(messages[-1]["content"], None, None)
    if not sources:
        text = refusal(why)
        out.write(text + "\n")
        history.append({"role": "assistant", "content": text})
        return 1
    with_sources, used = retrieval.messages(messages, sources, engine.text_tokens)
    done = _answer(engine.stream(model_id, with_sources, params), history, out)
    out.write(footer(used, cited_numbers(history[-1]["content"], len(used))).lstrip("\n") + "\n")
    return done


def _answer(pieces: Iterator[str | Completion], history: Messages, out: TextIO) -> int:
    """Print the streamed answer and add it to the history; 1 when it completed."""
    for piece in pieces:
        if isinstance(piece, Completion):
            history.append({"role": "assistant", "content": piece.text})
            if piece.classification:  # a classifier: every class's probability after the label
                shares = sorted(piece.classification["probabilities"].items(), key=lambda kv: -kv[1])
                out.write("  (" + ", ".join(f"{label} {p:.2f}" for label, p in shares) + ")")
            if piece.finish_reason == "length":
                out.write(" [cut at max tokens]")
        else:
            out.write(piece)
            out.flush()
    out.write("\n")
    return 1
