"""The daemon as systemd runs it, without systemd: a passed listening fd, a notify socket, SIGHUP, SIGTERM;
`edgeslm reload`; and a 403 for a second uid that is not on the allow-list."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import INTENTS, Daemon

pytestmark = pytest.mark.integration
NOBODY = 65534


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def client(path: Path, timeout_s: float = 30) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://localhost", timeout=timeout_s)


def classify(http: httpx.Client, model: str = "intents") -> str:
    response = http.post("/v1/classify", json={"model": model, "input": ["turn on the kitchen light"]})
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["label"]


class Manager:
    """What systemd does for a Type=notify, socket-activated service, done by hand."""

    def __init__(self, workdir: Path, config_text: str):
        self.workdir = workdir
        self.config = workdir / "edgeslm.toml"
        self.config.write_text(config_text)
        self.socket_path = workdir / "activated.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.socket_path))
        self.listener.listen(64)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(workdir / "notify"))
        self.notify.settimeout(60)
        self.log = workdir / "daemon.log"

    def start(self) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGESLM_", "LISTEN_", "NOTIFY_"))}
        env.update(NOTIFY_SOCKET=str(self.workdir / "notify"), WATCHDOG_USEC="400000", LISTEN_FDS="1")
        fd = self.listener.fileno()

        def as_fd_3() -> None:
            os.dup2(fd, 3)

        # sh sets LISTEN_PID to its own pid, which `exec` hands to the daemon, as systemd does.
        command = f'LISTEN_PID=$$ exec "{sys.executable}" -m edgeslm serve --config "{self.config}"'
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["/bin/sh", "-c", command], env=env, pass_fds=(fd, 3), preexec_fn=as_fd_3,
                                         stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self.proc

    def messages_until(self, key: str) -> list[dict[str, str]]:
        seen = []
        while True:
            message = fields(self.notify.recv(4096))
            seen.append(message)
            if key in message:
                return seen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.listener.close()
        self.notify.close()


TWO_MODELS = f"""
[[models]]
name = "intents"
path = "{INTENTS}"
runtime = "onnx"

[[models]]
name = "other"
path = "{INTENTS}"
"""


def test_socket_activation_notify_watchdog_reload_and_stop(tmp_path):
    manager = Manager(tmp_path, TWO_MODELS)
    manager.start()
    try:
        ready = manager.messages_until("READY")[-1]
        assert ready["STATUS"] == "serving intents (onnx), other (onnx)"
        assert manager.messages_until("WATCHDOG")[-1] == {"WATCHDOG": "1"}  # every 0.2 s from the event loop
        with client(manager.socket_path) as http:
            assert classify(http) == "lights_on"  # answered on the passed socket; the daemon bound nothing
            manager.config.write_text(TWO_MODELS.replace(f'path = "{INTENTS}"\nruntime = "onnx"',
                                                         f'path = "{INTENTS / "model.tflite"}"', 1))
            manager.proc.send_signal(signal.SIGHUP)
            seen = manager.messages_until("READY")
            assert any(m.get("RELOADING") == "1" for m in seen)
            assert seen[-1]["STATUS"] == "serving intents (tflite), other (onnx)"
            assert {m["id"]: m["runtime"] for m in http.get("/v1/models").json()["data"]} == \
                {"intents": "tflite", "other": "onnx"}
        manager.proc.send_signal(signal.SIGTERM)
        assert any("STOPPING" in m for m in manager.messages_until("STOPPING"))
        assert manager.proc.wait(30) == 0
        assert manager.socket_path.exists(), "the daemon removed a socket it did not create"
        log = manager.log.read_text()
        assert "(passed by systemd)" in log and "reloaded: loaded intents; kept other" in log, log
    finally:
        manager.close()


def test_reload_under_load_loses_no_request_and_the_cli_reports(tmp_path):
    daemon = Daemon(tmp_path, TWO_MODELS).start()
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def hammer() -> None:
        with daemon.client() as http:
            while not stop.is_set():
                try:
                    classify(http, "intents")
                    answered[0] += 1
                except (AssertionError, httpx.HTTPError) as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        daemon.config.write_text(TWO_MODELS.replace('runtime = "onnx"', 'runtime = "onnx"\nthreads = 1', 1))
        cli = [sys.executable, "-m", "edgeslm", "reload", "--socket", str(daemon.socket), "--json"]
        result = subprocess.run(cli, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["loaded"] == ["intents"]
        daemon.proc.send_signal(signal.SIGHUP)  # the same through the signal: nothing changed, all kept
        time.sleep(0.5)
        before_bad = answered[0]
        daemon.config.write_text(TWO_MODELS + "\n[server]\nno_such_key = 1\n")
        bad = subprocess.run(cli[:-1], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 78 and "server.no_such_key" in bad.stderr, bad.stderr
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:3]
    assert answered[0] > before_bad > 0
    assert daemon.stop() == 0
    assert "reloaded: kept intents, other" in daemon.output()


def _request_as(uid: int, socket_path: Path, path: str, method: str = "GET") -> dict:
    """Run curl as `uid` (a forked child that dropped root); returns its status and body."""
    out = subprocess.run(
        ["curl", "-s", "-X", method, "-w", "\n%{http_code}", "--unix-socket", str(socket_path), f"http://localhost{path}"],
        capture_output=True, text=True, timeout=30, user=uid, group=uid, extra_groups=[],
    ).stdout
    body, _, status = out.rpartition("\n")
    return {"status": int(status or 0), "body": json.loads(body) if body else None}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("curl") is None, reason="needs root (to become a second "
                    "uid) and curl")
def test_allow_list_refuses_another_uid_with_403():
    workdir = Path(tempfile.mkdtemp(prefix="edgeslm-access-"))  # pytest's tmp is 0700; nobody must reach the socket
    os.chmod(workdir, 0o755)
    config = f'[server]\nsocket_mode = "0666"\n\n[access]\nallow_uids = [4321]\n\n[[models]]\nname = "intents"\n' \
             f'path = "{INTENTS}"\n'
    daemon = Daemon(workdir, config).start()
    try:
        os.chmod(daemon.socket.parent, 0o755)
        refused = _request_as(NOBODY, daemon.socket, "/health")
        assert refused["status"] == 403 and refused["body"]["error"]["code"] == "forbidden", refused
        assert "uid 65534" in refused["body"]["error"]["message"]
        with daemon.client() as http:  # root is always allowed
            assert http.get("/health").status_code == 200
    finally:
        daemon.stop()
        log = daemon.output()
        shutil.rmtree(workdir)
    assert "refused connection from uid 65534" in log and "connection from uid 0 (root)" in log, log


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("curl") is None, reason="needs root and curl")
def test_only_root_or_the_daemons_user_may_reload():
    workdir = Path(tempfile.mkdtemp(prefix="edgeslm-access-"))
    os.chmod(workdir, 0o755)
    daemon = Daemon(workdir, f'[server]\nsocket_mode = "0666"\n\n[[models]]\nname = "intents"\npath = "{INTENTS}"\n')
    daemon.start()
    try:
        os.chmod(daemon.socket.parent, 0o755)
        assert _request_as(NOBODY, daemon.socket, "/health")["status"] == 200  # no allow-list: served
        denied = _request_as(NOBODY, daemon.socket, "/admin/reload", "POST")
        assert denied["status"] == 403 and "only root" in denied["body"]["error"]["message"], denied
    finally:
        daemon.stop()
        shutil.rmtree(workdir)
