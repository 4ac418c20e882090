"""The tune stage: a small Optuna search over chosen hyperparameters, validation loss as the objective.

Each trial is a real training run of the same prepared data (in runs/<name>/tune/trial-N, data hard-linked, no
checkpoints), scored by its best validation loss. The study lives in runs/<name>/tune/study.db (SQLite), so an
interrupted search continues where it stopped when started again. The best values are written as a complete
config, runs/<name>/tune/best.yaml, ready for `tuneforge run` or `tuneforge train`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig, dump_config
from tuneforge.errors import ConfigError
from tuneforge.rundir import atomic_write_text, require

TUNE_DIR = "tune"


@dataclass
class TuneResult:
    """The best trial's values and score, every trial's, and where the best config was written."""

    best_params: dict[str, Any]
    best_val_loss: float
    trials: list[dict[str, Any]]
    best_config: Path


def tune(cfg: RunConfig, log: Any = print) -> TuneResult:
    """Search the hyperparameters named in cfg.tune; write tune/best.yaml."""
    import optuna

    from tuneforge.train import train

    data_dir = require(cfg.run_dir, "data/train.jsonl", "prepare").parent
    if not (data_dir / "val.jsonl").is_file() or not (data_dir / "val.jsonl").stat().st_size:
        raise ConfigError("tune needs a validation split to score trials", "prepare with data.val_size > 0")
    space = _space(cfg)
    root = cfg.run_dir / TUNE_DIR
    root.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=cfg.name,
        storage=f"sqlite:///{root / 'study.db'}",
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=cfg.train.seed),
    )
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    if done:
        log(f"continuing the search in {root / 'study.db'}: {done} of {cfg.tune.trials} trials done")

    def objective(trial: Any) -> float:
        values = {key: suggest(trial) for key, suggest in space.items()}
        trial_cfg = _trial_config(cfg, root, trial.number, values)
        result = train(trial_cfg, log=lambda *a: None)
        log(f"trial {trial.number}: {_show(values)} -> val_loss {result.val_loss}")
        if result.val_loss is None:
            raise ConfigError("a trial produced no validation loss", "prepare with data.val_size > 0")
        return float(result.val_loss)

    study.optimize(objective, n_trials=max(0, cfg.tune.trials - done))
    best = study.best_trial
    best_cfg = _apply(cfg, best.params)
    path = root / "best.yaml"
    atomic_write_text(path, dump_config(best_cfg))
    trials = [
        {"number": t.number, "params": t.params, "val_loss": t.value}
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    assert best.value is not None  # a complete trial has its value
    return TuneResult(dict(best.params), float(best.value), trials, path)


def _space(cfg: RunConfig) -> dict[str, Any]:
    """One suggest function per searched setting (key: the config path)."""
    t = cfg.tune
    space: dict[str, Any] = {}
    if t.learning_rate:
        low, high = sorted(t.learning_rate)
        space["train.learning_rate"] = lambda trial: trial.suggest_float("train.learning_rate", low, high, log=True)
    if t.lora_r and cfg.train.method in ("lora", "dora", "qlora"):
        space["train.lora_r"] = lambda trial: trial.suggest_categorical("train.lora_r", list(t.lora_r or []))
    if t.epochs:
        space["train.epochs"] = lambda trial: trial.suggest_categorical("train.epochs", list(t.epochs or []))
    if t.warmup_ratio:
        space["train.warmup_ratio"] = lambda trial: trial.suggest_categorical(
            "train.warmup_ratio", list(t.warmup_ratio or [])
        )
    if not space:
        raise ConfigError(
            "nothing to tune: every tune.* range is null (or tune.lora_r with a method without LoRA)",
            "set tune.learning_rate: [1e-5, 1e-3] or tune.lora_r: [8, 16, 32]",
        )
    return space


def _apply(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """`cfg` with the given train.* values set (lora_alpha kept at 2 x r when r is searched)."""
    update = {key.split(".", 1)[1]: value for key, value in values.items()}
    if "lora_r" in update:
        update["lora_alpha"] = 2 * int(update["lora_r"])
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})


def _trial_config(cfg: RunConfig, root: Path, number: int, values: dict[str, Any]) -> RunConfig:
    """The config of one trial: its own run directory beside the others, sharing the prepared data."""
    trial = _apply(cfg, values).model_copy(update={"output_dir": root, "name": f"trial-{number}"})
    trial = trial.model_copy(update={"train": trial.train.model_copy(update={"save_steps": 10**9})})
    data = trial.run_dir / "data"
    shutil.rmtree(trial.run_dir, ignore_errors=True)  # a trial cut short before is run again from scratch
    data.mkdir(parents=True)
    for split in (cfg.run_dir / "data").glob("*.jsonl"):
        try:
            os.link(split, data / split.name)  # hard links: no copy of large data per trial
        except OSError:
            shutil.copy2(split, data / split.name)
    return trial


def _show(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
        for k, v in values.items()
    )
