"""The GPIO backend contract, pin events, and the debounced button every backend shares."""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from edgeslm.errors import NotMockError
from edgeslm.hw.clock import Clock, Handle, Scheduler

Pull = Literal["up", "down", "off"]
LevelCallback = Callable[[int, float], None]  # (level 0/1, monotonic seconds)


class GpioBackend(abc.ABC):
    """Pins by BCM number on one board.

    A subclass must implement `setup_input` (call `on_change(level, t)` from any thread on
    every level change, t from the injected monotonic clock), `setup_output`, `write`, `read`
    and `close`. It may use `bounce_ms` for hardware filtering; the Button above it debounces
    in software anyway. Only the mock backend implements `drive` (a simulated press).
    """

    name: ClassVar[str] = "?"

    @abc.abstractmethod
    def setup_input(self, pin: int, pull: Pull, bounce_ms: float, on_change: LevelCallback) -> None:
        """Claim `pin` as an input with `pull` and report its level changes."""

    @abc.abstractmethod
    def setup_output(self, pin: int, level: int) -> None:
        """Claim `pin` as an output driven to `level`."""

    @abc.abstractmethod
    def write(self, pin: int, level: int) -> None: ...

    @abc.abstractmethod
    def read(self, pin: int) -> int: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Release every claimed pin. Safe to call twice."""

    def drive(self, pin: int, level: int) -> None:
        raise NotMockError(f"the {self.name} backend drives real pins; simulated presses need gpio.backend = "
                           "\"mock\"", param="pin")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


@dataclass(frozen=True)
class PinEvent:
    """A debounced button event; `t_s` is monotonic seconds, `held_s` how long the button was down."""

    pin: int
    kind: Literal["press", "release", "hold"]
    t_s: float
    held_s: float = 0.0


class Button:
    """Turns raw level changes into press / release / hold, debounced in software.

    An edge within `bounce_s` of the last accepted one is bounce; when the lock-out ends the
    pin is read again so a real change hidden in the bounce is not lost.
    """

    def __init__(self, pin: int, *, active_level: int, bounce_s: float, hold_s: float, read: Callable[[], int],
                 scheduler: Scheduler, clock: Clock, on_event: Callable[[PinEvent], None]):
        self.pin, self.active_level = pin, active_level
        self.bounce_s, self.hold_s = bounce_s, hold_s
        self._read, self._scheduler, self._clock, self._emit = read, scheduler, clock, on_event
        self._lock = threading.Lock()
        self._level = read()
        self._last_edge = float("-inf")
        self._pressed_at: float | None = None
        self._hold: Handle | None = None
        self._recheck: Handle | None = None

    @property
    def pressed(self) -> bool:
        return self._level == self.active_level

    def on_level(self, level: int, t_s: float) -> None:
        events: list[PinEvent] = []
        with self._lock:
            if level == self._level:
                return
            if t_s - self._last_edge < self.bounce_s:
                if self._recheck is None:
                    self._recheck = self._scheduler.call_later(self._last_edge + self.bounce_s - t_s, self._settle)
                return
            events = self._accept(level, t_s)
        for event in events:
            self._emit(event)

    def _settle(self) -> None:
        events: list[PinEvent] = []
        with self._lock:
            self._recheck = None
            level = self._read()
            if level != self._level:
                events = self._accept(level, self._clock())
        for event in events:
            self._emit(event)

    def _accept(self, level: int, t_s: float) -> list[PinEvent]:
        self._level, self._last_edge = level, t_s
        if level == self.active_level:
            self._pressed_at = t_s
            if self.hold_s > 0:
                self._hold = self._scheduler.call_later(self.hold_s, self._held)
            return [PinEvent(self.pin, "press", t_s)]
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        held = t_s - self._pressed_at if self._pressed_at is not None else 0.0
        self._pressed_at = None
        return [PinEvent(self.pin, "release", t_s, held)]

    def _held(self) -> None:
        with self._lock:
            self._hold = None
            if self._pressed_at is None or not self.pressed:
                return
            now = self._clock()
            event = PinEvent(self.pin, "hold", now, now - self._pressed_at)
        self._emit(event)

    def close(self) -> None:
        with self._lock:
            for handle in (self._hold, self._recheck):
                if handle is not None:
                    handle.cancel()
            self._hold = self._recheck = None
