"""The fine-tuning jobs API's request and response schemas: the shapes of OpenAI's `fine_tuning.jobs` resource
(FineTuningJob, its events and checkpoints), plus tuneforge's own options in the `tuneforge` extension field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field("auto", description="Passes over the training data.")
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = Field("auto", description="Examples per optimizer step.")
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = Field(
        "auto", description="1.0 = tuneforge's LoRA learning rate 2e-4."
    )


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=10)] = Field(
        "auto", description="DPO's beta: how far the model may move from the reference."
    )


class Supervised(BaseModel):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Dpo(BaseModel):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(BaseModel):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Supervised | None = None
    dpo: Dpo | None = None


class TuneforgeOptions(BaseModel):
    """What tuneforge can do that OpenAI's API has no field for: any run-config setting as key=value, e.g.
    {"train.method": "full", "privacy.mode": "mask", "train.lora_r": 32}."""

    config: dict[str, Any] = Field(default_factory=dict)
    evaluate: bool = Field(
        True,
        description="After training, score base and tuned model on the held-out split and write the run's report "
        "(GET /v1/fine_tuning/jobs/{id}/report), as `tuneforge evaluate` does; false: the job ends after training.",
    )


class JobCreate(BaseModel):
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    tuneforge: TuneforgeOptions | None = None


class JobErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorBody | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    method: dict[str, Any] | None = None
    model: str
    organization_id: str = "tuneforge"
    result_files: list[str] = []
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    tuneforge: dict[str, Any] = {}


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool = False


class JobEventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventOut]
    has_more: bool = False


class CheckpointOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointOut]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
