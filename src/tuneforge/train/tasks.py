"""Training tasks. `sft`: chat examples, loss on assistant tokens only."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from tuneforge.data.tokenize import IGNORE_INDEX, Encoded, encode_chat
from tuneforge.rundir import read_jsonl


@dataclass
class Batch:
    """A padded batch and its number of loss tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_loss_tokens: int
    n_tokens: int


def load_sft(path: Path, tokenizer: PreTrainedTokenizerBase) -> list[Encoded]:
    """Encode a prepared split (data/<split>.jsonl) for supervised fine-tuning."""
    return [encode_chat(tokenizer, row["messages"]) for row in read_jsonl(path)]


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


def batches(examples: list[Encoded], batch_size: int, pad_id: int, seed: int) -> Iterator[Batch]:
    """One epoch of shuffled batches (the order depends only on `seed`)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)


def loss_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed next-token cross-entropy over the loss tokens of a batch.

    Logits are computed only at positions whose next token carries a label in some row: the prompt part of a
    chat example (often more than half of it) never touches the 49k-wide output layer. The result equals the
    full computation (a test checks it).
    """
    targets = batch.labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
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
