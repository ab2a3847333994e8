"""SO_PEERCRED on real sockets, with a real second uid (a forked child that drops to it), and the policy."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from types import SimpleNamespace

import pytest

from edgeslm.errors import ConfigError
from edgeslm.server.access import AccessPolicy, Peer, peer_of

OTHER_UID, OTHER_GID, EXTRA_GID = 65534, 65534, 4242
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to a second uid needs root")


def connect_as(path: str, uid: int, gid: int, groups: list[int]) -> int:
    """Fork a child that becomes uid/gid/groups, connects to `path` and waits; returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(path)
            client.recv(1)  # until the parent closes
        finally:
            os._exit(0)
    return pid


@pytest.fixture
def listener():
    folder = tempfile.mkdtemp(prefix="edgeslm-access-")  # pytest's tmp_path is 0700: the other uid cannot enter
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o666)
    server.listen(4)
    server.settimeout(10)
    yield server, path
    server.close()
    shutil.rmtree(folder)


def test_peer_of_our_own_connection():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        peer = peer_of(a)
        assert peer is not None and (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.geteuid(), os.getegid())
        assert os.getegid() in peer.groups
    finally:
        a.close()
        b.close()


def test_peer_of_something_that_is_not_a_socket():
    assert peer_of(object()) is None


@needs_root
def test_a_second_uid_is_seen_and_judged(listener):
    server, path = listener
    child = connect_as(path, OTHER_UID, OTHER_GID, [EXTRA_GID])
    conn, _ = server.accept()
    try:
        peer = peer_of(conn)
        assert peer is not None
        assert (peer.pid, peer.uid, peer.gid) == (child, OTHER_UID, OTHER_GID)
        assert EXTRA_GID in peer.groups  # SO_PEERGROUPS: the child's supplementary groups at connect()
        assert AccessPolicy().allows(peer)  # no list: the socket's permissions are the only gate
        assert not AccessPolicy(allow_uids=[1000]).allows(peer)
        assert AccessPolicy(allow_uids=[OTHER_UID]).allows(peer)
        assert AccessPolicy(allow_uids=[1000], allow_gids=[EXTRA_GID]).allows(peer)
        assert not AccessPolicy(allow_uids=[OTHER_UID]).is_admin(peer)
    finally:
        conn.close()
        os.waitpid(child, 0)


def test_root_and_the_daemons_user_always_pass_and_administer():
    policy = AccessPolicy(allow_uids=[1000], own_uid=999)
    for uid in (0, 999):
        peer = Peer(pid=1, uid=uid, gid=uid, groups=frozenset({uid}))
        assert policy.allows(peer) and policy.is_admin(peer)
    stranger = Peer(pid=1, uid=1001, gid=1001, groups=frozenset({1001}))
    assert not policy.allows(stranger) and not policy.is_admin(stranger)
    assert not policy.allows(None) and AccessPolicy().allows(None)


def test_groups_from_config_resolve_by_name_or_number():
    access = SimpleNamespace(allow_uids=(5,), allow_groups=("audio", 7, "42"), log_connections=False)
    policy = AccessPolicy.from_config(access, own_uid=999, group_id={"audio": 29}.__getitem__)
    assert policy.allow_gids == {29, 7, 42} and policy.allow_uids == {5}
    access.allow_groups = ("no-such-group",)
    with pytest.raises(ConfigError, match="access.allow_groups names 'no-such-group'"):
        AccessPolicy.from_config(access, group_id={}.__getitem__)
