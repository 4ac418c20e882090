"""POST /v1/chat/completions, with and without server-sent-event streaming."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tuneforge.errors import TuneforgeError
from tuneforge.generation import Completion, Messages, SamplingParams
from tuneforge.rag import Source
from tuneforge.rag.answer import cited_numbers
from tuneforge.serve.engine import ServingEngine
from tuneforge.serve.errors import api_error, error_responses
from tuneforge.serve.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Citation,
    Delta,
    RagOptions,
    Usage,
)
from tuneforge.serve.retrieval import RetrievalService, footer, refusal

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
    """OpenAI chat completions on a tuned adapter or the base model; with an index, the answer uses the passages
    retrieved for the last user message, cites them, and lists them in `citations`."""
    engine: ServingEngine = request.app.state.engine
    on_demand = request.app.state.serve_on_demand  # a job's checkpoint is loaded at its first request
    if body.model not in engine.models and not (on_demand is not None and on_demand(body.model)):
        return api_error(
            404,
            f"The model '{body.model}' does not exist; available: {sorted(engine.models)}",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    retrieved = _retrieve(request.app.state.retrieval, body, messages, engine)
    if isinstance(retrieved, JSONResponse):
        return retrieved
    messages, sources, refused = retrieved
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
    citations = None if sources is None else [_citation(s, []) for s in sources]
    if body.stream:
        pieces: Iterator[str | Completion] = (
            iter([refused, Completion(refused, 0, 0, "stop")])
            if refused
            else engine.stream(body.model, messages, params)
        )
        pieces = _with_footer(pieces, sources) if sources else pieces
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse(pieces, rid, created, body.model, include_usage, citations)
        return StreamingResponse(events, media_type="text/event-stream")
    final = Completion(refused, 0, 0, "stop") if refused else engine.complete(body.model, messages, params)
    return _whole(final, sources, citations, rid, created, body.model)


def _whole(
    final: Completion,
    sources: list[Source] | None,
    citations: list[Citation] | None,
    rid: str,
    created: int,
    model: str,
) -> JSONResponse:
    """The response of a whole answer; with sources, those it cited listed under it and marked in `citations`."""
    text = final.text
    if sources:
        cited = cited_numbers(final.text, len(sources))
        text += footer(sources, cited)
        citations = [_citation(s, cited) for s in sources]
    body = ChatCompletion(
        id=rid,
        created=created,
        model=model,
        choices=[Choice(message=AssistantMessage(content=text), finish_reason=final.finish_reason)],
        usage=_usage(final),
        citations=citations,
        classification=final.classification,
    ).model_dump()
    return JSONResponse({k: v for k, v in body.items() if v is not None or k not in ("citations", "classification")})


def _retrieve(
    service: RetrievalService | None, body: ChatCompletionRequest, messages: Messages, engine: ServingEngine
) -> tuple[Messages, list[Source] | None, str | None] | JSONResponse:
    """The messages with the retrieved passages, the passages (None: no retrieval) and the refusal when nothing
    retrieved is close enough; or the 400 of a bad filter."""
    if service is None or body.rag is False:
        return messages, None, None
    options = body.rag if isinstance(body.rag, RagOptions) else RagOptions()
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if not question.strip():
        return messages, None, None
    try:
        sources, why = service.sources(question, options.filter, options.top_k)
    except TuneforgeError as exc:
        return api_error(400, exc.message + (f" ({exc.hint})" if exc.hint else ""), "invalid_request_error", "rag")
    if not sources:
        return messages, [], refusal(why)
    with_sources, used = service.messages(messages, sources, engine.text_tokens)
    return with_sources, used, None


def _with_footer(pieces: Iterator[str | Completion], sources: list[Source]) -> Iterator[str | Completion]:
    """A streamed answer, with the sources it cited listed after its last piece."""
    said: list[str] = []
    for piece in pieces:
        if isinstance(piece, Completion):
            yield footer(sources, cited_numbers("".join(said), len(sources)))
        else:
            said.append(piece)
        yield piece


def _citation(source: Source, cited: list[int]) -> Citation:
    return Citation(**source.to_json(), cited=source.number in cited)


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


def _sse(
    pieces: Iterator[str | Completion],
    rid: str,
    created: int,
    model: str,
    include_usage: bool,
    citations: list[Citation] | None = None,
) -> Iterator[str]:
    def event(
        choices: list[ChunkChoice], usage: Usage | None = None, cites: list[Citation] | None = None, **extra: Any
    ) -> str:
        chunk = ChatCompletionChunk(
            id=rid, created=created, model=model, choices=choices, usage=usage, citations=cites, **extra
        )
        return f"data: {chunk.model_dump_json(exclude_none=not include_usage or usage is None)}\n\n"

    yield event([ChunkChoice(delta=Delta(role="assistant", content=""))], cites=citations)
    for piece in pieces:
        if isinstance(piece, Completion):
            done = [ChunkChoice(delta=Delta(), finish_reason=piece.finish_reason)]
            yield event(done, classification=piece.classification) if piece.classification else event(done)
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
