"""The voice worker: presses start captures on one thread; a press while busy is ignored or queued."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeslm.errors import EdgeslmError, MicrophoneError
from edgeslm.events import EventBus
from edgeslm.hw.audio import AudioSource
from edgeslm.hw.gpio.board import StatusLeds
from edgeslm.voice.pipeline import VoicePipeline, VoiceResult

log = logging.getLogger(__name__)


@dataclass
class _Capture:
    trigger: str
    pin: int | None
    mode: str
    pressed_at: float
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def context(self) -> dict[str, Any]:
        return {"trigger": self.trigger, "pin": self.pin, "source": "microphone"}


class VoiceService:
    """Owns the capture thread. `press` never blocks: it starts, queues or ignores (and says which)."""

    def __init__(self, pipeline: VoicePipeline, source_factory: Callable[[], AudioSource], bus: EventBus,
                 leds: StatusLeds, *, busy_policy: str = "ignore", max_queued: int = 2,
                 clock: Callable[[], float] = time.monotonic):
        self.pipeline, self._source_factory, self.bus, self.leds = pipeline, source_factory, bus, leds
        self.busy_policy, self.max_queued, self._clock = busy_policy, max_queued, clock
        self._cond = threading.Condition()
        self._queue: deque[_Capture] = deque()
        self._current: _Capture | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="edgeslm-voice", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    def press(self, *, trigger: str, pin: int | None = None, mode: str = "press_to_start",
              pressed_at: float | None = None) -> str:
        """"started", "queued" or "ignored"; a push-to-talk press while busy is always ignored (nobody holds on)."""
        capture = _Capture(trigger, pin, mode, self._clock() if pressed_at is None else pressed_at)
        with self._cond:
            if self._closed:
                return "ignored"
            if not self.busy:
                outcome = "started"
            elif self.busy_policy == "queue" and mode != "push_to_talk" and len(self._queue) < self.max_queued:
                outcome = "queued"
            else:
                outcome = "ignored"
            if outcome != "ignored":
                self._queue.append(capture)
                self._cond.notify()
        if outcome != "started":
            self.bus.publish("busy", trigger=trigger, pin=pin, outcome=outcome, policy=self.busy_policy,
                             queued=len(self._queue))
        return outcome

    def release(self, pin: int | None) -> None:
        """A push-to-talk button came up: end that capture now."""
        with self._cond:
            current = self._current
        if current is not None and current.mode == "push_to_talk" and current.pin == pin:
            current.stop.set()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                capture = self._current = self._queue.popleft()
            try:
                report = self._capture(capture)
            finally:
                with self._cond:
                    self._current = None
            report()  # after the service is free again, so a listener may press as soon as it sees the result

    def _capture(self, capture: _Capture) -> Callable[[], None]:
        self.bus.publish("listening", trigger=capture.trigger, pin=capture.pin, mode=capture.mode)
        self.leds.busy(+1)
        try:
            result = self.pipeline.listen(self._source_factory(), pressed_at=capture.pressed_at, stop=capture.stop,
                                          context=capture.context)
            return lambda: self.publish_result(result, capture.context)
        except MicrophoneError as exc:
            return self._error(exc.code, exc.message, "microphone", capture.context)
        except EdgeslmError as exc:
            return self._error(exc.code, exc.message, "voice", capture.context)
        except Exception as exc:
            log.exception("voice pipeline failed")
            return self._error("internal_error", f"{type(exc).__name__}: {exc} (the log has the traceback)",
                               "voice", capture.context)
        finally:
            self.leds.busy(-1)

    def _error(self, code: str, message: str, source: str, context: dict[str, Any]) -> Callable[[], None]:
        log.error("voice: %s", message)
        self.leds.show_error()
        return lambda: self.bus.publish("error", **{**context, "code": code, "message": message, "source": source})

    def publish_result(self, result: VoiceResult, context: dict[str, Any]) -> None:
        data = {**context, **result.event_data()}
        if result.status == "intent":
            self.leds.succeeded()
            self.bus.publish("intent", **data)
        else:
            self.bus.publish("no_match", **data)

    def run_upload(self, samples: np.ndarray, *, act: bool = True) -> VoiceResult:
        """An uploaded clip through VAD -> speech -> intent -> action (blocks; waits for a capture in progress)."""
        context = {"trigger": None, "pin": None, "source": "upload"}
        self.leds.busy(+1)
        try:
            result = self.pipeline.run_on_audio(samples, context=context, act=act)
        finally:
            self.leds.busy(-1)
        self.publish_result(result, context)
        return result

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            if self._current is not None:
                self._current.stop.set()
            self._cond.notify_all()
        self._thread.join(timeout=10)
