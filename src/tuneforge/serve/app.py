"""create_app(settings): the engine on app.state, the OpenAI routers, API-key check."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError

from tuneforge.config import ServeConfig
from tuneforge.serve.engine import Engine
from tuneforge.serve.errors import api_error, validation_error
from tuneforge.serve.routes import chat, models

_DEFAULTS = ServeConfig()  # the `serve:` config section's defaults


@dataclass(frozen=True)
class ServeSettings:
    """What a server serves and how it guards access."""

    run_dirs: tuple[Path, ...]
    api_key: str | None = None  # None: no key required
    max_new_tokens: int = _DEFAULTS.max_new_tokens
    max_batch: int = _DEFAULTS.max_batch  # concurrent requests answered in one batch


def create_app(settings: ServeSettings, engine: Any | None = None) -> FastAPI:
    """Build the FastAPI app; `engine` may be given (tests), else it loads the runs of `settings`."""
    app = FastAPI(title="tuneforge", version="0.1.0", docs_url="/docs")
    app.state.settings = settings
    app.state.engine = engine if engine is not None else Engine(list(settings.run_dirs), settings.max_batch)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(models.router)
    app.include_router(chat.router)

    @app.middleware("http")
    async def check_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if settings.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            expected = f"Bearer {settings.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return api_error(
                    401,
                    "Incorrect or missing API key; send 'Authorization: Bearer <key>'.",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, and how many batches of each size the engine has answered (batch size -> count)."""
        return {"status": "ok", "batches": dict(sorted(app.state.engine.batch_sizes.items()))}

    return app
