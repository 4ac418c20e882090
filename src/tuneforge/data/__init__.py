"""Data stage: read, validate, split and tokenize training data."""

from tuneforge.data.prepare import PrepareResult, prepare

__all__ = ["PrepareResult", "prepare"]
