"""A real daemon in a subprocess on a real Unix socket in tmp, serving the committed models."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
INTENTS = ROOT / "models" / "intents"


class Daemon:
    """`edgeslm serve` started as a user would, with helpers to talk to it."""

    def __init__(self, workdir: Path, config_text: str, *, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        self.workdir = workdir
        self.extra_env = env or {}
        self.socket = workdir / "run" / "edgeslm.sock"
        self.config = workdir / "edgeslm.toml"
        self.config.write_text(config_text)
        self.log = workdir / "daemon.log"
        self.args = (sys.executable, "-m", "edgeslm", "serve", "--config", str(self.config),
                     "--socket", str(self.socket), *extra_args)
        self.proc: subprocess.Popen | None = None

    def start_process(self) -> subprocess.Popen:
        """Start it without waiting for it to serve."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESLM_")} | self.extra_env
        self._log_file = open(self.log, "wb")
        self.proc = subprocess.Popen(self.args, cwd=self.workdir, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env=env)
        return self.proc

    def start(self, timeout_s: float = 60) -> Daemon:
        self.start_process()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.client().get("/health").status_code == 200:
                    return self
            except (httpx.TransportError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon did not answer within {timeout_s} s:\n{self.output()}")

    def client(self, timeout_s: float = 30) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://localhost",
                            timeout=timeout_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log_file.close()
        return code


def models_config(folder: Path) -> str:
    """Config for the shared daemon: the three committed formats plus two broken entries."""
    missing = folder / "missing"
    corrupt = folder / "corrupt"
    missing.mkdir(exist_ok=True)
    corrupt.mkdir(exist_ok=True)
    (corrupt / "model.onnx").write_bytes(b"\x08\x01garbage that is not a protobuf" * 10)
    return f"""
[server]
max_inputs = 64

[[models]]
name = "intents"
path = "{INTENTS}"

[[models]]
name = "intents-tflite"
path = "{INTENTS / 'model.tflite'}"

[[models]]
name = "intents-buckets"
path = "{INTENTS / 'model_buckets.tflite'}"

[[models]]
name = "missing"
path = "{missing}"

[[models]]
name = "corrupt"
path = "{corrupt}"
"""


@pytest.fixture(scope="session")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("daemon")
    d = Daemon(workdir, models_config(workdir)).start()
    yield d
    d.stop()


def curl_available() -> bool:
    return shutil.which("curl") is not None


def health_waits_during(daemon: Daemon, path: str, body: bytes) -> tuple[httpx.Response, float, list[float]]:
    """POST `body` to `path` while another client asks GET /health, one request after another, until it is
    answered: its response, how long it took (s), and how long each /health took (s)."""
    answer: dict[str, object] = {}

    def post() -> None:
        with daemon.client() as client:
            started = time.perf_counter()
            answer["response"] = client.post(path, content=body, headers={"content-type": "application/json"})
            answer["seconds"] = time.perf_counter() - started

    waits = []
    with daemon.client() as client:
        assert client.get("/health").status_code == 200  # connected before the big request goes
        poster = threading.Thread(target=post)
        poster.start()
        while poster.is_alive():
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            waits.append(time.perf_counter() - started)
        poster.join()
    return answer["response"], answer["seconds"], waits  # type: ignore[return-value]
