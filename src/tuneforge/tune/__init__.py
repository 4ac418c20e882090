"""Hyperparameter search stage."""

from tuneforge.tune.search import TuneResult, tune

__all__ = ["TuneResult", "tune"]
