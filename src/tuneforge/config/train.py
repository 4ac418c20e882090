"""The `train:` config section: method, task, hyperparameters, precision, checkpoints, parallelism."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from tuneforge.config.base import Auto, Section


class TrainConfig(Section):
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
    task: Literal["sft", "pretrain", "classify", "dpo", "kto", "orpo", "multitask", "reward", "grpo", "best_of_n"] = (
        Field(
            "sft",
            description="'sft': chat data, loss on the assistant answers; 'pretrain': continued pre-training (domain "
            "adaptation) on text records packed into blocks of train.block_size tokens, loss on every token; "
            "'classify': a classification head on an encoder or decoder (classification data); 'dpo': preference "
            "tuning on chosen/rejected pairs; 'kto' / 'orpo': the same pairs with KTO's loss (each answer against a "
            "reference point) or ORPO's (no reference model: cross-entropy on the chosen plus an odds-ratio term); "
            "'multitask': the chat datasets of data.datasets mixed in one model; 'reward': a reward model (a scalar "
            "head, Bradley-Terry loss on chosen/rejected pairs); 'grpo': reinforcement learning on chat prompts with "
            "the rewards of train.rewards; 'best_of_n': rejection-sampling fine-tuning (the best of "
            "train.num_generations sampled answers per prompt, by train.rewards, trained on as sft trains; "
            "docs/rlhf.md).",
        )
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
        0.1,
        description="task dpo, kto: how far the model may move from the reference (higher: stays closer); task "
        "orpo: the weight of the odds-ratio term beside the chosen answers' cross-entropy (TRL's beta).",
    )
    dpo_reference: Literal["model", "none"] = Field(
        "model",
        description="task dpo, kto: 'model': the model before training is the reference (its log-probabilities are "
        "computed once); 'none': reference-free.",
    )
    reward_margin: float = Field(
        0.0,
        ge=0,
        description="task reward: the loss is -log sigmoid(r_chosen - r_rejected - reward_margin x the pair's "
        "margin), a pair's margin being its rating gap (pairs made from ratings) or 1; 0: the plain Bradley-Terry "
        "loss.",
    )
    rewards: dict[str, float] = Field(
        default_factory=lambda: {"model": 1.0},
        description="task grpo, best_of_n: the reward, a weighted sum {name: weight}. 'model': the score of "
        "train.reward_model; 'regex': 1 if train.reward_regex matches the answer, else 0; 'length': 1 within "
        "train.reward_length_budget tokens, budget / length beyond; or any evaluate metric scored per answer "
        "against the example's reference answer (json_valid, field_accuracy, exact_match, token_f1, rougeL, or "
        "your own module:function or file.py:function (answer, reference) -> float).",
    )
    reward_model: str | None = Field(
        None,
        description="task grpo, best_of_n: the reward model scoring answers: a train.task=reward run or its model "
        "folder.",
    )
    reward_regex: str | None = Field(None, description="the pattern of train.rewards' 'regex' reward (re.search).")
    reward_length_budget: int = Field(
        64, ge=1, description="answer tokens within which train.rewards' 'length' reward is 1 (budget / length beyond)."
    )
    num_generations: int = Field(
        4,
        ge=2,
        description="task grpo: answers sampled per prompt, each rewarded against its group's mean; task best_of_n: "
        "answers sampled per prompt, the best one kept.",
    )
    best_of_n_min_reward: float | None = Field(
        None, description="task best_of_n: drop a prompt whose best answer scores below this (default: keep all)."
    )
    grpo_beta: float = Field(
        0.04,
        ge=0,
        description="task grpo: weight of the KL penalty against the starting model (0: none, no reference pass).",
    )
    generation_temperature: PositiveFloat = Field(
        1.0, description="task grpo, best_of_n: sampling temperature of the answers."
    )
    max_completion_length: int = Field(
        64, ge=1, description="task grpo, best_of_n: the longest answer sampled, in tokens."
    )
    grpo_eval_prompts: int = Field(
        32,
        ge=1,
        description="task grpo: validation prompts answered greedily at each validation; their mean reward is "
        "val_reward (val_loss is its negative, so early stopping keeps the most rewarded model).",
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
        "peak memory of whole batches on BENCHMARKS.md's LoRA run), 2048 for task classify (short batches run "
        "fastest whole), no split on GPUs; null: never split.",
    )
    group_by_length: bool | Auto = Field(
        "auto",
        description="Put examples of similar length in the same optimizer step (less padding; worth it on GPUs, "
        "where batches are not split) instead of plain random order. 'auto': on for task classify (short texts of "
        "varied length: a random batch of bench/train.py's reviews is 47% padding, a grouped one 3%), off otherwise "
        "(on CPU, micro-batches already cut the padding: BENCHMARKS.md's LoRA run is as fast without grouping and "
        "its held-out loss 0.03 lower).",
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
        "not with gradient checkpointing): faster steps after a one-off compile of under a minute to a few minutes "
        "(BENCHMARKS.md), worth it for runs many times longer than that.",
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

    @model_validator(mode="after")
    def _rewards_known(self) -> TrainConfig:
        if self.task not in ("grpo", "best_of_n"):
            return self
        if not self.rewards:
            raise ValueError(
                f"train.rewards is empty: task {self.task} needs at least one reward, e.g. {{json_valid: 1}}"
            )
        if "model" in self.rewards and not self.reward_model:
            raise ValueError(
                "train.rewards uses 'model' but train.reward_model is not set: name a train.task=reward run "
                "(runs/<name>), or use only verifiable rewards such as valid_json"
            )
        if "regex" in self.rewards and not self.reward_regex:
            raise ValueError("train.rewards uses 'regex' but train.reward_regex is not set: give the pattern")
        return self
