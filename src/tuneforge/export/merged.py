"""Write a run's model as plain weights: the adapter merged into the full-precision base (never into a quantized one,
which loses quality: peft#2321), saved as safetensors with the tokenizer, its chat template and a generation config
whose end tokens are the chat's own (a missing end-of-turn token is why exports talk on forever)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers import GenerationConfig

from tuneforge.export.runs import ADAPTER, Run, reference_model
from tuneforge.generation import eos_ids


def write_merged(run: Run, out: Path) -> Path:
    """`out`: a folder that AutoModelForCausalLM (AutoModelForSequenceClassification for a classifier), vLLM and
    llama.cpp's converter load. Written beside and renamed into place: a failed export leaves no half folder."""
    model, tokenizer = reference_model(run)
    if run.adapter:
        model = model.merge_and_unload(adapter_names=[ADAPTER])
    config: Any = model.config
    config.name_or_path = run.hub_base
    tmp = out.with_name(f".{out.name}-partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not run.classifier:
        generation = GenerationConfig.from_pretrained(tmp) if (tmp / "generation_config.json").is_file() else None
        generation = generation or GenerationConfig.from_model_config(config)
        generation.eos_token_id = sorted(eos_ids(tokenizer))  # every token tuneforge stops at
        generation.pad_token_id = int(tokenizer.pad_token_id)
        generation.save_pretrained(tmp)
    swap_in(tmp, out)
    return out


def swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished folder `tmp`."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
