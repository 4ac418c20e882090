"""What the commands print: progress lines, and the tables of an evaluation, a bake-off and retrieved sources (the
command functions in cli.py stay short)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True)  # paths and commands stay on one line, copyable


def log(*parts: object) -> None:
    """Print a stage's progress line as plain text: '[messages[1].role]' or '[EMAIL]' are not rich markup."""
    out.print(*parts, markup=False, highlight=False)


def print_compare(data: dict[str, Any]) -> None:
    """The bake-off table, the skipped approaches and the advice."""
    metric, rows = data.get("metric"), data.get("approaches", {})
    currency = data["settings"]["currency"]
    table = Table(
        "approach", f"{metric.rsplit(':', 1)[-1]} [95% interval]" if metric else "score", "latency p50/p95 s",
        "tokens in/out", "machine-s/1k req", f"{currency}/1k req", "one-off s",
        title=f"bake-off on the {data['split']} split ({data['n']} examples), {data['machine']}",
    )  # fmt: skip
    for name, r in rows.items():
        bounds = r["intervals"].get(metric)
        score = f"{r['scores'][metric]:.3f}" + (f" [{bounds[0]:.2f},{bounds[1]:.2f}]" if bounds else "")
        latency = f"{r['latency']['p50']:.2f} / {r['latency']['p95']:.2f}" if r["latency"]["p50"] is not None else "-"
        table.add_row(
            name, score, latency, f"{r['tokens']['prompt']:.0f} / {r['tokens']['answer']:.0f}",
            f"{r['running']['seconds_per_1k']:.0f}", f"{r['running']['cost_per_1k']:.4f}",
            "-" if r["one_off"]["seconds"] is None else f"{r['one_off']['seconds']:.0f}",
        )  # fmt: skip
    if rows:
        # a narrow or piped terminal (80 columns) would fold every cell
        Console(width=max(out.width, 120), file=out.file).print(table)
    for name, why in data.get("skipped", {}).items():
        log(f"skipped {name}: {why}")
    for finding in data.get("advice", {}).get("findings", []):
        if finding["fired"]:
            log(("" if finding["rule"] == "recommendation" else "  - ") + finding["text"])


def print_sources(sources: list[Any], cited: list[int] | None = None, full: bool = False) -> None:
    if not sources:
        return
    log("\nsources:" if cited is None else f"\nsources (cited: {', '.join(map(str, cited)) or 'none'}):")
    for s in sources:
        score = f"similarity {s.similarity:.3f}" if s.similarity is not None else f"score {s.score:.3f}"
        log(f"[{s.number}] {s.where}" + (f" ({s.title})" if s.title else "") + f"  {score}")
        text = s.text if full or len(s.text) <= 400 else s.text[:400] + " ..."
        log("    " + text.replace("\n", "\n    "))


def print_eval(report: object) -> None:
    from tuneforge.evaluation.forgetting import forgetting_summary
    from tuneforge.evaluation.scores import EvalReport, summary_columns, summary_rows

    assert isinstance(report, EvalReport)
    table = Table(
        "metric",
        *summary_columns(report),
        title=f"{' vs '.join(report.scores)}; scored on the {report.split} split ({report.n} examples)",
    )
    for name, values in summary_rows(report):
        table.add_row(name, *values)
    out.print(table)
    if report.comparison:
        out.print(
            f"score [95% interval] from {report.resamples} bootstrap resamples of each split's examples; * the "
            f"difference is significant (paired bootstrap, p < 0.05; p-values in eval.json)",
            markup=False,
        )
    if report.forgetting:
        out.print(forgetting_summary(report.forgetting), markup=False)
    if report.page:
        out.print(f"report: {report.page} (one self-contained page: open it in any browser)", markup=False)
