"""The connection guard's choices (deadlines, the cap, its log) over fake connections, and fitting the cap to the
open-file limit with the limits injected."""

from __future__ import annotations

import logging
import re
import resource
from pathlib import Path

import pytest

from edgeslm.config import ServerConfig
from edgeslm.server.connections import (
    FD_SPARE,
    REFUSED_LINGER_MAX,
    REFUSED_LINGER_S,
    ConnectionGuard,
    fit_connection_cap,
)


class FakeTransport:
    def __init__(self) -> None:
        self.written, self.reading, self.closed = b"", True, False

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def close(self) -> None:
        self.closed = True


class FakeConnection:
    """What the guard asks of a protocol: what it waits for, since when it has been idle, and to close."""

    def __init__(self, waiting: tuple[str, float] | None = None, idle_since: float | None = None):
        self.transport = FakeTransport()
        self.waits, self.idle = waiting, idle_since
        self.unread: float | None = None
        self.reply: bytes | None = None

    def waiting(self, now: float) -> tuple[str, float] | None:
        return self.waits

    def idle_since(self, now: float) -> float | None:
        return self.idle

    def unread_since(self, now: float) -> float | None:
        return self.unread

    def close_with(self, reply: bytes | None) -> None:
        self.reply = reply
        self.transport.close()


def guard(max_connections: int = 3) -> ConnectionGuard:
    return ConnectionGuard(header_timeout_s=10, body_timeout_s=30, send_timeout_s=30, max_connections=max_connections)


def test_an_answer_left_unread_past_send_timeout_s_closes_its_connection_without_a_reply():
    g = ConnectionGuard(header_timeout_s=10, body_timeout_s=30, max_connections=3, send_timeout_s=5)
    deaf, reading = FakeConnection(), FakeConnection()
    for conn in (deaf, reading):
        assert g.admit(conn, 0)
    deaf.unread = 0.0
    g.sweep(4.9)
    assert not deaf.transport.closed
    g.sweep(5)
    assert deaf.transport.closed and deaf.reply is None and g.burst["send"] == 1
    assert not reading.transport.closed and g.open == {reading}


def test_heads_and_bodies_are_held_to_their_own_deadlines():
    g = guard(4)
    silent, half, body, busy = (FakeConnection(("connect", 0)), FakeConnection(("head", 0)),
                                FakeConnection(("body", 0)), FakeConnection(None))
    for conn in (silent, half, body, busy):
        assert g.admit(conn, 0)
    g.sweep(9.9)
    assert not any(c.transport.closed for c in (silent, half, body))
    g.sweep(10)
    assert silent.transport.closed and silent.reply is None  # sent nothing: nothing to answer
    assert half.transport.closed and b"408" in half.reply and b"header_timeout" in half.reply
    assert not body.transport.closed
    g.sweep(30)
    assert b"408" in body.reply and b"body_timeout" in body.reply
    assert not busy.transport.closed and g.open == {busy}


def test_at_the_cap_the_longest_idle_is_closed_for_the_newcomer():
    g = guard(3)
    recent, oldest, working = FakeConnection(idle_since=5), FakeConnection(idle_since=1), FakeConnection()
    for conn in (recent, oldest, working):
        assert g.admit(conn, 6)
    newcomer = FakeConnection()
    assert g.admit(newcomer, 7)
    assert oldest.transport.closed and oldest.reply is None
    assert g.open == {recent, working, newcomer}


def test_with_none_idle_the_newcomer_gets_503_and_is_closed_after_a_linger():
    g = guard(1)
    assert g.admit(FakeConnection(), 0)
    refused = FakeConnection()
    assert not g.admit(refused, 1)
    assert refused.transport.written.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"connection: close" in refused.transport.written and b'"too_many_connections"' in refused.transport.written
    assert not refused.transport.reading and not refused.transport.closed  # its client can still send, then read
    g.sweep(1 + REFUSED_LINGER_S / 2)
    assert not refused.transport.closed
    g.sweep(1 + REFUSED_LINGER_S)
    assert refused.transport.closed and refused not in g.open


