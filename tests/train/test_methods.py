"""Every training method x every task on the tiny model: the loss falls, what trains moved and what is frozen did
not, the saved model reproduces the trained one, an adapter merges to the same logits; clear errors where a
method cannot run."""

import json
from pathlib import Path

import pytest
import torch
from test_dpo import preference_rows
from test_multitask import greeting_rows
from test_pretrain import CLAUSES

from tuneforge.data import prepare
from tuneforge.errors import ConfigError
from tuneforge.evaluation.evaluate import _models
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train import train
from tuneforge.train.methods import METHODS
from tuneforge.train.precision import autocast
from tuneforge.train.tasks import TASKS, TaskContext, mean_loss

from helpers import review_rows, toy_rows, write_jsonl

METHOD_SETTINGS = {
    "lora": [],
    "dora": [],
    "full": ["train.learning_rate=0.002"],
    "freeze": ["train.trainable_layers=1", "train.trainable_modules=[model.norm]", "train.learning_rate=0.005"],
}
NO_NEAR = ["clean.near_dup_threshold=0", "clean.leakage_threshold=0"]  # templated data are near duplicates
HEAD = "score"  # the new classification head of a decoder: drawn at random on every load, so not compared


def task_data(task: str, folder: Path) -> list[str]:
    """The settings that give `task` a learnable toy set."""
    if task == "sft":
        return ["train.epochs=3"]
    if task == "pretrain":
        docs = [{"text": f"Vertrag {i}. " + " ".join(CLAUSES[j % 4] for j in range(i, i + 4))} for i in range(40)]
        return [f"data.path={write_jsonl(folder / 'docs.jsonl', docs)}", "train.block_size=64", "train.epochs=3"]
    if task == "classify":
        return [f"data.path={write_jsonl(folder / 'reviews.jsonl', review_rows(40, 40))}", "train.epochs=8"]
    if task in ("dpo", "kto", "orpo", "reward"):  # lower learning rates: the summed log-probabilities move fast
        return [f"data.path={write_jsonl(folder / 'pairs.jsonl', preference_rows(60))}", "train.epochs=2"]
    colour, greet = (
        write_jsonl(folder / "colour.jsonl", toy_rows(60)),
        write_jsonl(folder / "g.jsonl", greeting_rows(20)),
    )
    datasets = f"data.datasets=[{{name: colour, path: {colour}}}, {{name: greet, path: {greet}}}]"
    return ["data.path=null", datasets, "train.epochs=3"]


LEARNING_RATES = {  # (task, method) -> learning rate where the method's default setting does not suit the task
    ("classify", "lora"): 0.003,
    ("classify", "dora"): 0.003,
    ("classify", "freeze"): 0.01,
    ("dpo", "lora"): 0.001,
    ("dpo", "dora"): 0.001,
    ("dpo", "full"): 0.0005,
    ("dpo", "freeze"): 0.001,
    ("kto", "lora"): 0.003,
    ("kto", "dora"): 0.003,
    ("kto", "full"): 0.001,
    ("kto", "freeze"): 0.003,
    ("orpo", "lora"): 0.003,
    ("orpo", "dora"): 0.003,
    ("orpo", "full"): 0.001,
    ("orpo", "freeze"): 0.005,
    ("reward", "lora"): 0.003,
    ("reward", "dora"): 0.003,
    ("reward", "full"): 0.0005,
    ("reward", "freeze"): 0.005,
}


