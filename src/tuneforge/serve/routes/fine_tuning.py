"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints, in the shapes of OpenAI's fine-tuning
API; the jobs run one at a time in worker processes (tuneforge.jobs.runner), by the same train stage as the CLI."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.jobs.errors import InvalidRequestError, NotFoundError
from tuneforge.jobs.files import RUNS_DIR
from tuneforge.jobs.lifecycle import set_status
from tuneforge.jobs.records import Job, check_options
from tuneforge.jobs.runner import JobRunner
from tuneforge.jobs.store import append_event, create_job, get_file, get_job, list_checkpoints, list_events, list_jobs
from tuneforge.serve.errors import error_responses
from tuneforge.serve.protocol_jobs import (
    CheckpointList,
    CheckpointOut,
    EventList,
    FineTuningJob,
    JobCreate,
    JobErrorBody,
    JobEventOut,
    JobList,
)
from tuneforge.serve.routes.models import report_page

router = APIRouter()


def _runner(request: Request) -> JobRunner:
    runner: JobRunner | None = request.app.state.runner
    if runner is None:
        raise NotFoundError(
            "this server runs no fine-tuning jobs", "start it with `tuneforge serve --data-dir DIR`", "model"
        )
    return runner


def _out(job: Job) -> FineTuningJob:
    error = JobErrorBody(code=job.error.code, message=job.error.message, param=job.error.param) if job.error else None
    return FineTuningJob(
        # the model's name once it answers: the worker records it before the server has loaded it
        id=job.id, created_at=job.created_at, error=error,
        fine_tuned_model=job.fine_tuned_model if job.status == "succeeded" else None,
        finished_at=job.finished_at, hyperparameters=job.hyperparameters, method=job.method, model=job.model,
        result_files=job.result_files, seed=job.seed, status=job.status, trained_tokens=job.trained_tokens,
        training_file=job.training_file, validation_file=job.validation_file, estimated_finish=job.estimated_finish,
        metadata=job.metadata, user_provided_suffix=job.suffix, tuneforge=job.tuneforge,
    )  # fmt: skip


def _check_file(request: Request, file_id: str | None, param: str) -> None:
    """A job's file must exist, be fine-tuning data and have passed validation."""
    if file_id is None:
        return
    runner = _runner(request)
    try:
        record = get_file(runner.db, file_id)
    except NotFoundError:
        raise NotFoundError(f"no file {file_id!r}", "upload it with POST /v1/files first", param) from None
    if record.purpose != "fine-tune" or record.status != "processed":
        raise InvalidRequestError(
            f"file {file_id} is {record.purpose!r} with status {record.status!r}: {record.status_details or ''}",
            "upload training data with purpose 'fine-tune' and fix what its validation found",
            param,
        )


def _check_options(options: dict[str, Any]) -> None:
    """The extension's options: allowed fields (check_options) with values the config accepts."""
    check_options(options)
    try:
        load_config(None, [f"{key}={json.dumps(value)}" for key, value in options.items()])
    except ConfigError as exc:
        raise InvalidRequestError(f"tuneforge.config: {exc.message}", exc.hint, "tuneforge.config") from None


@router.post("/v1/fine_tuning/jobs", response_model=FineTuningJob, responses=error_responses(400, 401, 404))
def create(request: Request, body: JobCreate) -> FineTuningJob:
    """Queue a fine-tuning job of this server's base model on an uploaded, validated file."""
    runner = _runner(request)
    base = request.app.state.engine.base_id
    if body.model != base:
        raise InvalidRequestError(
            f"this server fine-tunes {base!r}, not {body.model!r}", f"create the job with model={base!r}", "model"
        )
    _check_options(body.tuneforge.config if body.tuneforge else {})
    _check_file(request, body.training_file, "training_file")
    _check_file(request, body.validation_file, "validation_file")
    method = body.method.model_dump(exclude_none=True) if body.method else {"type": "supervised"}
    hyper = body.hyperparameters.model_dump() if body.hyperparameters else {}
    job = create_job(
        runner.db, body.model, body.training_file, body.validation_file, hyper, method, body.suffix, body.seed,
        body.metadata, body.tuneforge.model_dump() if body.tuneforge else None,
    )  # fmt: skip
    append_event(runner.db, job.id, f"Created fine-tuning job: {job.id}")
    job = set_status(runner.db, job.id, "queued")
    runner.notify()
    return _out(job)


