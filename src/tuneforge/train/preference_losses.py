"""The offline preference losses beside DPO, on the same chosen/rejected pairs (dpo.py reads and collates them):

- `kto` (Ethayarajh et al., 2024): each answer on its own, judged against a reference point rather than against
  its pair: a chosen answer's loss is 1 - sigmoid(beta (r - z)), a rejected one's 1 - sigmoid(beta (z - r)), with
  r = log p(answer) - log p_ref(answer) and z the batch's mean log-ratio clamped at 0 and detached (the paper's
  estimate of KL(policy || reference); TRL pairs prompts with other examples' answers for it). Needs the same
  reference log-probabilities as DPO (computed once before the first step).
- `orpo` (Hong et al., 2024): no reference model at all: the chosen answers' cross-entropy per token plus
  beta x -log sigmoid(log odds(chosen) - log odds(rejected)), odds = p / (1 - p) of the answer's mean per-token
  probability (TRL's ORPOTrainer, its default beta 0.1). SFT and preference in one stage.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.config import TrainConfig
from tuneforge.data.tokenize import IGNORE_INDEX
from tuneforge.train.dpo import attach_reference, collate, load_dpo
from tuneforge.train.lm import token_logps
from tuneforge.train.tasks import Batch, Task, register


def kto_loss(model: Any, batch: Batch, train: TrainConfig) -> torch.Tensor:
    """The KTO loss of the batch's pairs (chosen as desirable, rejected as undesirable), summed over pairs."""
    logps = token_logps(model, batch)
    n = logps.size(0) // 2
    reference = batch.extra["reference"]
    chosen, rejected = logps[:n] - reference[:, 0], logps[n:] - reference[:, 1]
    z = torch.cat([chosen, rejected]).mean().clamp(min=0).detach()
    beta = train.dpo_beta
    return ((1 - torch.sigmoid(beta * (chosen - z))) + (1 - torch.sigmoid(beta * (z - rejected)))).sum()


def orpo_loss(model: Any, batch: Batch, train: TrainConfig) -> torch.Tensor:
    """The ORPO loss summed over the batch's pairs: the chosen answer's mean token cross-entropy plus beta times
    the odds-ratio term."""
    logps = token_logps(model, batch)
    tokens = (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1).clamp(min=1).to(logps.dtype)
    mean = (logps / tokens).clamp(max=-1e-6)  # log of the mean per-token probability; < 0 keeps log(1 - p) finite
    log_odds = mean - torch.log1p(-torch.exp(mean))
    n = logps.size(0) // 2
    ratio = F.logsigmoid(log_odds[:n] - log_odds[n:])
    return (-mean[:n] - train.dpo_beta * ratio).sum()


def _pair_length(pair: Any) -> int:
    return len(pair.chosen.input_ids) + len(pair.rejected.input_ids)


KTO = register(
    "kto",
    Task(
        load_dpo,
        collate,
        kto_loss,
        lambda p: 1.0,
        _pair_length,
        generative=False,
        setup=attach_reference,
        reads="preference",
    ),  # fmt: skip
)
ORPO = register(
    "orpo",
    Task(load_dpo, collate, orpo_loss, lambda p: 1.0, _pair_length, generative=False, reads="preference"),
)
