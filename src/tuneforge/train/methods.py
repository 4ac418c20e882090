"""Fine-tuning methods: a registry from `train.method` to a function that prepares the model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peft import LoraConfig, get_peft_model

from tuneforge.config import TrainConfig
from tuneforge.models import quiet_peft

Method = Callable[[Any, TrainConfig], Any]
METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    """Add a method to the registry under `name`."""

    def add(fn: Method) -> Method:
        METHODS[name] = fn
        return fn

    return add


@register("lora")
def apply_lora(model: Any, cfg: TrainConfig) -> Any:
    """Wrap the model with LoRA adapters (PEFT); only the adapters train."""
    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    with quiet_peft():
        return get_peft_model(model, config)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
