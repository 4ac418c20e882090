"""POST /v1/chat/completions, with and without server-sent-event streaming."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tuneforge.generation import Completion, Messages, SamplingParams
from tuneforge.serve.engine import ServingEngine
from tuneforge.serve.errors import api_error, error_responses
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


# Below this a temperature samples as greedy: 1/temperature overflowed the logits to inf for the tiniest (1e-300 was
# a 500), and long before that sampling is greedy in all but name (vLLM draws the line at the same place).
MIN_TEMPERATURE = 1e-5


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {"model": ChatCompletion, "description": "The answer; with stream=true, server-sent events of chunks."},
        **error_responses(400, 401, 404),
    },
)
def chat_completions(body: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    """OpenAI chat completions on a tuned adapter or the base model."""
    engine: ServingEngine = request.app.state.engine
    if body.model not in engine.models:
        return api_error(
            404,
            f"The model '{body.model}' does not exist; available: {sorted(engine.models)}",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    requested = body.max_completion_tokens or body.max_tokens
    wanted = _answer_length(engine, messages, requested, request.app.state.serve.max_new_tokens)
    if isinstance(wanted, JSONResponse):
        return wanted
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    temperature = body.temperature if body.temperature >= MIN_TEMPERATURE else 0.0
    params = SamplingParams(
        max_new_tokens=wanted, temperature=temperature, top_p=body.top_p, seed=body.seed, stop=stops
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


def _answer_length(engine: ServingEngine, messages: Messages, requested: int | None, limit: int) -> int | JSONResponse:
    """The answer's max_new_tokens, or the 400 that refuses the request: max_tokens above the server's limit, or the
    prompt and max_tokens beyond the model's context. Without max_tokens the answer may take the rest of the context,
    up to the limit (as OpenAI and vLLM do). Checked in the request's thread, before the request queues."""
    if requested is not None and requested > limit:
        message = f"max_tokens={requested} is above this server's limit of {limit}"
        return api_error(400, message, "invalid_request_error", "max_tokens")
    context = engine.context_length
    if context is None:
        return requested or limit
    at_most = context - (requested or 1)  # the prompt tokens that leave room for the answer
    prompt = engine.prompt_tokens(messages, at_most) if at_most > 0 else None
    if prompt is not None and prompt <= at_most:
        return requested or min(limit, context - prompt)
    told = f"This model's maximum context length is {context} tokens"
    if at_most <= 0:
        told += f"; max_tokens={requested} leaves no room for the messages. Lower max_tokens."
    elif prompt is None:
        chars = sum(len(m["content"]) for m in messages)
        told += f"; the messages ({chars} characters) take more than {at_most} tokens. Shorten the messages."
    elif requested is None:
        told += f"; the messages take {prompt} tokens, leaving no room for an answer. Shorten the messages."
    else:
        told += (
            f"; you requested {prompt + requested} tokens ({prompt} in the messages, {requested} in the completion). "
            "Shorten the messages or lower max_tokens."
        )
    param = "max_tokens" if at_most <= 0 else "messages"
    return api_error(400, told, "invalid_request_error", param, "context_length_exceeded")


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
