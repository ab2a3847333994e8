"""Bodies of the edge endpoints (GPIO, voice), for validation and /openapi.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PressRequest(BaseModel):
    """A simulated press of a trigger pin (mock backend)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    hold_ms: float = Field(100.0, ge=0, le=60_000, description="how long the button stays down, milliseconds")


class PressAnswer(BaseModel):
    pin: int
    pressed: bool
    hold_ms: float


class PinState(BaseModel):
    pin: int = Field(description="BCM number")
    name: str
    level: int = Field(description="electrical level, 0 or 1")
    on: bool | None = Field(None, description="outputs: on, honouring active_high")
    pressed: bool | None = Field(None, description="triggers: pressed, honouring edge")


class GpioStatus(BaseModel):
    backend: str | None = Field(description="lgpio, rpigpio, mock, or null when no backend runs")
    triggers: list[PinState]
    outputs: list[PinState]


class VoiceAnswer(BaseModel):
    """What POST /v1/audio/intent heard and did (the `intent` / `no_match` event carries the same fields)."""

    status: str = Field(description="intent or no_match")
    reason: str | None = Field(None, description="no_match: no_speech, not_a_phrase, low_score, extra_speech or "
                                                 "low_confidence")
    transcript: str
    intent: str | None
    confidence: float | None = Field(None, description="the intent's score, 0..1")
    frame_score: float | None = Field(None, description="recogniser fit, mean log score per frame (0 = perfect)")
    word_coverage: float | None = Field(None, description="share of the heard speech the recognised phrase spans")
    latency_ms: dict[str, float] = Field(description="milliseconds per stage: vad, speech, intent, "
                                                     "action, after_speech, total")
    actions: list[dict[str, Any]] = Field(description="what each action did (empty with ?act=false)")
