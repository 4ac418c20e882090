"""POST /v1/embeddings: the index's embedding model, in OpenAI's shape (float lists or base64 float32)."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from tuneforge.serve.errors import api_error, error_responses
from tuneforge.serve.protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage

router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingList,
    responses=error_responses(400, 401, 404),
)
def create_embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingList | JSONResponse:
    """Embed texts with the embedding model of the served index (L2-normalised, as the index stores them)."""
    service = request.app.state.retrieval
    if service is None:
        message = "This server has no index, so no embedding model; start it with --index or a run that has one."
        return api_error(404, message, "invalid_request_error", "model", "model_not_found")
    if body.model != service.model:
        message = f"The model '{body.model}' does not exist; the embedding model here is '{service.model}'"
        return api_error(404, message, "invalid_request_error", "model", "model_not_found")
    vectors, tokens = service.embed([body.input] if isinstance(body.input, str) else body.input)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        message = f"dimensions={body.dimensions}: '{service.model}' gives {vectors.shape[1]} dimensions only"
        return api_error(400, message, "invalid_request_error", "dimensions")
    data = [
        Embedding(index=i, embedding=_encoded(row.tolist(), row.tobytes(), body.encoding_format))
        for i, row in enumerate(vectors)
    ]
    return EmbeddingList(
        data=data, model=service.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


def _encoded(floats: list[float], raw: bytes, encoding: str) -> list[float] | str:
    return base64.b64encode(raw).decode("ascii") if encoding == "base64" else floats
