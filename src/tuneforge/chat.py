"""Interactive terminal chat with a tuned run (or its base model)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TextIO

from tuneforge.generation import Completion, Messages, SamplingParams
from tuneforge.serve.engine import Engine

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
) -> int:
    """Read user turns until /exit or end of input, streaming each answer; returns the number of answers."""
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
            answers += _answer(engine.stream(model_id, messages, params), history, out)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat; the turn is forgotten
            history.pop()
            out.write(" [interrupted]\n")


def _answer(pieces: Iterator[str | Completion], history: Messages, out: TextIO) -> int:
    """Print the streamed answer and add it to the history; 1 when it completed."""
    for piece in pieces:
        if isinstance(piece, Completion):
            history.append({"role": "assistant", "content": piece.text})
            if piece.finish_reason == "length":
                out.write(" [cut at max tokens]")
        else:
            out.write(piece)
            out.flush()
    out.write("\n")
    return 1
