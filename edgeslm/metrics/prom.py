"""Prometheus exposition: request counters and histograms filled in batches, gauges read at each scrape."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from edgeslm.hw.sensors import THROTTLE_FLAGS, THROTTLE_NOW_MASK
from edgeslm.metrics.finished import FinishedRequest, batches_of

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


class _Histogram:
    """Bucket counts of one label set, added to a batch of values at a time."""

    def __init__(self, bounds: Sequence[float]):
        self.bounds = np.asarray(bounds, dtype=float)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.total = 0.0

    def add(self, values: list[float]) -> None:
        if values:
            array = np.asarray(values, dtype=float)
            self.counts += np.bincount(np.searchsorted(self.bounds, array, side="left"), minlength=len(self.counts))
            self.total += float(array.sum())

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = np.cumsum(self.counts)
        return [(floatToGoString(b), float(c)) for b, c in zip(self.bounds, cumulative)] + [
            ("+Inf", float(cumulative[-1]))]


_HISTOGRAMS = (
    ("edgeslm_request_duration_seconds", "Time from the handler's start to the answer", LATENCY_BUCKETS_S),
    ("edgeslm_queue_wait_seconds", "Time a request waited for its batch to start", LATENCY_BUCKETS_S),
    ("edgeslm_batch_run_seconds", "Engine time of each batch", LATENCY_BUCKETS_S),
    ("edgeslm_batch_size_rows", "Rows per engine call", BATCH_BUCKETS),
    ("edgeslm_first_token_seconds", "Time from the handler's start to a generation's first token", LATENCY_BUCKETS_S),
)


class PromMetrics:
    """The daemon's metrics in a registry of their own (so tests can build several apps).

    The request path only queues finished requests; `observe_many` adds them here in
    batches (from the flush thread, and from `refresh` before every scrape), so a scrape
    is always current and a request pays nothing for the histograms.
    """

    def __init__(self, *, queue_depths: Callable[[], Mapping[str, int]] = dict,
                 live: Callable[[], LiveState] = LiveState, refresh: Callable[[], None] = lambda: None):
        self.queue_depths = queue_depths
        self.live = live
        self.refresh = refresh
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.histograms: dict[str, dict[str, _Histogram]] = {name: {} for name, _, _ in _HISTOGRAMS}
        self.energy_j: dict[str, float] = defaultdict(float)
        self._last_batch: dict[str, float] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]

    def observe_many(self, finished: Sequence[FinishedRequest]) -> None:
        values: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name, _, _ in _HISTOGRAMS}
        latency, queue, run, size, first_token = (values[name] for name, _, _ in _HISTOGRAMS)
        with self._lock:
            for entry in finished:
                model = entry[2]
                self.requests[model, entry[4]] += 1
                latency[model].append(entry[6])
                if entry[15] is not None and "first_token_ms" in entry[15]:
                    first_token[model].append(entry[15]["first_token_ms"] / 1000)
                for enqueued, started, ended, batch_rows, _ in batches_of(entry):
                    queue[model].append(started - enqueued)
                    # The requests of one batch share its start time: count each batch once.
                    if self._last_batch.get(model) != started:
                        self._last_batch[model] = started
                        run[model].append(ended - started)
                        size[model].append(batch_rows)
            for (name, _, bounds), by_model in zip(_HISTOGRAMS, values.values()):
                for model, batch in by_model.items():
                    self.histograms[name].setdefault(model, _Histogram(bounds)).add(batch)

    def add_energy(self, joules_by_model: Mapping[str, float]) -> None:
        with self._lock:
            for model, joules in joules_by_model.items():
                self.energy_j[model] += joules

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        self.refresh()
        with self._lock:
            requests = CounterMetricFamily("edgeslm_requests", "Requests handed to a model, by final status (ok or "
                                           "the error code)", labels=["model", "status"])
            for (model, status), n in sorted(self.requests.items()):
                requests.add_metric([model, status], n)
            yield requests
            for name, doc, _ in _HISTOGRAMS:
                family = HistogramMetricFamily(name, doc, labels=["model"])
                for model, histogram in sorted(self.histograms[name].items()):
                    family.add_metric([model], histogram.buckets(), histogram.total)
                yield family
            energy = CounterMetricFamily("edgeslm_energy_joules", "Energy attributed to requests (counted as their "
                                         "records are written)", labels=["model"])
            for model, joules in sorted(self.energy_j.items()):
                energy.add_metric([model], joules)
            yield energy
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
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
            now = int(bool(state.throttled & THROTTLE_NOW_MASK))
            yield GaugeMetricFamily("edgeslm_throttled", "1 while the firmware reports under-voltage, capping, "
                                    "throttling or the soft temperature limit", value=now)
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
