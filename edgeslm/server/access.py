"""Who is on the other end of the socket: SO_PEERCRED per connection, the allow-list, a 403 for the rest."""

from __future__ import annotations

import functools
import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edgeslm.errors import ConfigError
from edgeslm.server.bridge import TASKS_SCOPE_KEY, error_response

log = logging.getLogger(__name__)
PEER_SCOPE_KEY = "edgeslm.peer"  # where handlers find the Peer in the ASGI scope
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python 3.11 does not name it
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_GROUPS = 256


@dataclass(frozen=True, slots=True)
class Peer:
    """The process that connected, as the kernel saw it at connect(): pid, uid, gid and its groups."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]

    def describe(self) -> str:
        return f"uid {self.uid} ({_user_name(self.uid)}) pid {self.pid}"


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no name"


def peer_of(sock: Any) -> Peer | None:
    """Credentials of a connected AF_UNIX socket's peer (a socket or uvloop's socket-like); None if unknown."""
    try:
        pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    except (OSError, AttributeError, struct.error):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
        groups = frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:  # old kernel: the primary group, plus memberships the group database lists
        groups = frozenset(g.gr_gid for g in grp.getgrall() if _user_name(uid) in g.gr_mem)
    return Peer(pid, uid, gid, groups | {gid})


class AccessPolicy:
    """Which peers may talk to the daemon, and which may also administer it (reload).

    With no allow-list every peer that can open the socket file is served: its mode and group
    are then the only gate. With one, a peer is served when its uid is listed or any of its
    groups is. Root and the daemon's own user are always served, and are the only ones that
    may administer it.
    """

    def __init__(self, allow_uids: Iterable[int] = (), allow_gids: Iterable[int] = (), *,
                 own_uid: int | None = None, log_connections: bool = True):
        self.allow_uids = frozenset(allow_uids)
        self.allow_gids = frozenset(allow_gids)
        self.own_uid = os.geteuid() if own_uid is None else own_uid
        self.log_connections = log_connections

    @classmethod
    def from_config(cls, access: Any, *, own_uid: int | None = None,
                    group_id: Callable[[str], int] = lambda name: grp.getgrnam(name).gr_gid) -> AccessPolicy:
        """Resolve `[access]` (group names to ids) once, at start-up; unknown groups are a ConfigError."""
        gids = []
        for group in access.allow_groups:
            if isinstance(group, int) or str(group).isdigit():
                gids.append(int(group))
                continue
            try:
                gids.append(group_id(group))
            except KeyError:
                raise ConfigError(f"access.allow_groups names {group!r}, which is not a group on this system; "
                                  "create it (groupadd) or remove it from the list", param="access.allow_groups"
                                  ) from None
        return cls(access.allow_uids, gids, own_uid=own_uid, log_connections=access.log_connections)

    @property
    def restricted(self) -> bool:
        return bool(self.allow_uids or self.allow_gids)

    def is_admin(self, peer: Peer | None) -> bool:
        return peer is not None and peer.uid in (0, self.own_uid)

    def allows(self, peer: Peer | None) -> bool:
        if not self.restricted:
            return True
        if peer is None:
            return False  # cannot tell who it is, and someone asked us to care
        return self.is_admin(peer) or peer.uid in self.allow_uids or bool(peer.groups & self.allow_gids)

    def admit(self, app: Any, sock: Any, tasks: set | None = None) -> Any:
        """The ASGI app this connection gets: the real one with its Peer (and the server's request tasks)
        in the scope, or a 403."""
        peer = peer_of(sock)
        who = peer.describe() if peer else "an unknown peer (no SO_PEERCRED)"
        if not self.allows(peer):
            log.warning("refused connection from %s: not in [access] allow_uids / allow_groups", who)
            return _Forbidden(who)
        if self.log_connections:
            log.info("connection from %s", who)
        return _WithPeer(app, peer, tasks)


class _WithPeer:
    __slots__ = ("app", "peer", "tasks")

    def __init__(self, app: Any, peer: Peer | None, tasks: set | None):
        self.app, self.peer, self.tasks = app, peer, tasks

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        scope[PEER_SCOPE_KEY] = self.peer
        if self.tasks is not None:
            scope[TASKS_SCOPE_KEY] = self.tasks
        await self.app(scope, receive, send)


class _Forbidden:
    __slots__ = ("who",)

    def __init__(self, who: str):
        self.who = who

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        response = error_response(
            403, "forbidden",
            f"{self.who} may not use this daemon: ask its administrator to add the uid to [access] allow_uids, "
            "or the user to a group in [access] allow_groups",
            kind="permission_error", headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def peer_from_scope(scope: dict) -> Peer | None:
    return scope.get(PEER_SCOPE_KEY)
