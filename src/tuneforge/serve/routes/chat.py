"""POST /v1/chat/completions, with and without server-sent-event streaming."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tuneforge.generation import Completion, SamplingParams
from tuneforge.serve.errors import api_error
from tuneforge.serve.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    """OpenAI chat completions on a tuned adapter or the base model."""
    engine = request.app.state.engine
    if body.model not in engine.models:
        return api_error(
            404,
            f"The model '{body.model}' does not exist; available: {sorted(engine.models)}",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    limit = request.app.state.settings.max_new_tokens
    wanted = body.max_completion_tokens or body.max_tokens or limit
    if wanted > limit:
        return api_error(
            400, f"max_tokens={wanted} is above this server's limit of {limit}", "invalid_request_error", "max_tokens"
        )
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    params = SamplingParams(
        max_new_tokens=wanted, temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=stops
    )
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        pieces = engine.stream(body.model, messages, params)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(pieces, rid, created, body.model, include_usage), media_type="text/event-stream")
    final = engine.complete(body.model, messages, params)
    return JSONResponse(
        ChatCompletion(
            id=rid,
            created=created,
            model=body.model,
            choices=[Choice(message=AssistantMessage(content=final.text), finish_reason=final.finish_reason)],
            usage=_usage(final),
        ).model_dump()
    )


def _sse(pieces: Iterator[str | Completion], rid: str, created: int, model: str, include_usage: bool) -> Iterator[str]:
    def event(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)
        return f"data: {chunk.model_dump_json(exclude_none=not include_usage or usage is None)}\n\n"

    yield event([ChunkChoice(delta=Delta(role="assistant", content=""))])
    for piece in pieces:
        if isinstance(piece, Completion):
            yield event([ChunkChoice(delta=Delta(), finish_reason=piece.finish_reason)])
            if include_usage:
                yield event([], _usage(piece))
        else:
            yield event([ChunkChoice(delta=Delta(content=piece))])
    yield "data: [DONE]\n\n"


def _usage(c: Completion) -> Usage:
    return Usage(
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        total_tokens=c.prompt_tokens + c.completion_tokens,
    )
