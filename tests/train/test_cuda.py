"""The CUDA paths, on a GPU machine: `python3 -m pytest -m cuda` (deselected where no GPU is visible, and failing,
not skipping, when asked for without one). Every method, QLoRA's 4-bit base included, trains every task in bf16
autocast; the saved model scores the validation split as training left it; evaluation and the serving engine
generate on the GPU; gradient checkpointing recomputes there too."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_methods import LEARNING_RATES, METHOD_SETTINGS, NO_NEAR, task_data, validation_loss

from tuneforge.data import prepare
from tuneforge.evaluation import evaluate
from tuneforge.evaluation.evaluate import _models
from tuneforge.generation import SamplingParams
from tuneforge.models import load_tokenizer
from tuneforge.rundir import load_run
from tuneforge.serve.engine import Engine
from tuneforge.train import train

pytestmark = pytest.mark.cuda
GPU_METHODS = {**METHOD_SETTINGS, "qlora": []}


@pytest.fixture(autouse=True)
def _gpu() -> None:
    if not torch.cuda.is_available():
        pytest.fail("tests marked cuda need a CUDA GPU; run them with `pytest -m cuda` on a GPU machine")


@pytest.mark.parametrize("method", sorted(GPU_METHODS))
@pytest.mark.parametrize("task", ["sft", "pretrain", "classify", "dpo", "multitask"])
def test_every_method_trains_every_task_on_the_gpu_in_bf16(
    task: str, method: str, tiny_config, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = [*GPU_METHODS[method], *task_data(task, tmp_path), *NO_NEAR]
    rate = LEARNING_RATES.get((task, "lora" if method == "qlora" else method))
    settings += [f"train.learning_rate={rate}"] if rate else []
    cfg = tiny_config(f"train.task={task}", f"train.method={method}", "data.estimate=false", *settings,
                      "train.precision=auto")  # fmt: skip
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    assert result.precision == "bf16"  # auto: the GPU multiplies bf16 faster
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.7 * first, (task, method, first, last)
    saved = _models(cfg, cfg.run_dir / "model")[0]["tuned"]
    assert next(saved.parameters()).device.type == "cuda"
    if method == "qlora":  # the base really is 4-bit
        assert any(type(m).__name__ == "Linear4bit" for m in saved.modules())
    loss = validation_loss(cfg, saved, load_tokenizer(str(tiny_model_dir)), "cuda", "bf16")
    assert loss == pytest.approx(result.val_loss, rel=0.05, abs=0.02)


def test_evaluation_and_the_serving_engine_generate_on_the_gpu(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "toy"
    shutil.copytree(trained_run, run)
    report = evaluate(load_run(run, ["evaluate.limit=4"]), log=lambda *a: None)
    assert set(report.scores) == {"base", "tuned"} and (run / "predictions.jsonl").is_file()
    engine = Engine([run])
    try:
        assert next(engine.model.parameters()).device.type == "cuda"
        answer = engine.complete("toy", [{"role": "user", "content": "Item 7: what colour?"}], SamplingParams(12))
        assert answer.completion_tokens > 0 and answer.prompt_tokens > 0
    finally:
        engine.close()


def test_gradient_checkpointing_and_whole_batches_on_the_gpu(tiny_config, monkeypatch) -> None:
    """On a GPU a batch is not cut into micro-batches ('auto'); checkpointing changes no loss beyond bf16's noise."""
    from tuneforge.train import loop

    real, parts = loop.optimizer_step, []

    def counted(model, group, *args, **kwargs):
        parts.append(len(group))
        return real(model, group, *args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", counted)
    losses = []
    for on in (False, True):
        cfg = tiny_config("train.max_steps=4", "train.precision=bf16", f"train.gradient_checkpointing={on}",
                          f"name=gc{on}")  # fmt: skip
        prepare(cfg)
        train(cfg, log=lambda *a: None)
        losses.append([json.loads(line)["loss"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()])
    assert set(parts) == {1}
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
