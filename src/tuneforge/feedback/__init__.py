"""Collecting human feedback for the RLHF phase: annotation sessions (two sampled answers side by side, judged in the
terminal or the web UI) and rated answers turned into preference pairs. What they write is the preference JSONL that
`prepare` reads for train.task=reward and dpo."""

from tuneforge.feedback.ratings import ratings_to_pairs, write_pairs
from tuneforge.feedback.sampler import model_sampler
from tuneforge.feedback.session import Annotation, Item, summary

__all__ = ["Annotation", "Item", "model_sampler", "ratings_to_pairs", "summary", "write_pairs"]
