"""GET /v1/models, and DELETE /v1/models/{model} for the models fine-tuning jobs made."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tuneforge.jobs.errors import NotFoundError
from tuneforge.jobs.store import delete_model as delete_fine_tuned
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
