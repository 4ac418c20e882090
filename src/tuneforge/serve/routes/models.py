"""GET /v1/models, DELETE /v1/models/{model} for the models fine-tuning jobs made, and GET
/v1/models/{model}/report: the report page of the run behind a model (tuneforge's own route)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tuneforge.jobs.errors import NotFoundError
from tuneforge.jobs.store import delete_model as delete_fine_tuned
from tuneforge.rundir import REPORT
from tuneforge.serve.errors import error_responses
from tuneforge.serve.protocol import ModelCard, ModelDeleted, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401))
def list_models(request: Request) -> ModelList:
    """The tuned adapters and the base model this server answers as, and the index's embedding model."""
    engine = request.app.state.engine
    cards = [ModelCard(id=m.id, created=m.created) for m in engine.models.values()]
    service = request.app.state.retrieval
    if service is not None:
        cards.append(ModelCard(id=service.model, created=0))
    return ModelList(data=cards)


@router.delete("/v1/models/{model:path}", response_model=ModelDeleted, responses=error_responses(401, 404))
def delete_model(request: Request, model: str) -> ModelDeleted:
    """Delete a fine-tuned model made by a job of this server: no longer listed or answered, and not served again
    after a restart (its job and files stay)."""
    files = request.app.state.files
    if files is None or not delete_fine_tuned(files.db, model):
        raise NotFoundError(f"no fine-tuned model {model!r} to delete", "list them with GET /v1/models", "model")
    request.app.state.engine.remove(model)
    return ModelDeleted(id=model, deleted=True)


@router.get("/v1/models/{model:path}/report", response_class=HTMLResponse, responses=error_responses(401, 404))
def model_report(request: Request, model: str) -> HTMLResponse:
    """The report.html of the run behind a served model (evaluation, and the bake-off when the run has one)."""
    served = request.app.state.engine.models.get(model)
    run_dir = getattr(served, "run_dir", None)
    if run_dir is None:
        raise NotFoundError(f"{model!r} is no served run", "list the models with GET /v1/models", "model")
    return report_page(Path(run_dir), f"model {model}")


def report_page(run_dir: Path, what: str) -> HTMLResponse:
    """A run's report.html, sandboxed (no script, no same-origin access: it shows data, it runs nothing)."""
    path = run_dir / REPORT
    if not path.is_file():
        raise NotFoundError(
            f"{what} has no report", "evaluate its run (`tuneforge evaluate`; jobs do unless tuneforge.evaluate=false)"
        )
    return HTMLResponse(path.read_text(encoding="utf-8"), headers={"Content-Security-Policy": "sandbox"})
