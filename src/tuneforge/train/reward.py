"""The `reward` task: a reward model, the second step of the RLHF phase (Ouyang et al., 2022).

The base model gets a scalar head (transformers' sequence classification with one output, as TRL's RewardTrainer
builds it) that scores a whole conversation: the prompt and one answer, through the chat template. Training sees
preference pairs and minimises the pairwise Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected) - m), where
m = train.reward_margin x the pair's margin (its rating gap for pairs made from ratings, else 1; 0 by default:
Llama 2's margin variant is opt-in). The score is pooled at each conversation's last token. LoRA and DoRA train the
head in full beside the adapters, as for `classify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuneforge.config import TrainConfig
from tuneforge.data.tokenize import encode_chat
from tuneforge.errors import DataError
from tuneforge.train.classify import logits
from tuneforge.train.tasks import Batch, Task, TaskContext, register, rows_with


@dataclass
class ScoredPair:
    """The token ids of a prompt with its chosen answer and with its rejected one, and the pair's margin."""

    chosen: list[int]
    rejected: list[int]
    margin: float = 1.0


def conversation_ids(
    tokenizer: Any, prompt: list[dict[str, Any]], answer: list[dict[str, Any]], tools: Any
) -> list[int]:
    """The token ids of a conversation as the reward model reads it: the prompt and one answer, chat template."""
    return encode_chat(tokenizer, prompt + answer, tools).input_ids


def load_reward(path: Path, tokenizer: Any, context: TaskContext) -> list[ScoredPair]:
    """Encode a prepared split of preference pairs as two conversations each."""
    rows = rows_with(
        path,
        "chosen",
        "preference pairs",
        "train.task=reward needs preference data (prompt/chosen/rejected, OpenAI's preferred_output format, "
        "HH-RLHF transcripts or rated answers; docs/rlhf.md)",
    )
    pairs = []
    for i, row in enumerate(rows, 1):
        margin = float(row.get("margin", 1.0))
        if not np.isfinite(margin):
            raise DataError(f"{path}:{i}: margin is {row.get('margin')!r}", "give a finite number, or leave it out")
        tools = row.get("tools")
        pairs.append(
            ScoredPair(
                conversation_ids(tokenizer, row["prompt"], row["chosen"], tools),
                conversation_ids(tokenizer, row["prompt"], row["rejected"], tools),
                margin,
            )
        )
    return pairs


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def collate(pairs: list[ScoredPair], pad_id: int) -> Batch:
    """Chosen conversations in the first half of the rows, rejected ones in the second; one loss unit per pair."""
    ids, mask = pad_rows([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    margins = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return Batch(ids, mask, torch.zeros(len(pairs)), float(len(pairs)), int(mask.sum()), extra={"margin": margins})


def scores(model: Any, batch: Batch) -> torch.Tensor:
    """The reward of each row of a batch (fp32), shape (rows,)."""
    return logits(model, batch)[:, 0]


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected - margin), per pair."""
    gap = chosen - rejected - (margin if margin is not None else 0.0)
    return -F.logsigmoid(gap)


def loss_sum(model: Any, batch: Batch, train: TrainConfig) -> torch.Tensor:
    """The Bradley-Terry loss summed over the pairs of a batch."""
    rewards = scores(model, batch)
    n = rewards.size(0) // 2
    margin = batch.extra["margin"] * train.reward_margin if train.reward_margin else None
    return bradley_terry(rewards[:n], rewards[n:], margin).sum()


@torch.no_grad()
def pair_rewards(model: Any, pairs: list[ScoredPair], batch_size: int, pad_id: int, device: str) -> np.ndarray:
    """The reward of each pair's chosen and rejected conversation, shape (pairs, 2)."""
    model.eval()
    out = []
    for start in range(0, len(pairs), batch_size):
        part = pairs[start : start + batch_size]
        r = scores(model, collate(part, pad_id).to(device)).cpu().numpy()
        out.append(np.stack([r[: len(part)], r[len(part) :]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2))


@torch.no_grad()
def score_conversations(model: Any, rows: list[list[int]], batch_size: int, pad_id: int, device: str) -> list[float]:
    """The reward of each tokenised conversation (`conversation_ids`)."""
    model.eval()
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        ids, mask = pad_rows(rows[start : start + batch_size], pad_id)
        batch = Batch(ids.to(device), mask.to(device), torch.zeros(0), 0.0, int(mask.sum()))
        out += scores(model, batch).tolist()
    return out


REWARD = register(
    "reward",
    Task(
        load_reward,
        collate,
        loss_sum,
        lambda p: 1.0,
        lambda p: len(p.chosen) + len(p.rejected),
        head="classifier",
        reads="preference",
        generative=False,
        labels=("reward",),
    ),
)
