"""OpenAI-compatible serving: create_app(run_dirs, serve) with the run config's `serve:` section (ServeConfig)."""

from tuneforge.serve.app import create_app

__all__ = ["create_app"]
