"""Errors of the jobs service's store. Each maps to one HTTP status in the OpenAI error shape (the API layer's job).

They live here, beside the store, until the API exists; they are `TuneforgeError`s, so the CLI prints them as usual.
"""

from __future__ import annotations

from tuneforge.errors import TuneforgeError


class JobsError(TuneforgeError):
    """A request to the jobs store is invalid; `param` names the offending field (OpenAI's `param`), if one."""

    def __init__(self, message: str, hint: str | None = None, param: str | None = None) -> None:
        super().__init__(message, hint)
        self.param = param


class DatabaseError(JobsError):
    """The jobs database cannot be opened: an unsupported URL, or a schema this tuneforge does not know."""


class InvalidRequestError(JobsError):
    """A value is outside what the store accepts (an HTTP 400)."""


class NotFoundError(JobsError):
    """No file, job or cursor with that id (an HTTP 404)."""


class ConflictError(JobsError):
    """The request conflicts with the record's state, e.g. a duplicate checkpoint step (an HTTP 409)."""


class TransitionError(ConflictError):
    """A job cannot move from its status to the one asked for, e.g. cancelling a succeeded job (an HTTP 409)."""

    def __init__(self, job_id: str, current: str, requested: str, allowed: tuple[str, ...]) -> None:
        hint = (
            f"a {current} job can become {', '.join(allowed)}"
            if allowed
            else f"a {current} job is finished and cannot change; create a new job instead"
        )
        super().__init__(f"job {job_id} is {current} and cannot become {requested}", hint, param="status")
        self.job_id = job_id
        self.current = current
        self.requested = requested
