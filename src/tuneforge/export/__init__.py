"""Export a run's model for other runtimes (merged weights, a PEFT adapter for vLLM, a text-classification model, a
GGUF file for llama.cpp and Ollama), each checked for parity with tuneforge's own answers."""

from tuneforge.export.export import TARGETS, ExportResult, export

__all__ = ["TARGETS", "ExportResult", "export"]
