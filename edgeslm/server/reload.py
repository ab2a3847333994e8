"""Reload without dropping a request: re-read the config, load changed models beside the old, swap, retire."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from edgeslm.config import Config, ModelConfig
from edgeslm.errors import EdgeslmError, ModelLoadError, ModelNotReadyError
from edgeslm.server.access import AccessPolicy, peer_from_scope
from edgeslm.server.bridge import error_response, json_response
from edgeslm.tasks.served import ModelRegistry, ServedModel, load_model

log = logging.getLogger(__name__)
Fingerprint = tuple[tuple[str, int, int], ...] | None
RESTART_ONLY_SERVER_KEYS = ("socket_path", "socket_mode", "socket_group", "header_timeout_s", "body_timeout_s",
                            "send_timeout_s", "max_connections")


class InFlight:
    """ASGI middleware that counts HTTP requests in progress by the reload epoch they started in.

    A handler may hold a model from the moment it looks it up until it answers, so a model
    swapped out in epoch N is only closed once every request begun before N has finished.
    Paths under `untracked` (event streams, which hold no model) are not counted.
    """

    def __init__(self, app: Any, untracked: tuple[str, ...] = ("/v1/events",)):
        self.app = app
        self.untracked = untracked
        self.epoch = 0
        self.open: dict[int, int] = {}
        self._waiters: list[asyncio.Future] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.untracked):
            await self.app(scope, receive, send)
            return
        epoch = self.epoch
        self.open[epoch] = self.open.get(epoch, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.open[epoch] - 1
            if left:
                self.open[epoch] = left
            else:
                del self.open[epoch]
                for waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._waiters.clear()

    @property
    def count(self) -> int:
        return sum(self.open.values())

    def advance(self) -> int:
        """Start a new epoch; returns it."""
        self.epoch += 1
        return self.epoch

    async def finished_before(self, epoch: int, timeout_s: float | None) -> bool:
        """Wait until no request begun before `epoch` is open; False if `timeout_s` (None: no limit) ran out first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while any(e < epoch for e in self.open):
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return False
        return True


def fingerprint(config: ModelConfig) -> Fingerprint:
    """Names, sizes and mtimes of the model's folder: a new file dropped in place means a changed model."""
    if config.path is None:
        return None
    folder = config.path if config.path.is_dir() else config.path.parent
    try:
        return tuple(sorted((p.name, st.st_size, st.st_mtime_ns) for p in folder.iterdir()
                            if p.is_file() and (st := p.stat())))
    except OSError:
        return None


class ReloadAnswer(BaseModel):
    """The body of POST /admin/reload when it worked (a 422 error body carries it under "reload" otherwise)."""

    ok: bool
    loaded: list[str] = Field(description="models (re)loaded because their settings or files changed")
    kept: list[str] = Field(description="unchanged models, still the same instances")
    removed: list[str] = Field(description="models no longer in the config, closed once their requests finish")
    still_failed: dict[str, str] = Field(description="models that failed before and still fail, with why")
    restart_needed: list[str] = Field(description="changed settings that only a restart applies")
    summary: str


@dataclass
class ReloadOutcome:
    """What a reload did, for the log, the CLI and the HTTP answer."""

    ok: bool = True
    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    still_failed: dict[str, str] = field(default_factory=dict)
    restart_needed: list[str] = field(default_factory=list)
    error: EdgeslmError | None = None

    def summary(self) -> str:
        if not self.ok:
            return f"reload failed, still serving the previous config: {self.error}"
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("loaded", self.loaded), ("kept", self.kept), ("removed", self.removed)) if names]
        parts += [f"{name} still failing ({why})" for name, why in self.still_failed.items()]
        if self.restart_needed:
            parts.append(f"restart to apply {', '.join(self.restart_needed)}")
        return "reloaded: " + ("; ".join(parts) or "nothing configured")

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "loaded": self.loaded, "kept": self.kept, "removed": self.removed,
                "still_failed": self.still_failed, "restart_needed": self.restart_needed,
                "summary": self.summary()}


