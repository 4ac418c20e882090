"""The `classify` task: a sequence-classification head on an encoder (BERT-style) or decoder model.

transformers' *ForSequenceClassification classes add the head (a new, randomly initialised linear layer; an
encoder pools its first token, a decoder its last non-padding one). The loss is cross-entropy weighted per class
(`train.class_weights`: 'balanced' gives each class the same total weight, as scikit-learn computes it), so a
rare class is not drowned by a frequent one. LoRA and DoRA train the head in full beside the adapters (PEFT's
modules_to_save); `freeze` always trains it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.modeling_layers import GenericForSequenceClassification

from tuneforge.config import TrainConfig
from tuneforge.data.labels import class_labels
from tuneforge.errors import ConfigError, DataError
from tuneforge.rundir import read_jsonl, split_path
from tuneforge.train.parallel import unwrap
from tuneforge.train.tasks import Batch, Task, TaskContext, register, rows_with


@dataclass
class Labelled:
    """Token ids of one text, its class index and the weight of its class in the loss."""

    input_ids: list[int]
    label: int
    weight: float


def class_weights(context: TaskContext, labels: list[str]) -> list[float]:
    """The loss weight of each class (in `labels` order) from train.class_weights and the training split."""
    choice = context.train.class_weights
    if choice == "none":
        return [1.0] * len(labels)
    if isinstance(choice, dict):
        unknown = sorted(set(choice) - set(labels))
        if unknown:
            raise ConfigError(
                f"train.class_weights names classes the data do not have: {unknown}", f"the classes are {labels}"
            )
        return [float(choice.get(label, 1.0)) for label in labels]
    from sklearn.utils.class_weight import compute_class_weight

    counts = Counter(str(row["label"]) for row in read_jsonl(split_path(context.run_dir, "train")))
    present = [label for label in labels if counts[label]]
    y = np.array([label for label, n in counts.items() for _ in range(n)])
    balanced = dict(zip(present, compute_class_weight("balanced", classes=np.array(present), y=y), strict=True))
    return [float(balanced.get(label, 1.0)) for label in labels]


def load_classify(path: Path, tokenizer: Any, context: TaskContext) -> list[Labelled]:
    """Encode a prepared split of classification records (text truncated to data.max_seq_len tokens)."""
    rows = rows_with(
        path,
        "label",
        "classification records",
        "train.task=classify needs records with text and label (data.format=classification)",
    )
    if not rows:  # an empty split (data.val_size=0 writes an empty val.jsonl); the tokenizer fails on no texts
        return []
    labels = class_labels(context.data, context.run_dir)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(r["label"]) for r in rows} - set(index))
    if unknown:
        raise DataError(
            f"{path}: labels {unknown[:5]} are not among data.labels {labels}",
            "add them to data.labels, or remove those records",
        )
    weights = class_weights(context, labels)
    encoded = tokenizer(
        [r["text"] for r in rows], add_special_tokens=True, truncation=True, max_length=context.data.max_seq_len
    )["input_ids"]
    return [
        Labelled(list(ids), index[str(r["label"])], weights[index[str(r["label"])]])
        for ids, r in zip(encoded, rows, strict=True)
    ]


def collate(examples: list[Labelled], pad_id: int) -> Batch:
    """Right-padded texts, their class indices and class weights."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[row, : len(e.input_ids)] = 1
    labels = torch.tensor([e.label for e in examples])
    weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    return Batch(ids, mask, labels, float(weights.sum()), int(mask.sum()), extra={"weight": weights})


def logits(model: Any, batch: Batch) -> torch.Tensor:
    """Class logits (fp32) of a batch.

    A decoder's classifier (transformers' GenericForSequenceClassification: Llama, Qwen, Mistral, ...) applies its
    head to every position and keeps each row's last non-padding one; here the head runs on those positions alone,
    picked by the same rule. Under bf16 autocast, PEFT's LoRA layers no longer cast a bf16 input up to their fp32
    weights' dtype, which autocast casts straight back (the same numbers): two full-size copies forward and two
    backward in each LoRA layer fed by a bf16 tensor (o_proj, down_proj).
    """
    from peft.helpers import disable_input_dtype_casting

    inner, wrapped = unwrap(model)
    seq: Any = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    pad_id = getattr(getattr(seq, "config", None), "pad_token_id", None)
    bf16 = torch.is_autocast_enabled(batch.input_ids.device.type)
    with disable_input_dtype_casting(inner, active=bf16):
        if wrapped or pad_id is None or not isinstance(seq, GenericForSequenceClassification):
            return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        backbone = getattr(seq, seq.base_model_prefix)
        hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        ids = batch.input_ids
        positions = torch.arange(ids.size(1), device=ids.device, dtype=torch.int32)
        last = (positions * (ids != pad_id).to(torch.int32)).argmax(-1)  # the rightmost non-padding token
        pooled = hidden.last_hidden_state[torch.arange(ids.size(0), device=ids.device), last]
        return seq.score(pooled).float()


def loss_sum(model: Any, batch: Batch, train: TrainConfig | None = None) -> torch.Tensor:
    """Cross-entropy of each example times its class weight, summed."""
    per_example = F.cross_entropy(logits(model, batch), batch.labels, reduction="none")
    return (per_example * batch.extra["weight"]).sum()


@torch.no_grad()
def probabilities(model: Any, examples: list[Labelled], batch_size: int, pad_id: int, device: str) -> np.ndarray:
    """Softmax class probabilities of each example, shape (examples, classes)."""
    model.eval()
    out = [
        torch.softmax(logits(model, collate(examples[i : i + batch_size], pad_id).to(device)), -1).cpu().numpy()
        for i in range(0, len(examples), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0))


CLASSIFY = register(
    "classify",
    Task(
        load_classify,
        collate,
        loss_sum,
        lambda e: e.weight,
        head="classifier",
        reads="classification",
        generative=False,
    ),
)
