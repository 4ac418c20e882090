"""The `grpo` task: reinforcement learning with Group Relative Policy Optimization (Shao et al., 2024), the third
step of the RLHF phase.

Each optimizer step takes a batch of prompts; for each, the model as it is now samples `train.num_generations`
answers (`rollout`, outside autocast, on tuneforge's CPU generation path), each answer is rewarded (rewards.py:
a reward model, verifiable rewards or a weighted sum), and its advantage is its reward against its group's:
(r - mean) / (std + 1e-4), so no value model is needed. The loss of an answer token t is

    -A * exp(log p(t) - sg[log p(t)]) + beta * (exp(ref - log p(t)) - (ref - log p(t)) - 1)

(one policy update per sample, so the importance ratio is 1 and its gradient is that of log p; the second term is
the k3 estimate of KL(policy || start), with ref the starting model's log-probability: the base with the adapters
switched off, or a frozen copy for full/freeze). It is averaged over each answer's tokens, then over the group:
one loss unit per prompt (TRL's loss_type="grpo"). Reward, its parts, KL, answer length and entropy go to
metrics.jsonl per step; validation answers held-out prompts greedily and reports their mean reward.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuneforge.config import TrainConfig
from tuneforge.cpu.weight_packs import packed_weights
from tuneforge.data.records import Messages
from tuneforge.data.tokenize import IGNORE_INDEX, Encoded, encode_prompt
from tuneforge.errors import DataError
from tuneforge.generation import eos_ids
from tuneforge.train.lm import collate as collate_rows
from tuneforge.train.lm import labelled_logits
from tuneforge.train.parallel import unwrap
from tuneforge.train.rewards import RewardFn, combined_rewards, reward_functions
from tuneforge.train.tasks import Batch, Task, TaskContext, register, rows_with


@dataclass
class Policy:
    """What every prompt of a run shares: the tokenizer, the reward, and the starting model where the adapters
    cannot stand in for it."""

    tokenizer: Any
    rewards: dict[str, RewardFn]
    weights: dict[str, float]
    generations: int = 1  # answers sampled per prompt
    reference: Any | None = None
    stats: dict[str, list[float]] = field(default_factory=dict)  # this step's figures, emptied by `step_stats`


@dataclass
class Prompt:
    """A prompt to sample answers for: its messages, token ids (with the generation prompt) and reference answer."""

    messages: Messages
    input_ids: list[int]
    reference: str | None
    policy: Policy
    tokens: int  # the tokens its rollout trains on at most: (prompt + longest answer) x answers per prompt


_POLICIES: dict[str, Policy] = {}  # per run directory: the splits (and a resumed run) share one reward model


def load_grpo(path: Path, tokenizer: Any, context: TaskContext) -> list[Prompt]:
    """The prompts of a prepared chat split; a conversation ending with an answer gives that as the reference."""
    rows = rows_with(
        path,
        "messages",
        "chat examples",
        "train.task=grpo needs chat prompts (messages, alpaca, sharegpt or prompt/completion data; the answers, "
        "if any, are the references of rewards such as exact_match)",
    )
    key = str(context.run_dir.resolve())
    if key not in _POLICIES or _POLICIES[key].tokenizer is not tokenizer:
        train = context.train
        _POLICIES[key] = Policy(tokenizer, reward_functions(train), dict(train.rewards), train.num_generations)
    policy = _POLICIES[key]
    train = context.train
    prompts = []
    for row in rows:
        messages = row["messages"]
        answered = bool(messages) and messages[-1]["role"] == "assistant"
        prompt = messages[:-1] if answered else messages
        ids = encode_prompt(tokenizer, prompt)
        reference = messages[-1]["content"] if answered else None
        tokens = (len(ids) + train.max_completion_length) * train.num_generations
        prompts.append(Prompt(prompt, ids, reference, policy, tokens))
    compared = sorted(set(train.rewards) - {"model", "regex", "length"})  # the rewards that need a reference answer
    missing = sum(1 for p in prompts if p.reference is None)
    if compared and missing:
        raise DataError(
            f"{path}: {missing} of {len(prompts)} prompts have no reference answer, and train.rewards {compared} "
            "compare answers with one",
            "give every prompt its answer (chat rows ending with the assistant), or reward with model/regex/length",
        )
    return prompts


def longest_rows(prompt: Prompt, answers: int) -> list[Encoded]:
    """Stand-ins of the rows the prompt's rollout trains on: the prompt and an answer of the longest length allowed,
    `answers` times (what the memory check and the automatic batch size measure)."""
    budget = prompt.tokens // prompt.policy.generations - len(prompt.input_ids)
    answer = [prompt.input_ids[-1]] * budget
    return [Encoded(prompt.input_ids + answer, [IGNORE_INDEX] * len(prompt.input_ids) + answer)] * answers


def collate(prompts: list[Prompt], pad_id: int) -> Batch:
    """The prompts (`rollout` turns them into sampled answers before the loss), over stand-ins of the rows their
    rollouts will train on at most."""
    n = prompts[0].policy.generations
    batch = collate_rows([row for p in prompts for row in longest_rows(p, n)], pad_id)
    batch.n_loss, batch.examples = float(len(prompts)), prompts
    return batch


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """Each answer's reward against its group's (rows: prompts, columns: answers): (r - mean) / (std + 1e-4), with
    the sample standard deviation of the group's rewards, as TRL computes it; equal rewards give zero advantage."""
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, ddof=1, keepdims=True)
    return (rewards - mean) / (std + 1e-4)


