"""User-facing errors. Each message says what rule was broken, the value received and what to do.

The CLI prints these without a traceback and exits with code 2; anything else is a bug in tuneforge.
"""

from __future__ import annotations


class TuneforgeError(Exception):
    """Base of every error a user can cause and fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class ConfigError(TuneforgeError):
    """The run config (YAML file or key=value override) is invalid."""


class DataError(TuneforgeError):
    """The training data cannot be read or fails validation."""


class ModelError(TuneforgeError):
    """A model or tokenizer cannot be found or loaded."""


class RunError(TuneforgeError):
    """A run directory is missing, incomplete or from another model."""


class TrainingError(TuneforgeError):
    """Training cannot go on (for example the loss became NaN, or a checkpoint is damaged)."""


class RetrievalError(TuneforgeError):
    """A RAG index is missing, damaged or built by another embedding model, or a metadata filter is invalid."""
