"""How long a client may hold a connection: request-head, body and send deadlines, and a cap on open connections
that fits the open-file limit."""

from __future__ import annotations

import logging
import resource
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edgeslm.server.access import AccessPolicy
from edgeslm.server.bridge import error_response

log = logging.getLogger(__name__)


def raw_error(status: int, code: str, message: str, kind: str, *, retry_after_s: int | None = None) -> bytes:
    """A whole JSON error response (the usual body, see bridge.error_response) that closes the connection, as
    bytes to write straight to a transport, for answers given outside any request's app."""
    body = error_response(status, code, message, kind=kind).body
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    return "\r\n".join(head).encode("ascii") + b"\r\n\r\n" + body


BAD_HTTP = raw_error(400, "bad_http", "the request is not valid HTTP/1.1 (its request line, headers or chunked "
                     "body could not be parsed); check the client, or try it with curl", "invalid_request_error")
REFUSED_LINGER_S = 0.5  # a refused connection stays open (unread) this long, so its client can send and read the 503
REFUSED_LINGER_MAX = 32  # past this many lingering at once, refused connections are closed straight away


class ConnectionGuard:
    """Deadlines and a cap for the server's connections ([server] header_timeout_s, body_timeout_s and
    max_connections), so that clients that connect and stall cannot hold the daemon's descriptors.

    The protocol (`protocol_class`) reports each connection (`admit`, `forget`) and says what it waits for; one
    `sweep` a second, from the server's tick, closes the overdue. Sweeping beats a timer per request: serving a
    request costs nothing extra, and deadlines hold to within a second. What it closes is logged once per burst:
    a warning at the first, a count once a sweep passes without any.
    """

    def __init__(self, *, header_timeout_s: float, body_timeout_s: float, send_timeout_s: float,
                 max_connections: int):
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self.send_timeout_s, self.max_connections = send_timeout_s, max_connections
        self.open: set[Any] = set()  # admitted, not yet closed: the protocols (see protocol_class)
        self.lingering: list[tuple[float, Any]] = []  # refused: (when, transport), closed by a later sweep
        self.burst: Counter[str] = Counter()
        self._burst_size = 0
        header = f"{header_timeout_s:g} s (server.header_timeout_s)"
        body = f"{body_timeout_s:g} s (server.body_timeout_s)"
        cap = f"{max_connections} connections open (server.max_connections)"
        self.replies = {
            "head": raw_error(408, "header_timeout", f"the request head did not arrive within {header}; send "
                              "the whole head at once", "timeout_error"),
            "body": raw_error(408, "body_timeout", f"the request body did not arrive within {body} of its head; "
                              "send the body with the head, or as fast as it is made", "timeout_error"),
            "refused": raw_error(503, "too_many_connections", f"the daemon has {cap}, all busy; retry shortly, "
                                 "and close connections you do not use", "service_unavailable", retry_after_s=1),
        }
        self.first_words = {
            "evicted": f"{cap}: closing the longest-idle to make room for new ones",
            "refused": f"{cap}, all busy: new connections get 503",
            "connect": f"closing connections that sent nothing within {header}",
            "head": f"closing connections that sent part of a request head but not all within {header} (408)",
            "body": f"closing requests whose body did not arrive within {body} of the head (408)",
            "send": f"dropping answers their clients did not read for {send_timeout_s:g} s (server.send_timeout_s), "
                    "and their connections",
        }
        self.counted_words = {"evicted": "idle closed to make room", "refused": "refused (503)",
                              "connect": "closed having sent nothing", "head": "closed mid-head (408)",
                              "body": "closed mid-body (408)", "send": "closed with an unread answer"}

    def admit(self, conn: Any, now: float) -> bool:
        """Count a new connection in; at the cap, close the longest-idle one for it, or refuse it (503) if none is
        idle. False when refused."""
        if len(self.open) >= self.max_connections:
            idle = [(since, other) for other in self.open if (since := other.idle_since(now)) is not None]
            if not idle:
                self._note("refused")
                conn.transport.write(self.replies["refused"])
                if len(self.lingering) < REFUSED_LINGER_MAX:
                    # Closed at once, a client still writing its request would meet a broken pipe, not the 503.
                    conn.transport.pause_reading()
                    self.lingering.append((now, conn.transport))
                else:
                    conn.transport.close()
                return False
            self.close(min(idle, key=lambda pair: pair[0])[1], "evicted")
        self.open.add(conn)
        return True

    def forget(self, conn: Any) -> None:
        self.open.discard(conn)

    def close(self, conn: Any, why: str) -> None:
        self.open.discard(conn)
        conn.close_with(self.replies.get(why))
        self._note(why)

    def sweep(self, now: float) -> None:
        """Close what is overdue: refused connections past their linger, and connections whose head or body is late."""
        due = [transport for when, transport in self.lingering if now - when >= REFUSED_LINGER_S]
        if due:
            self.lingering = self.lingering[len(due):]  # appended in time order, so the due ones lead
            for transport in due:
                transport.close()
        for conn in list(self.open):
            unread = conn.unread_since(now)
            if unread is not None and now - unread >= self.send_timeout_s:
                self.close(conn, "send")  # no reply: it would queue behind what the client does not read
                continue
            waiting = conn.waiting(now)
            if waiting is not None:
                what, since = waiting
                if now - since >= (self.body_timeout_s if what == "body" else self.header_timeout_s):
                    self.close(conn, what)
        size = sum(self.burst.values())
        if size == self._burst_size:  # a whole sweep without any
            self.end_burst()
            size = 0
        self._burst_size = size

    def end_burst(self) -> None:
        """Log what the burst closed, if there was one (each sweep that follows a quiet second, and at shutdown)."""
        if self.burst:
            log.info("connection limits, since that warning: %s",
                     ", ".join(f"{n} {self.counted_words[what]}" for what, n in self.burst.items()))
            self.burst.clear()

    def _note(self, what: str) -> None:
        if not self.burst:
            log.warning("%s; more are counted, not logged, until a second passes without any", self.first_words[what])
        self.burst[what] += 1


