"""finetune+rag: a model tuned with retrieved passages in its training prompts, as RAFT does (Zhang et al. 2024).

A model tuned without context and then given passages can get worse (RAFT, Table 1: 61.1 -> 42.6), so this
approach trains on the prompts it will be asked with. For each training example the index is searched for its
question: with probability compare.raft_oracle_share the prompt holds the passage that contains the answer (the
"oracle") among rag.top_k - 1 distractors, otherwise distractors only, so the model learns both to use context and
to ignore context that does not help. Distractors are the question's next-best hits (what retrieval really returns
when it misses), and the passages are shuffled so the oracle's place tells nothing.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tuneforge.compare.approaches import Retriever, question_of
from tuneforge.config import RunConfig
from tuneforge.data.records import chat_prompts
from tuneforge.rag.answer import Source, rag_messages
from tuneforge.rundir import COMPARE_DIR, MODEL_DIR, atomic_write_json, read_jsonl, save_config, split_path, write_jsonl

CANDIDATES = 4  # hits searched per training question, as a multiple of rag.top_k: room for the oracle and distractors


@dataclass
class RaftData:
    """What the RAFT training prompts hold: how many examples, how many with the oracle passage, how many of the
    questions' answers no retrieved passage contains (those keep the plain top hits)."""

    examples: int = 0
    with_oracle: int = 0
    no_oracle_found: int = 0

    def to_json(self) -> dict[str, int]:
        return {"examples": self.examples, "with_oracle": self.with_oracle, "no_oracle_found": self.no_oracle_found}


def holds_answer(text: str, reference: str) -> bool:
    """Whether a passage contains the reference answer: the whole of it, or its longest comma-separated part (an
    answer like "-l, --length" lists spellings of which a passage may hold one)."""
    passage, ref = _norm(text), _norm(reference)
    if not ref:
        return False
    if ref in passage:
        return True
    longest = max((p.strip() for p in ref.split(",")), key=len)
    return len(longest) >= 4 and longest in passage


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def raft_rows(
    rows: list[dict[str, Any]],
    retriever: Retriever,
    top_k: int,
    oracle_share: float,
    count: Callable[[str], int],
    budget: int,
    seed: int,
) -> tuple[list[dict[str, Any]], RaftData]:
    """Chat rows whose prompts hold retrieved passages RAFT-style, each ending with the row's own answer."""
    rng = random.Random(seed)
    prompts, references = chat_prompts(rows)
    out, stats = [], RaftData(examples=len(rows))
    for prompt, reference in zip(prompts, references, strict=True):
        found, _ = retriever.search(question_of(prompt), top_k * CANDIDATES)
        oracle = next((s for s in found if holds_answer(s.text, reference)), None)
        distractors = [s for s in found if s is not oracle]
        if oracle is None:
            stats.no_oracle_found += 1
            chosen = found[:top_k]
        elif rng.random() < oracle_share:
            stats.with_oracle += 1
            chosen = [oracle, *distractors[: top_k - 1]]
        else:
            chosen = distractors[:top_k]
        rng.shuffle(chosen)
        sources: list[Source] = [replace(s, number=n) for n, s in enumerate(chosen, start=1)]
        messages = rag_messages(prompt, sources, count, budget)[0] if sources else list(prompt)
        out.append({"messages": [*messages, {"role": "assistant", "content": reference}]})
    return out, stats


def raft_config(cfg: RunConfig) -> RunConfig:
    """The RAFT run's config: this run's, in runs/<name>/compare/raft (its own splits, checkpoints and model)."""
    return cfg.model_copy(update={"name": "raft", "output_dir": cfg.run_dir / COMPARE_DIR})


def write_raft_splits(
    cfg: RunConfig, retriever: Retriever, count: Callable[[str], int], log: Any
) -> tuple[RunConfig, RaftData]:
    """Write the RAFT run's train and val splits (from this run's) and its config; return both and the stats."""
    raft = raft_config(cfg)
    stats = RaftData()
    for split in ("train", "val"):
        path = split_path(cfg.run_dir, split)
        if not path.is_file():
            continue
        rows, made = raft_rows(
            read_jsonl(path),
            retriever,
            cfg.rag.top_k,
            cfg.compare.raft_oracle_share,
            count,
            cfg.rag.context_tokens,
            cfg.train.seed,
        )
        write_jsonl(split_path(raft.run_dir, split), rows)
        if split == "train":
            stats = made
    save_config(raft)
    atomic_write_json(raft.run_dir / RAFT_RECORD, {"settings": raft_settings(cfg), **stats.to_json()})
    log(
        f"finetune+rag: {stats.examples} training prompts with retrieved passages, {stats.with_oracle} with the "
        f"passage holding the answer; no retrieved passage held the answer for {stats.no_oracle_found}"
    )
    return raft, stats


RAFT_RECORD = "raft.json"  # in the RAFT run: how its training prompts were made


def raft_settings(cfg: RunConfig) -> dict[str, Any]:
    """What decides the RAFT training prompts (a model trained with others is stale)."""
    return {
        "raft_oracle_share": cfg.compare.raft_oracle_share,
        "top_k": cfg.rag.top_k,
        "context_tokens": cfg.rag.context_tokens,
        "retrieval": cfg.rag.retrieval,
        "embedding_model": cfg.rag.embedding_model,
    }


def read_raft_record(cfg: RunConfig, log: Any) -> dict[str, Any] | None:
    """The stats of the trained RAFT model's prompts; says so when they were made with other settings than now."""
    path = raft_config(cfg).run_dir / RAFT_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("settings") != raft_settings(cfg):
        log(
            f"finetune+rag: the trained model's prompts were made with {record.get('settings')}, not with today's "
            f"{raft_settings(cfg)}: delete {path.parent / MODEL_DIR} to train it again"
        )
    return {k: v for k, v in record.items() if k != "settings"}


def raft_model_dir(cfg: RunConfig) -> Path:
    """Where the RAFT run's model is trained: runs/<name>/compare/raft/model."""
    return raft_config(cfg).run_dir / MODEL_DIR
