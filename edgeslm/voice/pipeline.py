"""One utterance through the stages: frames -> VAD -> speech (streamed) -> intent -> action, each timed."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeslm.config import IntentConfig
from edgeslm.hw.audio import AudioSource
from edgeslm.tasks.vad import FRAME_SAMPLES, SAMPLE_RATE, SileroVad
from edgeslm.voice.actions import ActionRunner
from edgeslm.voice.intents import ClassifierIntents, SimilarityIntents
from edgeslm.voice.speech import PhraseRecognizer
from edgeslm.voice.utterance import UtteranceRules, UtteranceTracker

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
FIRST_AUDIO_TIMEOUT_S = 3.0


@dataclass
class VoiceResult:
    """What one utterance gave; `latency_ms` has one entry per stage (see README, Voice commands)."""

    status: str  # "intent" | "no_match"
    reason: str | None = None  # no_speech | not_a_phrase | low_score | extra_speech | low_confidence
    transcript: str = ""
    intent: str | None = None
    confidence: float | None = None
    frame_score: float | None = None
    word_coverage: float | None = None  # share of the heard speech the phrase's words span
    top: list[dict[str, Any]] = field(default_factory=list)
    ended_by: str | None = None  # speech_ended | max_length | released | no_speech | end_of_audio
    audio_ms: float = 0.0
    speech_audio_ms: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)

    def event_data(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("status", "actions")}
        data["frame_score"] = None if self.frame_score is None or not np.isfinite(self.frame_score) \
            else round(self.frame_score, 3)
        data["word_coverage"] = None if self.word_coverage is None else round(self.word_coverage, 3)
        data["latency_ms"] = {k: round(v, 3) for k, v in self.latency_ms.items()}
        return data


class _Stopwatch:
    """Sums the time spent in one stage across many short calls."""

    def __init__(self, clock: Callable[[], float]):
        self.clock, self.total = clock, 0.0

    def __enter__(self) -> _Stopwatch:
        self._t = self.clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.total += self.clock() - self._t


class VoicePipeline:
    """Runs utterances one at a time (the VAD state and the decoder belong to one stream)."""

    def __init__(self, vad: SileroVad, recognizer: PhraseRecognizer, resolver: ClassifierIntents | SimilarityIntents,
                 intents: Sequence[IntentConfig], runner: ActionRunner, rules: UtteranceRules, *,
                 min_frame_score: float, min_confidence: float, min_word_coverage: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.vad, self.recognizer, self.resolver, self.runner, self.rules = vad, recognizer, resolver, runner, rules
        self.actions = {intent.name: intent.action for intent in intents}
        self.min_frame_score, self.min_confidence = min_frame_score, min_confidence
        self.min_word_coverage = min_word_coverage
        self.clock = clock
        self.lock = threading.Lock()

    def listen(self, source: AudioSource, *, pressed_at: float, stop: threading.Event,
               context: dict[str, Any]) -> VoiceResult:
        """Capture from `source` until the utterance ends (or `stop` is set), then finish it. Raises MicrophoneError."""
        with self.lock:
            source.start()
            started = self.clock()
            try:
                def frames() -> Iterator[np.ndarray]:
                    while not stop.is_set():
                        frame = source.read(FRAME_SAMPLES, FIRST_AUDIO_TIMEOUT_S)
                        if frame is None:
                            return
                        yield frame

                result, ended_at, speech = self._stream(frames(), stop)
            finally:
                source.stop()
            first = source.first_audio_at
            result.latency_ms.update(capture_start=(started - pressed_at) * 1000)
            if first is not None:
                result.latency_ms.update(first_audio=(first - pressed_at) * 1000, capture=(ended_at - first) * 1000)
            return self._finish(result, speech, ended_at, pressed_at, context, act=True)

    def run_on_audio(self, samples: np.ndarray, *, context: dict[str, Any], act: bool = True) -> VoiceResult:
        """The same stages on audio already in memory (an upload); the clip's end also ends the utterance."""
        with self.lock:
            started = self.clock()
            usable = len(samples) - len(samples) % FRAME_SAMPLES
            frames = iter(samples[:usable].reshape(-1, FRAME_SAMPLES))
            result, ended_at, speech = self._stream(frames, None)
            return self._finish(result, speech, ended_at, started, context, act=act)

    def _stream(self, frames: Iterator[np.ndarray], stop: threading.Event | None
                ) -> tuple[VoiceResult, float, np.ndarray | None]:
        """VAD over the frames until the utterance ends: the result so far, when it ended, and the speech with
        `pad_frames` of audio each side (None without speech) for the recogniser."""
        rules = self.rules
        tracker = UtteranceTracker(rules)
        preroll: deque[np.ndarray] = deque(maxlen=rules.pad_frames + rules.min_speech_frames)
        kept: list[np.ndarray] = []  # from the first pre-roll frame on, once speech has started
        first = 0  # the frame index of kept[0]
        vad_time = _Stopwatch(self.clock)
        self.vad.reset()
        verdict = None
        for frame in frames:
            with vad_time:
                probability = self.vad.probability(frame)
            verdict = tracker.push(probability)
            if kept:
                kept.append(frame)
            else:
                preroll.append(frame)
                if tracker.speaking:
                    first = tracker.frames - len(preroll)
                    kept.extend(preroll)
            if verdict is not None:
                break
        ended_at = self.clock()
        if verdict is None:
            verdict = "released" if stop is not None and stop.is_set() else "end_of_audio"
            if not tracker.speaking:
                verdict = "no_speech"
        result = VoiceResult(status="no_match", ended_by=verdict, audio_ms=tracker.frames * FRAME_S * 1000)
        result.latency_ms["vad"] = vad_time.total * 1000
        speech = None
        if tracker.start is not None and kept:
            end = tracker.end if tracker.end is not None else tracker.frames
            result.speech_audio_ms = (end - tracker.start) * FRAME_S * 1000
            lo = max(0, tracker.start - rules.pad_frames - first)
            speech = np.concatenate(kept[lo:end + rules.pad_frames - first])
        if verdict == "no_speech" or speech is None:
            result.reason = "no_speech"
        return result, ended_at, speech

    def _finish(self, result: VoiceResult, speech: np.ndarray | None, ended_at: float, origin: float,
                context: dict[str, Any], *,
                act: bool) -> VoiceResult:
        if result.reason is None and speech is not None:
            t0 = self.clock()
            heard = self.recognizer.transcribe(speech)
            t1 = self.clock()
            result.latency_ms["speech"] = (t1 - t0) * 1000
            result.transcript, result.frame_score = heard.text, heard.frame_score
            if heard.words_ms is not None and result.speech_audio_ms > 0:
                result.word_coverage = heard.words_ms / result.speech_audio_ms
            if not heard.complete:
                result.reason = "not_a_phrase"
            elif heard.frame_score < self.min_frame_score:
                result.reason = "low_score"
            elif result.word_coverage is not None and result.word_coverage < self.min_word_coverage:
                result.reason = "extra_speech"
            else:
                guess = self.resolver.resolve(heard.text)
                result.latency_ms["intent"] = (self.clock() - t1) * 1000
                result.intent, result.confidence, result.top = guess.intent, round(guess.confidence, 6), guess.top
                if guess.confidence < self.min_confidence:
                    result.reason = "low_confidence"
                else:
                    result.status = "intent"
        if result.status == "intent" and act and result.intent is not None:
            t2 = self.clock()
            context = {**context, "intent": result.intent, "transcript": result.transcript}
            result.actions = self.runner.run_all(self.actions.get(result.intent, ()), context)
            result.latency_ms["action"] = (self.clock() - t2) * 1000
        done = self.clock()
        result.latency_ms["after_speech"] = (done - ended_at) * 1000
        result.latency_ms["total"] = (done - origin) * 1000
        return result