# Descriptors the daemon holds besides client connections: the listening socket, model files, metrics and log
# files, the event loop's and the runtimes' pipes and eventfds. 18 with one model and metrics off; each model,
# the metrics writer and the voice pipeline add a few.
FD_SPARE = 128


def _open_file_limit() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _set_open_file_limit(limits: tuple[int, int]) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def fit_connection_cap(wanted: int, *, get_limit: Callable[[], tuple[int, int]] = _open_file_limit,
                       set_limit: Callable[[tuple[int, int]], None] = _set_open_file_limit) -> int:
    """How many connections the open-file limit lets the daemon hold, `wanted` (server.max_connections) if it can.

    When the soft RLIMIT_NOFILE is too low for `wanted` plus FD_SPARE and the refused connections that linger, it
    is raised toward the hard limit; if that is still short, the cap is lowered, with one warning.
    """
    soft, hard = get_limit()
    need = wanted + REFUSED_LINGER_MAX + FD_SPARE
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    raise_to = need if hard == resource.RLIM_INFINITY else min(need, hard)
    why = f"the hard limit is {hard}"
    if raise_to > soft:
        try:
            set_limit((raise_to, hard))
        except (OSError, ValueError) as exc:
            why = f"raising it failed: {exc}"
        else:
            log.info("raised the open-file limit (RLIMIT_NOFILE) from %d to %d for server.max_connections = %d",
                     soft, raise_to, wanted)
            soft = raise_to
    if soft >= need:
        return wanted
    cap = max(soft - REFUSED_LINGER_MAX - FD_SPARE, soft // 4, 1)
    log.warning("the open-file limit (RLIMIT_NOFILE) is %d and %s; server.max_connections = %d needs %d with room "
                "for model files, logs and refused connections: serving at most %d connections. Raise LimitNOFILE= "
                "in the unit (or ulimit -n), or lower server.max_connections", soft, why, wanted, need, cap)
    return cap


def protocol_class(policy: AccessPolicy, guard: ConnectionGuard) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, checking each connection's peer against `policy` when it is accepted, and
    holding it to `guard`'s deadlines and cap.

    A narrow subclass: the hooks are uvicorn's own (connection_made, connection_lost, send_400_response), and the
    deadlines are read off the state uvicorn already keeps (its request cycle, pipeline and keep-alive timer)
    by `waiting`, so the per-request path runs uvicorn's code unchanged.
    """

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.connected_at = self.loop.time()
            self.seen: tuple[Any, str, float] = (None, "", 0.0)  # a phase first seen: (cycle, what, when)
            self.unread: tuple[int, float] | None = None  # (send buffer bytes, since when it has not shrunk)
            if not guard.admit(self, self.connected_at):
                return  # answered 503; reading paused, so no request reaches the app
            # uvicorn's set of request tasks (an internal; without it requests just take the cautious path)
            tasks = getattr(self, "tasks", None)
            self.app = policy.admit(self.app, transport.get_extra_info("socket"), tasks)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.forget(self)
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            # uvicorn answers malformed HTTP in plain text; every other error of ours is JSON.
            self.close_with(BAD_HTTP)

        def waiting(self, now: float) -> tuple[str, float] | None:
            """What the connection waits for from its client, and since when: "connect" (nothing sent yet),
            "head" (part of one) or "body"; None while the app has the request, or while uvicorn's keep-alive
            timer watches it idle."""
            if self.transport.is_closing():
                return None
            cycle = self.cycle
            if cycle is None:  # the first request: its head is timed from connecting
                return ("connect" if self.headers is None else "head"), self.connected_at
            if self.pipeline:
                return None  # an earlier request is being answered; reading is paused until it is
            if not cycle.response_complete:
                return ("body", self._first_seen(cycle, "body", now)) if cycle.more_body else None
            if self.timeout_keep_alive_task is not None:
                return None
            # Answered, and bytes of the next request have come since (they cancelled the keep-alive timer).
            return "head", self._first_seen(cycle, "head", now)

        def unread_since(self, now: float) -> float | None:
            """Since when answers have waited in the send buffer without it shrinking (a client that does not
            read); None while it is empty. A buffer that shrank between two sweeps is a client reading: timed anew.
            The transport may already be closing (uvicorn's keep-alive close waits for the buffer to drain)."""
            size = self.transport.get_write_buffer_size()
            if not size:
                self.unread = None
                return None
            if self.unread is None or size < self.unread[0]:
                self.unread = (size, now)
            else:
                self.unread = (size, self.unread[1])
            return self.unread[1]

        def _first_seen(self, cycle: Any, what: str, now: float) -> float:
            # Sweeps see a request's phases, not their starts, so a phase is timed from the first look at it.
            seen_cycle, seen_what, since = self.seen
            if seen_cycle is not cycle or seen_what != what:
                since = now
                self.seen = (cycle, what, now)
            return since

        def idle_since(self, now: float) -> float | None:
            """Since when no request has been in progress here; None while one is."""
            waiting = self.waiting(now)
            if waiting is not None:
                return None if waiting[0] == "body" else waiting[1]
            keep_alive = self.timeout_keep_alive_task
            if keep_alive is not None and not self.transport.is_closing():
                return keep_alive.when() - self.timeout_keep_alive  # armed as the last response ended
            return None

        def close_with(self, reply: bytes | None) -> None:
            """Close the connection, first answering `reply` (a whole response) unless the app began its own."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                if cycle.response_started:
                    reply = None  # ours would land inside the app's answer
                # The request now acts as if its client had gone, as uvicorn's connection_lost makes it a moment
                # later: a handler awaiting the body gets http.disconnect at once, and the app's answer is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
            if reply is not None:
                self.transport.write(reply)
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # a peer that reads nothing would hold a flushing close (and its descriptor)
            else:
                self.transport.close()

    return GuardedProtocol
