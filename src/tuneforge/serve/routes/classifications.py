"""POST /v1/classifications (tuneforge's own route): the label and class probabilities of each text, from a served
classifier run."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tuneforge.serve.errors import api_error, error_responses
from tuneforge.serve.protocol import ClassificationList, ClassificationOut, ClassificationRequest, EmbeddingUsage

router = APIRouter()


@router.post("/v1/classifications", response_model=ClassificationList, responses=error_responses(400, 401, 404))
def classify(body: ClassificationRequest, request: Request) -> ClassificationList | JSONResponse:
    """Classify texts with a classifier run (train.task=classify): each text's label and every class's probability,
    scored as `tuneforge evaluate` scores them."""
    service = request.app.state.classifiers
    served = sorted(service.models) if service is not None else []
    if body.model not in served:
        message = f"The model '{body.model}' is no classifier served here; classifiers: {served or 'none'}"
        return api_error(404, message, "invalid_request_error", "model", "model_not_found")
    texts = [body.input] if isinstance(body.input, str) else body.input
    found = service.classify(body.model, texts)
    tokens = sum(c.tokens for c in found)
    data = [ClassificationOut(index=i, label=c.label, probabilities=c.probabilities) for i, c in enumerate(found)]
    return ClassificationList(
        model=body.model, data=data, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )
