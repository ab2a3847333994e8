"""The service manager's side of start-up without libsystemd: sd_notify datagrams and socket activation."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

log = logging.getLogger(__name__)
LISTEN_FDS_START = 3  # sd_listen_fds(3): passed descriptors start right after stdin, stdout, stderr


def _notify_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock (vsock:CID:PORT) and other forms: this daemon runs beside its manager


class Notifier:
    """Sends state changes to the service manager over $NOTIFY_SOCKET; does nothing without one.

    Messages are newline-separated KEY=VALUE lines in one datagram (sd_notify(3)). A send that
    fails is logged once and never stops the daemon: notification is advisory to us, the
    manager judges us by the READY=1 and WATCHDOG=1 it did or did not get.
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        self._clock = clock
        self.where = env.get("NOTIFY_SOCKET", "")
        self.address = _notify_address(self.where)
        if self.where and self.address is None:
            log.warning("NOTIFY_SOCKET=%s is not a Unix socket path; not notifying", self.where)
        self.watchdog_interval_s = _watchdog_interval_s(env)
        self._sock: socket.socket | None = None
        self._last_ping = float("-inf")
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram, e.g. send(READY=1, STATUS="serving 2 models"); False if it could not go out."""
        if self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager at %s: %s", self.where, exc)
            return False

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets newer managers (Type=notify-reload) match this to the reload they asked for.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str = "draining in-flight requests") -> bool:
        return self.send(STOPPING=1, STATUS=status)

    def tick(self) -> bool:
        """Call often from the event loop: pings WATCHDOG=1 once half the manager's timeout has passed."""
        if self.watchdog_interval_s is None:
            return False
        now = self._clock()
        if now - self._last_ping < self.watchdog_interval_s:
            return False
        self._last_ping = now
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval_s(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were exec'd by a wrapper that kept the variable)
    return int(usec) / 1e6 / 2


def listen_sockets(env: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """Listening sockets passed by the service manager (LISTEN_FDS), in order; [] when none were passed.

    The variables are removed afterwards, as sd_listen_fds(1) does, so child processes do not
    mistake the descriptors for theirs.
    """
    env = os.environ if env is None else env
    count, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if not count.isdigit() or int(count) == 0 or pid != str(os.getpid()):
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("LISTEN_FDS names descriptor %d, but it is unusable (%s); ignoring it", fd, exc.strerror)
            continue
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            log.warning("passed descriptor %d is not a listening stream socket; ignoring it", fd)
            sock.detach()
            continue
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def socket_name(sock: socket.socket) -> str:
    with contextlib.suppress(OSError):
        name = sock.getsockname()
        if isinstance(name, bytes):
            return "@" + name[1:].decode(errors="replace")
        return str(name)
    return f"fd {sock.fileno()}"
