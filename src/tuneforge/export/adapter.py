"""The adapter alone, as vLLM's LoRA loading expects it: adapter_config.json naming the base model by its hub id and
adapter_model.safetensors, plus the `vllm serve ... --lora-modules` line that serves it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tuneforge.errors import RunError
from tuneforge.export.merged import swap_in
from tuneforge.export.runs import Run

# the modules vLLM applies LoRA to in Llama-style models (an adapter on others does not load there)
VLLM_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # --max-lora-rank choices


def write_adapter(run: Run, out: Path) -> dict[str, Any]:
    """Copy the adapter into `out`, with the base named as other runtimes name it; return its vLLM facts."""
    if not run.adapter:
        raise RunError(
            f"{run.cfg.run_dir} trained the whole model (train.method={run.cfg.train.method}): there is no adapter",
            "export it with --to merged",
        )
    config = json.loads((run.model_dir / "adapter_config.json").read_text(encoding="utf-8"))
    problems = vllm_problems(config, run)
    config["base_model_name_or_path"] = run.hub_base
    tmp = out.with_name(f".{out.name}-partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(run.model_dir / "adapter_model.safetensors", tmp / "adapter_model.safetensors")
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    swap_in(tmp, out)
    rank = int(config.get("r", 8))
    max_rank = next((r for r in VLLM_RANKS if r >= rank), rank)
    name = run.cfg.name
    command = f"vllm serve {run.hub_base} --enable-lora --lora-modules {name}={out.resolve()}"
    if max_rank > 16:  # vLLM's default --max-lora-rank is 16
        command += f" --max-lora-rank {max_rank}"
    return {"vllm_command": command, "vllm_problems": problems, "rank": rank}


def vllm_problems(config: dict[str, Any], run: Run) -> list[str]:
    """Why vLLM would refuse or mis-serve this adapter (empty: none known)."""
    problems = []
    if config.get("use_dora"):
        problems.append("DoRA adapters do not load in vLLM: export --to merged and serve the merged model")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = sorted({t.rsplit(".", 1)[-1] for t in targets} - VLLM_MODULES)  # full paths or names: by the last
    if unknown:
        problems.append(f"vLLM applies LoRA to {', '.join(sorted(VLLM_MODULES))}, not to {', '.join(unknown)}")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} are not loaded by vLLM: export --to merged")
    if run.classifier:
        problems.append("a classifier's head is not served by vLLM's LoRA: export --to classifier")
    return problems
