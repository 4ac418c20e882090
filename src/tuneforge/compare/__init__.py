"""The bake-off: prompt vs few-shot vs RAG vs fine-tune vs fine-tune+RAG on the user's own test split, measured
(quality with intervals, latency, tokens, cost) and turned into advice (`compare`, `advise`)."""

from tuneforge.compare.advisor import Advice, Evidence, Finding, advise
from tuneforge.compare.bakeoff import CompareResult, compare

__all__ = ["Advice", "CompareResult", "Evidence", "Finding", "advise", "compare"]
