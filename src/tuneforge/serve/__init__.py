"""OpenAI-compatible serving."""

from tuneforge.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
