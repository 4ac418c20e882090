"""The whole run from one config: prepare -> train -> evaluate, each stage writing into the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data import PrepareResult, prepare
from tuneforge.evaluation import EvalReport, evaluate
from tuneforge.train import TrainResult, train
from tuneforge.train.estimate import estimate_training


@dataclass
class RunResult:
    """What each stage of a run produced."""

    prepared: PrepareResult
    trained: TrainResult
    evaluated: EvalReport


def run(cfg: RunConfig, log: Any = print) -> RunResult:
    """Run every stage of `cfg` in order, each writing into cfg.run_dir."""
    prepared = prepare(cfg, estimate=estimate_training)
    log(prepared.text())
    log(f"splits -> {prepared.data_dir}")
    trained = train(cfg, log=log)
    log(f"trained {trained.steps} steps in {trained.seconds:.0f}s; adapter -> {trained.model_dir}")
    evaluated = evaluate(cfg, log=log)
    return RunResult(prepared, trained, evaluated)
