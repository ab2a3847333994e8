"""Start-up and shutdown of the daemon: bind, load models, serve, drain, clean up."""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

import uvicorn

from edgeslm import __version__
from edgeslm.config import Config
from edgeslm.metrics.service import Metrics
from edgeslm.server.app import build_app
from edgeslm.server.edge import EdgeServices
from edgeslm.server.listen import bind_unix_socket, remove_socket, socket_inode
from edgeslm.tasks.served import ModelRegistry

log = logging.getLogger(__name__)


class DaemonServer(uvicorn.Server):
    """uvicorn's server, but the daemon owns its signals: the first SIGINT/SIGTERM drains, a second forces.

    uvicorn would re-raise the signal after draining, killing the process before
    models are closed and the socket file is removed; we return normally instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # embedded in a test or a thread: the owner stops us with should_exit
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: object) -> None:
        if self.should_exit:
            self.force_exit = True
            log.warning("second signal: closing open connections without waiting")
        else:
            self.should_exit = True
            log.info("signal %s: finishing in-flight requests, then exiting", signal.Signals(sig).name)


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


def open_metrics(config: Config, registry: ModelRegistry) -> Metrics | None:
    """The recorder, sampler and /metrics registry, started; None when metrics.enabled is false."""
    if not config.metrics.enabled:
        return None
    metrics = Metrics(config.metrics, queue_depths=lambda: {n: m.batcher.depth for n, m in registry.models.items()})
    metrics.start()
    return metrics


def serve(config: Config, *, out: TextIO = sys.stdout,
          registry_factory: Callable[[Config], ModelRegistry] | None = None) -> int:
    """Run the daemon in the foreground until SIGINT/SIGTERM; returns the exit status."""
    server_config = config.server
    path = server_config.socket_path
    sock = bind_unix_socket(path, mode=server_config.socket_mode, group=server_config.socket_group)
    inode = socket_inode(path)
    registry = edge = metrics = None
    try:
        registry = (registry_factory or (lambda c: ModelRegistry.load(c.models)))(config)
        metrics = open_metrics(config, registry)
        edge = EdgeServices.start(config, registry, recorder=metrics.recorder if metrics else None)
        app = build_app(registry, config, edge, metrics)
        uv_config = uvicorn.Config(
            app, http="httptools", loop="uvloop", lifespan="off", access_log=False, log_level="warning",
            timeout_graceful_shutdown=server_config.shutdown_timeout_s, server_header=False, date_header=False,
            log_config=None,
        )
        print(f"edgeslm {__version__} listening on {path} (mode {server_config.socket_mode:04o})", file=out)
        for line in _describe_models(registry) + edge.describe():
            print(line, file=out)
        print(f"  {metrics.describe()}" if metrics else "  metrics: off (metrics.enabled = false)", file=out)
        if not registry.models:
            print("  no model is serving; /ready answers 503 until the config is fixed", file=out)
        print(f"try: curl --unix-socket {path} http://localhost/ready   (Ctrl-C stops)", file=out, flush=True)
        # What start-up built (models, tokenizers, the app) lives as long as the daemon: out of the collector's
        # sight, a full collection no longer walks it between requests.
        gc.collect()
        gc.freeze()
        server = DaemonServer(uv_config)
        edge.stopping = lambda: server.should_exit  # ends open event streams so shutdown does not wait on them
        server.run(sockets=[sock])
        log.info("stopped accepting; closing models")
    finally:
        if edge is not None:
            edge.close()
        if registry is not None:
            registry.close(timeout_s=server_config.shutdown_timeout_s)
        if metrics is not None:
            metrics.close()
        sock.close()
        remove_socket(path, inode)
    print("edgeslm stopped", file=out, flush=True)
    return 0
