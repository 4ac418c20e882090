"""The speed and memory levers of training: each computes what it replaces (bench/train.py measures the gain)."""

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tuneforge.data import prepare
from tuneforge.data.tokenize import encode_chat
from tuneforge.models import load_model, load_tokenizer
from tuneforge.train import linear_ce, loop, setup, train
from tuneforge.train.linear_ce import linear_cross_entropy
from tuneforge.train.lm import SFT, collate, loss_sum
from tuneforge.train.precision import resolve_precision
from tuneforge.train.tasks import collate_step, largest_micro_batch, micro_batches

from helpers import full_logits_loss, write_jsonl

QUIET = {"log": lambda *a: None}


def losses(cfg) -> list[float]:
    return [json.loads(line)["loss"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000], ids=["row-by-row", "uneven-chunks", "one-chunk"])
def test_chunked_cross_entropy_equals_the_full_one(monkeypatch: pytest.MonkeyPatch, chunk_rows: int) -> None:
    vocab = 300
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", chunk_rows * vocab)
    torch.manual_seed(0)
    hidden = torch.randn(50, 24, requires_grad=True)
    weight = torch.randn(vocab, 24, requires_grad=True)
    targets = torch.randint(0, vocab, (50,))
    chunked = linear_cross_entropy(hidden, weight, targets)
    (2.5 * chunked).backward()  # a scale on the loss must reach the gradients
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (2.5 * full).backward()
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-5) and torch.allclose(grads[1], weight.grad, atol=1e-5)
    with torch.no_grad():  # evaluation: the loss alone, no gradients built
        assert linear_cross_entropy(hidden, weight, targets).item() == pytest.approx(full.item(), rel=1e-6)
    frozen = weight.detach()  # LoRA: the output layer does not train, only the hidden states get a gradient
    hidden.grad = None
    linear_cross_entropy(hidden, frozen, targets).backward()
    assert torch.allclose(hidden.grad, grads[0] / 2.5, atol=1e-5)


def test_chunked_cross_entropy_under_bf16_autocast_matches_the_autocast_output_layer() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(40, 32, requires_grad=True)
    weight = torch.randn(200, 32, requires_grad=True)
    targets = torch.randint(0, 200, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = linear_cross_entropy(hidden, weight, targets)
        full = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")
    assert chunked.dtype == torch.float32 and chunked.item() == pytest.approx(full.item(), rel=1e-3)
    chunked.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_model_loss_and_gradients_equal_the_full_logits(tiny_model_dir: Path, monkeypatch) -> None:
    """Full fine-tuning of the tiny Llama (output layer tied to the embeddings): the chunked loss gives the
    same gradient to every weight as cross-entropy over the model's whole logits."""
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", 5 * 512)  # several chunks even on a tiny batch
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir))
    examples = [
        encode_chat(
            tokenizer, [{"role": "user", "content": "colour? " * i}, {"role": "assistant", "content": "red " * i}]
        )
        for i in range(1, 5)
    ]
    batch = collate(examples, int(tokenizer.pad_token_id))
    fast = loss_sum(model, batch)
    fast.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full = full_logits_loss(model, batch)
    full.backward()
    assert fast.item() == pytest.approx(full.item(), rel=1e-5)
    for name, param in model.named_parameters():
        assert torch.allclose(ours[name], param.grad, atol=1e-5, rtol=1e-4), name


def test_micro_batches_keep_to_the_token_limit_and_cover_every_example() -> None:
    lengths = [5, 300, 40, 41, 39, 700, 10, 12, 8, 400, 33, 90]
    parts = micro_batches(lengths, batch_size=6, max_tokens=128)
    assert sorted(i for p in parts for i in p) == list(range(len(lengths)))
    assert all(set(p) <= set(range(0, 6)) or set(p) <= set(range(6, 12)) for p in parts)  # within a batch of 6
    for p in parts:
        assert len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 128, p
    assert [700] in [[lengths[i] for i in p] for p in parts]  # too long for the limit: alone, never dropped
    assert micro_batches(lengths, 6, None) == [list(range(6)), list(range(6, 12))]
    # the memory peak is the part of most tokens, not always the one of the longest example
    assert largest_micro_batch([250, 250, 260], 3, 512) == [0, 1]


