"""What the training estimate of `prepare` reads of the prepared data, and the shape of the estimator it is given.

The estimate trains a few real steps, which is the train stage's work; the data stage only describes the training
split (`TrainingData`) and calls the `Estimator` its caller passes (the CLI and the workflow pass
`tuneforge.train.estimate.estimate_training`), so the data stage never imports the train stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuneforge.config import RunConfig
from tuneforge.data.records import Kind, Record


@dataclass(frozen=True)
class TrainingData:
    """The prepared training split as the estimate sees it: the record kind, each record's tokens, the validation
    split's, a way to read the k-th training record, and the classes found (classification data)."""

    kind: Kind
    lengths: np.ndarray
    val_lengths: np.ndarray
    fetch: Callable[[int], Record]
    labels: list[str]


Estimator = Callable[[RunConfig, TrainingData], dict[str, Any]]
