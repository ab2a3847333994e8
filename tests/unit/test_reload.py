"""Reloader and InFlight: what is loaded, kept, retired and when, with fake models and a real event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeslm.config import Config, ModelConfig, ServerConfig
from edgeslm.errors import ConfigError, ModelLoadError
from edgeslm.events import EventBus
from edgeslm.server.reload import InFlight, Reloader, ReloadOutcome, fingerprint, publish_outcome
from edgeslm.tasks.served import ModelRegistry

ROOT = Path(__file__).resolve().parents[2]
INTENTS = ROOT / "models" / "intents"


class FakeModel:
    """Stands in for a ServedModel: remembers whether it was closed."""

    def __init__(self, config: ModelConfig):
        self.name, self.config, self.closed = config.name, config, False

    def close(self, timeout_s: float | None = None) -> None:
        self.closed = True


def config(*models: ModelConfig, timeout_s: float = 5.0) -> Config:
    return Config(server=ServerConfig(request_timeout_s=timeout_s), models=list(models))


def model(name: str, **kwargs) -> ModelConfig:
    return ModelConfig(name=name, path=INTENTS, **kwargs)


class FakeGenerativeModel(FakeModel):
    """Stands in for a GenerativeModel: it has a generator (its streams may outlast request_timeout_s)."""

    generator = object()


class Harness:
    def __init__(self, first: Config, fail: set[str] = frozenset(), kind: type[FakeModel] = FakeModel):
        self.current, self.fail, self.loads = first, set(fail), []
        self.registry = ModelRegistry()
        for m in first.models:
            self.registry.configs[m.name] = m
            self.registry.models[m.name] = kind(m)
        self.inflight = InFlight(self._app)
        self.gate = asyncio.Event()
        self.reloader = Reloader(self.registry, first, read_config=lambda: self.current, inflight=self.inflight,
                                 load_model=self._load, retire_grace_s=0)

    def _load(self, cfg: ModelConfig) -> FakeModel:
        if cfg.name in self.fail:
            raise ModelLoadError(f"{cfg.name} is broken")
        self.loads.append(cfg.name)
        return FakeModel(cfg)

    async def _app(self, scope, receive, send) -> None:
        await self.gate.wait()  # a request that holds whatever model it looked up until the gate opens

    async def request(self, path: str = "/v1/classify") -> None:
        await self.inflight({"type": "http", "path": path}, None, None)


def run(coro):
    return asyncio.run(coro)


def test_changed_model_is_swapped_unchanged_kept_removed_retired():
    async def scenario():
        h = Harness(config(model("a"), model("b"), model("c")))
        old = dict(h.registry.models)
        h.current = config(model("a"), model("b", threads=2), model("d"))
        outcome = await h.reloader.reload()
        assert outcome.ok and outcome.loaded == ["b", "d"] and outcome.kept == ["a"] and outcome.removed == ["c"]
        assert list(h.registry.models) == ["a", "b", "d"] and h.registry.models["a"] is old["a"]
        assert h.registry.models["b"].config.threads == 2
        await h.reloader.settle()
        assert old["b"].closed and old["c"].closed and not old["a"].closed
        assert h.loads == ["b", "d"]

    run(scenario())


def test_old_model_closes_only_after_requests_begun_before_the_swap():
    async def scenario():
        h = Harness(config(model("a")))
        old = h.registry.models["a"]
        early = asyncio.create_task(h.request())
        await asyncio.sleep(0)
        h.current = config(model("a", threads=3))
        assert (await h.reloader.reload()).loaded == ["a"]
        await asyncio.sleep(0.05)
        assert not old.closed, "closed while a request that may hold it was still open"
        h.gate.set()
        await early
        await h.reloader.settle()
        assert old.closed

    run(scenario())


def test_a_model_that_fails_to_load_leaves_everything_as_it_was():
    async def scenario():
        h = Harness(config(model("a"), model("b")), fail={"b"})
        before = dict(h.registry.models)
        h.current = config(model("a", threads=2), model("b", threads=2))
        outcome = await h.reloader.reload()
        assert not outcome.ok and "model 'b' would not load: b is broken" in outcome.summary()
        assert h.registry.models == before and not any(m.closed for m in before.values())
        assert h.reloader.config.models[0].threads == 0

    run(scenario())


def test_a_bad_config_file_keeps_the_running_one():
    async def scenario():
        h = Harness(config(model("a")))

        def broken() -> Config:
            raise ConfigError("bad configuration (edgeslm.toml):\n  models[0].runtime: ...")

        h.reloader.read_config = broken
        outcome = await h.reloader.reload()
        assert not outcome.ok and "still serving the previous config" in outcome.summary()
        assert list(h.registry.models) == ["a"]

    run(scenario())


def test_a_model_that_was_failing_and_still_fails_does_not_block_the_others():
    async def scenario():
        h = Harness(config(model("a")), fail={"x"})
        h.registry.failed["x"] = "missing file"
        h.current = config(model("a", threads=1), model("x"))
        outcome = await h.reloader.reload()
        assert outcome.ok and outcome.loaded == ["a"] and "x" in outcome.still_failed
        assert h.registry.failed == {"x": "x is broken"}

    run(scenario())


def test_a_new_file_in_place_counts_as_a_change(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"one")
    cfg = ModelConfig(name="m", path=folder)
    before = fingerprint(cfg)
    (folder / "model.onnx").write_bytes(b"a longer file")
    assert fingerprint(cfg) != before
    assert fingerprint(ModelConfig(name="gone", path=tmp_path / "nope" / "model.onnx")) is None


def test_settings_that_need_a_restart_are_named():
    async def scenario():
        h = Harness(config(model("a")))
        h.current = Config(server=ServerConfig(socket_path=Path("/tmp/other.sock")), models=[model("a")])
        outcome = await h.reloader.reload()
        assert outcome.restart_needed == ["server.socket_path"] and "restart to apply" in outcome.summary()
        # The connection guard takes its limits once, at start-up.
        h.current = Config(server=ServerConfig(socket_path=Path("/tmp/other.sock"), max_connections=64,
                                               header_timeout_s=3), models=[model("a")])
        outcome = await h.reloader.reload()
        assert outcome.restart_needed == ["server.header_timeout_s", "server.max_connections"]

    run(scenario())


@pytest.mark.parametrize("timeout_s", [0.05])
def test_waiting_for_old_requests_gives_up_after_the_timeout(timeout_s):
    async def scenario():
        h = Harness(config(model("a")))
        stuck = asyncio.create_task(h.request())
        await asyncio.sleep(0)
        assert await h.inflight.finished_before(h.inflight.advance(), timeout_s) is False
        h.gate.set()
        await stuck
        assert await h.inflight.finished_before(h.inflight.epoch, timeout_s) is True

    run(scenario())


def test_event_streams_do_not_hold_back_a_retirement():
    async def scenario():
        h = Harness(config(model("a")))
        stream = asyncio.create_task(h.request("/v1/events"))
        await asyncio.sleep(0)
        assert h.inflight.count == 0
        assert await h.inflight.finished_before(h.inflight.advance(), 0.05) is True
        h.gate.set()
        await stream

    run(scenario())


def test_a_generation_model_waits_for_its_streams_past_the_request_timeout():
    async def scenario():
        h = Harness(config(model("llm"), timeout_s=0.01), kind=FakeGenerativeModel)
        old = h.registry.models["llm"]
        stream = asyncio.create_task(h.request("/v1/chat/completions"))
        await asyncio.sleep(0)
        h.current = config(model("llm", threads=2), timeout_s=0.01)
        assert (await h.reloader.reload()).loaded == ["llm"]
        await asyncio.sleep(0.2)  # 20 request timeouts: a classifier would have been closed by now
        assert not old.closed, "a generation model was closed under a stream that was still running"
        h.gate.set()
        await stream
        await h.reloader.settle()
        assert old.closed

    run(scenario())


def test_reload_outcomes_become_model_events():
    bus = EventBus()
    publish_outcome(bus, ReloadOutcome(loaded=["a"], kept=["k"], removed=["b"], still_failed={"c": "no file"}))
    publish_outcome(bus, ReloadOutcome(ok=False, error=ModelLoadError("model 'a' would not load: gone")))
    events = [(e.kind, e.data) for e in bus.subscribe(since=0).drain()]
    assert events == [
        ("model", {"model": "a", "state": "ready", "reloaded": True}),
        ("model", {"model": "b", "state": "removed"}),
        ("model", {"model": "c", "state": "failed", "error": "no file"}),
        ("model", {"state": "reload_failed",
                   "error": "reload failed, still serving the previous config: model 'a' would not load: gone"}),
    ]
