"""Evaluation stage."""

from tuneforge.evaluation.evaluate import EvalReport, evaluate

__all__ = ["EvalReport", "evaluate"]
