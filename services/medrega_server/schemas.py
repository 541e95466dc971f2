"""OpenAI chat-completion request and response bodies, as far as MedRegA clients use them.

Unknown request fields are accepted and ignored (OpenAI clients send many: `top_p`, `seed`,
`presence_penalty`, …) — except the ones whose meaning we can't honour (`stream: true`, `n > 1`),
which the app refuses explicitly. Response shapes follow OpenAI exactly so that any OpenAI
client library parses them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str
    detail: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["image_url"]
    image_url: ImageURL | str  # some clients send the URL as a bare string


ContentPart = TextPart | ImagePart


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)  # accepted, answers are not cut (tokens.py)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None  # ignored: answers are deterministic
    stream: bool | None = False
    n: int | None = Field(default=1, ge=1)
    # Extension (send with the OpenAI client's `extra_body`): millimetres per pixel of the image
    # as sent, (row, column). Lesion sizes in the report need it; PNGs don't carry it.
    pixel_spacing_mm: tuple[float, float] | None = None

    @field_validator("pixel_spacing_mm")
    @classmethod
    def _positive(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not all(0 < v < 100 for v in value):
            raise ValueError("pixel spacing must be two positive millimetre values")
        return value


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def error_body(
    message: str, type_: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
