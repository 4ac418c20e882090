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


def print_export(result: Any) -> None:
    """What an export wrote, how to run it, and its parity check."""
    facts, folder = result.facts, result.folder
    log(f"exported {facts['run']} ({facts['method']} on {facts['base_model']}) --to {result.target} -> {folder}")
    if "gguf" in facts:
        log(f"  {folder / facts['gguf']} ({facts['quantisation']}, {facts['bytes'] / 2**20:.0f} MiB)")
        log(f"  llama.cpp: llama-server -m {folder / facts['gguf']} --jinja")
        log(f"  Ollama: cd {folder} && ollama create {facts['run']} -f Modelfile && ollama run {facts['run']}")
    if "vllm_command" in facts:
        log(f"  vLLM: {facts['vllm_command']}")
        for problem in facts["vllm_problems"]:
            log(f"  warning: {problem}")
    if result.target == "merged":
        log(f"  transformers: AutoModelForCausalLM.from_pretrained('{folder}'); vLLM: vllm serve {folder}")
    if result.target == "classifier" and facts.get("task") == "reward":
        log(f"  transformers: pipeline('text-classification', model='{folder}', function_to_apply='none') (the reward)")
    elif result.target == "classifier":
        log(f"  transformers: pipeline('text-classification', model='{folder}', top_k=None)")
    if result.parity is not None:
        log(result.parity.summary())
    log(f"took {result.seconds:.0f} s; report: {folder / 'export.json'}")


def print_lineage(facts: dict[str, Any]) -> None:
    """A run's lineage: model, code, config, data and splits, weights."""
    base = facts["base_model"]
    log(f"{facts['run']}: {facts['method']} ({facts['task']}) on {base['hub_id']} (revision {base['revision'] or '-'})")
    recorded = facts["recorded"] or {}
    code = recorded.get("code") or {}
    if recorded:
        dirty = " with local changes" if code.get("dirty") else ""
        log(f"  code: tuneforge {code.get('tuneforge')}, commit {code.get('commit') or 'unknown'}{dirty}")
        log(f"  trained at {recorded.get('trained_at')}; config.yaml {recorded.get('config_sha256')}")
        if recorded.get("config_sha256") != facts["config_sha256_now"]:
            log(f"  warning: config.yaml changed since training (now {facts['config_sha256_now']})")
    else:
        log("  code, config and splits at training: not recorded (trained before tuneforge recorded lineage)")
    for source in facts["data_sources"]:
        log(f"  data {source['path']}: {source['sha256'] or 'not a file'}")
    for split, info in (recorded.get("splits") or {}).items():
        log(f"  split {split}: {info['records']} records, {info['sha256']}")
    for weights in facts["model_files"]:
        log(f"  weights {weights['file']}: {weights['sha256']}")
    log(f"  personal data: privacy mode {facts['privacy']['mode']}, found {facts['privacy'].get('found') or 'none'}")
