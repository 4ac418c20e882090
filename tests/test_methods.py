"""Every training method on the tiny model: the loss falls, what trains moved and what is frozen did not, the
saved model reproduces the trained one, an adapter merges to the same logits; clear errors where a method
cannot run."""

import json
from pathlib import Path

import pytest
import torch
from conftest import toy_rows, write_jsonl

from tuneforge.data import prepare
from tuneforge.errors import ConfigError
from tuneforge.models import load_adapter, load_model, load_tokenizer
from tuneforge.train import train
from tuneforge.train.lm import SFT, load_sft
from tuneforge.train.methods import METHODS
from tuneforge.train.tasks import mean_loss

METHOD_SETTINGS = {
    "lora": [],
    "dora": [],
    "full": ["train.learning_rate=0.002"],
    "freeze": ["train.trainable_layers=1", "train.trainable_modules=[model.norm]", "train.learning_rate=0.005"],
}


def _saved_model(model_dir: Path, base: Path) -> torch.nn.Module:
    if (model_dir / "adapter_config.json").is_file():
        return load_adapter(load_model(str(base)), model_dir, "t").eval()
    return load_model(str(model_dir)).eval()


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_method_learns_moves_what_it_trains_and_reloads(method: str, tiny_config, tiny_model_dir: Path) -> None:
    cfg = tiny_config(f"train.method={method}", "train.epochs=3", "data.estimate=false", *METHOD_SETTINGS[method])
    prepare(cfg)
    result = train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.6 * first, (method, first, last)

    info = json.loads((cfg.run_dir / "model" / "tuneforge.json").read_text())
    assert info["method"] == method and info["adapter"] == METHODS[method].adapter
    saved = _saved_model(cfg.run_dir / "model", tiny_model_dir)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    val = load_sft(cfg.run_dir / "data" / "val.jsonl", tokenizer, cfg)
    # the saved model scores the validation split exactly as the model did at the end of training
    assert mean_loss(saved, SFT, val, cfg, 8, int(tokenizer.pad_token_id)) == pytest.approx(result.val_loss, abs=1e-4)

    base = load_model(str(tiny_model_dir)).state_dict()
    if METHODS[method].adapter:
        tuned = {
            k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in saved.state_dict().items()
            if "lora_" not in k
        }
        assert all(torch.equal(tuned[k], v) for k, v in base.items()), "a frozen base weight changed"
        merged = saved.merge_and_unload()
        ids = torch.tensor([val[0].input_ids])
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
    from tuneforge.train import estimate
    from tuneforge.train.loop import TrainingError

    cfg = tiny_config("data.estimate=false")
    prepare(cfg)
    lines: list[str] = []
    monkeypatch.setattr(estimate, "available_memory", lambda device: 200 * 2**20)
    with pytest.raises(TrainingError, match=r"needs ~0\.\d GiB at its peak but only 0\.2 GiB") as err:
        train(cfg, log=lines.append)
    assert "train.batch_size" in err.value.hint and not (cfg.run_dir / "metrics.jsonl").exists()
    assert lines[-1].startswith("memory: ~0.") and "for the 8 longest examples), 0.2 GiB available on cpu" in lines[-1]
