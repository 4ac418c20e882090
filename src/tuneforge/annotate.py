"""The RLHF phase's commands: collect preferences in the terminal (`annotate`), turn rated answers into pairs
(`preferences`), and score answers with a trained reward model (`score`)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneforge.console import log, out
from tuneforge.feedback import Annotation, Item, model_sampler, ratings_to_pairs, summary, write_pairs
from tuneforge.launch import user_errors

KEYS = {
    "1": "left",
    "l": "left",
    "\x1b[D": "left",
    "2": "right",
    "r": "right",
    "\x1b[C": "right",
    "t": "tie",
    "b": "both_bad",
    "s": "skip",
    "q": "quit",
    "\x03": "quit",
    "\x04": "quit",
    **{word: word for word in ("left", "right", "tie", "both_bad", "skip", "quit")},
}
KEY_HELP = "← / 1 / l: left is better   → / 2 / r: right is better   t: tie   b: both bad   s: skip   q: quit"


def read_key() -> str:
    """One key press from the terminal (arrow keys as their escape sequence); a line's first word when stdin is not a
    terminal (a pipe, a test)."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            return "q"
        return line.strip() or "s"
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # not TCSAFLUSH (its default): a key pressed early must not be thrown away
        key = os.read(fd, 1).decode(errors="replace")
        if key == "\x1b":
            key += os.read(fd, 2).decode(errors="replace")
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    return key


def show(session: Annotation, annotator: str, item: Item, width: int) -> None:
    """The prompt, then the two answers side by side with the annotator's progress."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    done, total = session.progress(annotator)
    out.rule(escape(f"[{done + 1}/{total}] {annotator}"))
    for message in item.prompt:  # the texts are data: brackets in them are not markup
        out.print(f"[bold]{escape(message['role'])}:[/bold] {escape(str(message['content']))}", highlight=False)
    left, right = session.shown(annotator, item)
    table = Table(show_lines=True, expand=True)
    table.add_column("left (1)")
    table.add_column("right (2)")
    table.add_row(Text(left[:4000]), Text(right[:4000]))  # as written (line breaks kept), never read as markup
    out.print(table)
    out.print(KEY_HELP, highlight=False)


def annotation_loop(session: Annotation, annotator: str, key: Callable[[], str] = read_key) -> int:
    """Show items until every prompt is judged or the annotator quits; returns the judgements given."""
    given = 0
    while (item := session.next_item(annotator)) is not None:
        show(session, annotator, item, out.width)
        choice = None
        while choice is None:  # keys that mean nothing are ignored
            pressed = key()
            choice = KEYS.get(pressed if pressed.startswith("\x1b") else pressed.lower())
        if choice == "quit":
            break
        session.record(annotator, item, choice)
        given += 1
    return given


def annotate(
    model: Annotated[str, typer.Argument(help="A run directory (runs/<name>: its tuned model) or a model id/folder.")],
    prompts: Annotated[Path, typer.Argument(help="Prompts: JSONL (messages or prompt) or a text file, one per line.")],
    out_file: Annotated[Path, typer.Option("--out", help="The preference JSONL to append to.")] = Path(
        "preferences.jsonl"
    ),
    annotator: Annotated[str, typer.Option(help="Your name: tells annotators apart.")] = os.environ.get("USER", ""),
    temperature: Annotated[float, typer.Option(min=0.05, help="Sampling temperature of the two answers.")] = 0.8,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest answer in tokens.")] = 256,
    show_summary: Annotated[
        bool, typer.Option("--summary", help="Only print who judged what and their agreement.")
    ] = False,
) -> None:
    """Judge two sampled answers per prompt side by side (← / → or 1 / 2, t tie, b both bad, s skip, q quit).

    Decisive judgements are appended to --out as preference pairs (prompt, chosen, rejected, annotator, time, model,
    sampling) for train.task=reward or dpo; every judgement goes to <out>.judgements.jsonl. Resumable; several
    annotators can share one file (each sees the same answers, in their own left/right order), and the summary gives
    Cohen's kappa on the prompts two annotators both judged."""
    with user_errors():
        if not show_summary:
            sampler, name = model_sampler(model, temperature, max_tokens)
            sampling = {"temperature": temperature, "max_new_tokens": max_tokens}
            session = Annotation(prompts, out_file, sampler, name, sampling)
            given = annotation_loop(session, annotator)
            done, total = session.progress(annotator)
            log(f"{given} judgement(s) saved; {annotator} has judged {done} of {total} prompts; pairs in {out_file}")
        print_summary(summary(out_file.with_name(out_file.stem + ".judgements.jsonl")))


