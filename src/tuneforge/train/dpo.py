"""The `dpo` task: Direct Preference Optimization on chosen/rejected pairs (Rafailov et al., 2023).

The practical form of the RLHF stage: no reward model, no sampling. For each pair the loss is
-log sigmoid(beta * ((log p(chosen) - log p_ref(chosen)) - (log p(rejected) - log p_ref(rejected)))), the
log-probabilities summed over the answer tokens only (TRL's "sigmoid" loss). The reference is the model before
training: its log-probabilities are computed once, before the first step, and saved to
runs/<name>/reference_logps.json, so no second model stays in memory (a LoRA adapter starts as the identity, so
the reference is the base model) and a resumed run reads them back. `train.dpo_reference=none` trains
reference-free (the reference terms are 0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tuneforge.config import TrainConfig
from tuneforge.data.tokenize import Encoded, encode_chat
from tuneforge.errors import TuneforgeError
from tuneforge.rundir import REFERENCE_LOGPS, atomic_write_json
from tuneforge.train.lm import collate as collate_rows
from tuneforge.train.lm import token_logps
from tuneforge.train.tasks import Batch, Task, TaskContext, register, rows_with


@dataclass
class Pair:
    """A prompt with its chosen and rejected answer (labels on the answer only) and the reference model's
    summed log-probabilities of the two answers."""

    chosen: Encoded
    rejected: Encoded
    reference: tuple[float, float] = (0.0, 0.0)


def load_dpo(path: Path, tokenizer: Any, context: TaskContext) -> list[Pair]:
    """Encode a prepared split of preference pairs."""
    rows = rows_with(
        path,
        "chosen",
        "preference pairs",
        "train.task=dpo needs preference data (prompt/chosen/rejected, or OpenAI's preferred_output format)",
    )
    pairs = []
    for row in rows:
        prompt, tools = row["prompt"], row.get("tools")
        chosen = encode_chat(tokenizer, prompt + row["chosen"], tools, from_turn=len(prompt))
        rejected = encode_chat(tokenizer, prompt + row["rejected"], tools, from_turn=len(prompt))
        pairs.append(Pair(chosen, rejected))
    return pairs


def collate(pairs: list[Pair], pad_id: int) -> Batch:
    """Chosen answers in the first half of the rows, rejected ones in the second; one loss unit per pair."""
    rows = collate_rows([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    rows.n_loss = float(len(pairs))
    rows.extra["reference"] = torch.tensor([p.reference for p in pairs], dtype=torch.float32)
    return rows


def loss_sum(model: Any, batch: Batch, train: TrainConfig) -> torch.Tensor:
    """The DPO loss summed over the pairs of a batch."""
    logps = token_logps(model, batch)
    n = logps.size(0) // 2
    reference = batch.extra["reference"]
    margin = (logps[:n] - reference[:, 0]) - (logps[n:] - reference[:, 1])
    return -F.logsigmoid(train.dpo_beta * margin).sum()


@torch.no_grad()
def answer_logps(model: Any, pairs: list[Pair], batch_size: int, pad_id: int, device: str) -> list[tuple[float, float]]:
    """The model's summed log-probability of each pair's chosen and rejected answer."""
    was_training = model.training
    model.eval()
    out: list[tuple[float, float]] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="reference", unit="batch", leave=False):
        part = pairs[start : start + batch_size]
        logps = token_logps(model, collate(part, pad_id).to(device)).tolist()
        out += list(zip(logps[: len(part)], logps[len(part) :], strict=True))
    model.train(was_training)
    return out


def attach_reference(
    model: Any, splits: dict[str, list[Pair]], context: TaskContext, device: str, pad_id: int, fresh: bool, log: Any
) -> None:
    """Give every pair its reference log-probabilities: computed with the untrained model on a fresh run (and
    saved), read back from the run on a resumed one."""
    if context.train.dpo_reference == "none":
        return
    path = context.run_dir / REFERENCE_LOGPS
    key = _fingerprint(splits)
    if fresh:
        log(f"dpo: reference log-probabilities of {sum(len(s) for s in splits.values())} pairs (model before training)")
        chosen = context.train.batch_size
        batch = max(1, int(chosen) if chosen != "auto" else 4)
        saved = {name: answer_logps(model, pairs, batch, pad_id, device) for name, pairs in splits.items()}
        atomic_write_json(path, {"fingerprint": key, "splits": saved})
    else:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
        if stored.get("fingerprint") != key:
            raise TuneforgeError(
                f"{path} is missing or belongs to other data, and the reference model is gone (training changed it)",
                "train again without --resume",
            )
        saved = {name: [(float(c), float(r)) for c, r in values] for name, values in stored["splits"].items()}
    for name, pairs in splits.items():
        for pair, reference in zip(pairs, saved[name], strict=True):
            pair.reference = reference


def _fingerprint(splits: dict[str, list[Pair]]) -> str:
    """A hash of the pairs' tokens: a resumed run must find the reference of the very same data."""
    digest = hashlib.sha256()
    for name, pairs in sorted(splits.items()):
        digest.update(name.encode())
        for p in pairs:
            digest.update(json.dumps([p.chosen.input_ids, p.rejected.input_ids]).encode())
    return digest.hexdigest()[:16]


DPO = register(
    "dpo",
    Task(
        load_dpo,
        collate,
        loss_sum,
        lambda p: 1.0,
        lambda p: len(p.chosen.input_ids) + len(p.rejected.input_ids),
        generative=False,
        setup=attach_reference,
        reads="preference",
    ),
)
