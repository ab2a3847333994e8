"""Where an utterance starts and ends, from per-frame speech probabilities (no audio, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeslm.config import VadConfig

Verdict = Literal["speech_ended", "max_length", "no_speech"]


@dataclass(frozen=True)
class UtteranceRules:
    """Frame counts derived from [voice.vad] at one frame length."""

    threshold: float
    release_threshold: float  # below it a frame is silence; between the two the state holds
    min_speech_frames: int
    min_silence_frames: int
    pad_frames: int
    max_frames: int
    no_speech_frames: int

    @classmethod
    def from_config(cls, vad: VadConfig, max_seconds: float, frame_s: float) -> UtteranceRules:
        def frames(seconds: float) -> int:
            return max(1, round(seconds / frame_s))

        return cls(threshold=vad.threshold, release_threshold=max(0.01, vad.threshold - 0.15),
                   min_speech_frames=frames(vad.min_speech_ms / 1000),
                   min_silence_frames=frames(vad.min_silence_ms / 1000),
                   pad_frames=round(vad.speech_pad_ms / 1000 / frame_s), max_frames=frames(max_seconds),
                   no_speech_frames=frames(vad.no_speech_timeout_s))


class UtteranceTracker:
    """Feed one probability per frame; `push` says when the utterance is over and why.

    Speech starts after `min_speech_frames` frames at or above `threshold` in a row; it ends
    after `min_silence_frames` frames below `release_threshold` in a row, or at `max_frames`.
    Without speech by `no_speech_frames`, the verdict is no_speech.
    """

    def __init__(self, rules: UtteranceRules):
        self.rules = rules
        self.frames = 0
        self.start: int | None = None  # first speech frame
        self.end: int | None = None  # one past the last speech frame
        self._run = 0
        self._silence = 0

    @property
    def speaking(self) -> bool:
        return self.start is not None

    def push(self, probability: float) -> Verdict | None:
        r = self.rules
        index = self.frames
        self.frames += 1
        if probability >= r.threshold:
            self._silence = 0
            self._run += 1
            if self.start is None and self._run >= r.min_speech_frames:
                self.start = index - self._run + 1
        elif probability < r.release_threshold:
            self._run = 0
            if self.start is not None:
                self._silence += 1
                if self._silence >= r.min_silence_frames:
                    self.end = index - self._silence + 1
                    return "speech_ended"
        if self.frames >= r.max_frames:
            if self.start is None:
                return "no_speech"
            self.end = self.frames - self._silence
            return "max_length"
        if self.start is None and self.frames >= r.no_speech_frames:
            return "no_speech"
        return None
