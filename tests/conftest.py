"""Shared fixtures: a tiny random Llama with a tiny BPE tokenizer (built in seconds), and a tiny trained run.

The tokenizer is a byte-level BPE trained on the shipped example data, with ChatML special tokens and the
same chat template as SmolLM2, so the real tokenisation and loss-mask code paths run.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tuneforge.config import load_config

from helpers import ROOT, review_rows, stand_in_mkl, toy_rows, use_mkl_or_skip, write_jsonl

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer random Llama + BPE tokenizer folder, usable as model.name."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    corpus = _corpus()
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    # initializer_range 0.2 (not 0.02): with tied embeddings the logit scale is bounded by the embedding norm,
    # and at 0.02 a 64-wide model cannot become confident enough for "the loss falls" checks to mean anything.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _corpus() -> list[str]:
    corpus = [line for f in (ROOT / "examples" / "contracts").glob("*.jsonl") for line in f.read_text().splitlines()]
    return corpus + [json.dumps(r) for r in toy_rows(50)]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2-layer random BERT encoder + WordPiece tokenizer folder ([CLS] text [SEP]), usable as model.name."""
    from tokenizers import normalizers, processors
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    # The vocabulary is built here, not by tokenizers' WordPieceTrainer: that one breaks ties in hash order, so its
    # tokens and ids changed from run to run, and with them what the tiny BERT learned (a flaky accuracy check).
    words: Counter[str] = Counter()
    for text in _corpus() + [r["text"] for r in review_rows(40, 40)]:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = specials + chars + [f"##{c}" for c in chars]
    pieces += [w for w, _ in sorted(words.items(), key=lambda x: (-x[1], x[0])) if w not in pieces][: 500 - len(pieces)]
    wordpiece = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    wordpiece.normalizer, wordpiece.pre_tokenizer, wordpiece.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # as the tiny Llama: at 0.02 a 64-wide model learns too slowly to test anything
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-example chat JSONL of the toy task."""
    return write_jsonl(tmp_path_factory.mktemp("toy") / "toy.jsonl", toy_rows(60))


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_model_dir: Path, toy_data: Path):
    """A fast RunConfig on the tiny model and toy data, with its run directory in tmp_path."""

    def make(*overrides: str):
        base = [
            f"model.name={tiny_model_dir}",
            f"data.path={toy_data}",
            f"output_dir={tmp_path / 'runs'}",
            "name=toy",
            "train.epochs=1",
            "train.batch_size=8",
            "train.learning_rate=0.01",
            "train.precision=fp32",
            "evaluate.max_new_tokens=24",
            "evaluate.limit=8",
        ]
        return load_config(None, base + list(overrides))

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, toy_data: Path) -> Path:
    """A run directory with prepared data and a trained adapter of the tiny model (shared, read-only)."""
    from tuneforge.data import prepare
    from tuneforge.train import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.path={toy_data}",
            f"output_dir={out}",
            "name=toy",
            "train.epochs=3",
            "train.learning_rate=0.01",
            "train.precision=fp32",
            "evaluate.max_new_tokens=24",
            "evaluate.limit=8",
        ],
    )
    prepare(cfg)
    train(cfg, log=lambda *a: None)
    return cfg.run_dir


@pytest.fixture(params=["mkl", "stand-in"])
def fp32_packs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """fp32 packs in use whatever this CPU's one-off speed measurement found (it decides speed; these tests check what
    the packs compute): MKL's own ("mkl": skipped where this torch has none, failed there when TUNEFORGE_REQUIRE_MKL is
    set), and a plain-torch stand-in for MKL ("stand-in": the packs' bookkeeping checked on any CPU)."""
    from tuneforge.cpu import weight_packs

    if request.param == "mkl":
        use_mkl_or_skip()
    else:
        stand_in_mkl(monkeypatch)
    monkeypatch.setattr(weight_packs, "_packs_pay", lambda: True)
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` need a GPU: without one they are deselected (CI has none), unless `-m` names them, when
    they run and fail loudly (tests/train/test_cuda.py)."""
    if torch.cuda.is_available() or "cuda" in (config.getoption("markexpr") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("cuda")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]
