"""The listening Unix socket: stale-file clean-up, refusal of a live path, permissions."""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
from pathlib import Path

from edgeslm.errors import ConfigError, SocketInUseError

log = logging.getLogger(__name__)
MAX_PATH_BYTES = 107  # sun_path is 108 bytes including the NUL


def _check_existing(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket; remove it or choose another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s left by an earlier run", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)
            return
        raise SocketInUseError(f"cannot probe {path}: {exc.strerror}; remove it if no daemon uses it") from None
    finally:
        probe.close()
    raise SocketInUseError(
        f"another daemon is already listening on {path}; stop it (systemctl stop edgeslm, or Ctrl-C in its "
        "terminal) or start this one with --socket PATH"
    )


def bind_unix_socket(path: Path, *, mode: int = 0o660, group: str | None = None, backlog: int = 512) -> socket.socket:
    """A listening, non-blocking socket at `path` with `mode` and `group`; no window with wider permissions."""
    path = Path(path)
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise ConfigError(f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow "
                          f"{MAX_PATH_BYTES}: choose a shorter path")
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"server.socket_group {group!r} is not a group on this system; "
                              "create it (groupadd) or drop the setting") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_existing(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot create socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    if gid != -1:
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            sock.close()
            path.unlink(missing_ok=True)
            raise ConfigError(f"server.socket_group {group!r}: this user (uid {os.getuid()}) may not give the socket "
                              f"to that group; add the user to it (usermod -aG {group} USER) or run as root") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def socket_inode(path: Path) -> int | None:
    try:
        return path.lstat().st_ino
    except OSError:
        return None


def remove_socket(path: Path, inode: int | None) -> None:
    """Unlink `path` only if it is still the socket file we made (a newer daemon may own the path now)."""
    if inode is not None and socket_inode(path) == inode:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
