"""The language-modelling tasks: `sft` (chat data, loss on the answers) and `pretrain` (raw text in blocks).

`sft`: chat examples, loss on assistant tokens only; with `train.packing` several examples share one row of
up to data.max_seq_len tokens, positions restarting at each example, and attention never crosses from one
example into another (transformers builds the block-diagonal mask from the restarting positions). `pretrain`:
continued pre-training (domain adaptation) on text records, concatenated (each document closed by the
end-of-text token) and cut into blocks of `train.block_size` tokens, loss on every token.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from tuneforge.config import TrainConfig
from tuneforge.data.tokenize import IGNORE_INDEX, Encoded, encode_chat
from tuneforge.errors import DataError
from tuneforge.train.linear_ce import linear_cross_entropy
from tuneforge.train.parallel import unwrap
from tuneforge.train.tasks import Batch, Task, TaskContext, register, rows_with


def load_sft(path: Path, tokenizer: PreTrainedTokenizerBase, context: TaskContext) -> list[Encoded]:
    """Encode a prepared split (data/<split>.jsonl) for supervised fine-tuning (packed when train.packing)."""
    rows = rows_with(
        path,
        "messages",
        "chat examples",
        "train.task=sft needs chat data (messages, alpaca, sharegpt or prompt/completion); for raw text or "
        "documents set train.task=pretrain",
    )
    unanswered = sum(1 for row in rows if all(m["role"] != "assistant" for m in row["messages"]))
    if unanswered:
        raise DataError(
            f"{path}: {unanswered} of {len(rows)} examples are prompts without an answer: nothing to learn from",
            "give every prompt its answer, or train on prompts alone with train.task=grpo (docs/rlhf.md)",
        )
    examples = [encode_chat(tokenizer, row["messages"], row.get("tools")) for row in rows]
    return pack(examples, context.data.max_seq_len) if context.train.packing else examples


def load_pretrain(path: Path, tokenizer: PreTrainedTokenizerBase, context: TaskContext) -> list[Encoded]:
    """Text records of a prepared split as consecutive blocks of `block_size` tokens (the last may be shorter)."""
    rows = rows_with(
        path,
        "text",
        "text records",
        "train.task=pretrain reads raw text, documents or code (data.format=text or a folder); "
        "for chat data set train.task=sft",
    )
    return blocks([row["text"] for row in rows], tokenizer, block_size(context))


def blocks(texts: list[str], tokenizer: PreTrainedTokenizerBase, size: int) -> list[Encoded]:
    """`texts` concatenated (each closed by the end-of-text token) and cut into blocks of `size` tokens."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        stream += [*ids, eos] if eos is not None else ids
    cut = [stream[i : i + size] for i in range(0, len(stream), size)]
    return [Encoded(b, list(b)) for b in cut if len(b) > 1]


def block_size(context: TaskContext) -> int:
    """Tokens per packed block of the pretrain task."""
    return context.train.block_size or context.data.max_seq_len


def pack(examples: list[Encoded], width: int) -> list[Encoded]:
    """Examples packed into rows of at most `width` tokens (best fit, longest first), positions restarting at
    each example; the first label of each example is dropped so no loss ever spans two examples."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted: the tightest row that fits is found by bisection
    for i in order:
        need = len(examples[i].input_ids)
        at = bisect.bisect_left(free, (need, -1))
        if at == len(free):
            rows.append([i])
            room, row = width - need, len(rows) - 1
        else:
            room, row = free.pop(at)
            rows[row].append(i)
            room -= need
        if room > 0:
            bisect.insort(free, (room, row))
    packed = []
    for members in rows:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in members:
            e = examples[i]
            ids += e.input_ids
            labels += [IGNORE_INDEX, *e.labels[1:]]
            positions += range(len(e.input_ids))
        packed.append(Encoded(ids, labels, positions))
    return packed


def collate(examples: list[Encoded], pad_id: int) -> Batch:
    """Right-pad a list of examples into tensors. Packed rows get position ids and no attention mask (their
    padding is one more sequence at the end of the row, which nothing before it attends to)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    packed = any(e.position_ids is not None for e in examples)
    positions = torch.zeros((len(examples), width), dtype=torch.long) if packed else None
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
        if positions is not None:
            positions[row, :n] = torch.tensor(e.position_ids if e.position_ids is not None else range(n))
            positions[row, n:] = torch.arange(width - n)
    n_loss = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return Batch(ids, None if packed else mask, labels, n_loss, int(mask.sum()), positions)


