"""Data stage: read, validate, clean, anonymise and split training data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneforge.data.preparation import PrepareResult, prepare

__all__ = ["PrepareResult", "prepare"]


def __getattr__(name: str) -> Any:
    # Lazy: `tuneforge --help` reads the format table from data.formats without importing torch.
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("tuneforge.data.preparation"), name)
    raise AttributeError(name)