@router.get("/v1/fine_tuning/jobs", response_model=JobList, responses=error_responses(400, 401))
def list_all(request: Request, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JobList:
    """Jobs, newest first; `metadata[key]=value` query parameters filter by metadata."""
    metadata = {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}
    page = list_jobs(_runner(request).db, after, limit, metadata or None)
    return JobList(data=[_out(j) for j in page.data], has_more=page.has_more)


@router.get("/v1/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, responses=error_responses(401, 404))
def retrieve(request: Request, job_id: str) -> FineTuningJob:
    """One job: status, error, fine_tuned_model, trained_tokens, estimated_finish."""
    return _out(get_job(_runner(request).db, job_id))


@router.post(
    "/v1/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob, responses=error_responses(401, 404, 409)
)
def cancel(request: Request, job_id: str) -> FineTuningJob:
    """Cancel a queued or running job (its worker ends within a heartbeat); a finished job answers 409."""
    runner = _runner(request)
    job = set_status(runner.db, job_id, "cancelled")
    append_event(runner.db, job_id, "Fine-tuning job cancelled")
    return _out(job)


@router.post(
    "/v1/fine_tuning/jobs/{job_id}/pause", response_model=FineTuningJob, responses=error_responses(401, 404, 409)
)
def pause(request: Request, job_id: str) -> FineTuningJob:
    """Pause a running job: its worker ends within a heartbeat, its checkpoints stay; resume continues from them."""
    runner = _runner(request)
    job = set_status(runner.db, job_id, "paused")
    append_event(runner.db, job_id, "Fine-tuning job paused")
    return _out(job)


@router.post(
    "/v1/fine_tuning/jobs/{job_id}/resume", response_model=FineTuningJob, responses=error_responses(401, 404, 409)
)
def resume(request: Request, job_id: str) -> FineTuningJob:
    """Queue a paused job again; its worker resumes from the newest checkpoint."""
    runner = _runner(request)
    job = set_status(runner.db, job_id, "queued")
    append_event(runner.db, job_id, "Fine-tuning job resumed")
    runner.notify()
    return _out(job)


@router.get("/v1/fine_tuning/jobs/{job_id}/events", response_model=EventList, responses=error_responses(401, 404))
def events(
    request: Request, job_id: str, after: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 20
) -> EventList:
    """A job's events, newest first: a message per stage, a metrics event per logged training step."""
    page = list_events(_runner(request).db, job_id, after, limit)
    data = [
        JobEventOut(id=e.id, created_at=e.created_at, level=e.level, message=e.message, type=e.type, data=e.data)
        for e in page.data
    ]
    return EventList(data=data, has_more=page.has_more)


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/checkpoints", response_model=CheckpointList, responses=error_responses(401, 404)
)
def checkpoints(
    request: Request, job_id: str, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 10
) -> CheckpointList:
    """A finished job's checkpoints with their step and metrics, newest first."""
    page = list_checkpoints(_runner(request).db, job_id, after, limit)
    data = [_checkpoint(c) for c in page.data]
    return CheckpointList(data=data, first_id=page.first_id, last_id=page.last_id, has_more=page.has_more)


def _checkpoint(c: Any) -> CheckpointOut:
    return CheckpointOut(
        id=c.id, created_at=c.created_at, fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
        fine_tuning_job_id=c.job_id, metrics=c.metrics, step_number=c.step_number,
    )  # fmt: skip


@router.get("/v1/fine_tuning/jobs/{job_id}/report", response_class=HTMLResponse, responses=error_responses(401, 404))
def report(request: Request, job_id: str) -> HTMLResponse:
    """A finished job's report.html: base against tuned on the held-out split (tuneforge's own route)."""
    runner = _runner(request)
    job = get_job(runner.db, job_id)
    root = (runner.data_dir / RUNS_DIR).resolve()
    run_dir = (runner.data_dir / job.run_dir).resolve() if job.run_dir else None
    if run_dir is None or not run_dir.is_relative_to(root):  # a run directory is recorded when the job finishes
        raise NotFoundError(f"job {job_id} has no report (status {job.status})", "wait for it to succeed", "job_id")
    return report_page(run_dir, f"job {job_id}")
