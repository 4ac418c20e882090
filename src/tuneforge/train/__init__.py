"""Training stage: `train(cfg)` fine-tunes a run's model on its prepared data.

The registries are filled here: each task module registers its tasks (`TASKS`) when imported, and methods.py its
methods (`METHODS`).
"""

from tuneforge.train import best_of_n, classify, dpo, grpo, lm, multitask, preference_losses, reward  # noqa: F401  (each registers its tasks)
from tuneforge.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
