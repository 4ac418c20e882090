"""Fine-tuning methods: a registry from `train.method` to how the model is loaded and what of it trains.

`lora`, `dora` and `qlora` train PEFT adapters and save only them; `full` and `freeze` change the model's own
weights and save the whole model (safetensors). Each method is a small function; `register` adds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from tuneforge.config import TrainConfig
from tuneforge.errors import ConfigError
from tuneforge.models import decoder_layers, quiet_peft
from tuneforge.train.auto import Hyper


@dataclass(frozen=True)
class Method:
    """How one `train.method` prepares a model, whether it saves an adapter, what it needs to load."""

    apply: Callable[[Any, TrainConfig, Hyper], Any]
    adapter: bool
    load_options: Callable[[str], dict[str, Any]] | None = None  # extra from_pretrained arguments per device


METHODS: dict[str, Method] = {}


def register(
    name: str, adapter: bool, load_options: Callable[[str], dict[str, Any]] | None = None
) -> Callable[[Callable[[Any, TrainConfig, Hyper], Any]], Callable[[Any, TrainConfig, Hyper], Any]]:
    """Add a method to the registry under `name`."""

    def add(fn: Callable[[Any, TrainConfig, Hyper], Any]) -> Callable[[Any, TrainConfig, Hyper], Any]:
        METHODS[name] = Method(fn, adapter, load_options)
        return fn

    return add


def _lora_config(cfg: TrainConfig, hp: Hyper, dora: bool = False) -> LoraConfig:
    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        use_dora=dora,
        # SEQ_CLS: PEFT trains and saves the new classification head ("score"/"classifier") in full
        task_type="SEQ_CLS" if cfg.task in HEAD_TASKS else "CAUSAL_LM",
    )


@register("lora", adapter=True)
def apply_lora(model: Any, cfg: TrainConfig, hp: Hyper) -> Any:
    """Wrap the model with LoRA adapters (PEFT); only the adapters train."""
    with quiet_peft():
        return get_peft_model(model, _lora_config(cfg, hp))


@register("dora", adapter=True)
def apply_dora(model: Any, cfg: TrainConfig, hp: Hyper) -> Any:
    """LoRA with weight decomposition (DoRA, PEFT's use_dora): a magnitude vector per layer trains as well."""
    with quiet_peft():
        return get_peft_model(model, _lora_config(cfg, hp, dora=True))


def _qlora_load(device: str) -> dict[str, Any]:
    if device != "cuda":
        raise ConfigError(
            "train.method=qlora needs a CUDA GPU: its 4-bit base weights run on bitsandbytes' GPU kernels, and "
            f"this machine trains on {device}",
            "use train.method=lora (the same adapters on a full-precision base; the embedded model needs ~2 GiB)",
        )
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "train.method=qlora needs the bitsandbytes package", "pip install bitsandbytes (on the CUDA machine)"
        ) from None
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return {"quantization_config": quantization}


@register("qlora", adapter=True, load_options=_qlora_load)
def apply_qlora(model: Any, cfg: TrainConfig, hp: Hyper) -> Any:
    """LoRA on a 4-bit (NF4, double-quantised) base loaded by bitsandbytes: CUDA only."""
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    with quiet_peft():
        return get_peft_model(model, _lora_config(cfg, hp))


@register("full", adapter=False)
def apply_full(model: Any, cfg: TrainConfig, hp: Hyper) -> Any:
    """Every weight trains (AdamW then holds two fp32 moments per weight: ~16 bytes per parameter in all)."""
    for param in model.parameters():
        param.requires_grad_(True)
    return model


@register("freeze", adapter=False)
def apply_freeze(model: Any, cfg: TrainConfig, hp: Hyper) -> Any:
    """Only the last `train.trainable_layers` decoder layers and the modules named by `train.trainable_modules`
    train; everything else stays as it was."""
    heads = [n for n in HEADS if cfg.task in HEAD_TASKS and isinstance(getattr(model, n, None), torch.nn.Module)]
    if not cfg.trainable_layers and not cfg.trainable_modules and not heads:
        raise ConfigError(
            "train.method=freeze with nothing to train",
            "set train.trainable_layers (e.g. 2: the last two layers) and/or train.trainable_modules (e.g. [lm_head])",
        )
    layers = decoder_layers(model)
    n_layers = len(layers)
    if cfg.trainable_layers > n_layers:
        raise ConfigError(
            f"train.trainable_layers={cfg.trainable_layers}, but the model has {n_layers} layers",
            f"choose at most {n_layers}",
        )
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in layers[n_layers - cfg.trainable_layers :] if cfg.trainable_layers else []:
        for param in layer.parameters():
            param.requires_grad_(True)
    unmatched = []
    for pattern in [*cfg.trainable_modules, *heads]:  # a new classification head always trains
        hits = [m for name, m in model.named_modules() if name == pattern or re.fullmatch(pattern, name)]
        if not hits:
            unmatched.append(pattern)
        for module in hits:
            for param in module.parameters():
                param.requires_grad_(True)
    if unmatched:
        names = [n for n, _ in model.named_modules() if n.count(".") <= 2][:12]
        raise ConfigError(
            f"train.trainable_modules: no module matches {unmatched}",
            f"name modules as model.named_modules() does (a full name or a regex), e.g. {names}",
        )
    return model


HEAD_TASKS = ("classify", "reward")  # the tasks that put a new head on the model
HEADS = ("score", "classifier")  # what transformers calls the classification head of decoders and encoders


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
