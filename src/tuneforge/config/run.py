"""The `evaluate:`, `serve:` and `tune:` config sections, and `RunConfig`, which holds every section of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from tuneforge.config.base import Section
from tuneforge.config.compare import CompareConfig
from tuneforge.config.data import CleanConfig, DataConfig, ModelConfig, PrivacyConfig
from tuneforge.config.rag import RagConfig
from tuneforge.config.train import TrainConfig


class EvalConfig(Section):
    split: Literal["val", "test"] = Field("test", description="Held-out split to score.")
    task: Literal["chat", "json"] = Field(
        "json",
        description="What the answers are, for the default evaluate.metrics: 'json' (extraction: validity, "
        "whole-object and per-field matches) or 'chat' (free text: exact match, word F1, chrF, ROUGE-L).",
    )
    max_new_tokens: int = Field(128, ge=1, description="Longest generated answer.")
    temperature: float = Field(
        0.0, ge=0.0, le=2.0, description="0 = greedy answers (the default); above 0 samples, seeded by train.seed."
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling share when temperature > 0.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together.")
    limit: int | None = Field(
        None,
        ge=1,
        description="Score only the first N examples of each split (a quick look; the full split is the real score).",
    )
    compare_base: bool = Field(True, description="Also score the base model (adapter off) on the same split.")
    compare: list[str] = Field(
        [],
        description="Other run directories (or model folders) whose models answer the same split beside base and "
        "tuned, named after their folder; adapters must fit this run's base model.",
    )
    forgetting: bool = Field(
        True,
        description="Score tuneforge's general-ability probe (general questions and prose, English and German) for "
        "the base and the tuned model: the forgetting check (needs compare_base; not for classifiers).",
    )
    forgetting_threshold: float = Field(
        0.1,
        ge=0.0,
        description="Warn (and suggest replay) when the probe's perplexity rises by more than this share, or its "
        "share of questions answered right falls by more than this.",
    )
    metrics: list[str] | None = Field(
        None,
        description="Metrics of generated answers (exact_match, token_f1, bleu, chrf, rouge1, rouge2, rougeL, "
        "json_valid, json_exact_match, field_accuracy, or your own module:function / file.py:function taking "
        "(prediction, reference) -> float) or of a classifier (accuracy, macro_f1, micro_f1, weighted_f1, "
        "macro_precision, macro_recall, ece); null = the defaults of evaluate.task (json: json_valid, "
        "json_exact_match, field_accuracy, token_f1; chat: exact_match, token_f1, chrf, rougeL) or of "
        "classification (accuracy, macro_f1, micro_f1, macro_precision, macro_recall, ece).",
    )
    show_personal_data: bool = Field(
        False,
        description="With privacy.mode=report the splits keep the personal data prepare found; predictions.jsonl and "
        "report.html then mask what the detector finds in test inputs, references and answers ([EMAIL], [PHONE], "
        "...). true: write them as they are.",
    )
    bootstrap: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples of the test set for 95% intervals and the tuned-vs-baseline significance "
        "test (paired); 0 = scores only.",
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        from tuneforge.metrics import METRICS

        unknown = [n for n in names or [] if n not in METRICS and ":" not in n]
        if unknown:
            raise ValueError(
                f"unknown metric(s) {unknown}: choose from {', '.join(METRICS)}, or name your own as "
                "module:function or path/to/file.py:function"
            )
        if names is not None and len(set(names)) != len(names):
            raise ValueError("evaluate.metrics names a metric twice")
        return names


class ServeConfig(Section):
    """How `tuneforge serve` (tuneforge.serve.create_app) serves runs. The API key is not a field: configs are saved in
    run directories, so the key stays in the environment variable `api_key_env` names."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 exposes the server to the network.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    api_key_env: str = Field(
        "TUNEFORGE_API_KEY", description="Environment variable holding the API key; unset means no key is required."
    )
    max_new_tokens: int = Field(512, ge=1, description="Upper bound for max_tokens in a request.")
    max_batch: int = Field(
        8,
        ge=1,
        description="Most concurrent requests answered in one batched generation (same model and sampling "
        "settings, no seed); 1 answers one request at a time.",
    )


class TuneConfig(Section):
    trials: int = Field(8, ge=1, description="Training runs the search makes (each a full run of train.*).")
    learning_rate: list[PositiveFloat] | None = Field(
        [5e-5, 1e-3], min_length=2, max_length=2, description="Range [low, high] searched on a log scale; null = fixed."
    )
    lora_r: list[PositiveInt] | None = Field([8, 16, 32], min_length=1, description="LoRA ranks to try; null = fixed.")
    epochs: list[PositiveFloat] | None = Field(None, min_length=1, description="Epoch counts to try; null = fixed.")
    warmup_ratio: list[float] | None = Field(None, min_length=1, description="Warm-up shares to try; null = fixed.")


class RunConfig(Section):
    name: str = Field(
        "run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name; artifacts go to output_dir/name."
    )
    output_dir: Path = Field(
        Path("runs"), description="Folder that holds run directories (relative to the working directory)."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    rag: RagConfig = Field(default_factory=RagConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)

    @property
    def index_dir(self) -> Path:
        """Where this config's RAG index lives (rag.index_dir, or beside the run)."""
        return self.rag.index_dir or self.run_dir / "index"

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    @model_validator(mode="after")
    def _multitask_has_datasets(self) -> RunConfig:
        if (self.train.task == "multitask") != bool(self.data.datasets):
            raise ValueError(
                "train.task=multitask and data.datasets go together: list the tasks' datasets in data.datasets, "
                "or for one dataset use data.path with another train.task"
            )
        return self
