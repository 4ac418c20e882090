"""A run's tuned model as tuneforge serves and evaluates it (the reference of every parity check), and the facts an
export needs about it: base model, method, task, classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.errors import RunError
from tuneforge.evaluation.model_card import hub_id
from tuneforge.models import load_trained
from tuneforge.rundir import MODEL_DIR, load_run
from tuneforge.train.tasks import TaskContext, head_labels

ADAPTER = "tuned"


@dataclass
class Run:
    """A trained run: its config, model folder, whether that holds an adapter, and its classes (classifiers)."""

    cfg: RunConfig
    model_dir: Path
    adapter: bool
    labels: list[str] | None

    @property
    def classifier(self) -> bool:
        return self.labels is not None

    @property
    def hub_base(self) -> str:
        """The base model as other runtimes name it: the embedded default by its hub id."""
        return hub_id(self.cfg.model.name)


def open_run(run_dir: Path) -> Run:
    """The run in `run_dir`, refused when it has no trained model."""
    cfg = load_run(run_dir)
    model_dir = cfg.run_dir / MODEL_DIR
    adapter = (model_dir / "adapter_config.json").is_file()
    if not adapter and not (model_dir / "config.json").is_file():
        raise RunError(f"{run_dir} has no trained model in {MODEL_DIR}/", f"run `tuneforge train {run_dir}` first")
    return Run(cfg, model_dir, adapter, head_labels(TaskContext.of(cfg)))


def reference_model(run: Run) -> tuple[Any, Any]:
    """The tuned model and tokenizer as `tuneforge serve` and `evaluate` run them: the base model in fp32 with the
    adapter attached (not merged), or the saved whole model."""
    return load_trained(run.model_dir, labels=run.labels)
