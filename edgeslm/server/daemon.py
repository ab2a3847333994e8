"""Start-up and shutdown of the daemon: bind (or take systemd's socket), load models, serve, reload, drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TextIO

import uvicorn

from edgeslm import __version__
from edgeslm.config import Config
from edgeslm.metrics.service import Metrics
from edgeslm.server.access import AccessPolicy
from edgeslm.server.app import build_app
from edgeslm.server.connections import ConnectionGuard, fit_connection_cap, protocol_class
from edgeslm.server.edge import EdgeServices
from edgeslm.server.listen import bind_unix_socket, remove_socket, socket_inode
from edgeslm.server.log_limits import limit_client_triggered
from edgeslm.server.reload import InFlight, Reloader, ReloadOutcome, fingerprint, publish_outcome
from edgeslm.server.systemd import Notifier, listen_sockets, socket_name
from edgeslm.tasks.served import ModelRegistry

log = logging.getLogger(__name__)


class DaemonServer(uvicorn.Server):
    """uvicorn's server, but the daemon owns its signals: the first SIGINT/SIGTERM drains, a second forces,
    SIGHUP reloads. It tells the service manager (when there is one) that it is ready, alive, reloading
    and stopping.

    uvicorn would re-raise the signal after draining, killing the process before
    models are closed and the socket file is removed; we return normally instead.
    """

    def __init__(self, config: uvicorn.Config, *, notifier: Notifier | None = None,
                 status: Callable[[], str] = lambda: "serving", inflight: InFlight | None = None,
                 reloader: Reloader | None = None, hangups: list[int] | None = None, stops: list[int] | None = None,
                 guard: ConnectionGuard | None = None):
        super().__init__(config)
        self.guard = guard  # swept once a second (on_tick)
        self.stops = stops if stops is not None else []  # SIGINT/SIGTERMs seen before serving began
        self.notifier = notifier or Notifier({})
        self.status, self.inflight, self.reloader = status, inflight, reloader
        self.hangups = hangups if hangups is not None else []  # SIGHUPs seen before serving began
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reloads: set[asyncio.Task] = set()
        self._previous_handlers: dict[int, Any] = {}
        self.closing = False  # serving has ended; the daemon is closing models and files

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Take SIGINT, SIGTERM and SIGHUP, and keep them after serving ends: the daemon still has to close its
        models, write the last records and remove the socket, and a signal's default action would kill it
        part way. `release_signals` hands them back once that is done."""
        if threading.current_thread() is not threading.main_thread():
            yield  # embedded in a test or a thread: the owner stops us with should_exit
            return
        handlers: dict[int, Any] = {signal.SIGINT: self.handle_exit, signal.SIGTERM: self.handle_exit,
                                    signal.SIGHUP: self.handle_reload}
        self._previous_handlers = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        if self.stops:
            self.should_exit = True
            log.info("signal %s arrived during start-up: stopping", signal.Signals(self.stops[0]).name)
        try:
            yield
        finally:
            self.closing = True

    def release_signals(self) -> None:
        """Give the signals back to whoever had them before serving (the end of the daemon's close)."""
        previous, self._previous_handlers = self._previous_handlers, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: object) -> None:
        if self.closing:
            log.warning("%s while closing: writing the last records and removing the socket first (models get at "
                        "most %g s each; SIGKILL stops at once and loses them)", signal.Signals(sig).name,
                        self.config.timeout_graceful_shutdown or 0)
        elif self.should_exit:
            self.force_exit = True
            log.warning("second signal: closing open connections without waiting")
        else:
            self.should_exit = True
            log.info("signal %s: finishing in-flight requests, then exiting", signal.Signals(sig).name)

    def handle_reload(self, sig: int, frame: object) -> None:
        if self._loop is None or self.reloader is None:
            self.hangups.append(sig)  # not serving yet: reload once we are
        elif not self.should_exit:
            self._loop.call_soon_threadsafe(self.start_reload)

    def start_reload(self) -> None:
        assert self.reloader is not None
        task = asyncio.ensure_future(self.reloader.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        self.notifier.ready(self.status())
        if self.hangups and self.reloader is not None:
            log.info("a reload was asked for during start-up; reloading now")
            self.start_reload()

    async def on_tick(self, counter: int) -> bool:
        self.notifier.tick()  # from the event loop itself, so a stuck loop stops the pings and systemd acts
        if self.guard is not None and counter % 10 == 0 and self._loop is not None:  # ticks come every 0.1 s
            self.guard.sweep(self._loop.time())
        return await super().on_tick(counter)

    async def shutdown(self, sockets: Any = None) -> None:
        in_flight = self.inflight.count if self.inflight is not None else 0
        log.info("stopped accepting; draining %d in-flight request(s)", in_flight)
        self.notifier.stopping(f"draining {in_flight} in-flight request(s)")
        await super().shutdown(sockets=sockets)
        if self.guard is not None:
            self.guard.end_burst()
        if self._reloads:
            await asyncio.gather(*self._reloads, return_exceptions=True)
        if self.reloader is not None:
            await self.reloader.settle()


# The cyclic collector's young-generation threshold while serving (Python's default is 700). Serving makes no
# cyclic garbage (none found over 6000 requests at 32 clients), but each request allocates and frees a few
# hundred tracked objects, and the count of allocations minus frees swings with the requests in flight: at 700
# those swings alone set off a collection every ~25 requests, each walking every in-flight request's objects.
# Measured at 32 clients on a 2-core VM: 12-18 us of collection a request at 700, about 4 us at 5000 (pauses
# ~1.5 ms, ~20x rarer). Cyclic garbage, should there be any, waits for at most 5000 allocations.
GC_YOUNG_THRESHOLD = 5_000


def settle_collector() -> None:
    """Before serving: what start-up built (models, tokenizers, the app) lives as long as the daemon, so it goes
    out of the collector's sight (a full collection no longer walks it between requests), and the young
    generation is collected less often (GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _describe_models(registry: ModelRegistry) -> list[str]:
    lines = []
    for name, model in registry.models.items():
        info = model.info()
        size_mb = info["file_size_bytes"] / 1e6
        check = model.selfcheck
        checked = "" if not check else (f", selfcheck ok (min cosine {check['min_cosine']:.4f})"
                                        if "min_cosine" in check else ", selfcheck ok")
        lines.append(f"  {name}: ready - {info.get('runtime_version', info['runtime'])}, {model.path.name} "
                     f"{size_mb:.1f} MB, {info.get('quantization') or 'unknown quantization'}; "
                     f"tasks {', '.join(model.tasks)}{checked}")
    for name, why in registry.failed.items():
        lines.append(f"  {name}: FAILED - {why}")
    return lines


def status_text(registry: ModelRegistry) -> str:
    """One line for `systemctl status`: what serves, what failed."""
    serving = ", ".join(f"{name} ({m.engine.runtime})" for name, m in registry.models.items()) or "no model"
    failed = f"; failed: {', '.join(registry.failed)}" if registry.failed else ""
    return f"serving {serving}{failed}"


class StartupInterrupted(BaseException):
    """SIGINT/SIGTERM while models load: start-up is abandoned and what was opened is closed. A BaseException,
    like KeyboardInterrupt, so that code catching a model's load errors does not take it for one."""


@contextlib.contextmanager
def _signals_before_serving() -> Iterator[StartupSignals]:
    """Until the server takes the signals, SIGINT/SIGTERM stop start-up cleanly and SIGHUP waits for it.

    Taken before the socket is bound. A SIGHUP (whose default action kills) is remembered, so the reload
    happens once serving begins. While the socket is being made a stop signal is only remembered (an exception
    there could leave the file behind); `loading()` raises any remembered one as StartupInterrupted, and from
    then on, while models load, a stop signal raises it at once (serve closes what was opened, removes the
    socket and exits 0). After `remember_only()` it is only remembered again, and the server stops as soon as
    it starts (DaemonServer.capture_signals).
    """
    seen = StartupSignals()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def arrived(sig: int, frame: object) -> None:
        if sig == signal.SIGHUP:
            seen.hangups.append(sig)
            return
        seen.stops.append(sig)
        if seen.raising:
            raise StartupInterrupted(signal.Signals(sig).name)

    previous = {sig: signal.signal(sig, arrived) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield seen
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StartupSignals:
    """Signals seen before serving, and whether a stop now interrupts start-up (see _signals_before_serving)."""

    def __init__(self) -> None:
        self.stops: list[int] = []  # SIGINT/SIGTERM
        self.hangups: list[int] = []  # SIGHUP
        self.raising = False

    def loading(self) -> None:
        if self.stops:
            raise StartupInterrupted(signal.Signals(self.stops[0]).name)
        self.raising = True

    def remember_only(self) -> None:
        self.raising = False


def _queue_depth(model: Any) -> int:
    """Requests waiting: in a batcher's queue, or (generation models) for a KV-cache slot."""
    batcher = getattr(model, "batcher", None)
    return batcher.depth if batcher is not None else model.generator.scheduler.waiting


def open_metrics(config: Config, registry: ModelRegistry) -> Metrics | None:
    """The recorder, sampler and /metrics registry, started; None when metrics.enabled is false."""
    if not config.metrics.enabled:
        return None
    metrics = Metrics(config.metrics, queue_depths=lambda: {n: _queue_depth(m) for n, m in registry.models.items()})
    metrics.start()
    return metrics


def serve(config: Config, *, out: TextIO = sys.stdout,
          registry_factory: Callable[[Config], ModelRegistry] | None = None,
          read_config: Callable[[], Config] | None = None,
          env: MutableMapping[str, str] | None = None) -> int:
    """Run the daemon in the foreground until SIGINT/SIGTERM; returns the exit status.

    `read_config` gives the config again on SIGHUP or POST /admin/reload (default: the same one,
    so only models whose files changed are reloaded). Under systemd, `env` carries
    LISTEN_FDS / NOTIFY_SOCKET / WATCHDOG_USEC (default: the process environment).
    """
    # Tokenise in the calling thread. The tokenizers library otherwise spreads a batch over a thread pool
    # whose threads spin while they wait: on a 2-core board that CPU is the event loop's and the batch
    # workers'. Measured here, 16 texts: 161 us of CPU serially against 370 us spread out, and one text
    # per request at 32 clients lost a third of its throughput to the pool. A user's own setting wins.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    limit_client_triggered()  # a client looping on bad HTTP or new connections cannot flood the log
    server_config = config.server
    policy = AccessPolicy.from_config(config.access)
    notifier = Notifier(env)
    with _signals_before_serving() as seen:
        sockets = listen_sockets(env)
        path, inode = server_config.socket_path, None
        if sockets:
            where = ", ".join(socket_name(sock) for sock in sockets) + " (passed by systemd)"
        else:
            sockets = [bind_unix_socket(path, mode=server_config.socket_mode, group=server_config.socket_group)]
            inode = socket_inode(path)
            where = f"{path} (mode {server_config.socket_mode:04o})"
        registry = edge = metrics = server = None
        try:
            seen.loading()
            fingerprints = {model.name: fingerprint(model) for model in config.models}
            registry = (registry_factory or (lambda c: ModelRegistry.load(c.models)))(config)
            metrics = open_metrics(config, registry)
            edge = EdgeServices.start(config, registry, recorder=metrics.recorder if metrics else None)
            app = build_app(registry, config, edge, metrics)
            inflight = InFlight(app)
            guard = ConnectionGuard(header_timeout_s=server_config.header_timeout_s,
                                    body_timeout_s=server_config.body_timeout_s,
                                    send_timeout_s=server_config.send_timeout_s,
                                    max_connections=fit_connection_cap(server_config.max_connections))
            uv_config = uvicorn.Config(
                inflight, http=protocol_class(policy, guard), loop="uvloop", lifespan="off", access_log=False,
                log_level="warning", timeout_graceful_shutdown=server_config.shutdown_timeout_s,
                server_header=False, date_header=False, log_config=None,
                proxy_headers=False,  # a Unix socket has no proxy in front; the middleware only costs time
                ws="none",  # no WebSocket routes; an upgraded connection would also leave the guard's sight
            )
            status = functools.partial(status_text, registry)
            bus = edge.bus

            def reloaded(outcome: ReloadOutcome) -> None:
                publish_outcome(bus, outcome)
                notifier.ready(status())

            reloader = Reloader(registry, config, read_config=read_config or (lambda: config), inflight=inflight,
                                api=app.state.api, access=policy, fingerprints=fingerprints,
                                on_reloading=notifier.reloading, on_done=reloaded)
            app.state.reloader = reloader
            server = DaemonServer(uv_config, notifier=notifier, status=status, inflight=inflight,
                                  reloader=reloader, hangups=seen.hangups, stops=seen.stops, guard=guard)
            edge.stopping = lambda: server.should_exit  # ends open event streams so shutdown does not wait on them
            print(f"edgeslm {__version__} listening on {where}", file=out)
            for line in _describe_models(registry) + edge.describe():
                print(line, file=out)
            print(f"  {metrics.describe()}" if metrics else "  metrics: off (metrics.enabled = false)", file=out)
            if not registry.models:
                print("  no model is serving; /ready answers 503 until the config is fixed", file=out)
            if policy.restricted:
                print(f"  access: uids {sorted(policy.allow_uids)}, gids {sorted(policy.allow_gids)}, root and "
                      f"uid {policy.own_uid}; others get 403", file=out)
            first = socket_name(sockets[0])
            print(f"try: curl --unix-socket {first} http://localhost/ready   (Ctrl-C stops, SIGHUP reloads)",
                  file=out, flush=True)
            settle_collector()
            seen.remember_only()
            server.run(sockets=sockets)
            log.info("closing models")
        except StartupInterrupted as interrupted:
            print(f"{interrupted} during start-up: stopping", file=out, flush=True)
        finally:
            seen.remember_only()  # from here a signal is only remembered: closing must finish
            if edge is not None:
                edge.close()
            if registry is not None:
                registry.close(timeout_s=server_config.shutdown_timeout_s)
            if metrics is not None:
                metrics.close()  # after the models: records of the last requests are in the recorder by now
            for sock in sockets:
                sock.close()
            if inode is not None:
                remove_socket(path, inode)
            notifier.close()
            if server is not None:
                server.release_signals()  # held since serving ended (DaemonServer.capture_signals)
    print("edgeslm stopped", file=out, flush=True)
    return 0
