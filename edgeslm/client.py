"""A small client for the daemon's Unix socket, used by the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from edgeslm.config import DEFAULT_SOCKET_PATH, load_config
from edgeslm.errors import ConfigError, DaemonUnreachableError, EdgeslmError

SYSTEM_SOCKET = Path("/run/edgeslm/edgeslm.sock")


class DaemonError(EdgeslmError):
    """The daemon answered with an error body."""

    def __init__(self, message: str, *, status: int, code: str, param: str | None = None):
        super().__init__(message, param=param, code=code)
        self.status = status


def find_socket(explicit: Path | None = None, config_path: Path | None = None) -> Path:
    """--socket, else EDGESLM_SOCKET, else the config's socket, else ./run/edgeslm.sock or the systemd one.

    A config the user named (--config or EDGESLM_CONFIG) that is missing or bad is a ConfigError; a bad
    system-wide one only falls back to the default socket, as the daemon it describes cannot be running.
    """
    if explicit is not None:
        return explicit
    if os.environ.get("EDGESLM_SOCKET"):
        return Path(os.environ["EDGESLM_SOCKET"])
    try:
        configured = load_config(config_path).server.socket_path
    except ConfigError:
        if config_path is not None or os.environ.get("EDGESLM_CONFIG"):
            raise
        configured = DEFAULT_SOCKET_PATH
    if configured == DEFAULT_SOCKET_PATH and not configured.exists() and SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET
    return configured


class Client:
    """JSON over HTTP/1.1 on the daemon's Unix socket."""

    def __init__(self, socket_path: Path, *, timeout_s: float = 60.0):
        self.socket_path = Path(socket_path)
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        self._http = httpx.Client(transport=transport, base_url="http://localhost", timeout=timeout_s)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, content: bytes | None = None,
                headers: dict[str, str] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body, content=content, headers=headers)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise DaemonUnreachableError(
                f"no daemon answers on {self.socket_path} ({exc}); start one with `edgeslm serve` "
                "or point at it with --socket PATH"
            ) from None
        try:
            payload = response.json()
        except ValueError:
            raise DaemonError(f"daemon sent a non-JSON answer (HTTP {response.status_code})",
                              status=response.status_code, code="bad_response") from None
        if response.status_code >= 400 and isinstance(payload, dict) and "error" in payload:
            error = payload["error"]
            raise DaemonError(error.get("message", "unknown error"), status=response.status_code,
                              code=error.get("code", "error"), param=error.get("param"))
        return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def events(self, path: str = "/v1/events") -> Iterator[tuple[str, str]]:
        """Server-sent events as (kind, data) pairs, until the daemon ends the stream."""
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(10.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    error = response.json().get("error", {})
                    raise DaemonError(error.get("message", "unknown error"), status=response.status_code,
                                      code=error.get("code", "error"), param=error.get("param"))
                kind, data = "message", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        yield kind, "\n".join(data)
                        kind, data = "message", []
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise DaemonUnreachableError(f"no daemon answers on {self.socket_path} ({exc}); start one with "
                                         "`edgeslm serve` or point at it with --socket PATH") from None
    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST with "stream": true and yield each server-sent event's JSON until data: [DONE]."""
        try:
            with self._http.stream("POST", path, json={**body, "stream": True}) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for(response.status_code, response.json())
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        return
                    event = json.loads(line[6:])
                    if "error" in event:
                        self._raise_for(500, event)
                    yield event
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            raise DaemonUnreachableError(
                f"no daemon answers on {self.socket_path} ({exc}); start one with `edgeslm serve` "
                "or point at it with --socket PATH"
            ) from None

    @staticmethod
    def _raise_for(status: int, payload: Any) -> None:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        raise DaemonError(error.get("message", f"HTTP {status}"), status=status, code=error.get("code", "error"),
                          param=error.get("param"))

    def close(self) -> None:
        self._http.close()
