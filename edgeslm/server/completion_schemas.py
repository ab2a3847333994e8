"""OpenAI-compatible bodies of /v1/completions and /v1/chat/completions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# OpenAI request fields edgeslm does not implement -> what they ask for. Sent with a value, one is a 400 naming it:
# ignoring `tools` or a JSON `response_format` would quietly answer a different question than the one asked.
UNSUPPORTED_FIELDS: dict[str, str] = {
    "tools": "tool calling", "tool_choice": "tool calling", "parallel_tool_calls": "tool calling",
    "functions": "function calling", "function_call": "function calling",
    "response_format": 'structured output (JSON mode, JSON schema); only {"type": "text"} is accepted',
    "logit_bias": "logit bias", "top_logprobs": "log probabilities", "best_of": "best-of sampling",
    "modalities": "output other than text", "audio": "audio", "prediction": "predicted outputs",
    "reasoning_effort": "reasoning", "web_search_options": "web search", "service_tier": "service tiers",
    "store": "stored completions",
    # message fields
    "tool_calls": "tool calling", "tool_call_id": "tool calling", "refusal": "refusals", "annotations": "annotations",
}
# Values that mean "not asked for": clients that serialise every field they have (an SDK message's model_dump(),
# frameworks with full parameter objects) send these, and they ask for nothing edgeslm lacks.
_UNSET: tuple[Any, ...] = (None, False, [], {})
_DEFAULTS: dict[str, tuple[Any, ...]] = {"response_format": ({"type": "text"},), "modalities": (["text"],),
                                         "best_of": (1,), "service_tier": ("auto", "default")}


def _unset(name: str, value: Any) -> bool:
    return value in _UNSET or value in _DEFAULTS.get(name, ())


class OpenAIBody(BaseModel):
    """extra="forbid": a field edgeslm does not know is a 400 naming it, as the README promises.

    A field of UNSUPPORTED_FIELDS whose value asks for nothing (null, false, [], {} or its OpenAI default) is
    dropped before validation; any other value of it is refused (completions.py words the error).
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_unset_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict) and not UNSUPPORTED_FIELDS.keys().isdisjoint(data):
            return {k: v for k, v in data.items() if not (k in UNSUPPORTED_FIELDS and _unset(k, v))}
        return data


class StreamOptions(OpenAIBody):
    include_usage: bool = Field(False, description="send a last chunk with the token usage")
    include_obfuscation: bool = Field(True, description="accepted and ignored: edgeslm adds no obfuscation padding")


class SamplingFields(OpenAIBody):
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
    seed: int | None = Field(None, ge=0, description="makes sampling reproducible (any integer from 0)")
    ignore_eos: bool = Field(False, description="keep generating past the end-of-turn token (benchmarks)")
    n: int = Field(1, ge=1, le=1, description="completions per prompt (only 1)")
    stream: bool = Field(False, description="send server-sent events as tokens arrive, then data: [DONE]")
    stream_options: StreamOptions | None = None
    logprobs: Any = Field(None, description="not supported: leave it out")
    # Accepted and ignored: labels for the caller's own bookkeeping that change nothing in the answer.
    user: str | None = Field(None, description="accepted and ignored: an end-user id for the caller's logs")
    metadata: dict[str, str] | None = Field(None, description="accepted and ignored: key-value tags")


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] = Field(description="the text to continue (one prompt, or token ids)")
    echo: bool = Field(False, description="not supported: only false")
    suffix: str | None = Field(None, description="not supported: leave it out")


class TextPart(OpenAIBody):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBody):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, description="accepted and ignored: the chat template has no place for names")


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
