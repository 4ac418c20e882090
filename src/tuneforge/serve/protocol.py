"""OpenAI-compatible request and response schemas (the subset tuneforge serves)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

# torch.manual_seed takes -2**63 .. 2**64-1; a signed 64-bit integer is the clear part of that (vLLM bounds it so too)
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def _unicode(text: str) -> str:
    """Refuse lone surrogates: JSON's \\ud800 escapes decode to them, and no tokenizer or UTF-8 response takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"holds a lone surrogate at character {exc.start}: not Unicode text; send UTF-8 text"
        ) from None
    return text


def _unicode_strings(value: str | list[str] | list[TextPart] | None) -> str | list[str] | list[TextPart] | None:
    """A union field's strings checked by _unicode after the union is settled (its error then names the field alone,
    not each member of the union)."""
    for text in [value] if isinstance(value, str) else value or []:
        if isinstance(text, str):
            _unicode(text)
    return value


Text = Annotated[str, AfterValidator(_unicode)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    _content_is_unicode = field_validator("content")(_unicode_strings)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class RagOptions(BaseModel):
    """tuneforge's extension of a chat request (the openai client sends it with extra_body={"rag": {...}})."""

    model_config = ConfigDict(extra="forbid")

    filter: Text | None = Field(None, description="Metadata filter, e.g. \"price < 12 and colour = 'red'\".")
    top_k: int | None = Field(None, ge=1, le=100, description="Passages given to the model (default: rag.top_k).")


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI parameters (user, metadata, ...) are accepted and ignored, as the OpenAI API does.
    model_config = ConfigDict(extra="ignore")

    model: Text
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="A signed 64-bit integer.")
    stop: str | list[str] | None = None
    rag: RagOptions | bool | None = Field(
        None, description="tuneforge: false answers without retrieval; options for this request's retrieval."
    )

    _stop_is_unicode = field_validator("stop")(_unicode_strings)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Citation(BaseModel):
    """A retrieved passage given to the model (tuneforge's extension of the response: `citations`)."""

    index: int
    source: str  # path:first-last line, or table.csv#row
    path: str
    start_line: int
    end_line: int
    title: str | None
    score: float
    similarity: float | None
    metadata: dict[str, Any]
    text: str
    cited: bool  # the answer names it as [index]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    citations: list[Citation] | None = None
    classification: dict[str, Any] | None = None  # a classifier's answer: {"label", "probabilities"}


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    citations: list[Citation] | None = None  # on the first chunk, when the answer uses retrieval
    classification: dict[str, Any] | None = None  # on the last chunk, when a classifier answers


class TextsRequest(BaseModel):
    """A request for a model and one or more texts (embeddings, classifications)."""

    model_config = ConfigDict(extra="ignore")

    model: Text
    input: Text | list[Text] = Field(description="A text or a list of texts (token arrays are not supported).")

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts or any(not t for t in texts):
            raise ValueError("input must hold at least one text, and no empty string")
        if len(texts) > 2048:
            raise ValueError(f"at most 2048 texts per request, got {len(texts)}")
        return value


class EmbeddingRequest(TextsRequest):
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneforge"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class FileObject(BaseModel):
    """An uploaded file, as OpenAI's files API returns it (status_details: the validation's findings)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    """One page of files (cursor pagination: pass last_id as `after` for the next page while has_more)."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


class ClassificationRequest(TextsRequest):
    """Texts to classify with a classifier run."""


class ClassificationOut(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    label: str
    probabilities: dict[str, float]


class ClassificationList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[ClassificationOut]
    usage: EmbeddingUsage
