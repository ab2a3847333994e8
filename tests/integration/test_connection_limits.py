"""Connections that stall or pile up, on a real daemon: head and body deadlines, the connection cap, bad HTTP."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .conftest import INTENTS, Daemon

PHRASE = "turn on the kitchen light"
HEAD = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
CLOSED_WITHIN_S = 10  # generous: the deadlines under test are well under a second, swept once a second


def limits_daemon(tmp_path: Path, **server: object) -> Daemon:
    settings = "".join(f"{key} = {value}\n" for key, value in server.items())
    return Daemon(tmp_path, f'[server]\n{settings}[[models]]\nname = "intents"\npath = "{INTENTS}"\n').start()


def connect(d: Daemon, data: bytes = b"") -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(d.socket))
    sock.settimeout(CLOSED_WITHIN_S)
    if data:
        sock.sendall(data)
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the daemon sends until it closes the connection; fails if it is still open after the bound."""
    answer = b""
    with sock:
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def error_of(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer
    assert b"connection: close" in head.lower(), answer
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def classify_request() -> bytes:
    body = json.dumps({"input": [PHRASE]}).encode()
    return HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


class SteadyClient(threading.Thread):
    """Classifies on one keep-alive connection, one request after another, until stopped: the statuses it got."""

    def __init__(self, d: Daemon):
        super().__init__(daemon=True)
        self.d, self.statuses, self.stopping = d, [], threading.Event()

    def run(self) -> None:
        with self.d.client() as client:
            while not self.stopping.is_set():
                self.statuses.append(client.post("/v1/classify", json={"input": [PHRASE]}).status_code)
                time.sleep(0.02)

    def stop(self) -> list[int]:
        self.stopping.set()
        self.join(30)
        return self.statuses


def test_silent_and_half_sent_connections_are_closed_while_another_client_is_served(tmp_path):
    d = limits_daemon(tmp_path, header_timeout_s=0.5)
    steady = SteadyClient(d)
    steady.start()
    try:
        silent = connect(d)
        half = connect(d, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        # After a keep-alive response, half of the next head: uvicorn's keep-alive timer no longer watches it.
        after_answer = connect(d, classify_request())
        first = b""
        while b"lights_on" not in first:
            first += after_answer.recv(65536)
        after_answer.sendall(b"POST /v1/classify HTTP/1.1\r\nHo")

        assert read_to_eof(silent) == b""  # it sent nothing: closed without an answer
        for sock in (half, after_answer):
            status, error = error_of(read_to_eof(sock))
            assert (status, error["code"], error["type"]) == (408, "header_timeout", "timeout_error")
            assert "server.header_timeout_s" in error["message"]
    finally:
        statuses = steady.stop()
        assert d.stop() == 0
    assert statuses and set(statuses) == {200}, statuses
    # One warning for the burst, whichever close came first, and its count when the daemon stopped.
    assert d.output().count("within 0.5 s (server.header_timeout_s)") == 1, d.output()
    assert "1 closed having sent nothing" in d.output() and "2 closed mid-head (408)" in d.output()


def test_a_stalled_body_gets_408_and_the_daemon_keeps_serving(tmp_path):
    d = limits_daemon(tmp_path, body_timeout_s=0.5)
    try:
        stalled = connect(d, HEAD + b"Content-Length: 1000\r\n\r\n{\"input\": [")
        status, error = error_of(read_to_eof(stalled))
        assert (status, error["code"], error["type"]) == (408, "body_timeout", "timeout_error")
        assert "server.body_timeout_s" in error["message"]
        with d.client() as client:
            answer = client.post("/v1/classify", json={"input": [PHRASE]})
            assert answer.status_code == 200 and answer.json()["data"][0]["label"] == "lights_on"
            metrics = client.get("/metrics").text
        # The stalled request never reached a model: the recorder counts only the answered one.
        requests = [line for line in metrics.splitlines() if line.startswith("edgeslm_requests_total{")]
        assert requests == ['edgeslm_requests_total{model="intents",status="ok"} 1.0'], requests
    finally:
        assert d.stop() == 0
    assert "draining 0 in-flight request(s)" in d.output()  # the stalled handler ended; InFlight let it go
    assert "Traceback" not in d.output()


def test_at_the_cap_the_longest_idle_connection_makes_room_and_with_none_idle_a_new_one_gets_503(tmp_path):
    d = limits_daemon(tmp_path, max_connections=8, header_timeout_s=60, body_timeout_s=60)
    try:
        idle = []
        for _ in range(8):
            idle.append(connect(d))
            time.sleep(0.02)  # so "longest idle" is one connection, not a tie
        with d.client() as client:
            assert client.post("/v1/classify", json={"input": [PHRASE]}).status_code == 200
        assert read_to_eof(idle[0]) == b""  # the oldest was closed for it
        idle[1].settimeout(0.3)
        try:
            assert idle[1].recv(1) != b"", "a second idle connection was closed"
        except TimeoutError:
            pass  # still open, as it should be
        for sock in idle[1:]:
            sock.close()

        # Eight requests whose bodies never come: "100 Continue" says each handler is waiting for its body.
        busy = [connect(d, HEAD + b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n") for _ in range(8)]
        for sock in busy:
            assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        for _ in range(3):
            with d.client() as client:
                refused = client.post("/v1/classify", json={"input": [PHRASE]})
            assert refused.status_code == 503, refused.text
            assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
            error = refused.json()["error"]
            assert error["code"] == "too_many_connections" and "server.max_connections" in error["message"]
        for sock in busy:
            sock.close()
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while True:  # the daemon sees the closes a moment after they happen
            with d.client() as client:
                if client.post("/v1/classify", json={"input": [PHRASE]}).status_code == 200:
                    break
            assert time.monotonic() < deadline, "still refusing after the busy connections closed"
            time.sleep(0.05)
    finally:
        assert d.stop() == 0
    log = d.output()
    # Logged once per burst (a warning, then a count), not per connection: at most the evictions' and the
    # refusals' bursts, if a quiet second split them.
    assert log.count("WARNING edgeslm.server.connections") in (1, 2), log
    assert sum(int(n) for n in re.findall(r"(\d+) refused \(503\)", log)) == 3, log
    assert "Traceback" not in log


def test_malformed_http_gets_a_json_400(daemon):
    status, error = error_of(read_to_eof(connect(daemon, b"GARBAGE\r\n\r\n")))
    assert (status, error["code"], error["type"]) == (400, "bad_http", "invalid_request_error")
    with daemon.client() as client:
        assert client.get("/health").status_code == 200


def test_bad_connection_settings_exit_78_naming_the_keys(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[server]\nheader_timeout_s = 0\nbody_timeout_s = "soon"\nmax_connections = 0\n')
    r = subprocess.run([sys.executable, "-m", "edgeslm", "serve", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 78, r.stderr
    for key in ("server.header_timeout_s", "server.body_timeout_s", "server.max_connections"):
        assert key in r.stderr
    assert "Traceback" not in r.stderr


def embeddings_request(texts: int = 256) -> bytes:
    # ~270 KB of JSON back: more than a socket buffer holds
    body = json.dumps({"model": "intents", "input": [PHRASE] * texts}).encode()
    return b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
        b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_answers_a_client_does_not_read_are_dropped_and_a_slow_reader_is_not(tmp_path):
    d = limits_daemon(tmp_path, send_timeout_s=1)
    steady = SteadyClient(d)
    steady.start()
    try:
        deaf = connect(d, embeddings_request() * 3)  # pipelined, never read: answers pile up in the daemon
        slow = connect(d, embeddings_request())
        answer = b""
        while not answer.endswith(b"}") or b"\r\n\r\n" not in answer:  # 64 KB every 0.4 s: slow, but reading
            time.sleep(0.4)
            answer += slow.recv(65536)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and len(json.loads(body)["data"]) == 256
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while b"closed with an unread answer" not in d.output().encode() and \
                b"did not read for 1 s" not in d.output().encode():
            assert time.monotonic() < deadline, d.output()
            time.sleep(0.2)
        deaf.settimeout(CLOSED_WITHIN_S)
        got = b""
        try:
            while chunk := deaf.recv(1 << 20):  # what the kernel had taken, then the end: the daemon let go
                got += chunk
        except ConnectionResetError:
            pass
        assert len(got) < 3 * 270_000  # not every answer: the rest was dropped with the connection
        statuses = steady.stop()
    finally:
        steady.stop()
        assert d.stop() == 0
    assert statuses and set(statuses) == {200}
    assert "dropping answers their clients did not read for 1 s (server.send_timeout_s)" in d.output()


def test_a_client_looping_on_bad_http_and_new_connections_cannot_flood_the_log(tmp_path):
    d = limits_daemon(tmp_path)
    try:
        for _ in range(40):
            status, _ = error_of(read_to_eof(connect(d, b"GARBAGE / HTTP/9\r\n\r\n")))
            assert status == 400
        with d.client() as client:  # the daemon still serves
            assert client.post("/v1/classify", json={"input": [PHRASE]}).status_code == 200
    finally:
        assert d.stop() == 0
    log = d.output()
    invalid = [line for line in log.splitlines() if "Invalid HTTP request received" in line]
    connections = [line for line in log.splitlines() if "connection from uid" in line]
    assert len(invalid) == 10 and "more are counted, not logged" in invalid[-1], log
    assert len(connections) == 10, log
