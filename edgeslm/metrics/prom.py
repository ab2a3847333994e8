"""Prometheus exposition: request counters and histograms kept live, sensor and queue gauges read at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edgeslm.core.batcher import Completion
from edgeslm.hw.sensors import THROTTLE_FLAGS, THROTTLE_NOW_MASK

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class LiveState:
    """Read at each scrape: the latest sensor values and the writer's counters."""

    source: str = "none"
    watts: float | None = None
    temp_c: float | None = None
    mhz: float | None = None
    throttled: int | None = None
    dropped_records: int = 0
    written_records: int = 0
    written_bytes: int = 0


class PromMetrics:
    """The daemon's metrics in a registry of their own (so tests can build several apps)."""

    def __init__(self, *, queue_depths: Callable[[], Mapping[str, int]] = dict,
                 live: Callable[[], LiveState] = LiveState):
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("edgeslm_requests", "Requests handed to a model, by final status "
                                "(ok or the error code)", ["model", "status"], registry=r)
        self.latency = Histogram("edgeslm_request_duration_seconds", "Time from the handler's start to the answer",
                                 ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.queue_wait = Histogram("edgeslm_queue_wait_seconds", "Time a request waited for its batch to start",
                                    ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_run = Histogram("edgeslm_batch_run_seconds", "Engine time of each batch", ["model"],
                                   buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram("edgeslm_batch_size_rows", "Rows per engine call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.energy = Counter("edgeslm_energy_joules", "Energy attributed to requests (counted when written)",
                              ["model"], registry=r)
        r.register(_LiveCollector(queue_depths, live))
        self._children: dict[tuple, tuple] = {}
        self._last_batch: dict[str, float] = {}

    def observe(self, model: str, status: str, total_s: float, completions: Sequence[Completion] | None) -> None:
        children = self._children.get((model, status))
        if children is None:
            children = (self.requests.labels(model, status), self.latency.labels(model),
                        self.queue_wait.labels(model), self.batch_run.labels(model), self.batch_size.labels(model))
            self._children[(model, status)] = children
        count, latency, queue_wait, batch_run, batch_size = children
        count.inc()
        latency.observe(total_s)
        for c in completions or ():
            if not c.batch_rows:
                continue
            queue_wait.observe(c.queue_s)
            # The requests of one batch share its start time: count each batch once.
            if self._last_batch.get(model) != c.started_at:
                self._last_batch[model] = c.started_at
                batch_run.observe(c.run_s)
                batch_size.observe(c.batch_rows)

    def add_energy(self, model: str, joules: float) -> None:
        self.energy.labels(model).inc(joules)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    def __init__(self, queue_depths: Callable[[], Mapping[str, int]], live: Callable[[], LiveState]):
        self.queue_depths = queue_depths
        self.live = live

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("edgeslm_queue_depth", "Requests waiting for a batch", labels=["model"])
        for model, n in sorted(self.queue_depths().items()):
            depth.add_metric([model], n)
        yield depth
        state = self.live()
        if state.watts is not None:
            power = GaugeMetricFamily("edgeslm_power_watts", "Latest power reading (source 'estimated' is a model "
                                      "of the board, not a measurement)", labels=["source"])
            power.add_metric([state.source], state.watts)
            yield power
        if state.temp_c is not None:
            yield GaugeMetricFamily("edgeslm_temperature_celsius", "Hottest thermal zone", value=state.temp_c)
        if state.mhz is not None:
            yield GaugeMetricFamily("edgeslm_cpu_frequency_mhz", "Mean current CPU clock", value=state.mhz)
        if state.throttled is not None:
            yield GaugeMetricFamily("edgeslm_throttled", "1 while the firmware reports under-voltage, capping, "
                                    "throttling or the soft temperature limit", value=int(bool(state.throttled
                                                                                             & THROTTLE_NOW_MASK)))
            flags = GaugeMetricFamily("edgeslm_throttle_flag", "Firmware throttling bits, decoded",
                                      labels=["flag", "when"])
            for i, flag in enumerate(THROTTLE_FLAGS):
                flags.add_metric([flag, "now"], state.throttled >> i & 1)
                flags.add_metric([flag, "since_boot"], state.throttled >> (i + 16) & 1)
            yield flags
        yield CounterMetricFamily("edgeslm_metrics_dropped_records", "Records not written to disk (disk full, "
                                  "read-only, or the writer fell behind)", value=state.dropped_records)
        yield CounterMetricFamily("edgeslm_metrics_written_records", "Records written to disk",
                                  value=state.written_records)
        yield CounterMetricFamily("edgeslm_metrics_written_bytes", "Bytes of records written to disk",
                                  value=state.written_bytes)
