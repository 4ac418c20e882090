"""GET /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tuneforge.serve.errors import error_responses
from tuneforge.serve.protocol import ModelCard, ModelList

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
