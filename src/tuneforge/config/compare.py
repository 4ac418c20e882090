"""The `compare:` config section: which approaches `tuneforge compare` measures against each other on the run's
held-out split (prompting, few-shot, RAG, fine-tuning, fine-tuning with retrieval), what they cost, and what the
user's situation asks for (the advisor's four questions)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tuneforge.config.base import Section

Approach = Literal["prompt", "fewshot", "rag", "finetune", "finetune+rag"]
APPROACHES: tuple[Approach, ...] = ("prompt", "fewshot", "rag", "finetune", "finetune+rag")


class Needs(Section):
    """The seeds' four questions about the use case; null = unknown (the advisor then infers what the data shows:
    labelled examples counted, answers looked up in the documents)."""

    fresh_data: bool | None = Field(
        None, description="The knowledge changes or grows after training (prices, documents, news): favours RAG."
    )
    custom_style: bool | None = Field(
        None, description="Answers need a house tone, vocabulary or a fixed format: favours fine-tuning."
    )
    hallucination_critical: bool | None = Field(
        None, description="Wrong facts are costly and answers must cite their sources: favours RAG."
    )
    labelled_data: bool | None = Field(
        None,
        description="Enough labelled examples for fine-tuning exist; null = counted from the train split (at least "
        "100 examples: OpenAI's guidance sees clear gains from 50-100).",
    )


class CompareConfig(Section):
    """The bake-off: the same test split, metrics and decoding settings (evaluate.*) for every approach."""

    approaches: list[Approach] = Field(
        list(APPROACHES),
        min_length=1,
        description="Approaches to measure: prompt (base model, zero-shot), fewshot (base model with k similar "
        "training examples), rag (base model with retrieved passages), finetune (the run's tuned model), "
        "finetune+rag (a model tuned RAFT-style with retrieved passages in its prompts, answering with retrieval). "
        "One whose ingredient is missing (no index, no training data) is skipped with the reason.",
    )
    metric: str | None = Field(
        None,
        description="The metric that ranks the approaches (a name from evaluate.metrics); null = field_accuracy for "
        "JSON extraction (evaluate.task=json), else the first of evaluate.metrics or of the task's defaults.",
    )
    instructions: str | None = Field(
        None,
        description="A system message for the base model's approaches (prompt, fewshot, rag) when the test examples "
        "carry none; the fine-tuned models get the examples' own messages, as in training.",
    )
    fewshot_k: int = Field(
        3, ge=1, le=32, description="Training examples in the few-shot prompt, the most similar to the question."
    )
    finetune_run: Path | None = Field(
        None,
        description="A run directory (or model folder) whose tuned model is `finetune`, relative to the working "
        "directory like output_dir; it must fit model.name; null = this run's own model, trained by the command "
        "when missing (if compare.train).",
    )
    raft_run: Path | None = Field(
        None,
        description="A run directory (or model folder) whose tuned model is `finetune+rag`, relative to the working "
        "directory; null = runs/<name>/compare/raft, trained by the command when missing (if compare.train) on the "
        "train split with retrieved passages in each prompt.",
    )
    train: bool = Field(
        True, description="Train the fine-tuned models that do not exist yet; false skips their approaches instead."
    )
    raft_oracle_share: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="RAFT's P: the share of training prompts that contain the passage holding the answer; the rest "
        "hold distractors only, so the model learns both to use and to ignore context (RAFT's best: 0.8).",
    )
    latency_requests: int = Field(
        16,
        ge=1,
        description="Test requests answered one at a time (retrieval included) for the latency p50/p95; the whole "
        "split is answered in batches of evaluate.batch_size for quality and running cost.",
    )
    price_per_hour: float = Field(
        0.10,
        ge=0.0,
        description="What an hour of the answering machine costs (the default: a 2-vCPU cloud VM); set your own "
        "machine's price, e.g. a GPU's.",
    )
    currency: str = Field("USD", max_length=8, description="The currency of compare.price_per_hour.")
    needs: Needs = Field(default_factory=Needs)
    examples: int = Field(
        6, ge=0, le=50, description="Test examples shown side by side: those where the approaches disagree most."
    )

    @field_validator("approaches")
    @classmethod
    def _once_each(cls, approaches: list[Approach]) -> list[Approach]:
        if len(set(approaches)) != len(approaches):
            raise ValueError("compare.approaches names an approach twice")
        return approaches
