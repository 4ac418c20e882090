"""Run configuration: one YAML file plus `key=value` overrides, validated once into a RunConfig.

Every field has a default and a description; the descriptions are the documentation
(`tuneforge run --help` prints them), so they are written for users.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneforge.errors import ConfigError

EMBEDDED_MODEL = "smollm2-135m-instruct"
Auto = Literal["auto"]  # a hyperparameter chosen by train/auto.py from data and model size


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field(
        EMBEDDED_MODEL,
        description=f"Base model: '{EMBEDDED_MODEL}' (embedded, offline), a local folder, or a Hugging Face id.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a Hugging Face id.")


DataFormat = Literal[
    "auto", "chat", "sharegpt", "alpaca", "completion", "preference", "openai_preference", "classification", "text"
]
PiiName = Literal[
    "EMAIL", "PHONE", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "URL_SECRET", "DATE_OF_BIRTH", "PERSON", "ADDRESS"
]


class DatasetConfig(_Section):
    name: str = Field(
        description="The task's name (extraction, summary, intent...): its metrics are reported under it.",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    path: str = Field(description="Chat data of this task (any chat format data.format reads).")
    format: DataFormat = Field("auto", description="Record format of this dataset (as data.format).")
    weight: PositiveFloat = Field(
        1.0, description="Sampling multiplier: the dataset's share of the training mix is ~ weight x its size."
    )


class DataConfig(_Section):
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


class CleanConfig(_Section):
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


class PrivacyConfig(_Section):
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


class TrainConfig(_Section):
    method: Literal["lora", "dora", "qlora", "full", "freeze"] = Field(
        "lora",
        description="Fine-tuning method. 'lora': low-rank adapters (PEFT); 'dora': LoRA with weight decomposition; "
        "'qlora': LoRA on a 4-bit base (CUDA + bitsandbytes only); 'full': every weight trains; 'freeze': only "
        "train.trainable_layers / train.trainable_modules train. lora/dora/qlora save an adapter, full/freeze a "
        "whole model.",
    )
    lora_r: PositiveInt | Auto = Field(
        16, description="LoRA rank, or 'auto': 8 below 1,000 training examples, 16 below 10,000, else 32."
    )
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = lora_alpha / lora_r).")
    lora_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the LoRA input. Off by default: on CPU drawing the masks costs ~20% of a step.",
    )
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or a list such as [q_proj, v_proj]."
    )
    task: Literal["sft", "pretrain", "classify", "dpo", "multitask"] = Field(
        "sft",
        description="'sft': chat data, loss on the assistant answers; 'pretrain': continued pre-training (domain "
        "adaptation) on text records packed into blocks of train.block_size tokens, loss on every token; "
        "'classify': a classification head on an encoder or decoder (classification data); 'dpo': preference "
        "tuning on chosen/rejected pairs; 'multitask': the chat datasets of data.datasets mixed in one model.",
    )
    packing: bool = Field(
        False,
        description="task sft/multitask: pack several examples into each row of up to data.max_seq_len tokens "
        "(no padding; attention never crosses from one example into another). batch_size then counts rows.",
    )
    class_weights: Literal["none", "balanced"] | dict[str, PositiveFloat] = Field(
        "none",
        description="task classify: loss weight per class: 'none', 'balanced' (each class weighs as much in all: "
        "n / (classes x count), scikit-learn's rule) or {label: weight}.",
    )
    dpo_beta: PositiveFloat = Field(
        0.1, description="task dpo: how far the model may move from the reference (higher: stays closer)."
    )
    dpo_reference: Literal["model", "none"] = Field(
        "model",
        description="task dpo: 'model': the model before training is the reference (its log-probabilities are "
        "computed once); 'none': reference-free.",
    )
    mixture_temperature: PositiveFloat = Field(
        1.0,
        description="task multitask: a task's share of the mix is ~ weight x size^(1/T); T > 1 evens out small and "
        "large datasets (T=1: proportional to size).",
    )
    block_size: int | None = Field(
        None, ge=8, description="task=pretrain: tokens per packed block (default: data.max_seq_len)."
    )
    trainable_layers: int = Field(
        0, ge=0, description="method=freeze: how many of the last decoder layers train (0: none, only the modules)."
    )
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="method=freeze: modules that train besides the layers, by name or regex as "
        "model.named_modules() lists them, e.g. [lm_head, 'model.norm'].",
    )
    epochs: PositiveFloat | Auto = Field(
        2.0,
        description="Passes over the training split (fractions allowed), or 'auto': 3, raised to see at least 100 "
        "and lowered to see at most 25,000 examples (OpenAI's rule).",
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: PositiveInt | Auto = Field(
        8,
        description="Examples per forward pass, or 'auto': the largest power of two up to 16 (and a tenth of the "
        "examples) whose estimated peak memory fits 80% of the memory available.",
    )
    grad_accum: int = Field(
        1, ge=1, description="Forward passes per optimizer step (effective batch = batch_size * grad_accum)."
    )
    micro_batch_tokens: PositiveInt | Auto | None = Field(
        "auto",
        description="Split each batch into micro-batches of at most this many tokens (examples x the longest's "
        "length; one long example alone may exceed it), gradients accumulated: the same update, far less "
        "activation memory. 'auto': 512 on CPU (on long batches faster there too: 1.6x the tokens/s at 0.3x the "
        "peak memory of whole batches on BENCHMARKS.md's LoRA run), no split on GPUs; null: never split.",
    )
    group_by_length: bool = Field(
        False,
        description="Put examples of similar length in the same optimizer step (less padding; worth it on GPUs, "
        "where batches are not split) instead of plain random order. On CPU, micro-batches already cut the "
        "padding: BENCHMARKS.md's LoRA run is as fast without grouping and its held-out loss 0.03 lower.",
    )
    learning_rate: PositiveFloat | Auto = Field(
        3e-4,
        description="Peak learning rate of AdamW, or 'auto': 2e-4 for lora/dora/qlora; for full/freeze 3e-5 "
        "below 1B parameters, else 1e-5.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of steps with linear warm-up before the decay (warm-up step k of w runs at "
        "(k+1)/(w+1) of the peak: none at 0).",
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after the warm-up: cosine or linear decay to 0, or constant."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    eval_steps: int | None = Field(
        None, ge=1, description="Score the validation split every N optimizer steps (default: at each epoch end)."
    )
    eval_generate: int = Field(
        0,
        ge=0,
        description="At each validation, also generate answers for the first N validation examples and score them "
        "with evaluate.metrics (val_<metric> in metrics.jsonl); 0 = losses only. Chat tasks (sft, multitask).",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop when the validation loss has not improved for N evaluations, and keep the best model "
        "(its weights are saved to checkpoints/best whenever it improves).",
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="An improvement smaller than this does not count for early stopping."
    )
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Trackers besides metrics.jsonl: tensorboard (runs/<name>/tensorboard) and/or mlflow "
        "($MLFLOW_TRACKING_URI, else runs/<name>/mlflow.db).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of keeping them: much less memory for "
        "long sequences, about a third more compute.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="'auto': bf16 autocast where it is faster: GPUs with bf16, CPUs with AMX tiles, and CPUs whose "
        "bf16 matmuls a one-off measurement finds at least 1.5x as fast as fp32 ones (e.g. AMD Zen 4); else fp32.",
    )
    compile: bool = Field(
        False,
        description="LoRA with bf16 on a CPU: run the decoder layers through torch.compile (needs a C++ compiler; "
        "not with gradient checkpointing). On an AMX Xeon 1.2-1.3x the tokens/s after a one-off compile of 35 s (110 s "
        "the first time on a machine): worth it for runs of more than a few minutes.",
    )
    save_steps: int = Field(50, ge=1, description="Write a checkpoint every N optimizer steps.")
    save_total_limit: int = Field(2, ge=1, description="Keep only the newest N checkpoints.")
    seed: int = Field(0, description="Seed for adapter initialisation, dropout and data order.")
    deterministic: bool = Field(
        False,
        description="Use only deterministic PyTorch kernels (bit-identical reruns on the same machine; some GPU "
        "kernels are slower or refuse to run).",
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for PyTorch (default: all cores).")
    sharding: Literal["none", "fsdp", "zero2", "zero3"] = Field(
        "none",
        description="With several processes (torchrun / accelerate launch): 'none' keeps a whole model per process "
        "(DistributedDataParallel); 'fsdp' shards weights, gradients and optimizer state across them (PyTorch "
        "FSDP2), for models too large for one device; 'zero2' / 'zero3' do it with DeepSpeed ZeRO stage 2 "
        "(gradients and optimizer state) / 3 (weights too), needs tuneforge[deepspeed]. An accelerate config "
        "with distributed_type FSDP or DEEPSPEED asks for the same.",
    )

    @model_validator(mode="after")
    def _sharding_without_early_stopping(self) -> TrainConfig:
        if self.sharding != "none" and self.early_stopping_patience:
            raise ValueError(
                f"train.early_stopping_patience with train.sharding={self.sharding} is not supported yet (the best "
                "weights are not restored into a sharded model); stop by train.max_steps or epochs, or use "
                "sharding none"
            )
        return self

    @model_validator(mode="after")
    def _generation_needs_chat(self) -> TrainConfig:
        if self.eval_generate and self.task not in ("sft", "multitask"):
            raise ValueError(
                f"train.eval_generate scores generated answers (task sft or multitask), not task {self.task}"
            )
        if self.eval_generate and self.sharding != "none":
            raise ValueError("train.eval_generate is not supported with train.sharding yet; set one of them off")
        return self

    @model_validator(mode="after")
    def _packing_needs_chat(self) -> TrainConfig:
        if self.packing and self.task not in ("sft", "multitask"):
            raise ValueError(
                f"train.packing packs chat examples (task sft or multitask), not task {self.task}"
                + (" (pretrain packs its blocks already)" if self.task == "pretrain" else "")
            )
        return self


class EvalConfig(_Section):
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
    bootstrap: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples of the test set for 95% intervals and the tuned-vs-baseline significance "
        "test (paired); 0 = scores only.",
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        from tuneforge.evaluation.metrics import METRICS

        unknown = [n for n in names or [] if n not in METRICS and ":" not in n]
        if unknown:
            raise ValueError(
                f"unknown metric(s) {unknown}: choose from {', '.join(METRICS)}, or name your own as "
                "module:function or path/to/file.py:function"
            )
        if names is not None and len(set(names)) != len(names):
            raise ValueError("evaluate.metrics names a metric twice")
        return names


class ServeConfig(_Section):
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


class TuneConfig(_Section):
    trials: int = Field(8, ge=1, description="Training runs the search makes (each a full run of train.*).")
    learning_rate: list[PositiveFloat] | None = Field(
        [5e-5, 1e-3], min_length=2, max_length=2, description="Range [low, high] searched on a log scale; null = fixed."
    )
    lora_r: list[PositiveInt] | None = Field([8, 16, 32], min_length=1, description="LoRA ranks to try; null = fixed.")
    epochs: list[PositiveFloat] | None = Field(None, min_length=1, description="Epoch counts to try; null = fixed.")
    warmup_ratio: list[float] | None = Field(None, min_length=1, description="Warm-up shares to try; null = fixed.")


class RunConfig(_Section):
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults), apply `key=value` overrides, validate and return it."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file not found: {path}", "pass the path of a YAML file, e.g. configs/contracts.yaml"
            )
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}", "fix the YAML syntax at the position shown") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded or {}
        _resolve_data_path(raw, path.parent)
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw, source=str(path) if path else "config")


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config mapping; every problem is reported in one ConfigError."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(exc.errors())
        raise ConfigError(
            f"{source}: {len(problems)} invalid setting(s):\n" + "\n".join(f"  - {p}" for p in problems),
            "see `tuneforge run --help` for every field, its type and default",
        ) from None


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML, exactly as it will run (paths absolute)."""
    data = cfg.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def describe_fields() -> str:
    """Every config field with type, default and description: the reference printed by --help."""
    lines: list[str] = []
    for section, field in RunConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for name, sub in annotation.model_fields.items():
                lines.append(
                    f"{section}.{name} (default {_show(sub.get_default(call_default_factory=True))}): {sub.description}"
                )
        else:
            lines.append(f"{section} (default {_show(field.default)}): {field.description}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return str(value) if isinstance(value, Path) else repr(value)


def _resolve_data_path(raw: dict[str, Any], base: Path) -> None:
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    places = [(data, key) for key in ("path", "test_path")]
    places += [(d, "path") for d in data.get("datasets") or [] if isinstance(d, dict)]
    for node, key in places:
        value = node.get(key)
        if isinstance(value, str) and not value.startswith("hf:") and not Path(value).is_absolute():
            node[key] = str((base / value).resolve())


def apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value", "write overrides like train.epochs=2")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key part", "write overrides like train.epochs=2")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _problems(errors: list[Any]) -> list[str]:
    """One line per invalid setting: the errors of a `value | 'auto'` field's union members become one."""
    lines: list[str] = []
    auto_fields: set[tuple[Any, ...]] = set()
    for err in errors:
        loc, member = tuple(err["loc"][:-1]), str(err["loc"][-1]) if err["loc"] else ""
        if member.startswith(("literal[", "constrained-", "int", "float")) and len(loc) >= 2:
            if loc in auto_fields:
                continue
            auto_fields.add(loc)
            number = next(e for e in errors if tuple(e["loc"][:-1]) == loc and "literal[" not in str(e["loc"][-1]))
            lines.append(f"{'.'.join(map(str, loc))}: {number['msg']}, or 'auto' (got {err.get('input')!r})")
        else:
            lines.append(_describe(err))
    return lines


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown setting{_suggest(err['loc'])}"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def _suggest(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return ""
        model = annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    prefix = ".".join(str(p) for p in loc[:-1])
    return f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
