"""RepeatLimit: a burst per message kind per window, then a count of what was left out."""

from __future__ import annotations

import logging

from edgeslm.server.log_limits import CLIENT_TRIGGERED, RepeatLimit, limit_client_triggered


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(msg: str = "connection from %s", name: str = "edgeslm.server.access") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, ("uid 0",) if "%s" in msg else (), None)


def test_a_burst_passes_then_the_rest_of_the_window_is_counted_and_reported_after_it():
    clock = Clock()
    limit = RepeatLimit(burst=3, window_s=60, clock=clock)
    passed = [r for r in (record() for _ in range(10)) if limit.filter(r)]
    assert len(passed) == 3
    assert "more are counted, not logged, for the next 60 s" in passed[-1].getMessage()
    assert passed[0].getMessage() == "connection from uid 0"  # the template's arguments still apply
    clock.now += 61
    after = record()
    assert limit.filter(after)
    assert after.getMessage() == "connection from uid 0 [7 more like this were not logged in the 60 s before]"
    assert limit.filter(record()) and limit.filter(record())  # a fresh window: a fresh burst
    assert not limit.filter(record())


def test_kinds_are_limited_apart_and_a_quiet_window_adds_no_note():
    clock = Clock()
    limit = RepeatLimit(burst=2, window_s=10, clock=clock)
    assert limit.filter(record()) and limit.filter(record())
    assert not limit.filter(record())
    other = record("Invalid HTTP request received.", "uvicorn.error")
    assert limit.filter(other) and other.getMessage() == "Invalid HTTP request received."
    clock.now += 10
    assert limit.filter(record())  # the first window's left-out line is reported here...
    clock.now += 10
    quiet = record()
    assert limit.filter(quiet) and quiet.getMessage() == "connection from uid 0"  # ...and not again


def test_installing_twice_leaves_one_filter_per_logger():
    first = limit_client_triggered()
    second = limit_client_triggered()
    for name in CLIENT_TRIGGERED:
        filters = [f for f in logging.getLogger(name).filters if isinstance(f, RepeatLimit)]
        assert filters == [second] and first is not second
        logging.getLogger(name).removeFilter(second)