def test_every_process_gets_as_many_micro_batches(tiny_model_dir: Path) -> None:
    """Token-limited splits differ between processes; the short ones are topped up with fillers (loss zero), as
    every backward is a collective operation."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    long = encode_chat(tokenizer, [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}])
    short = encode_chat(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    examples = [long, short, long, short]  # rank 0 gets both long ones, rank 1 both short ones
    limit = len(long.input_ids) + 1
    ranks = [collate_step(SFT, examples, 2, 0, rank, 2, limit) for rank in (0, 1)]
    assert [len(r) for r in ranks] == [2, 2]
    assert [b.filler for b in ranks[0]] == [False, False] and [b.filler for b in ranks[1]] == [False, True]


def test_token_limited_micro_batches_train_the_same(tiny_config, monkeypatch) -> None:
    from tuneforge.train import loop

    real, parts = loop.optimizer_step, []

    def counted(model, group, *args, **kwargs):
        parts.append([b.input_ids.shape for b in group])
        return real(model, group, *args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", counted)
    runs, split = [], []
    for limit in ("null", "40"):
        parts.clear()
        cfg = tiny_config("train.max_steps=3", f"train.micro_batch_tokens={limit}", f"name=mb{limit}")
        prepare(cfg)
        train(cfg, **QUIET)
        runs.append(losses(cfg))
        split.append([len(step) for step in parts])
        if limit == "40":  # each part within the limit (rows x longest), but for a lone longer example
            assert all(rows * width <= 40 or rows == 1 for step in parts for rows, width in step)
    assert split[0] == [1, 1, 1] and all(n > 1 for n in split[1]), split  # the 8-example batches really split
    assert runs[1] == pytest.approx(runs[0], rel=1e-4)


BF16_TOLERANCE = 0.02  # bf16 autocast training loss stays within 2% of fp32's at every one of 12 steps


def test_bf16_training_tracks_fp32(tiny_config) -> None:
    runs = []
    for precision in ("fp32", "bf16"):
        cfg = tiny_config("train.max_steps=12", f"train.precision={precision}", f"name={precision}")
        prepare(cfg)
        result = train(cfg, **QUIET)
        assert result.precision == precision
        runs.append(losses(cfg))
    fp32, bf16 = runs
    assert fp32[-1] < 0.5 * fp32[0], "the run must learn for the comparison to mean something"
    assert bf16 == pytest.approx(fp32, rel=BF16_TOLERANCE)


def test_the_log_says_which_precision_path_was_taken_and_why(tiny_config) -> None:
    cfg = tiny_config("train.max_steps=1", "train.precision=auto")
    prepare(cfg)
    lines: list[str] = []
    train(cfg, log=lines.append)
    chosen = resolve_precision("auto", "cpu")
    line = next(line for line in lines if line.startswith("precision"))
    assert line.startswith(f"precision {chosen}")
    assert ("AMX" in line) and ("fallback" in line if chosen == "fp32" else "fast path" in line), line


def test_classify_steps_are_length_grouped_and_whole_by_default(
    tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Short texts of varied length: a classifier's steps group similar lengths (little padding), and on CPU a step
    of 16 texts of up to max_seq_len 128 tokens is one micro-batch (a split would only repeat per-call work)."""
    rng = random.Random(0)
    words = ["gut", "great", "kaputt", "broken", "fine", "ok", "order", "day", "lamp", "kettle", "late", "early"]
    rows = [
        {"text": " ".join(rng.choices(words, k=rng.randint(1, 25))), "label": rng.choice(["pos", "neg"])}
        for _ in range(160)
    ]
    data = write_jsonl(tmp_path / "varied.jsonl", rows)
    seen: list[tuple[int, int]] = []  # (cells, real tokens) of every micro-batch trained on
    real_step = loop.optimizer_step

    def spy(model, group, *args, **kwargs):
        seen.extend((b.input_ids.numel(), b.n_tokens) for b in group)
        return real_step(model, group, *args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", spy)
    padding = {}
    for grouped in ("default", "false"):
        cfg = tiny_config(
            f"data.path={data}",
            "train.task=classify",
            "train.batch_size=16",
            "data.max_seq_len=128",
            "data.estimate=false",
            "clean.near_dup_threshold=0",
            *([] if grouped == "default" else [f"train.group_by_length={grouped}"]),
            f"name=grouped-{grouped}",
        )
        prepare(cfg)
        seen.clear()
        train(cfg, **QUIET)
        padding[grouped] = 1 - sum(real for _, real in seen) / sum(cells for cells, _ in seen)
        assert micro_batches([128] * 16, 16, setup.micro_batch_tokens(cfg.train, "cpu")) == [list(range(16))]
    assert padding["default"] < 0.2 and padding["false"] > 0.4, padding
    sft = tiny_config()
    assert (setup.micro_batch_tokens(sft.train, "cpu"), setup.micro_batch_tokens(sft.train, "cuda")) == (512, None)
