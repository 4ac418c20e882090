"""Training tasks: how a prepared split becomes training examples. A registry from `train.task`.

`sft`: chat examples, loss on assistant tokens only. `pretrain`: continued pre-training (domain adaptation) on
text records, concatenated (each document closed by the end-of-text token) and cut into blocks of
`train.block_size` tokens, loss on every token.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from tuneforge.data.tokenize import IGNORE_INDEX, Encoded, encode_chat
from tuneforge.errors import DataError
from tuneforge.rundir import read_jsonl


@dataclass
class Batch:
    """A padded batch and its number of loss tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_loss_tokens: int
    n_tokens: int


def load_sft(path: Path, tokenizer: PreTrainedTokenizerBase, block_size: int = 0) -> list[Encoded]:
    """Encode a prepared split (data/<split>.jsonl) for supervised fine-tuning."""
    rows = _rows_with(
        path,
        "messages",
        "chat examples",
        "train.task=sft needs chat data (messages, alpaca, sharegpt or prompt/completion); for raw text or "
        "documents set train.task=pretrain",
    )
    return [encode_chat(tokenizer, row["messages"], row.get("tools")) for row in rows]


def load_pretrain(path: Path, tokenizer: PreTrainedTokenizerBase, block_size: int) -> list[Encoded]:
    """Text records of a prepared split as consecutive blocks of `block_size` tokens (the last may be shorter)."""
    rows = _rows_with(
        path,
        "text",
        "text records",
        "train.task=pretrain reads raw text, documents or code (data.format=text or a folder); "
        "for chat data set train.task=sft",
    )
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer([row["text"] for row in rows], add_special_tokens=False)["input_ids"] if rows else []:
        stream += [*ids, eos] if eos is not None else ids
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    return [Encoded(b, list(b)) for b in blocks if len(b) > 1]


def _rows_with(path: Path, key: str, what: str, hint: str) -> list[dict[str, Any]]:
    """The rows of a prepared split, which must be of the kind the task reads (they carry `key`)."""
    rows = read_jsonl(path)
    if rows and key not in rows[0]:
        raise DataError(f"{path}: the prepared data are not {what} (keys: {sorted(rows[0])})", hint)
    return rows


TASKS: dict[str, Callable[[Path, PreTrainedTokenizerBase, int], list[Encoded]]] = {
    "sft": load_sft,
    "pretrain": load_pretrain,
}


def collate(examples: list[Encoded], pad_id: int) -> Batch:
    """Right-pad a list of examples into tensors."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    n_loss = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return Batch(ids, mask, labels, n_loss, int(mask.sum()))


def steps(examples: list[Encoded], batch_size: int, grad_accum: int, pad_id: int, seed: int) -> Iterator[list[Batch]]:
    """One epoch of optimizer steps, each a list of up to `grad_accum` micro-batches; depends only on `seed`."""
    for group in step_groups([len(e.input_ids) for e in examples], batch_size * grad_accum, seed):
        yield collate_step([examples[i] for i in group], batch_size, pad_id)


def step_groups(lengths: list[int], per_step: int, seed: int) -> list[list[int]]:
    """The example indices of each optimizer step of one epoch; depends only on the lengths and `seed`.

    Examples of similar length are grouped (sorted inside windows of 32 steps, then the steps are shuffled), so
    a batch carries little padding: on the contracts example padding falls from 13.9% to 1.0% of the tokens.
    Being a plain list, a resumed run skips the steps it already made without building their batches.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = per_step * 32
    groups: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        groups += [chunk[i : i + per_step] for i in range(0, len(chunk), per_step)]
    rng.shuffle(groups)
    return groups


def collate_step(examples: list[Encoded], batch_size: int, pad_id: int) -> list[Batch]:
    """The micro-batches of one optimizer step."""
    return [collate(examples[j : j + batch_size], pad_id) for j in range(0, len(examples), batch_size)]


# Architectures whose logits are exactly lm_head(final hidden state): no soft-capping, no logit scale.
PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo2", "starcoder2"})


def loss_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed next-token cross-entropy over the loss tokens of a batch.

    The 49k-wide output layer runs only where a label follows: never on the prompt (often half of a chat
    example) nor on padding. For plain-head architectures it runs on exactly the labelled positions; for others on
    the sequence positions where some row has a label. Both equal the full computation (tests check it), and
    bench/train_speed.py measures the gain against the standard `labels=` call.
    """
    targets = batch.labels[:, 1:]
    wanted = targets != IGNORE_INDEX
    wrapped = isinstance(model, torch.nn.parallel.DistributedDataParallel)  # its forward syncs the gradients
    inner: Any = model.module if wrapped else model
    causal: Any = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    if causal.config.model_type in PLAIN_HEAD and not wrapped:
        hidden = causal.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        logits = causal.get_output_embeddings()(hidden[:, :-1][wanted]).float()
        return F.cross_entropy(logits, targets[wanted], reduction="sum")
    keep = wanted.any(dim=0).nonzero().squeeze(1)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep)
    logits = out.logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets[:, keep].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


@torch.no_grad()
def mean_loss(model: torch.nn.Module, examples: list[Encoded], batch_size: int, pad_id: int) -> float:
    """Token-weighted mean loss of `examples` (no gradients, model in eval mode)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        total += float(loss_sum(model, batch))
        count += batch.n_loss_tokens
    model.train(was_training)
    return total / max(count, 1)
