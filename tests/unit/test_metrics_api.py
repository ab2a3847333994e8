"""The request path records what happened, and GET /metrics parses back with the Prometheus text parser."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeslm.config import Config, MetricsConfig, ModelConfig
from edgeslm.hw.fake import FakePowerSource
from edgeslm.hw.sensors import ThrottleState
from edgeslm.metrics.files import read_records
from edgeslm.metrics.sampler import Sensors
from edgeslm.metrics.service import Metrics, metrics_dir
from edgeslm.runtime.fake import FakeEngine
from edgeslm.server.app import build_app
from edgeslm.tasks.served import ModelRegistry, ServedModel


class FixedBits(ThrottleState):
    def __init__(self, bits: int):
        self.bits = bits

    def read_bits(self) -> int:
        return self.bits


@pytest.fixture
def served(fake_model_dir, tmp_path):
    engine = FakeEngine()
    config = ModelConfig(name="fake", path=fake_model_dir, batching={"max_batch": 4, "max_queue": 2})
    registry = ModelRegistry()
    registry.models["fake"] = ServedModel.load(config, engine=engine)
    metrics = Metrics(MetricsConfig(dir=tmp_path / "metrics", flush_interval_s=60), power=FakePowerSource(4.0),
                      sensors=Sensors(throttle=FixedBits(0x50005)),
                      queue_depths=lambda: {n: m.batcher.depth for n, m in registry.models.items()})
    metrics.sampler.tick()
    yield registry, engine, metrics
    engine.gate = None
    registry.close(timeout_s=5)
    metrics.close()


def scrape(app) -> dict:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get("/metrics")

    response = asyncio.run(go())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_requests_are_recorded_and_exposed(served, tmp_path):
    registry, engine, metrics = served
    engine.gate = threading.Event()
    app = build_app(registry, Config(models=[]), metrics=metrics)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            def send(text: str, **kw):
                return client.post("/v1/classify", json={"input": [text]}, **kw)

            first = asyncio.ensure_future(send("turn on the light", headers={"X-Request-Id": "req-1"}))
            await asyncio.sleep(0.2)
            queued = [asyncio.ensure_future(send("volume up please")) for _ in range(2)]
            await asyncio.sleep(0.2)
            refused = await send("what time is it")
            engine.gate.set()
            answered = await asyncio.gather(first, *queued)
            bad = await client.post("/v1/classify", json={"model": "nope", "input": ["x"]})
            embedded = await client.post("/v1/embeddings", json={"model": "fake", "input": ["a b c", "turn on"]})
            return refused, answered, bad, embedded

    refused, answered, bad, embedded = asyncio.run(go())
    assert refused.status_code == 503 and [r.status_code for r in answered] == [200, 200, 200]
    assert bad.status_code == 404 and embedded.status_code == 200

    samples = scrape(app)
    ok = ("edgeslm_requests_total", (("model", "fake"), ("status", "ok")))
    assert samples[ok] == 4
    assert samples[("edgeslm_requests_total", (("model", "fake"), ("status", "overloaded")))] == 1
    assert samples[("edgeslm_request_duration_seconds_count", (("model", "fake"),))] == 5
    assert samples[("edgeslm_batch_size_rows_count", (("model", "fake"),))] == 3  # 1, then 2 together, then 2
    assert samples[("edgeslm_batch_size_rows_sum", (("model", "fake"),))] == 5
    assert samples[("edgeslm_batch_size_rows_bucket", (("le", "1.0"), ("model", "fake")))] == 1
    assert samples[("edgeslm_queue_depth", (("model", "fake"),))] == 0
    assert samples[("edgeslm_power_watts", (("source", "fake"),))] == 4.0
    assert samples[("edgeslm_throttled", ())] == 1
    assert samples[("edgeslm_throttle_flag", (("flag", "under_voltage"), ("when", "since_boot")))] == 1
    assert samples[("edgeslm_throttle_flag", (("flag", "freq_capped"), ("when", "now")))] == 0
    assert samples[("edgeslm_metrics_dropped_records_total", ())] == 0

    metrics.close()
    records = list(read_records(tmp_path / "metrics"))
    requests = [r for r in records if r["kind"] == "request"]
    assert [r["status"] for r in requests].count("ok") == 4 and len(requests) == 5
    first = next(r for r in requests if r["id"] == "req-1")
    assert (first["model"], first["task"], first["rows"], first["batch"], first["tokens_in"]) == (
        "fake", "classify", 1, 1, 4)
    pair = [r for r in requests if r["task"] == "classify" and r.get("batch") == 2]
    assert len(pair) == 2
    for r in requests:
        if r["status"] == "ok":  # 4 W held over each batch's run, shared by rows (run_ms is rounded to 1 us)
            assert r["energy_j"] == pytest.approx(4.0 * r["run_ms"] / 1000 * r["rows"] / r["batch"], rel=1e-3,
                                                  abs=4.0 * 0.5e-6 + 0.5e-6 + 1e-9)
            assert r["power_source"] == "fake" and r["total_ms"] >= r["run_ms"]
    embed = next(r for r in requests if r["task"] == "embed")
    assert embed["rows"] == 2 and embed["tokens_in"] == 5
    assert next(r for r in requests if r["status"] == "overloaded").keys() >= {"ts", "mono_ns", "id", "total_ms"}
    assert any(r["kind"] == "sample" and r["throttled"] == 0x50005 for r in records)
    energy = scrape(app)[("edgeslm_energy_joules_total", (("model", "fake"),))]
    assert energy == pytest.approx(sum(r["energy_j"] for r in requests if "energy_j" in r), rel=1e-4)


def test_metrics_off_answers_404_saying_how_to_turn_them_on(served):
    registry, _, _ = served

    async def go():
        app = build_app(registry, Config(models=[]))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get("/metrics")

    response = asyncio.run(go())
    assert response.status_code == 404 and "enabled = true" in response.json()["error"]["message"]


def test_metrics_dir_default_systemd_and_explicit(tmp_path):
    assert str(metrics_dir(MetricsConfig(), {})) == "run/metrics"
    assert metrics_dir(MetricsConfig(), {"LOGS_DIRECTORY": "/var/log/edgeslm:/var/log/other"}).as_posix() == \
        "/var/log/edgeslm"
    assert metrics_dir(MetricsConfig(dir=tmp_path), {"LOGS_DIRECTORY": "/x"}) == tmp_path


def test_metrics_config_checks_sizes_and_names_the_fix():
    assert MetricsConfig(rotate_bytes="1MiB", disk_budget_bytes="3 MB").rotate_bytes == 1 << 20
    with pytest.raises(ValueError, match="at most half of disk_budget_bytes"):
        MetricsConfig(rotate_bytes="8MiB", disk_budget_bytes="10MiB")
    with pytest.raises(ValueError, match="is not a size"):
        MetricsConfig(rotate_bytes="lots")
