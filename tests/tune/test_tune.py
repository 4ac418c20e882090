"""tuneforge tune: an Optuna search scored by validation loss, resumable, writing the best config."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.config import load_config
from tuneforge.data import prepare
from tuneforge.errors import ConfigError
from tuneforge.tune import tune

SEARCH = ["tune.trials=3", "tune.learning_rate=[0.0005, 0.02]", "tune.lora_r=[2, 8]", "train.max_steps=6"]


def test_search_picks_the_best_trial_and_writes_its_config(tiny_config) -> None:
    cfg = tiny_config(*SEARCH, "data.estimate=false")
    prepare(cfg)
    lines: list[str] = []
    result = tune(cfg, log=lines.append)
    assert len(result.trials) == 3 and sum(line.startswith("trial ") for line in lines) == 3
    assert result.best_val_loss == min(t["val_loss"] for t in result.trials)
    best = load_config(result.best_config)
    assert best.train.learning_rate == result.best_params["train.learning_rate"]
    assert best.train.lora_r == result.best_params["train.lora_r"] and best.train.lora_alpha == 2 * best.train.lora_r
    for t in result.trials:  # each trial really trained with its values
        adapter = json.loads(
            (cfg.run_dir / "tune" / f"trial-{t['number']}" / "model" / "adapter_config.json").read_text()
        )
        assert adapter["r"] == t["params"]["train.lora_r"]
        assert not (cfg.run_dir / "tune" / f"trial-{t['number']}" / "checkpoints").exists()

    # started again with more trials, the study continues instead of starting over
    more = tune(cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"trials": 4})}), log=lines.append)
    assert len(more.trials) == 4 and any("3 of 4 trials done" in line for line in lines)


def test_cli_tune_prints_the_trials(tiny_config) -> None:
    cfg = tiny_config("tune.trials=2", "tune.lora_r=null", "train.max_steps=3", "data.estimate=false")
    prepare(cfg)
    result = CliRunner().invoke(app, ["tune", str(cfg.run_dir), "tune.trials=2", "tune.lora_r=null"])
    assert result.exit_code == 0, result.output
    assert "best val_loss" in result.output and "tune/best.yaml" in result.output
    assert yaml.safe_load((cfg.run_dir / "tune" / "best.yaml").read_text())["train"]["lora_r"] == 16


def test_nothing_to_tune_is_a_clear_error(tiny_config) -> None:
    cfg = tiny_config("tune.learning_rate=null", "tune.lora_r=null", "data.estimate=false")
    prepare(cfg)
    result = CliRunner().invoke(app, ["tune", str(cfg.run_dir), "tune.learning_rate=null", "tune.lora_r=null"])
    assert result.exit_code == 2 and "nothing to tune" in result.output


def test_every_tune_setting_becomes_a_search_dimension() -> None:
    import optuna

    from tuneforge.tune.search import _apply, _space

    cfg = load_config(None, ["tune.epochs=[1, 3]", "tune.warmup_ratio=[0.0, 0.1]", "tune.lora_r=[4]"])
    space = _space(cfg)
    assert sorted(space) == ["train.epochs", "train.learning_rate", "train.lora_r", "train.warmup_ratio"]
    trial = optuna.trial.FixedTrial(
        {"train.epochs": 3, "train.warmup_ratio": 0.0, "train.lora_r": 4, "train.learning_rate": 1e-4}
    )
    values = {key: suggest(trial) for key, suggest in space.items()}
    tuned = _apply(cfg, values).train
    assert (tuned.epochs, tuned.warmup_ratio, tuned.lora_r, tuned.lora_alpha, tuned.learning_rate) == (
        3,
        0.0,
        4,
        8,
        1e-4,
    )
    full = load_config(None, ["train.method=full", "tune.learning_rate=null"])  # no LoRA rank without LoRA
    with pytest.raises(ConfigError, match="nothing to tune"):
        _space(full)