@torch.no_grad()
def sample(
    model: Any, tokenizer: Any, prompts: list[list[int]], n: int, train: TrainConfig, greedy: bool = False
) -> list[list[int]]:
    """`n` sampled answers to each prompt (prompt-major order; `greedy`: the most likely one), each up to and
    including its end token."""
    rows = [p for p in prompts for _ in range(n)]
    width = max(len(p) for p in rows)
    pad = int(tokenizer.pad_token_id)
    device = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in rows], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
    ends = eos_ids(tokenizer)
    was_training = model.training
    model.eval()
    with packed_weights(model) as packs, packs.decode_rows(len(rows)):
        sampling = {"temperature": train.generation_temperature, "top_p": 1.0, "top_k": 0}
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=not greedy,
            **({"temperature": None, "top_p": None, "top_k": None} if greedy else sampling),
            max_new_tokens=train.max_completion_length,
            eos_token_id=sorted(ends),
            pad_token_id=pad,
        )
    model.train(was_training)
    answers = []
    for row in out[:, width:].tolist():
        end = next((i for i, t in enumerate(row) if t in ends), None)
        answers.append(row if end is None else row[: end + 1])
    return answers


GENERATION_ROWS = 64  # answers sampled in one generate call: a step's prompts together, in chunks of this many rows


