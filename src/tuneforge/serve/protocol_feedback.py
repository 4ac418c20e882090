"""Schemas of tuneforge's own feedback routes: rewards of (prompt, answer) pairs from a served reward model, and the
annotation page's items and judgements."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RewardInput(BaseModel):
    """One answer to score and the prompt it replies to (text, or the conversation as messages)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[dict[str, Any]] = Field(min_length=1)
    answer: str = Field(min_length=1)

    @field_validator("prompt")
    @classmethod
    def _messages(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, list) and not all(isinstance(m.get("content"), str) and m.get("role") for m in value):
            raise ValueError("each prompt message needs a role and a text content")
        return value


class RewardRequest(BaseModel):
    model: str = Field(min_length=1)
    input: list[RewardInput] = Field(min_length=1, max_length=256)


class RewardOut(BaseModel):
    object: Literal["reward"] = "reward"
    index: int
    reward: float


class RewardList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[RewardOut]


class AnnotationItem(BaseModel):
    """The next prompt for an annotator, with its two answers in the order they see them."""

    item: str | None = Field(None, description="null once every prompt is judged")
    prompt: list[dict[str, Any]] = Field(default_factory=list)
    left: str = ""
    right: str = ""
    done: int
    total: int
    model: str


class Judgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: str = Field(min_length=1, max_length=64)
    annotator: str = Field(min_length=1, max_length=100, pattern=r"\S")
    judgement: Literal["left", "right", "tie", "both_bad", "skip"]


class JudgementSaved(BaseModel):
    saved: bool
    done: int
    total: int
