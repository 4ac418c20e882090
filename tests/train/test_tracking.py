"""train.report_to: TensorBoard event files and MLflow runs hold the same numbers as metrics.jsonl."""

import json

import pytest

from tuneforge.data import prepare
from tuneforge.errors import ConfigError
from tuneforge.train import train


def test_tensorboard_and_mlflow_get_every_step(tiny_config, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config("train.max_steps=5", "train.report_to=[tensorboard, mlflow]", "train.eval_steps=5")
    prepare(cfg)
    train(cfg, log=lambda *a: None)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]

    events = EventAccumulator(str(cfg.run_dir / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in rows])
    assert [e.step for e in events.Scalars("eval/val_loss")] == [5]

    client = MlflowClient(f"sqlite:///{(cfg.run_dir / 'mlflow.db').resolve()}")
    run = client.search_runs([client.get_experiment_by_name("tuneforge").experiment_id])[0]
    assert run.info.run_name == "toy" and run.data.params["train.method"] == "lora"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in rows]


def test_a_tracker_without_its_package_says_what_to_install(tiny_config, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    cfg = tiny_config("train.max_steps=1", "train.report_to=[mlflow]")
    prepare(cfg)
    with pytest.raises(ConfigError, match="names mlflow, but its package is not installed") as err:
        train(cfg, log=lambda *a: None)
    assert "pip install mlflow-skinny" in err.value.hint
