"""`compare`: prompt vs few-shot vs RAG vs fine-tune vs fine-tune+RAG on the run's held-out split, with the same
metrics and decoding settings for all; writes compare.json, compare/prompts.jsonl and compare/predictions.jsonl,
and the bake-off section of report.html."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.compare.advisor import Evidence, advise
from tuneforge.compare.approaches import MODEL_OF, RETRIEVES, FewShot, Prompt, Retriever, build_prompts, rag_prompt
from tuneforge.compare.ingredients import (
    Ingredients,
    ensure_splits,
    fine_tuned,
    load_models,
    open_retrieval,
    raft_tuned,
    trained_folder,
    training_cost,
)
from tuneforge.compare.measure import Measured, answer_measured, machine
from tuneforge.compare.raft import holds_answer
from tuneforge.compare.scoring import disagreements, ranking_metric, score_approaches
from tuneforge.config import RunConfig
from tuneforge.data.records import chat_prompts
from tuneforge.errors import ConfigError, RunError
from tuneforge.evaluation.generations import GenerationCache
from tuneforge.evaluation.predictions import redactor
from tuneforge.evaluation.report import write_report
from tuneforge.evaluation.scores import chosen_metrics
from tuneforge.generation import SamplingParams, use_adapter
from tuneforge.models import load_tokenizer
from tuneforge.rundir import COMPARE, COMPARE_DIR, atomic_write_json, read_jsonl, split_path, write_jsonl
from tuneforge.train.tasks import TASKS


@dataclass
class CompareResult:
    """compare.json's content, and where the report page is."""

    data: dict[str, Any]
    page: Path | None = None


