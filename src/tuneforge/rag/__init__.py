"""Retrieval-augmented generation: `build_index` (sources -> chunks -> vectors -> store, incremental), `Index.search`
(dense, keyword or hybrid, with metadata filters) and `answer` (cited answers, or "not in the documents")."""

from tuneforge.rag.answer import Answer, Source, answer, rag_messages, retrieve_sources
from tuneforge.rag.index import IndexSummary, build_index
from tuneforge.rag.retrieve import Index, Results, fuse

__all__ = [
    "Answer",
    "Index",
    "IndexSummary",
    "Results",
    "Source",
    "answer",
    "build_index",
    "fuse",
    "rag_messages",
    "retrieve_sources",
]