class Reloader:
    """Applies a re-read config to a running daemon, one reload at a time.

    Changed models (config or files) load in a worker thread beside the old ones while
    requests go on; if any fails, everything stays as it was. Otherwise the registry is
    switched in one step on the event loop, and the old models are closed once the
    requests that could still hold them have finished (and their queues drained).
    """

    def __init__(self, registry: ModelRegistry, config: Config, *, read_config: Callable[[], Config],
                 inflight: InFlight, api: Any = None, access: AccessPolicy | None = None,
                 load_model: Callable[[ModelConfig], Any] = load_model,
                 fingerprints: Mapping[str, Fingerprint] | None = None,
                 on_reloading: Callable[[], Any] = lambda: None,
                 on_done: Callable[[ReloadOutcome], Any] = lambda outcome: None, retire_grace_s: float = 1.0):
        self.registry, self.config, self.read_config = registry, config, read_config
        self.inflight, self.api, self.access, self.load_model = inflight, api, access, load_model
        self.fingerprints = dict(fingerprints) if fingerprints is not None else {
            m.name: fingerprint(m) for m in config.models}
        self.on_reloading, self.on_done = on_reloading, on_done
        # Users outside HTTP (voice, GPIO actions) look a model up and submit at once; this covers that instant.
        self.retire_grace_s = retire_grace_s
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()

    def may_administer(self, scope: dict) -> bool:
        return self.access is None or self.access.is_admin(peer_from_scope(scope))

    async def reload(self) -> ReloadOutcome:
        async with self._lock:
            self.on_reloading()
            try:
                outcome = await self._reload()
            except EdgeslmError as exc:
                outcome = ReloadOutcome(ok=False, error=exc)
            (log.info if outcome.ok else log.error)("%s", outcome.summary())
            self.on_done(outcome)
            return outcome

    async def _reload(self) -> ReloadOutcome:
        new = await asyncio.to_thread(self.read_config)
        registry, outcome = self.registry, ReloadOutcome()
        wanted = {m.name: m for m in new.models if m.enabled}
        prints = {name: await asyncio.to_thread(fingerprint, m) for name, m in wanted.items()}
        unchanged = {name for name, m in wanted.items() if name in registry.models
                     and registry.configs.get(name) == m and self.fingerprints.get(name) == prints[name]}
        to_load = [m for name, m in wanted.items() if name not in unchanged]
        loaded: dict[str, ServedModel] = {}
        try:
            for model_config in to_load:
                try:
                    loaded[model_config.name] = await asyncio.to_thread(self.load_model, model_config)
                except EdgeslmError as exc:
                    if model_config.name in registry.failed:  # was broken before; staying broken is no regression
                        outcome.still_failed[model_config.name] = str(exc)
                        continue
                    raise ModelLoadError(f"model {model_config.name!r} would not load: {exc}") from exc
        except BaseException:
            for model in loaded.values():
                await asyncio.to_thread(model.close, 0)
            raise
        # The switch: one step on the event loop, so a request sees either the old models or the new.
        old = registry.models
        registry.models = {name: loaded[name] if name in loaded else old[name]
                           for name in wanted if name in loaded or name in old}
        registry.failed = dict(outcome.still_failed)
        registry.configs = dict(wanted)
        self.fingerprints = prints
        self._apply_settings(new, outcome)
        self.config = new
        retired = [model for name, model in old.items() if registry.models.get(name) is not model]
        outcome.loaded = list(loaded)
        outcome.kept = [name for name in registry.models if name not in loaded]
        outcome.removed = [name for name in old if name not in wanted]
        if retired:
            task = asyncio.create_task(self._retire(retired, self.inflight.advance()))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return outcome

    def _apply_settings(self, new: Config, outcome: ReloadOutcome) -> None:
        old = self.config
        outcome.restart_needed = [f"server.{key}" for key in RESTART_ONLY_SERVER_KEYS
                                  if getattr(old.server, key) != getattr(new.server, key)]
        outcome.restart_needed += [f"[{name}]" for name in type(new).model_fields if name not in
                                   ("server", "models", "access") and getattr(old, name) != getattr(new, name)]
        if self.api is not None:
            self.api.server = new.server  # limits and timeouts apply from the next request
        if new.server.log_level != old.server.log_level:
            logging.getLogger().setLevel(new.server.log_level.upper())
        if self.access is not None:
            fresh = AccessPolicy.from_config(new.access, own_uid=self.access.own_uid)
            self.access.allow_uids, self.access.allow_gids = fresh.allow_uids, fresh.allow_gids
            self.access.log_connections = fresh.log_connections

    async def _retire(self, models: list[ServedModel], epoch: int) -> None:
        # A generation stream may rightly run far longer than request_timeout_s (that bounds a stall, not a
        # stream), and always ends by itself (max_tokens, context, stall deadline): wait for it to end.
        streams = [m.name for m in models if hasattr(m, "generator")]
        grace_s = None if streams else self.config.server.request_timeout_s
        if streams:
            log.info("the replaced generation model(s) %s close once their open streams end", ", ".join(streams))
        if not await self.inflight.finished_before(epoch, grace_s):
            log.warning("requests begun before the reload are still open after %g s; closing the old models anyway",
                        grace_s)
        await asyncio.sleep(self.retire_grace_s)
        for model in models:
            await asyncio.to_thread(model.close, self.config.server.shutdown_timeout_s)
        log.info("closed the replaced model(s): %s", ", ".join(m.name for m in models))

    async def settle(self) -> None:
        """Wait for replaced models to be closed (call before exiting)."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def publish_outcome(bus: Any, outcome: ReloadOutcome) -> None:
    """Reload results as "model" events on the edge event bus (what `edgeslm listen` shows)."""
    if not outcome.ok:
        bus.publish("model", state="reload_failed", error=outcome.summary())
        return
    for name in outcome.loaded:
        bus.publish("model", model=name, state="ready", reloaded=True)
    for name in outcome.removed:
        bus.publish("model", model=name, state="removed")
    for name, why in outcome.still_failed.items():
        bus.publish("model", model=name, state="failed", error=why)


def config_reader(path: Path | None, env: Mapping[str, str] | None = None) -> Callable[[], Config]:
    """Re-reads the same file (and environment) the daemon started from."""
    from edgeslm.config import load_config

    return lambda: load_config(path, env)


async def reload_endpoint(request: Request) -> Response:
    """POST /admin/reload: what SIGHUP does, answered with the outcome; root and the daemon's user only."""
    reloader: Reloader | None = getattr(request.app.state, "reloader", None)
    if reloader is None:
        raise ModelNotReadyError("this server was not started by `edgeslm serve`; it cannot reload")
    if not reloader.may_administer(request.scope):
        return error_response(403, "forbidden", "only root and the daemon's own user may reload it; "
                              "use `sudo edgeslm reload` or `sudo systemctl reload edgeslm`", kind="permission_error")
    outcome = await reloader.reload()
    if outcome.ok:
        return json_response(outcome.as_dict())
    assert outcome.error is not None
    body = {"error": {"code": outcome.error.code, "message": outcome.summary(), "type": "reload_error",
                      "param": outcome.error.param}, "reload": outcome.as_dict()}
    return json_response(body, 422)