def rollout(model: Any, batches: list[Batch], train: TrainConfig) -> list[Batch]:
    """Sample answers to the prompts of a step's micro-batches (all in one generation pass: a micro-batch holds few
    prompts where prompts are long, and generating them one micro-batch at a time ran at a quarter of the batch),
    reward them, give each its advantage; return the micro-batches the loss trains on (prompt + answer rows, labels
    on the answer), each with the prompts it came with."""
    prompts = [p for b in batches for p in b.examples]
    policy, n = prompts[0].policy, train.num_generations
    per_call = max(1, GENERATION_ROWS // n)
    answers: list[list[int]] = []
    for start in range(0, len(prompts), per_call):
        part = prompts[start : start + per_call]
        answers += sample(model, policy.tokenizer, [p.input_ids for p in part], n, train)
    advantages = _rewarded(prompts, answers, n, batches)
    out, at = [], 0
    for batch in batches:
        k = len(batch.examples)
        mine = answers[at * n : (at + k) * n]
        rows = [
            Encoded(p.input_ids + a, [IGNORE_INDEX] * len(p.input_ids) + a)
            for p, a in zip([p for p in batch.examples for _ in range(n)], mine, strict=True)
        ]
        done = collate_rows(rows, int(policy.tokenizer.pad_token_id))
        done.n_loss, done.filler, done.examples = float(k), batch.filler, batch.examples
        done.extra["advantage"] = torch.tensor(advantages[at * n : (at + k) * n], dtype=torch.float32)
        out.append(done)
        at += k
    return out


def _rewarded(prompts: list[Prompt], answers: list[list[int]], n: int, batches: list[Batch]) -> np.ndarray:
    """Every answer's advantage within its prompt's group (prompt-major), the step's rewards logged (filler batches'
    left out)."""
    policy = prompts[0].policy
    ends = eos_ids(policy.tokenizer)
    rewards = np.zeros((len(prompts), n))
    counted = [not b.filler for b in batches for _ in b.examples]
    for i, prompt in enumerate(prompts):
        group = answers[i * n : (i + 1) * n]
        texts = [policy.tokenizer.decode([t for t in a if t not in ends], skip_special_tokens=True) for a in group]
        total, parts = combined_rewards(
            policy.rewards, policy.weights, prompt.messages, texts, prompt.reference, [len(a) for a in group]
        )
        rewards[i] = total
        if counted[i]:
            for name, values in parts.items():
                policy.stats.setdefault(f"reward_{name}", []).extend(values.tolist())
            policy.stats.setdefault("reward", []).extend(total.tolist())
            policy.stats.setdefault("answer_tokens", []).extend(len(a) for a in group)
    return group_advantages(rewards).ravel()


@contextlib.contextmanager
def starting_model(model: Any, policy: Policy) -> Iterator[Any]:
    """The model training started from: the base with the adapters switched off, or the frozen copy."""
    if hasattr(model, "disable_adapter") and policy.reference is None:
        with model.disable_adapter():
            yield model
    else:
        yield policy.reference if policy.reference is not None else model


def loss_sum(model: Any, batch: Batch, train: TrainConfig) -> torch.Tensor:
    """The GRPO loss summed over the batch's prompts (each the mean of its answers' token-mean losses)."""
    policy: Policy = batch.examples[0].policy
    logits, targets, rows = labelled_logits(model, batch)
    logps = -F.cross_entropy(logits, targets, reduction="none")
    advantage = batch.extra["advantage"][rows]
    per_token = -advantage * torch.exp(logps - logps.detach())
    n_rows = batch.input_ids.size(0)
    counts = torch.zeros(n_rows, device=logps.device).index_add(0, rows, torch.ones_like(logps))
    with torch.no_grad():
        probs = torch.softmax(logits.detach(), dim=-1)
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
    kl = torch.zeros_like(logps)
    if train.grpo_beta > 0:
        with torch.no_grad(), starting_model(unwrap(model)[0], policy) as start:  # not through DDP's wrapper
            ref_logits, _, _ = labelled_logits(start, batch)
            ref = -F.cross_entropy(ref_logits, targets, reduction="none")
        diff = ref - logps
        kl = torch.exp(diff) - diff - 1
        per_token = per_token + train.grpo_beta * kl
    per_answer = torch.zeros(n_rows, device=logps.device).index_add(0, rows, per_token) / counts.clamp_min(1)
    if not batch.filler:
        policy.stats.setdefault("kl", []).extend(_per_answer(kl.detach(), rows, counts))
        policy.stats.setdefault("entropy", []).extend(_per_answer(entropy, rows, counts))
    return per_answer.sum() / train.num_generations


def _per_answer(values: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor) -> list[float]:
    sums = torch.zeros(counts.size(0), device=values.device).index_add(0, rows, values.float())
    return (sums / counts.clamp_min(1)).tolist()


def step_stats(examples: list[Prompt]) -> dict[str, float]:
    """The means of this step's figures (reward and its parts, KL, answer length, entropy), then forgets them."""
    if not examples:
        return {}
    stats = examples[0].policy.stats
    out = {name: round(float(np.mean(values)), 5) for name, values in sorted(stats.items()) if values}
    if stats.get("reward"):
        out["reward_std"] = round(float(np.std(stats["reward"])), 5)
    stats.clear()
    return out


def keep_reference(
    model: Any, splits: dict[str, list[Prompt]], context: TaskContext, device: str, pad_id: int, fresh: bool, log: Any
) -> None:
    """Keep a frozen copy of the starting model for the KL penalty where no adapter can be switched off (full and
    freeze training: twice the weights in memory). Runs before a resumed run restores its weights, so the copy is
    always the starting model."""
    prompts = splits.get("train") or []
    if not prompts or context.train.grpo_beta == 0 or hasattr(model, "disable_adapter"):
        return
    reference = copy.deepcopy(model).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    prompts[0].policy.reference = reference
    log("grpo: a frozen copy of the starting model is kept for the KL penalty (method full/freeze)")


@torch.no_grad()
def validate(model: Any, prompts: list[Prompt], train: TrainConfig, device: str) -> dict[str, float]:
    """The mean reward of greedy answers to the first train.grpo_eval_prompts validation prompts (val_loss: its
    negative, which early stopping follows)."""
    chosen = prompts[: train.grpo_eval_prompts]
    if not chosen:
        return {}
    policy = chosen[0].policy
    ends = eos_ids(policy.tokenizer)
    rewards, lengths = [], []
    for start in range(0, len(chosen), 8):
        part = chosen[start : start + 8]
        answers = sample(model, policy.tokenizer, [p.input_ids for p in part], 1, train, greedy=True)
        for prompt, answer in zip(part, answers, strict=True):
            text = policy.tokenizer.decode([t for t in answer if t not in ends], skip_special_tokens=True)
            total, _ = combined_rewards(
                policy.rewards, policy.weights, prompt.messages, [text], prompt.reference, [len(answer)]
            )
            rewards.append(float(total[0]))
            lengths.append(len(answer))
    mean = float(np.mean(rewards))
    return {
        "val_loss": round(-mean, 5),
        "val_reward": round(mean, 5),
        "val_answer_tokens": round(float(np.mean(lengths)), 2),
    }


GRPO = register(
    "grpo",
    Task(
        load_grpo,
        collate,
        loss_sum,
        lambda p: 1.0,
        lambda p: p.tokens,
        setup=keep_reference,
        rollout=rollout,
        validate=validate,
        stats=step_stats,
    ),
)
