"""OpenAI-compatible bodies of /v1/completions and /v1/chat/completions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeslm.server.schemas import OpenAIRequest


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = Field(False, description="send a last chunk with the token usage")


class SamplingFields(OpenAIRequest):
    """Fields both endpoints share."""

    model: str | None = Field(None, description="model name; default: the first loaded model that generates")
    max_tokens: int | None = Field(None, ge=1, description="most tokens to generate")
    temperature: float = Field(1.0, ge=0, le=2, description="0 is greedy; higher is more random")
    top_p: float = Field(1.0, gt=0, le=1, description="sample from the smallest set of tokens holding this much "
                         "probability")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens only (0: off)")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="above 1 discourages tokens already seen")
    frequency_penalty: float = Field(0.0, description="not supported: only 0 is accepted; use repetition_penalty")
    presence_penalty: float = Field(0.0, description="not supported: only 0 is accepted; use repetition_penalty")
    stop: str | list[str] | None = Field(None, description="up to 4 strings; generation ends before the first")
    seed: int | None = Field(None, description="makes sampling reproducible")
    ignore_eos: bool = Field(False, description="keep generating past the end-of-turn token (benchmarks)")
    n: int = Field(1, ge=1, le=1, description="completions per prompt (only 1)")
    stream: bool = Field(False, description="send server-sent events as tokens arrive, then data: [DONE]")
    stream_options: StreamOptions | None = None
    logprobs: Any = Field(None, description="not supported: leave it out")


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] = Field(description="the text to continue (one prompt, or token ids)")
    echo: bool = Field(False, description="not supported: only false")
    suffix: str | None = Field(None, description="not supported: leave it out")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None


class ChatRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, description="the conversation so far")
    max_completion_tokens: int | None = Field(None, ge=1, description="same as max_tokens (newer clients send this)")


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Envelope(BaseModel):
    id: str
    created: int = Field(description="Unix time")
    model: str
    usage: UsageOut


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class CompletionResponse(Envelope):
    """With "stream": true, the same fields arrive as server-sent events (text deltas), then data: [DONE]."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatResponse(Envelope):
    """With "stream": true: chat.completion.chunk events with choices[0].delta, then data: [DONE]."""

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
