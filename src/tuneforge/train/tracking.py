"""Experiment tracking: metrics.jsonl always; TensorBoard and MLflow through their own libraries on request.

`train.report_to: [tensorboard]` writes event files to runs/<name>/tensorboard (`tensorboard --logdir runs`);
`[mlflow]` logs the train settings as parameters and every metric by step to $MLFLOW_TRACKING_URI, or, when that
is unset, to a SQLite store in runs/<name>/mlflow.db (`mlflow ui --backend-store-uri sqlite:///runs/<name>/mlflow.db`).
Only the main process of a data-parallel run reports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError

INSTALL = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny sqlalchemy alembic"}


class Trackers:
    """The trackers of `train.report_to`, fed one metrics row per step."""

    def __init__(self, cfg: RunConfig, active: bool = True) -> None:
        self._tb: Any = None
        self._mlflow: Any = None
        wanted = cfg.train.report_to if active else []
        if "tensorboard" in wanted:
            self._tb = _tensorboard(cfg.run_dir / "tensorboard")
        if "mlflow" in wanted:
            self._mlflow = _mlflow(cfg)

    def log(self, row: dict[str, Any]) -> None:
        """Report the numbers of one metrics.jsonl row at its step."""
        step = int(row["step"])
        values = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, int | float)}
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"train/{key}" if key != "val_loss" else "eval/val_loss", value, step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        """Flush and end the tracker runs."""
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


def _tensorboard(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise _missing("tensorboard") from None
    return SummaryWriter(log_dir=str(folder))


def _mlflow(cfg: RunConfig) -> Any:
    try:
        import mlflow
    except ImportError:
        raise _missing("mlflow") from None
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(cfg.run_dir / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tuneforge")
    mlflow.start_run(run_name=cfg.name)
    params = {f"train.{k}": v for k, v in cfg.train.model_dump(mode="json").items() if not isinstance(v, list | dict)}
    mlflow.log_params({**params, "model.name": cfg.model.name})
    return mlflow


def _missing(name: str) -> ConfigError:
    return ConfigError(
        f"train.report_to names {name}, but its package is not installed",
        f"pip install {INSTALL[name]} (or pip install 'tuneforge[tracking]'), or remove {name} from train.report_to",
    )