# Architectures whose logits are exactly lm_head(final hidden state): no soft-capping, no logit scale.
PLAIN_HEAD = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3", "olmo2", "starcoder2"})


def loss_sum(model: torch.nn.Module, batch: Batch, train: TrainConfig | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy over the loss tokens of a batch.

    For plain-head architectures the output layer and the loss run in chunks (`linear_ce`): the logits of all
    loss tokens never exist at once. Otherwise the labelled logits are computed whole."""
    found = labelled_hidden(model, batch)
    if found is not None:
        hidden, head, targets = found
        return linear_cross_entropy(hidden, head.weight, targets)
    logits, targets, _ = labelled_logits(model, batch)
    return F.cross_entropy(logits, targets, reduction="sum")


def labelled_hidden(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Any, torch.Tensor] | None:
    """The final hidden states at the positions followed by a loss token, the output layer and those tokens; None
    where the chunked loss cannot take the output layer's weight itself (see `_plain_causal`; an adapter or a bias
    on the layer; a weight that DeepSpeed ZeRO-3 gathers only inside the layer's call)."""
    causal = _plain_causal(model)
    head = causal.get_output_embeddings() if causal is not None else None
    if (
        causal is None
        or type(head) is not torch.nn.Linear
        or head.bias is not None
        or hasattr(head.weight, "ds_id")  # a ZeRO-3 partition
    ):
        return None
    targets = batch.labels[:, 1:]
    wanted = targets != IGNORE_INDEX
    hidden = causal.base_model(**_inputs(batch)).last_hidden_state
    return hidden[:, :-1][wanted], head, targets[wanted]


def _plain_causal(model: torch.nn.Module) -> Any | None:
    """The causal LM inside `model` when its logits are just its output layer applied to the final hidden states
    (PLAIN_HEAD) and no engine's own forward must run (DDP's syncs the gradients); else None."""
    inner, wrapped = unwrap(model)
    causal: Any = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return None if wrapped or causal.config.model_type not in PLAIN_HEAD else causal


def _inputs(batch: Batch) -> dict[str, Any]:
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids
    return inputs


def token_logps(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The summed log-probability of each row's loss tokens, shape (rows,)."""
    logits, targets, rows = labelled_logits(model, batch)
    logps = -F.cross_entropy(logits, targets, reduction="none")
    return torch.zeros(batch.input_ids.size(0), dtype=logps.dtype, device=logps.device).index_add(0, rows, logps)


def labelled_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 logits at the positions followed by a loss token, those tokens, and the row of each.

    The 49k-wide output layer runs only where a label follows: never on the prompt (often half of a chat
    example) nor on padding. For plain-head architectures it runs on exactly the labelled positions; for others on
    the sequence positions where some row has a label. Both equal the full computation (tests check it), and
    bench/train_speed.py measures the gain against the standard `labels=` call.
    """
    targets = batch.labels[:, 1:]
    wanted = targets != IGNORE_INDEX
    rows = wanted.nonzero()[:, 0]
    inputs = _inputs(batch)
    causal = _plain_causal(model)
    if causal is not None:
        hidden = causal.base_model(**inputs).last_hidden_state
        return causal.get_output_embeddings()(hidden[:, :-1][wanted]).float(), targets[wanted], rows
    keep = wanted.any(dim=0).nonzero().squeeze(1)
    logits = model(**inputs, logits_to_keep=keep).logits.float()
    return logits[wanted[:, keep]], targets[wanted], rows


def loss_tokens(example: Encoded) -> float:
    """The loss tokens of one example (labels after the first that are not ignored)."""
    return float(sum(1 for t in example.labels[1:] if t != IGNORE_INDEX))


SFT = register("sft", Task(load_sft, collate, loss_sum, loss_tokens))
PRETRAIN = register("pretrain", Task(load_pretrain, collate, loss_sum, loss_tokens, generative=False, reads="text"))
