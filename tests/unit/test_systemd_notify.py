"""The sd_notify side, over real datagram sockets (file and abstract), and LISTEN_FDS parsing."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from edgeslm.server.systemd import Notifier, listen_sockets, socket_name


@pytest.fixture
def receiver(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_ready_status_reloading_and_stopping_reach_a_socket_file(receiver):
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("serving intents (onnx)")
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "serving intents (onnx)"}
    assert notifier.reloading()
    reloading = fields(sock.recv(4096))
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert notifier.stopping("draining 2 in-flight request(s)")
    assert fields(sock.recv(4096)) == {"STOPPING": "1", "STATUS": "draining 2 in-flight request(s)"}
    notifier.close()


def test_abstract_namespace_address():
    name = f"edgeslm-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert Notifier({"NOTIFY_SOCKET": f"@{name}"}).ready("ok")
        assert fields(sock.recv(4096))["READY"] == "1"
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_timeout(receiver):
    sock, path = receiver
    now = [100.0]
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())},
                        clock=lambda: now[0])
    assert notifier.watchdog_interval_s == 2.0
    sent = []
    for step in range(50):  # 5 s of event-loop ticks, 0.1 s apart
        now[0] = 100.0 + step * 0.1
        if notifier.tick():
            sent.append(round(now[0] - 100.0, 1))
    assert sent == [0.0, 2.0, 4.0]
    assert [fields(sock.recv(4096)) for _ in sent] == [{"WATCHDOG": "1"}] * 3


def test_no_pings_for_another_pid_or_without_a_watchdog(receiver):
    _, path = receiver
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).tick() is False
    assert Notifier({"NOTIFY_SOCKET": path}).tick() is False


def test_without_a_manager_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("x") is False


def test_a_vanished_manager_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready("x") is False
    assert notifier.ready("x") is False
    assert sum("cannot notify" in r.message for r in caplog.records) == 1


def test_listen_fds_for_another_process_are_ignored_and_cleared():
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "edgeslm.socket"}
    assert listen_sockets(env) == []
    assert env == {}


def test_socket_name_of_a_listening_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "s.sock"))
    try:
        assert socket_name(sock) == str(tmp_path / "s.sock")
    finally:
        sock.close()