def test_refusals_beyond_the_linger_room_are_closed_at_once():
    g = guard(1)
    g.admit(FakeConnection(), 0)
    refused = [FakeConnection() for _ in range(REFUSED_LINGER_MAX + 1)]
    for conn in refused:
        assert not g.admit(conn, 0)
    assert [c.transport.closed for c in refused] == [False] * REFUSED_LINGER_MAX + [True]


def test_a_burst_is_logged_once_then_counted_when_a_sweep_passes_without_one(caplog):
    g = guard(1)
    g.admit(FakeConnection(), 0)
    with caplog.at_level(logging.INFO, logger="edgeslm.server.connections"):
        for _ in range(5):
            g.admit(FakeConnection(), 0)
        g.sweep(1)  # the burst may still be going on
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "all busy: new connections get 503" in caplog.records[0].getMessage()
        g.sweep(2)
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "5 refused (503)" in caplog.records[1].getMessage()
    caplog.clear()
    g.sweep(3)
    assert caplog.records == []  # nothing new, nothing said


class Limits:
    """RLIMIT_NOFILE as the fit sees it: a getter, and a setter that records (or refuses) changes."""

    def __init__(self, soft: int, hard: int, refuse: bool = False):
        self.soft, self.hard, self.refuse, self.set_to = soft, hard, refuse, None

    def get(self) -> tuple[int, int]:
        return self.soft, self.hard

    def set(self, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise PermissionError(1, "Operation not permitted")
        self.set_to = limits
        self.soft, self.hard = limits


def fit(wanted: int, limits: Limits) -> int:
    return fit_connection_cap(wanted, get_limit=limits.get, set_limit=limits.set)


def test_a_soft_limit_with_room_is_left_alone(caplog):
    limits = Limits(1024, 4096)
    with caplog.at_level(logging.INFO):
        assert fit(256, limits) == 256
    assert limits.set_to is None and caplog.records == []


@pytest.mark.parametrize("hard", [1 << 20, resource.RLIM_INFINITY])
def test_a_short_soft_limit_is_raised_to_what_the_cap_needs(hard):
    limits = Limits(1024, hard)
    assert fit(4096, limits) == 4096
    assert limits.set_to == (4096 + REFUSED_LINGER_MAX + FD_SPARE, hard)


def test_a_short_hard_limit_lowers_the_cap_with_one_warning(caplog):
    limits = Limits(1024, 2048)
    with caplog.at_level(logging.WARNING):
        cap = fit(4096, limits)
    assert limits.set_to == (2048, 2048)
    assert cap == 2048 - REFUSED_LINGER_MAX - FD_SPARE
    [warning] = caplog.records
    assert "server.max_connections = 4096" in warning.getMessage() and f"at most {cap}" in warning.getMessage()
    assert "LimitNOFILE=" in warning.getMessage()


def test_a_limit_that_cannot_be_raised_lowers_the_cap_and_says_why(caplog):
    with caplog.at_level(logging.WARNING):
        cap = fit(4096, Limits(1024, 1 << 20, refuse=True))
    assert cap == 1024 - REFUSED_LINGER_MAX - FD_SPARE
    [warning] = caplog.records
    assert "raising it failed" in warning.getMessage() and "Operation not permitted" in warning.getMessage()


def test_a_tiny_limit_still_leaves_some_connections():
    assert 1 <= fit(256, Limits(64, 64)) < 64


def test_the_units_open_file_limit_fits_the_default_cap():
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "edgeslm.service").read_text()
    [limit] = re.findall(r"^LimitNOFILE=(\d+)$", unit, re.M)
    assert int(limit) >= ServerConfig().max_connections + REFUSED_LINGER_MAX + FD_SPARE
