"""An in-process event bus: publishers never block; each subscriber has a bounded queue that drops its oldest."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Kinds published by edgeslm (GET /v1/events documents each).
KINDS = ("button", "listening", "intent", "no_match", "busy", "action", "event", "classify", "error", "model")


def parse_kinds(text: str) -> list[str]:
    """The kinds of a comma-separated filter ("intent, no_match"); ValueError naming any unknown one and the
    valid ones, because a filter that matches nothing streams silence."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kind(s) {', '.join(map(repr, unknown))}; valid kinds: {', '.join(KINDS)}")
    return kinds


@dataclass(frozen=True)
class Event:
    """One event: a sequence id (SSE `id`), its kind, wall-clock time (unix seconds) and JSON-able data."""

    id: int
    kind: str
    time: float
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "time": round(self.time, 6), **self.data}


class Subscription:
    """A subscriber's bounded queue; a full queue drops the oldest event and counts it."""

    def __init__(self, bus: EventBus, kinds: frozenset[str] | None, max_queue: int, wake: Callable[[], None] | None):
        self._bus, self.kinds, self.max_queue, self._wake = bus, kinds, max_queue, wake
        self._queue: deque[Event] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def wants(self, event: Event) -> bool:
        return self.kinds is None or event.kind in self.kinds

    def offer(self, event: Event) -> None:
        with self._cond:
            if self.closed:
                return
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            self._cond.notify()
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None:
            try:
                self._wake()
            except RuntimeError:  # the subscriber's event loop is gone
                pass

    def drain(self) -> list[Event]:
        """Every queued event, oldest first, without waiting."""
        with self._cond:
            events = list(self._queue)
            self._queue.clear()
            return events

    def take_dropped(self) -> int:
        with self._cond:
            count, self.dropped = self.dropped, 0
            return count

    def get(self, timeout_s: float | None = None) -> Event | None:
        """The next event (blocking up to timeout_s); None on time-out or once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self.closed, timeout_s)
            return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._notify()
        self._bus.unsubscribe(self)


class EventBus:
    """Thread-safe publish from anywhere (GPIO callbacks, the voice worker, HTTP handlers); keeps recent history."""

    def __init__(self, *, history: int = 256, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self._history: deque[Event] = deque(maxlen=history)
        self.closed = False

    def publish(self, kind: str, **data: Any) -> Event:
        with self._lock:
            event = Event(next(self._ids), kind, self._clock(), data)
            self._history.append(event)
            targets = [s for s in self._subscribers if s.wants(event)]
        for subscription in targets:
            subscription.offer(event)
        log.debug("event %s %s", kind, data)
        return event

    def subscribe(self, *, kinds: Iterable[str] | None = None, since: int | None = None, max_queue: int = 256,
                  wake: Callable[[], None] | None = None) -> Subscription:
        """A new subscription; with `since`, kept events after that id are queued first."""
        subscription = Subscription(self, frozenset(kinds) if kinds else None, max_queue, wake)
        with self._lock:
            if self.closed:
                subscription.closed = True
                return subscription
            if since is not None:
                for event in self._history:
                    if event.id > since and subscription.wants(event):
                        subscription.offer(event)
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """Wake and end every subscription (the daemon is stopping)."""
        with self._lock:
            self.closed = True
            subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription.close()
