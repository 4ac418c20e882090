"""Errors in the OpenAI error format, which the official clients turn into typed exceptions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tuneforge.serve.protocol import ErrorBody, ErrorResponse

# What each error status means here, for the OpenAPI document (every one has the ErrorResponse body).
_MEANING = {
    400: "Invalid request: a malformed or invalid body, max_tokens above the server's limit, or messages and "
    "max_tokens beyond the model's context (code 'context_length_exceeded').",
    401: "Missing or wrong API key (when the server has one): send 'Authorization: Bearer <key>'.",
    404: "No such model (code 'model_not_found'), file or job.",
    409: "The request conflicts with the record's state, e.g. cancelling a finished job.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that answers these error statuses, each with the OpenAI error body."""
    return {status: {"model": ErrorResponse, "description": _MEANING[status]} for status in statuses}


def api_error(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error response shaped like OpenAI's."""
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Request-body problems as one OpenAI-style 400 error naming every bad field."""
    assert isinstance(exc, RequestValidationError)
    problems, params = [], []
    for e in exc.errors():
        if e["type"] == "json_invalid":  # its loc is ("body", character position), not a field
            problems.append(f"the body is not valid JSON ({e['ctx']['error']} at character {e['loc'][-1]})")
            params.append("")
        else:
            params.append(".".join(str(p) for p in e["loc"][1:]))
            problems.append(f"{params[-1] or 'body'}: {e['msg']}")
    return api_error(400, "; ".join(problems), "invalid_request_error", next(iter(params), "") or None)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method, a body that cannot be read) in the OpenAI shape."""
    assert isinstance(exc, HTTPException)
    where = f"{request.method} {request.url.path}"
    messages = {404: f"Invalid URL ({where})", 405: f"Method not allowed ({where})"}
    message = messages.get(exc.status_code) or f"{exc.detail} ({where})"
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return api_error(exc.status_code, message, kind, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    """An unexpected failure as an OpenAI-style 500 (the traceback still goes to the server's log)."""
    message = f"The server had an error while answering ({type(exc).__name__}); see the server's log."
    return api_error(500, message, "server_error")


JOBS_STATUS = {"InvalidRequestError": 400, "NotFoundError": 404, "ConflictError": 409, "TransitionError": 409}


async def jobs_error(request: Request, exc: Exception) -> JSONResponse:
    """The files and jobs store's errors (tuneforge.jobs.errors) as OpenAI-style 400 / 404 / 409 with `param`."""
    status = next((JOBS_STATUS[k.__name__] for k in type(exc).__mro__ if k.__name__ in JOBS_STATUS), 500)
    hint = getattr(exc, "hint", None)
    message = str(getattr(exc, "message", exc)) + (f" (fix: {hint})" if hint else "")
    kind = "invalid_request_error" if status < 500 else "server_error"
    return api_error(status, message, kind, getattr(exc, "param", None))
