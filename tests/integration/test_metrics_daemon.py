"""A real daemon writes request and power records for real requests; a full disk costs records, not answers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeslm.metrics.files import read_records

from .conftest import INTENTS, Daemon

pytestmark = pytest.mark.integration


def config(metrics_dir: Path, flush_s: float = 0.3) -> str:
    return f"""
[[models]]
name = "intents"
path = "{INTENTS}"

[metrics]
dir = "{metrics_dir}"
flush_interval_s = {flush_s}
sample_hz = 5
record_interval_s = 1
"""


def wait_for(predicate, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def scrape(daemon: Daemon) -> dict:
    text = daemon.client().get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_real_requests_leave_records_on_disk(tmp_path):
    folder = tmp_path / "metrics"
    daemon = Daemon(tmp_path, config(folder)).start()
    try:
        with daemon.client() as client:
            for i in range(12):
                texts = ["turn on the kitchen light"] if i % 3 else ["what time is it", "volume up", "lights off"]
                response = client.post("/v1/classify", json={"model": "intents", "input": texts},
                                       headers={"X-Request-Id": f"it-{i}"})
                assert response.status_code == 200, response.text
            assert client.post("/v1/embeddings", json={"model": "intents", "input": "hello"}).status_code == 200
        requests = wait_for(lambda: [r for r in read_records(folder) if r["kind"] == "request"]
                            if len([r for r in read_records(folder) if r["kind"] == "request"]) >= 13 else None)
        samples = scrape(daemon)
    finally:
        assert daemon.stop() == 0
    assert {r["id"] for r in requests} >= {f"it-{i}" for i in range(12)}
    by_id = {r["id"]: r for r in requests}
    assert by_id["it-0"]["rows"] == 3 and by_id["it-1"]["rows"] == 1
    for r in requests:
        assert r["status"] == "ok" and r["model"] == "intents" and r["task"] in ("classify", "embed")
        assert 0 < r["run_ms"] <= r["total_ms"] and r["batch"] >= r["rows"] and r["tokens_in"] > 0
        assert r["energy_j"] >= 0 and r["power_source"] in ("pmic", "hwmon", "rapl", "power_supply", "estimated")
        assert r["ts"].endswith("Z") and r["mono_ns"] > 0
    assert samples[("edgeslm_requests_total", (("model", "intents"), ("status", "ok")))] == 13
    assert samples[("edgeslm_request_duration_seconds_count", (("model", "intents"),))] == 13
    assert samples[("edgeslm_metrics_dropped_records_total", ())] == 0
    assert any(name == "edgeslm_power_watts" for name, _ in samples)
    every = list(read_records(folder))
    assert any(r["kind"] == "sample" and "w" in r for r in every)  # written at the latest at shutdown
    assert "metrics: records in" in daemon.output()
    stats = subprocess.run([sys.executable, "-m", "edgeslm", "stats", "--dir", str(folder), "--json"],
                           capture_output=True, text=True, check=True)
    overall = json.loads(stats.stdout)["overall"]
    assert overall["requests"] == 13 and overall["inferences"] == 4 * 3 + 8 * 1 + 1
    assert overall["j_per_inference"] is not None


def test_full_disk_drops_records_but_every_request_is_answered(tmp_path, tiny_fs):
    (tiny_fs / "filler").write_bytes(b"f" * (60 * 1024))  # leaves about one page for records
    daemon = Daemon(tmp_path, config(tiny_fs / "metrics", flush_s=0.1)).start()
    try:
        with daemon.client() as client:
            for i in range(200):
                response = client.post("/v1/classify", json={"model": "intents", "input": [f"lights off {i}"]})
                assert response.status_code == 200, response.text
                if i % 50 == 0:
                    time.sleep(0.3)  # let flushes run while the disk fills
        dropped = wait_for(lambda: scrape(daemon)[("edgeslm_metrics_dropped_records_total", ())] or None)
        assert client  # the daemon kept answering the whole time
    finally:
        assert daemon.stop() == 0
    assert dropped > 0
    log = daemon.output()
    assert log.count("cannot write metrics records") == 1 and "No space left on device" in log
    kept = list(read_records(tiny_fs / "metrics"))
    assert 0 < len(kept) < 200


def test_generation_requests_are_recorded_with_tokens_and_energy(tmp_path, tiny_llm):
    folder = tmp_path / "metrics"
    text = (f'[[models]]\nname = "tiny"\npath = "{tiny_llm}"\n\n[metrics]\ndir = "{folder}"\n'
            "flush_interval_s = 0.3\nsample_hz = 5\nrecord_interval_s = 1\n")
    daemon = Daemon(tmp_path, text).start()
    try:
        with daemon.client() as client:
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
                    "ignore_eos": True}
            assert client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "plain"}).status_code == 200
            with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                               headers={"X-Request-Id": "streamed"}) as r:
                assert r.status_code == 200 and b"[DONE]" in r.read()
        records = wait_for(lambda: (lambda rs: rs if len(rs) >= 2 else None)(
            [r for r in read_records(folder) if r["kind"] == "request"]))
    finally:
        assert daemon.stop() == 0
    by_id = {r["id"]: r for r in records}
    for rid in ("plain", "streamed"):
        r = by_id[rid]
        assert r["task"] == "generate" and r["status"] == "ok" and r["model"] == "tiny"
        assert r["tokens_out"] == 6 and r["tokens_in"] > 0
        assert 0 < r["run_ms"] <= r["total_ms"] and r["batch"] >= 1 and r["energy_j"] >= 0
        # The first of 6 tokens came before the answer ended, and after the prompt's step began.
        assert r["total_ms"] - r["run_ms"] < r["first_token_ms"] < r["total_ms"]