def compare(cfg: RunConfig, log: Any = print, retriever: Retriever | None = None) -> CompareResult:
    """Measure every approach of compare.approaches on the run's held-out split and advise which to use
    (`retriever`: passages for a question, instead of the index of rag.* — tests pass a fake)."""
    start = time.perf_counter()
    _check(cfg)
    ensure_splits(cfg, log)
    rows = read_jsonl(split_path(cfg.run_dir, cfg.evaluate.split))[: cfg.evaluate.limit]
    if not rows:
        raise RunError(f"the {cfg.evaluate.split} split of {cfg.run_dir} holds no examples", "prepare more data")
    prompts, references = chat_prompts(rows)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.revision)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    parts = Ingredients(retriever=retriever)
    open_retrieval(cfg, parts, log)
    _carry_index_cost(cfg, parts)
    fine_tuned(cfg, parts, log)
    raft_tuned(cfg, parts, count, log)
    built = _prompts(cfg, parts, prompts, count)
    if not built:
        reasons = "; ".join(f"{a}: {why}" for a, why in parts.skipped.items())
        raise RunError(f"no approach of compare.approaches can run ({reasons})", "add what they miss, named above")
    models = load_models(cfg, parts.folders)
    measured = _answer(cfg, built, models, tokenizer, parts, log)
    data = _results(cfg, parts, built, measured, references, rows)
    data["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(cfg.run_dir / COMPARE, data)
    return CompareResult(data, write_report(cfg.run_dir))


def _carry_index_cost(cfg: RunConfig, parts: Ingredients) -> None:
    """An index that was up to date cost nothing now: its one-off cost is what building it cost, as the last
    bake-off measured it (when it did)."""
    if parts.index is None or parts.index.get("seconds") is not None or not (cfg.run_dir / COMPARE).is_file():
        return
    try:
        before = json.loads((cfg.run_dir / COMPARE).read_text(encoding="utf-8"))
        parts.index["seconds"] = ((before.get("facts") or {}).get("index") or {}).get("seconds")
    except (OSError, ValueError, AttributeError):
        pass  # a damaged compare.json only loses the carried figure


def _check(cfg: RunConfig) -> None:
    """What can fail before anything is trained or generated fails first: the task, the metric, named runs."""
    task = TASKS[cfg.train.task]
    if cfg.train.task != "sft" or not task.generative:
        raise ConfigError(
            f"tuneforge compare measures generated answers to chat examples; train.task={cfg.train.task} is not that",
            "compare a train.task=sft run (chat, instruction or prompt/completion data); a classifier is scored by "
            "`tuneforge evaluate`",
        )
    ranking_metric(cfg, chosen_metrics(cfg))
    for field, approach in (("finetune_run", "finetune"), ("raft_run", "finetune+rag")):
        named = getattr(cfg.compare, field)
        if named is not None and approach in cfg.compare.approaches and not trained_folder(Path(named)):
            raise ConfigError(
                f"compare.{field}={named} holds no trained model (no model/ with adapter_config.json or config.json)",
                "name a trained run directory or model folder (relative to the working directory), or unset it",
            )


def _prompts(cfg: RunConfig, parts: Ingredients, prompts: list[Any], count: Any) -> dict[str, list[Prompt]]:
    """Each runnable approach's prompts (an approach missing an ingredient is skipped with the reason)."""
    fewshot = None
    if "fewshot" in cfg.compare.approaches:
        train_path = split_path(cfg.run_dir, "train")
        train_rows = read_jsonl(train_path) if train_path.is_file() else []
        if train_rows:
            fewshot = FewShot(*chat_prompts(train_rows), k=cfg.compare.fewshot_k)
        else:
            parts.skipped["fewshot"] = "no training examples to show: the train split is empty"
    cache: dict[str, Prompt] = {}

    def rag(prompt: Any) -> Prompt:  # rag and finetune+rag retrieve once per question
        key = repr(prompt)
        if key not in cache:
            cache[key] = rag_prompt(prompt, parts.retriever, cfg.rag.top_k, count, cfg.rag.context_tokens)
        return cache[key]

    built: dict[str, list[Prompt]] = {}
    for approach in cfg.compare.approaches:
        if approach in parts.skipped or (MODEL_OF[approach] != "base" and MODEL_OF[approach] not in parts.folders):
            parts.skipped.setdefault(approach, "no trained model")
            continue
        built[approach] = build_prompts(approach, prompts, cfg.compare.instructions, fewshot, rag)
    return built


def _answer(
    cfg: RunConfig,
    built: dict[str, list[Prompt]],
    models: dict[str, Any],
    tokenizer: Any,
    parts: Ingredients,
    log: Any,
) -> dict[str, Measured]:
    """Every approach's answers, measured (reused from compare/answers.json when nothing that decides them changed)."""
    params = SamplingParams(
        max_new_tokens=cfg.evaluate.max_new_tokens,
        temperature=cfg.evaluate.temperature,
        top_p=cfg.evaluate.top_p,
        seed=cfg.train.seed if cfg.evaluate.temperature > 0 else None,
    )
    cache = GenerationCache(cfg.run_dir / COMPARE_DIR / "answers.json")
    measured = {}
    # the base model's approaches first: unmerging an adapter leaves float round-off in the base weights
    for approach, prompts in sorted(built.items(), key=lambda item: MODEL_OF[item[0]] != "base"):
        variant = MODEL_OF[approach]
        model = models[variant]
        with use_adapter(model, None if variant == "base" else variant, merge=True):
            measured[approach] = answer_measured(
                cfg, approach, model, tokenizer, prompts, params, parts.folders.get(variant), cache, log
            )
    return {a: measured[a] for a in built}


def _costs(cfg: RunConfig, prompts: list[Prompt], m: Measured) -> dict[str, Any]:
    """Latency (alone, retrieval included), tokens per request, and the running cost per 1,000 requests."""
    n = len(prompts)
    retrieval = sum(p.retrieve_seconds for p in prompts)
    latencies = [m.latency[i] + prompts[i].retrieve_seconds for i in sorted(m.latency)]
    per_1k = 1000 / n
    seconds = (m.batch_seconds + retrieval) * per_1k
    return {
        "latency": {
            "p50": _pct(latencies, 50),
            "p95": _pct(latencies, 95),
            "requests": len(latencies),
        },
        "tokens": {
            "prompt": round(float(np.mean(m.prompt_tokens)), 1),
            "answer": round(float(np.mean(m.answer_tokens)), 1),
        },
        "running": {
            "seconds_per_1k": round(seconds, 1),
            "cpu_seconds_per_1k": round((m.cpu_seconds + sum(p.retrieve_cpu_seconds for p in prompts)) * per_1k, 1),
            "retrieval_seconds_per_1k": round(retrieval * per_1k, 1),
            "cost_per_1k": round(seconds / 3600 * cfg.compare.price_per_hour, 4),
        },
        "answered_without_model": sum(p.answer is not None for p in prompts),
        "reused": m.reused,
    }


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _one_off(approach: str, parts: Ingredients, train_examples: int) -> dict[str, Any]:
    """What an approach costs before its first request: training (seconds, examples, tokens) and indexing."""
    out: dict[str, Any] = {"seconds": 0.0}
    variant = MODEL_OF[approach]
    if variant != "base":
        out["training"] = training_cost(parts.folders[variant])
        out["seconds"] = out["training"].get("seconds") or 0.0
    if approach == "fewshot":
        out["examples"] = train_examples
    if approach in RETRIEVES and parts.index:
        out["index"] = {k: parts.index.get(k) for k in ("files", "chunks", "tokens", "seconds")}
        built = parts.index.get("seconds")  # None: built before any bake-off measured it
        out["seconds"] = None if built is None else out["seconds"] + built
    return out


def _results(
    cfg: RunConfig,
    parts: Ingredients,
    built: dict[str, list[Prompt]],
    measured: dict[str, Measured],
    references: list[str],
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """compare.json: scores, pairwise tests, costs, the advice and the most disagreed-on examples."""
    outputs = {a: m.outputs for a, m in measured.items()}
    train_path = split_path(cfg.run_dir, "train")
    train_examples = len(read_jsonl(train_path)) if train_path.is_file() else 0
    data: dict[str, Any] = {
        "split": cfg.evaluate.split,
        "n": len(references),
        "machine": machine(),
        "settings": _settings(cfg),
        "skipped": dict(parts.skipped),
        "facts": {
            "train_examples": train_examples,
            "answers_in_documents": _in_documents(built, references),
            "index": parts.index,
            "raft": parts.raft,
        },  # fmt: skip
    }
    if not outputs:
        data |= {"metric": None, "approaches": {}, "pairs": {}, "advice": advise(_evidence(cfg, data, {})).to_json()}
        return data
    report, metric, pairs = score_approaches(cfg, outputs, references)
    data |= {"metric": metric, "metrics": list(report.scores[next(iter(outputs))]), "pairs": pairs}
    data["approaches"] = {
        a: {
            "model": MODEL_OF[a],
            "scores": report.scores[a],
            "intervals": report.intervals.get(a, {}),
            **_costs(cfg, built[a], measured[a]),
            "one_off": _one_off(a, parts, train_examples),
            "example_prompt": _masked(built[a][0].to_json(), cfg),
        }
        for a in outputs
    }
    data["advice"] = advise(_evidence(cfg, data, pairs)).to_json()
    shown = disagreements(report, metric, outputs, cfg.compare.examples)
    data["disagreements"] = [_masked(_example(i, rows, references, outputs, report, metric), cfg) for i in shown]
    _write_details(cfg, built, outputs, references, report)
    return data


def _settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings every approach shared (decoding, test split, bootstrap) and the approaches' own."""
    e, c = cfg.evaluate, cfg.compare
    return {
        "max_new_tokens": e.max_new_tokens, "temperature": e.temperature, "top_p": e.top_p,
        "batch_size": e.batch_size, "bootstrap": e.bootstrap, "limit": e.limit, "fewshot_k": c.fewshot_k,
        "top_k": cfg.rag.top_k, "context_tokens": cfg.rag.context_tokens, "retrieval": cfg.rag.retrieval,
        "raft_oracle_share": c.raft_oracle_share, "price_per_hour": c.price_per_hour, "currency": c.currency,
        "instructions": c.instructions, "model": cfg.model.name,
    }  # fmt: skip


def _in_documents(built: dict[str, list[Prompt]], references: list[str]) -> float | None:
    """The share of test answers that the retrieved passages contain (None when nothing was retrieved)."""
    prompts = built.get("rag") or built.get("finetune+rag")
    if not prompts:
        return None
    found = [holds_answer(p.context, ref) for p, ref in zip(prompts, references, strict=True)]
    return round(sum(found) / len(found), 4)


def _evidence(cfg: RunConfig, data: dict[str, Any], pairs: dict[str, Any]) -> Evidence:
    approaches = data.get("approaches", {})
    metric = data.get("metric") or ""
    return Evidence(
        metric=metric,
        scores={a: r["scores"][metric] for a, r in approaches.items()},
        intervals={a: r["intervals"][metric] for a, r in approaches.items() if metric in r["intervals"]},
        cost_per_1k={a: r["running"]["seconds_per_1k"] for a, r in approaches.items()},
        one_off={a: r["one_off"]["seconds"] or 0.0 for a, r in approaches.items()},
        pairs=pairs,
        n=data["n"],
        needs=cfg.compare.needs,
        train_examples=data["facts"]["train_examples"],
        answers_in_documents=data["facts"]["answers_in_documents"],
        bootstrap=cfg.evaluate.bootstrap,
    )


def _example(
    i: int, rows: list[dict[str, Any]], references: list[str], outputs: dict[str, list[str]], report: Any, metric: str
) -> dict[str, Any]:
    prompt = chat_prompts([rows[i]])[0][0]
    question = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    return {
        "index": i,
        "source": rows[i].get("source"),
        "input": question,
        "reference": references[i],
        "answers": {
            a: {"text": texts[i], "score": _example_score(report, a, metric, i)} for a, texts in outputs.items()
        },
    }


def _example_score(report: Any, approach: str, metric: str, i: int) -> float | None:
    values = report.per_example.get(approach, {}).get(metric)
    return None if values is None else round(float(values[i]), 4)


def _write_details(
    cfg: RunConfig, built: dict[str, list[Prompt]], outputs: dict[str, list[str]], references: list[str], report: Any
) -> None:
    """compare/prompts.jsonl (every approach's prompt for every example, as the model got it) and
    compare/predictions.jsonl (every answer beside the reference, with its per-example scores)."""
    folder = cfg.run_dir / COMPARE_DIR
    n = len(references)
    write_jsonl(
        folder / "prompts.jsonl",
        [_masked({"example": i, **{a: p[i].to_json() for a, p in built.items()}}, cfg) for i in range(n)],
    )
    write_jsonl(
        folder / "predictions.jsonl",
        [
            _masked(
                {
                    "example": i,
                    "reference": references[i],
                    "answers": {a: o[i] for a, o in outputs.items()},
                    "scores": {
                        a: {k: round(float(v[i]), 4) for k, v in report.per_example.get(a, {}).items()} for a in outputs
                    },
                },
                cfg,
            )
            for i in range(n)
        ],
    )


KEPT = frozenset({"source", "sources", "role"})  # the run's own words (file:line, roles): never masked


def _masked(value: Any, cfg: RunConfig, shown: Any = None) -> Any:
    """`value` with every text of the data masked as predictions.jsonl masks it (privacy.mode=report leaves personal
    data in the splits; evaluate.show_personal_data shows it as it is)."""
    shown = shown or redactor(cfg.privacy, cfg.evaluate.show_personal_data)
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, list):
        return [_masked(v, cfg, shown) for v in value]
    if isinstance(value, dict):
        return {k: v if k in KEPT else _masked(v, cfg, shown) for k, v in value.items()}
    return value
