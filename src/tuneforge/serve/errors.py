"""Errors in the OpenAI error format, which the official clients turn into typed exceptions."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tuneforge.serve.protocol import ErrorBody, ErrorResponse


def api_error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    """A JSON error response shaped like OpenAI's."""
    body = ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Request-body problems as one OpenAI-style 400 error naming every bad field."""
    assert isinstance(exc, RequestValidationError)
    problems = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
    first = exc.errors()[0]["loc"] if exc.errors() else ()
    return api_error(400, "; ".join(problems), "invalid_request_error", ".".join(str(p) for p in first[1:]) or None)
