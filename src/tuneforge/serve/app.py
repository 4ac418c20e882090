"""create_app(run_dirs, serve): the engine on app.state, the OpenAI routers, the API-key check."""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from tuneforge.config import ServeConfig
from tuneforge.jobs.errors import JobsError, NotFoundError
from tuneforge.jobs.files import FileStore
from tuneforge.jobs.records import Job
from tuneforge.jobs.runner import JobRunner
from tuneforge.jobs.store import find_checkpoint, get_job, served_models
from tuneforge.rundir import MODEL_DIR
from tuneforge.serve.classifiers import ClassifierEngine
from tuneforge.serve.combined import CombinedEngine
from tuneforge.serve.engine import Engine, ServingEngine
from tuneforge.serve.errors import api_error, http_error, jobs_error, server_error, validation_error
from tuneforge.serve.feedback import AnnotationService, RewardService
from tuneforge.serve.retrieval import RetrievalService
from tuneforge.serve.routes import chat, classifications, embeddings, feedback, fine_tuning, models
from tuneforge.serve.routes import files as files_routes

ERROR_HANDLERS: list[tuple[type[Exception], Any]] = [
    (RequestValidationError, validation_error),
    (JobsError, jobs_error),
    (HTTPException, http_error),
    (Exception, server_error),
]
REQUEST_THREADS = 400  # see _lifespan
OPEN_PATHS = frozenset({"/health", "/"})  # answered without the API key; every other path (the docs too) needs it
UI_PREFIX = "/ui/"  # the web UI's static files are open too: the page asks for the key and sends it with each call


def create_app(
    run_dirs: Sequence[Path],
    serve: ServeConfig | None = None,
    *,
    api_key: str | None = None,
    engine: ServingEngine | None = None,
    retrieval: RetrievalService | None = None,
    files: FileStore | None = None,
    run_jobs: bool = True,
    classifiers: ClassifierEngine | None = None,
    rewards: RewardService | None = None,
    annotation: AnnotationService | None = None,
) -> FastAPI:
    """The FastAPI app serving `run_dirs` as `serve` (the config's `serve:` section) says. `api_key` (None: none is
    required) is passed apart from the config, which is written to run directories: the CLI reads it from the
    environment variable `serve.api_key_env` names. `engine` may be given (tests); else the runs are loaded. With
    `retrieval` (an index), chat answers use and cite its passages, and /v1/embeddings serves its model. With
    `files` (a data directory's store), /v1/files takes uploads and (unless not `run_jobs`) /v1/fine_tuning/jobs
    trains on them, one job at a time, serving each finished model at once; `classifiers` answer /v1/classifications,
    `rewards` /v1/rewards; `annotation` is the session of the web UI's annotation page (/v1/annotations)."""
    serve = serve or ServeConfig()
    app = FastAPI(title="tuneforge", version="0.1.0", docs_url="/docs", lifespan=_lifespan)
    app.state.serve = serve
    if engine is None and (run_dirs or (classifiers is None and rewards is None)):
        engine = Engine(list(run_dirs), serve.max_batch)  # (mypy holds the Engine to the ServingEngine protocol here)
    if classifiers is not None and not isinstance(engine, CombinedEngine):  # classifiers beside the chat models
        engine = CombinedEngine(engine, classifiers)
    assert engine is not None
    app.state.engine = engine
    app.state.classifiers, app.state.rewards, app.state.annotation = classifiers, rewards, annotation
    app.state.retrieval = retrieval
    app.state.files = files
    app.state.runner = _job_runner(files, engine) if files is not None and run_jobs else None
    app.state.serve_on_demand = _checkpoint_loader(files, engine) if files is not None else None
    for kind, handler in ERROR_HANDLERS:
        app.add_exception_handler(kind, handler)
    for routes in (models, chat, embeddings, classifications, feedback, files_routes, fine_tuning):
        app.include_router(routes.router)
    _require_key(app, api_key)
    app.mount("/ui", StaticFiles(directory=Path(__file__).parent / "ui", html=True), name="ui")
    app.add_api_route("/", lambda: RedirectResponse("/ui/"), include_in_schema=False)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, and how many batches of each size the engine has answered (batch size -> count)."""
        return {"status": "ok", "batches": dict(sorted(app.state.engine.batch_sizes.items()))}

    _drop_422(app.openapi())
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """More request threads than anyio's 40: a chat request holds one while it waits for the model thread, and with
    40 waiting chats every light call (a file list, a job's events) queued behind them (bench/load.py, 100 clients:
    list_files p50 28 s). Waiting threads cost little; the model thread does the work. On shutdown the job runner
    stops (its worker ends; the job is queued again at the next start)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
    yield
    if app.state.runner is not None:  # a job's training ends with the server; it resumes when the server starts again
        await anyio.to_thread.run_sync(app.state.runner.stop)


def _require_key(app: FastAPI, api_key: str | None) -> None:
    """Every path but OPEN_PATHS answers 401 without 'Authorization: Bearer <api_key>' (when there is a key)."""

    @app.middleware("http")
    async def check_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if api_key and path not in OPEN_PATHS and not path.startswith(UI_PREFIX):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return api_error(
                    401,
                    "Incorrect or missing API key; send 'Authorization: Bearer <key>'.",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
        return await call_next(request)


def _job_runner(files: FileStore, engine: ServingEngine) -> JobRunner:
    """The runner of the data directory's jobs; a job that succeeds is served as its fine_tuned_model from then on."""

    def serve_it(job: Job) -> None:
        if job.fine_tuned_model and job.run_dir and hasattr(engine, "add_adapter"):
            run_dir = files.data_dir / job.run_dir
            engine.add_adapter(job.fine_tuned_model, run_dir / MODEL_DIR, adapter=job.id, run_dir=run_dir)

    def unserve(job: Job) -> None:
        if job.fine_tuned_model and hasattr(engine, "remove"):
            engine.remove(job.fine_tuned_model)

    for job in served_models(files.db):  # what earlier jobs trained is served again after a restart
        try:
            if job.fine_tuned_model not in engine.models:
                serve_it(job)
        except Exception:  # one broken run directory must not keep the server down
            logging.getLogger(__name__).exception("cannot serve %s again", job.fine_tuned_model)
    return JobRunner(files.data_dir, files.db, on_success=serve_it, on_removed=unserve).start()


def _checkpoint_loader(files: FileStore, engine: ServingEngine) -> Callable[[str], bool]:
    """`load(model)`: serve a finished job's checkpoint (`ft:...:ckpt-step-N`) from its first request on; whether
    `model` is one. Checkpoints are not loaded at start: a job may keep many, and few are asked for."""
    lock = threading.Lock()

    def load(model: str) -> bool:
        checkpoint = find_checkpoint(files.db, model)
        if checkpoint is None or not hasattr(engine, "add_adapter"):
            return False
        folder = files.data_dir / checkpoint.path
        job = get_job(files.db, checkpoint.job_id)
        with lock:  # two first requests at once load it once
            if model not in engine.models:
                if not (folder / "adapter_config.json").is_file():
                    raise NotFoundError(
                        f"checkpoint {model!r} is no longer on disk", "use the job's fine_tuned_model", "model"
                    )
                adapter = f"{checkpoint.job_id}-step-{checkpoint.step_number}"
                run_dir = files.data_dir / job.run_dir if job.run_dir else None
                engine.add_adapter(model, folder, adapter=adapter, run_dir=run_dir)
        return True

    return load


def _drop_422(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 for every route with a body; this server answers validation errors with 400 (see
    errors.py), which each route documents. The schema is FastAPI's cached one, so /openapi.json serves the change."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation["responses"].pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
