"""What every config section shares: unknown keys are errors, assignments are validated; the embedded model's name."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded default on the hub (vLLM, model cards)
Auto = Literal["auto"]  # a hyperparameter chosen by train/auto.py from data and model size


class Section(BaseModel):
    """A config section: unknown keys are errors, and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
