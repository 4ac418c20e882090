"""The config sections of the model and the data: model, data, clean, privacy."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, PositiveFloat, model_validator

from tuneforge.config.base import EMBEDDED_MODEL, Section


class ModelConfig(Section):
    name: str = Field(
        EMBEDDED_MODEL,
        description=f"Base model: '{EMBEDDED_MODEL}' (embedded, offline), a local folder, or a Hugging Face id.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a Hugging Face id.")


DataFormat = Literal[
    "auto",
    "chat",
    "sharegpt",
    "alpaca",
    "completion",
    "prompt",
    "preference",
    "openai_preference",
    "classification",
    "text",
]
PiiName = Literal[
    "EMAIL", "PHONE", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "URL_SECRET", "DATE_OF_BIRTH", "PERSON", "ADDRESS"
]


class DatasetConfig(Section):
    name: str = Field(
        description="The task's name (extraction, summary, intent...): its metrics are reported under it.",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    path: str = Field(description="Chat data of this task (any chat format data.format reads).")
    format: DataFormat = Field("auto", description="Record format of this dataset (as data.format).")
    weight: PositiveFloat = Field(
        1.0, description="Sampling multiplier: the dataset's share of the training mix is ~ weight x its size."
    )


class DataConfig(Section):
    datasets: list[DatasetConfig] = Field(
        default_factory=list,
        description="train.task=multitask: several chat datasets, one per task, as [{name, path, format?, weight?}] "
        "(instead of data.path); each record keeps its task's name, and the splits are balanced per task.",
    )
    path: str | None = Field(
        None,
        description="Training data: a .jsonl/.json/.csv/.tsv/.parquet file, a text file, a folder of documents or "
        "code, or hf:NAME (a Hugging Face dataset). Relative paths resolve against the config file.",
    )
    format: DataFormat = Field(
        "auto",
        description="Record format: chat, sharegpt, alpaca, completion, preference, openai_preference, "
        "classification, text, or 'auto' (recognised per row by its keys).",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping, format field -> your column, e.g. {text: review, label: stars}.",
    )
    hf_subset: str | None = Field(None, description="Subset (configuration) of a hf: dataset.")
    hf_split: str = Field("train", description="Split of a hf: dataset to read.")
    test_path: str | None = Field(
        None, description="Optional separate test data; when set it is the whole test split and test_size is ignored."
    )
    val_size: float = Field(0.1, ge=0, description="Validation split: a fraction (< 1) or a count (>= 1) of examples.")
    test_size: float = Field(0.15, ge=0, description="Test split: a fraction (< 1) or a count (>= 1) of examples.")
    seed: int = Field(0, description="Seed of the split (and of pseudonyms); the same seed gives the same split.")
    group_by: str | None = Field(
        None,
        description="Column whose equal values stay in one split (conversation, customer, document id). "
        "Files of a folder are always their own group.",
    )
    stratify: bool = Field(True, description="Keep label proportions equal across splits (classification data).")
    lock_test: bool = Field(
        False,
        description="Write the test split once and reuse it in later prepares of this run, even when the data grows.",
    )
    labels: list[str] | None = Field(
        None, description="Allowed classification labels; any other label is an error. Default: whatever occurs."
    )
    max_seq_len: int = Field(
        512, ge=16, description="Longest example in tokens of the model's chat template; longer ones are errors."
    )
    imbalance_ratio: float = Field(
        10.0, gt=1, description="Warn when the most frequent label is this many times as common as the rarest."
    )
    estimate: bool = Field(
        True,
        description="After preparing chat data, run a few real training steps of the configured model and method "
        "to estimate training time and peak memory on this machine (a few seconds to a minute).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.datasets and (self.path or self.test_path):
            raise ValueError("data.datasets replaces data.path and data.test_path; set only data.datasets")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"data.datasets: task names must differ, got {names}")
        return self

    @model_validator(mode="after")
    def _sizes_leave_training_data(self) -> DataConfig:
        fractions = sum(s for s in (self.val_size, self.test_size) if s < 1)
        if fractions >= 0.9:
            raise ValueError(f"val_size + test_size = {fractions:g} leaves too little to train on; keep it below 0.9")
        for name in ("val_size", "test_size"):
            value = getattr(self, name)
            if value >= 1 and value != int(value):
                raise ValueError(f"{name}={value:g}: a count must be a whole number (a fraction must be below 1)")
        return self


class CleanConfig(Section):
    normalize: bool = Field(
        True,
        description="Unicode NFC, drop control and zero-width characters, \\n line ends, no trailing spaces.",
    )
    strip_html: bool = Field(False, description="Remove HTML tags and decode entities (for scraped text).")
    dedup: bool = Field(True, description="Drop exact duplicates (same texts after normalising case and spaces).")
    near_dup_threshold: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Drop records this similar to an earlier one (MinHash Jaccard of character 5-grams); 0 = off.",
    )
    leakage_threshold: float = Field(
        0.8, ge=0, le=1, description="Warn when a train/val record is this similar to a test record; 0 = off."
    )
    min_chars: int = Field(1, ge=0, description="Drop records with fewer characters of text.")
    max_chars: int | None = Field(None, ge=1, description="Drop records with more characters of text.")
    drop_too_long: bool = Field(
        False,
        description="Drop records longer than data.max_seq_len tokens (counted in the data report) instead of "
        "stopping with an error for each (public sets with a long tail).",
    )


class PrivacyConfig(Section):
    mode: Literal["off", "report", "mask", "pseudonymize", "drop"] = Field(
        "report",
        description="Personal data: 'report' counts it; 'mask' writes [EMAIL] etc.; 'pseudonymize' writes consistent "
        "fake values; 'drop' removes the record; 'off' skips detection.",
    )
    types: list[PiiName] = Field(
        default_factory=lambda: list(get_args(PiiName)),
        description="Kinds of personal data to look for.",
    )
    gate: Literal["off", "warn", "block"] = Field(
        "warn", description="'block': refuse to train while unanonymised personal data remains; 'warn': say so."
    )

    @model_validator(mode="after")
    def _gate_needs_detection(self) -> PrivacyConfig:
        if self.gate == "block" and self.mode == "off":
            raise ValueError(
                "privacy.gate=block needs detection; set privacy.mode to report, mask, pseudonymize or drop"
            )
        return self