def print_summary(facts: dict[str, Any]) -> None:
    """Judgements per annotator and the agreement of each pair of annotators."""
    for name, counts in facts["annotators"].items():
        out.print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), highlight=False)
    for pair in facts["agreement"]:
        kappa = "n/a (one kind of judgement only)" if pair["kappa"] is None else pair["kappa"]
        out.print(
            f"{' & '.join(pair['annotators'])}: {pair['items']} prompts judged by both, "
            f"agreement {pair['agreement']}, Cohen's kappa {kappa}",
            highlight=False,
        )


def preferences(
    rated: Annotated[Path, typer.Argument(help="JSONL of rated answers (1-5, thumbs up/down, true/false).")],
    out_file: Annotated[Path, typer.Option("--out", help="Where the preference pairs go.")] = Path("pairs.jsonl"),
    per_prompt: Annotated[
        int | None, typer.Option(min=1, help="At most this many pairs per prompt, drawn at random [default: all].")
    ] = None,
) -> None:
    """Turn rated answers into preference pairs: every two differently rated answers to one prompt, the better one
    chosen, the rating gap as the pair's margin (train.reward_margin). Rows: {"prompt", "answers": [{"text",
    "rating"}]} or one answer per row {"prompt", "answer", "rating"}. Chosen/rejected pairs and HH-RLHF transcripts
    need no conversion: `prepare` reads them as they are."""
    with user_errors():
        result = ratings_to_pairs(rated, per_prompt)
        write_pairs(result.pairs, out_file)
        log(f"{result.answers} rated answers to {result.prompts} prompts -> {len(result.pairs)} pairs in {out_file}")
        if result.unpaired:
            log(
                f"{len(result.unpaired)} prompt(s) made no pair (one answer, or all rated alike), e.g. "
                f"{result.unpaired[0]!r}"
            )


def score(
    run_dir: Annotated[Path, typer.Argument(help="A reward model's run directory (train.task=reward).")],
    prompt: Annotated[str | None, typer.Option(help="The prompt the answers reply to.")] = None,
    answer: Annotated[list[str] | None, typer.Option(help="An answer to score (repeatable).")] = None,
    file: Annotated[Path | None, typer.Option(help="JSONL of {prompt, answer} or {prompt, chosen, rejected}.")] = None,
) -> None:
    """Score answers with a trained reward model: one line per answer (higher is preferred); a file of pairs also
    gets the share the model orders as the file does."""
    from tuneforge.train.rewards import RewardModel

    with user_errors():
        model = RewardModel.at(str(run_dir))
        if file is None:
            if not prompt or not answer:
                raise typer.BadParameter("give --prompt and at least one --answer, or --file")
            for text, value in zip(answer, model.score([{"role": "user", "content": prompt}], answer), strict=True):
                out.print(f"{value:+.4f}  {textwrap.shorten(text, 100)}", highlight=False)
            return
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        right = 0
        for row in rows:
            asked = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"]
            texts = [row["chosen"], row["rejected"]] if "chosen" in row else [row["answer"]]
            texts = [t if isinstance(t, str) else t[-1]["content"] for t in texts]
            values = model.score(asked, texts)
            right += len(values) == 2 and values[0] > values[1]
            out.print(json.dumps({"prompt": row["prompt"], "rewards": [round(v, 4) for v in values]}), highlight=False)
        if rows and "chosen" in rows[0]:
            log(f"the reward model prefers the chosen answer in {right} of {len(rows)} pairs")
