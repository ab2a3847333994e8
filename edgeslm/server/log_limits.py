"""Log lines a client can cause at will, limited so a looping client cannot flood the journal (or the SD card).

A buggy script that sends malformed HTTP in a loop, or a cron job that opens a connection a second,
would otherwise write one line per attempt. Each message kind (logger and message template) may log
`burst` lines per `window_s`; past that its lines are counted, and the first line of the kind after
the window closes says how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

# Loggers whose lines a local client triggers: uvicorn's "Invalid HTTP request received.", our
# per-connection "connection from ..." and "refused connection from ...".
CLIENT_TRIGGERED = ("uvicorn.error", "edgeslm.server.access")


class _Window:
    __slots__ = ("start", "logged", "left_out")

    def __init__(self, start: float):
        self.start, self.logged, self.left_out = start, 0, 0


class RepeatLimit(logging.Filter):
    """At most `burst` records per message kind per `window_s`; then a count of those left out."""

    def __init__(self, burst: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._windows: dict[tuple[str, object], _Window] = {}  # message templates are few: this stays small
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        key = (record.name, record.msg)
        with self._lock:
            window = self._windows.get(key)
            note = ""
            if window is None or now - window.start >= self.window_s:
                if window is not None and window.left_out:
                    note = f" [{window.left_out} more like this were not logged in the {self.window_s:g} s before]"
                window = self._windows[key] = _Window(now)
            if window.logged >= self.burst:
                window.left_out += 1
                return False
            window.logged += 1
            if window.logged == self.burst:
                note += f" [{self.burst} like this within {self.window_s:g} s: more are counted, not logged, " \
                        f"for the next {self.window_s - (now - window.start):.0f} s]"
        if note:
            record.msg = f"{record.msg}{note}"
        return True


def limit_client_triggered(burst: int = 10, window_s: float = 60.0) -> RepeatLimit:
    """Put one RepeatLimit on every logger in CLIENT_TRIGGERED (idempotent); returns it."""
    limit = RepeatLimit(burst, window_s)
    for name in CLIENT_TRIGGERED:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RepeatLimit)]:
            logger.removeFilter(old)
        logger.addFilter(limit)
    return limit
