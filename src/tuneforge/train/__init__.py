"""Training stage."""

from tuneforge.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
