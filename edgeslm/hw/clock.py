"""Time for the hardware layer: a monotonic clock and a scheduler of delayed calls, injected everywhere."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)
Clock = Callable[[], float]


class Handle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Runs `fn` about `delay_s` seconds from now on some thread; the handle cancels it."""

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Handle: ...


class _Entry:
    __slots__ = ("due", "seq", "fn", "cancelled")

    def __init__(self, due: float, seq: int, fn: Callable[[], None]):
        self.due, self.seq, self.fn, self.cancelled = due, seq, fn, False

    def __lt__(self, other: _Entry) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)

    def cancel(self) -> None:
        self.cancelled = True


class TimerThread:
    """One background thread runs every delayed call in due order (hold timers, pulses, debounce re-reads)."""

    def __init__(self, clock: Clock = time.monotonic, name: str = "edgeslm-timers"):
        self._clock = clock
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Handle:
        entry = _Entry(self._clock() + max(0.0, delay_s), next(self._seq), fn)
        with self._cond:
            heapq.heappush(self._heap, entry)
            self._cond.notify()
        return entry

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0].due > self._clock()):
                    wait = self._heap[0].due - self._clock() if self._heap else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                entry = heapq.heappop(self._heap)
            if not entry.cancelled:
                try:
                    entry.fn()
                except Exception:
                    log.exception("delayed call %r failed", entry.fn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)


class ManualScheduler:
    """The fake: a clock and delayed calls that move only when a test calls `advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[_Entry] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Handle:
        entry = _Entry(self.now + max(0.0, delay_s), next(self._seq), fn)
        heapq.heappush(self._heap, entry)
        return entry

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._heap and self._heap[0].due <= end:
            entry = heapq.heappop(self._heap)
            self.now = max(self.now, entry.due)
            if not entry.cancelled:
                entry.fn()
        self.now = end

    def close(self) -> None:
        self._heap.clear()