def validation_loss(cfg, model: torch.nn.Module, tokenizer, device: str = "cpu", precision: str = "fp32") -> float:
    """The run's task loss of `model` on the validation split (dpo: against the saved reference), computed as
    training computed it (`precision`: its autocast)."""
    task, context = TASKS[cfg.train.task], TaskContext.of(cfg)
    data, pad = cfg.run_dir / "data", int(tokenizer.pad_token_id)
    val = task.load(data / "val.jsonl", tokenizer, context)
    with autocast(device, precision):
        if task.setup is not None:
            splits = {"train": task.load(data / "train.jsonl", tokenizer, context), "val": val}
            task.setup(model, splits, context, device, pad, False, lambda *a: None)
        return mean_loss(model, task, val, cfg.train, 8, pad, device)


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
@pytest.mark.parametrize("task", ["sft", "pretrain", "classify", "dpo", "kto", "orpo", "reward", "multitask"])
def test_method_learns_moves_what_it_trains_and_reloads(
    task: str, method: str, tiny_config, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = [*METHOD_SETTINGS[method], *task_data(task, tmp_path), *NO_NEAR]
    if (task, method) in LEARNING_RATES:
        settings.append(f"train.learning_rate={LEARNING_RATES[task, method]}")
    cfg = tiny_config(f"train.task={task}", f"train.method={method}", "data.estimate=false", *settings)
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.6 * first, (task, method, first, last)

    info = json.loads((cfg.run_dir / "model" / "tuneforge.json").read_text())
    assert info["method"] == method and info["adapter"] == METHODS[method].adapter and info["task"] == task
    saved = _models(cfg, cfg.run_dir / "model")[0]["tuned"]
    tokenizer = load_tokenizer(str(tiny_model_dir))
    # the saved model scores the validation split exactly as the model did at the end of training
    assert validation_loss(cfg, saved, tokenizer) == pytest.approx(result.val_loss, abs=1e-4)

    labels = {"classify": ["neg", "pos"], "reward": ["reward"]}.get(task)
    base = {k: v for k, v in load_model(str(tiny_model_dir), labels=labels).state_dict().items() if HEAD not in k}
    if METHODS[method].adapter:
        tuned = {
            k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in saved.state_dict().items()
            if "lora_" not in k
        }
        assert all(torch.equal(tuned[k], v) for k, v in base.items()), "a frozen base weight changed"
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.state_dict().items())  # adapters moved
        merged = saved.merge_and_unload()
        ids = torch.tensor([tokenizer("Item 7: what colour?")["input_ids"]])
        with torch.no_grad():
            assert torch.allclose(merged(input_ids=ids).logits, saved(input_ids=ids).logits, atol=1e-4)
    else:
        tuned = saved.state_dict()
        changed = {k for k, v in base.items() if not torch.equal(tuned[k], v)}
        if method == "full":
            assert {k for k in base if "layers.0." in k} <= changed  # every weight of the first layer trained
        else:  # freeze: the last layer and the final norm trained, nothing else
            assert changed and all(k.startswith(("model.layers.1.", "model.norm.")) for k in changed), changed
            assert "model.norm.weight" in changed and any(k.startswith("model.layers.1.") for k in changed)


def test_qlora_off_cuda_says_what_to_use_instead(tiny_config) -> None:
    cfg = tiny_config("train.method=qlora", "data.estimate=false")
    prepare(cfg)
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as err:
        train(cfg, log=lambda *a: None)
    assert "train.method=lora" in err.value.hint


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ([], "with nothing to train"),
        (["train.trainable_layers=9"], "but the model has 2 layers"),
        (["train.trainable_modules=[lm_haed]"], r"no module matches \['lm_haed'\]"),
    ],
)
def test_freeze_settings_are_checked(settings: list[str], message: str, tiny_config, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", toy_rows(20))
    cfg = tiny_config(f"data.path={path}", "train.method=freeze", "data.estimate=false", *settings)
    prepare(cfg)
    with pytest.raises(ConfigError, match=message):
        train(cfg, log=lambda *a: None)


def test_training_that_cannot_fit_is_refused_before_the_first_step(tiny_config, monkeypatch) -> None:
    from tuneforge.errors import TrainingError
    from tuneforge.train import setup

    cfg = tiny_config("data.estimate=false")
    prepare(cfg)
    lines: list[str] = []
    monkeypatch.setattr(setup, "available_memory", lambda device: 200 * 2**20)
    with pytest.raises(TrainingError, match=r"needs ~0\.\d GiB at its peak but only 0\.2 GiB") as err:
        train(cfg, log=lines.append)
    assert "train.batch_size" in err.value.hint and not (cfg.run_dir / "metrics.jsonl").exists()
    assert lines[-1].startswith("memory: ~0.") and "for the 8 longest examples), 0.2 GiB available on cpu" in lines[-1]
