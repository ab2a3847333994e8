"""Energy accounting, the request recorder and the sampler, on a fake clock and a fake power source."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from edgeslm.core.batcher import Completion
from edgeslm.hw.fake import FakePowerSource
from edgeslm.hw.sensors import ThrottleState
from edgeslm.metrics.energy import PowerTrace
from edgeslm.metrics.files import JsonlWriter, read_records
from edgeslm.metrics.recorder import Recorder
from edgeslm.metrics.sampler import Sampler, Sensors


def completion(start: float, end: float, batch_rows: int, batch_requests: int = 1) -> Completion:
    return Completion({}, None, batch_rows, batch_requests, start - 0.001, start, end)


def feeds(rows: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.zeros((rows, 3), dtype=np.int64)}


def test_trace_integrates_a_step_function_and_holds_its_ends():
    trace = PowerTrace()
    assert trace.energy_j(0, 1) is None
    for t, w in ((1.0, 2.0), (2.0, 4.0), (3.0, 6.0)):
        trace.add(t, w)
    # Each value holds over (previous sample, its time]: 4 W on (1, 2], 6 W on (2, 3].
    assert trace.energy_j(1.5, 2.5) == pytest.approx(4 * 0.5 + 6 * 0.5)
    assert trace.energy_j(0.0, 1.0) == pytest.approx(2.0)  # before the first sample: the first value
    assert trace.energy_j(3.0, 5.0) == pytest.approx(12.0)  # after the last: the last value
    assert trace.energy_j(0.5, 3.5) == pytest.approx(2 * 0.5 + 4 + 6 + 6 * 0.5)
    assert trace.mean_w(1.0, 3.0) == pytest.approx(5.0)
    trace.add(2.5, 100.0)  # out of order: ignored
    assert trace.energy_j(2.0, 3.0) == pytest.approx(6.0)


@pytest.fixture
def recorder(tmp_path, clock):
    trace = PowerTrace()
    rec = Recorder(JsonlWriter(tmp_path), trace, source_name="fake", clock=clock, wall_clock=lambda: 1.8e9,
                   energy_wait_s=3.0)
    yield rec, trace
    rec.close()


def test_batch_energy_is_shared_by_rows_and_chunks_add_up(recorder, tmp_path, clock):
    rec, trace = recorder
    trace.add(9.0, 5.0)
    trace.add(13.0, 5.0)  # 5 W throughout
    clock.now = 12.5
    a = rec.open("m", "classify", 1, tokens_in=4, request_id="a")
    b = rec.open("m", "classify", 3, tokens_in=12)
    big = rec.open("m", "embed", 5)
    a.ran([completion(10.0, 12.0, 4, 2)], [feeds(1)])
    b.ran([completion(10.0, 12.0, 4, 2)], [feeds(3)])
    big.ran([completion(12.0, 12.2, 4), completion(12.2, 12.4, 2, 2)], [feeds(4), feeds(1)])  # two chunks
    for call in (a, b, big):
        call.finish("ok", 9.5)
    assert rec.flush() == 3
    got = {r["id"]: r for r in read_records(tmp_path)}
    assert got["a"]["energy_j"] == pytest.approx(10.0 * 1 / 4)  # 2 s x 5 W = 10 J for 4 rows
    ids = list(got)
    assert got[ids[1]]["energy_j"] == pytest.approx(10.0 * 3 / 4)
    assert got[ids[2]]["energy_j"] == pytest.approx(1.0 * 4 / 4 + 1.0 * 1 / 2)
    assert got["a"] == {**got["a"], "kind": "request", "model": "m", "task": "classify", "status": "ok", "rows": 1,
                        "batch": 4, "queue_ms": 1.0, "run_ms": 2000.0, "total_ms": 3000.0, "tokens_in": 4,
                        "power_source": "fake"}
    assert got[ids[2]]["run_ms"] == pytest.approx(400.0) and "tokens_in" not in got[ids[2]]
    assert got["a"]["ts"] == "2027-01-15T08:00:00.000Z" and got["a"]["mono_ns"] == 12_500_000_000


def test_the_one_call_fast_path_writes_what_the_general_path_writes(recorder, tmp_path, clock):
    rec, trace = recorder
    trace.add(9.0, 5.0)
    trace.add(13.0, 5.0)
    clock.now = 12.5
    fast = rec.open("m", "classify", 2, tokens_in=9, request_id="fast")
    fast.ran([completion(10.0, 12.0, 4, 2)], [feeds(2)])
    general = rec.open("m", "classify", 2, tokens_in=9, request_id="general")
    general.ran([completion(10.0, 12.0, 4, 2)], [feeds(2)])
    general.more = ((9.999, 10.0, 12.0, 4, 2),)  # the same single call, as the chunked path sees it
    for call in (fast, general):
        call.finish("ok", 9.5)
    assert rec.flush() == 2
    got = {r["id"]: r for r in read_records(tmp_path)}
    assert list(got["fast"].items())[1:] == [("ts", got["general"]["ts"]), ("mono_ns", 12_500_000_000),
                                             ("id", "fast"), *list(got["general"].items())[4:]]
    assert got["fast"]["energy_j"] == pytest.approx(5.0) and got["fast"]["queue_ms"] == 1.0


def test_a_generation_record_carries_its_first_token_time_and_prometheus_counts_it(recorder, tmp_path, clock):
    from prometheus_client.parser import text_string_to_metric_families

    from edgeslm.metrics.prom import PromMetrics

    rec, trace = recorder
    rec.observer = prom = PromMetrics()
    trace.add(9.0, 5.0)
    trace.add(13.0, 5.0)
    clock.now = 12.5
    plain = rec.open("m", "classify", 1, tokens_in=3, request_id="plain")
    plain.ran([completion(10.0, 12.0, 2, 2)], [feeds(1)])
    generation = rec.open("llm", "generate", 1, tokens_in=20, request_id="gen")
    generation.tokens_out = 8
    generation.enqueued, generation.started, generation.ended, generation.batch_rows = 10.0, 10.1, 12.0, 1
    generation.extra = {"first_token_ms": 250.5}
    for call in (plain, generation):
        call.finish("ok", 9.9)
    assert rec.flush() == 2
    got = {r["id"]: r for r in read_records(tmp_path)}
    assert "first_token_ms" not in got["plain"]
    assert list(got["gen"])[-4:] == ["tokens_out", "first_token_ms", "energy_j", "power_source"]
    assert got["gen"]["first_token_ms"] == 250.5 and got["gen"]["tokens_out"] == 8
    samples = {(s.name, s.labels.get("model"), s.labels.get("le")): s.value
               for family in text_string_to_metric_families(prom.exposition().decode()) for s in family.samples}
    assert samples[("edgeslm_first_token_seconds_count", "llm", None)] == 1
    assert samples[("edgeslm_first_token_seconds_sum", "llm", None)] == pytest.approx(0.2505)
    assert samples[("edgeslm_first_token_seconds_bucket", "llm", "0.5")] == 1
    assert samples[("edgeslm_first_token_seconds_bucket", "llm", "0.2")] == 0
    assert ("edgeslm_first_token_seconds_count", "m", None) not in samples


def test_a_record_waits_for_a_sample_after_its_batch_then_gives_up(recorder, tmp_path, clock):
    rec, trace = recorder
    trace.add(1.0, 2.0)
    clock.now = 2.0
    call = rec.open("m", "classify", 1)
    call.ran([completion(1.5, 1.9, 1)], [feeds(1)])
    call.finish("ok", 1.4)
    assert rec.flush() == 0  # the power after 1.0 s is not known yet
    trace.add(2.0, 4.0)
    assert rec.flush() == 1
    assert next(read_records(tmp_path))["energy_j"] == pytest.approx(0.4 * 4.0)
    late = rec.open("m", "classify", 1)
    late.ran([completion(2.5, 2.6, 1)], [feeds(1)])
    late.finish("ok", 2.4)
    clock.now = 4.0
    assert rec.flush() == 0
    clock.now = 6.0  # no sample for energy_wait_s: written with the last known power
    assert rec.flush() == 1
    assert list(read_records(tmp_path))[-1]["energy_j"] == pytest.approx(0.1 * 4.0)


def test_errors_are_recorded_without_batch_fields(recorder, tmp_path, clock):
    rec, _ = recorder
    rec.open("m", "classify", 2).finish("overloaded", clock.now)
    call = rec.open("m", "classify", 1)
    call.finish("cancelled", clock.now)
    call.finish("ok", clock.now)  # a second finish is ignored
    assert rec.in_flight == 0
    rec.flush(final=True)
    got = list(read_records(tmp_path))
    assert [r["status"] for r in got] == ["overloaded", "cancelled"]
    assert all("batch" not in r and "energy_j" not in r for r in got)


def test_queue_overflow_is_counted_as_dropped(tmp_path, clock):
    rec = Recorder(JsonlWriter(tmp_path), PowerTrace(), clock=clock, max_pending=2)
    for _ in range(5):
        rec.open("m", "t", 1).finish("ok", 0.0)
    assert rec.dropped == 3 and rec.flush(final=True) == 2
    rec.close()


def test_client_request_ids_are_kept_when_sane(recorder, tmp_path):
    rec, _ = recorder
    for given in ("abc-123", "x" * 100, None):
        rec.open("m", "t", 1, request_id=given).finish("ok", 0.0)
    rec.flush(final=True)
    ids = [r["id"] for r in read_records(tmp_path)]
    assert ids[0] == "abc-123"
    prefix = ids[1].split("-")[0]
    assert ids[1:] == [f"{prefix}-1", f"{prefix}-2"] and len(prefix) == 6


class Bits(ThrottleState):
    def __init__(self, values):
        self.values = list(values)

    def read_bits(self) -> int:
        return self.values.pop(0)


def test_sampler_summarises_windows_and_tells_idle_from_busy(clock):
    emitted: list[dict] = []
    activity = {"in_flight": 0, "last": float("-inf")}
    power = FakePowerSource(2.0, channels={"a": 1.0, "b": 1.0})
    trace = PowerTrace()
    sampler = Sampler(power, Sensors(throttle=Bits([0, 0x50005, 0x50000, 0x50000])), trace, emit=emitted.append,
                      activity=lambda: (activity["in_flight"], activity["last"]), clock=clock, sample_hz=1,
                      record_interval_s=4, throttle_interval_s=0)
    for watts in (2.0, 2.0):  # idle
        clock.advance(1)
        power.watts = watts
        sampler.tick()
    activity["in_flight"] = 1
    for watts in (6.0, 8.0):  # busy: a request in flight
        clock.advance(1)
        power.watts = watts
        sampler.tick()
    assert len(emitted) == 1
    summary = emitted[0]
    assert summary["w"] == pytest.approx(4.5) and summary["w_max"] == 8.0
    assert summary["idle_w"] == pytest.approx(2.0) and summary["n"] == 4 and summary["source"] == "fake"
    assert summary["throttled"] == 0x50005 and summary["channels_w"] == {"a": 1.0, "b": 1.0}
    assert trace.energy_j(1.0, 4.0) == pytest.approx(2 + 6 + 8)
    assert sampler.latest.watts == 8.0 and sampler.latest.throttled == 0x50000


def test_sampler_keeps_going_when_a_source_turns_to_garbage(clock, caplog):
    emitted: list[dict] = []
    power = FakePowerSource(3.0)
    sampler = Sampler(power, Sensors(), PowerTrace(), emit=emitted.append, clock=clock, record_interval_s=100)
    sampler.tick()
    power.error = "garbage in power_now"
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            clock.advance(1)
            assert sampler.tick().watts is None
        power.error = None
        clock.advance(1)
        assert sampler.tick().watts == 3.0
    assert caplog.text.count("garbage in power_now") == 1 and "readings are back" in caplog.text
    sampler.stop()  # flushes the partial window
    assert emitted[0]["n"] == 5 and emitted[0]["w"] == pytest.approx(3.0)


def test_sampler_thread_starts_and_stops(clock):
    emitted: list[dict] = []
    power = FakePowerSource()
    sampler = Sampler(power, Sensors(), PowerTrace(), emit=emitted.append, sample_hz=50)
    sampler.start()
    for _ in range(500):
        if power.reads >= 3:
            break
        time.sleep(0.01)
    sampler.stop()
    assert emitted and emitted[0]["n"] >= 3


def test_an_idle_daemon_writes_samples_once_a_minute(recorder, tmp_path, clock):
    rec, _ = recorder
    rec.add_sample({"w": 1.0})
    assert rec.flush() == 1  # the first write goes at once
    for second in (10, 20, 30):
        clock.now = second
        rec.add_sample({"w": 2.0})
        assert rec.flush() == 0  # held: each write would dirty a page of the SD card
    clock.now = 61
    assert rec.flush() == 3
    rec.add_sample({"w": 3.0})
    rec.open("m", "t", 1).finish("ok", 60.0)
    assert rec.flush() == 2  # a request to write takes the samples along
    assert [r["kind"] for r in read_records(tmp_path)] == ["sample"] * 5 + ["request"]



@pytest.mark.parametrize("power", [True, False])
def test_the_column_by_column_lines_are_the_record_by_record_lines(tmp_path, clock, power):
    import orjson

    trace = PowerTrace()
    if power:
        for t in range(1, 40):
            trace.add(t * 0.25, 2.0 + (t % 7) * 0.37)
    # The wall clock jumps ahead now and then (a clock step): seconds not in order within a slice.
    rec = Recorder(JsonlWriter(tmp_path), trace, source_name="rapl", clock=clock,
                   wall_clock=lambda: 1.8e9 + clock.now + (0.9 if round(clock.now * 100) % 7 == 3 else 0.0))
    rng = np.random.default_rng(3)
    calls = []
    for i in range(60):
        clock.now = 1.0 + i * 0.13
        start = 1.0 + (i // 4) * 0.5  # four requests to a batch
        rid = ('he said "hi" \\ ünï' if i == 7 else f"client-{i}") if i % 5 == 0 else None
        call = rec.open("intents" if i % 3 else "minilm", "classify", int(rng.integers(1, 4)), tokens_in=i + 3,
                        request_id=rid)
        call.tokens_out = i * 2
        call.ran([Completion({}, None, 9, 4, start - rng.random() * 0.01, start, start + 0.0123456789)], [feeds(1)])
        call.finish("ok" if i % 4 else "cancelled", clock.now - rng.random() * 0.05)
        calls.append(call)
    rec.absorb()
    entries = list(rec._pending)
    by_record = [orjson.dumps(rec._request_record(e, {})) + b"\n" for e in entries]
    plain = rec._plain_lines(entries)
    assert plain is not None
    assert plain[0] == by_record
    expected: dict[str, float] = {}
    for line in by_record:
        record = orjson.loads(line)
        if "energy_j" in record:
            expected[record["model"]] = expected.get(record["model"], 0.0) + record["energy_j"]
    assert plain[1] == pytest.approx(expected) and bool(expected) == power
    # A slice with a request split into chunks, or with tokens given for only some, goes record by record.
    assert rec._plain_lines(entries[:3] + [entries[3][:14] + (((1.0, 1.1, 1.2, 4, 1),), None)]) is None
    assert rec._plain_lines(entries[:3] + [entries[3][:7] + (None,) + entries[3][8:]]) is None
    assert rec._plain_lines(entries[:3] + [entries[3][:15] + ({"first_token_ms": 12.5},)]) is None
    rec.close()


def test_stamps_made_for_a_column_match_stamps_made_one_by_one():
    from edgeslm.metrics.recorder import IsoStamp

    walls = [1.8e9 + 5.1, 1.8e9 + 6.2, 1.8e9 + 86400.5, 1.8e9 + 5.9994]  # out of order, a day on, back
    prefixes, suffixes = IsoStamp().columns(walls)
    assert [(p + s).decode() for p, s in zip(prefixes, suffixes)] == [IsoStamp()(w) for w in walls]
    assert IsoStamp().columns(walls[:1]) == ([b"2027-01-15T08:00:05"], [b".100Z"])
