"""The background sampler: power, temperature, clock and throttling at sample_hz, summarised into records."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from edgeslm.errors import SensorError
from edgeslm.hw.commands import CommandRunner, run_command
from edgeslm.hw.power import PowerSource
from edgeslm.hw.sensors import CpuFrequency, CpuUsage, ThermalZones, ThrottleState, probe_throttle
from edgeslm.metrics.energy import PowerTrace

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class Reading:
    """One tick of the sampler (None where a sensor is absent or failed)."""

    t: float
    watts: float | None = None
    temp_c: float | None = None
    mhz: float | None = None
    cpu: float | None = None
    throttled: int | None = None
    supply_v: float | None = None
    channels: dict[str, float] = field(default_factory=dict)
    idle: bool = False


@dataclass
class Sensors:
    """Everything the sampler reads besides power; each part may be absent."""

    thermal: ThermalZones | None = None
    frequency: CpuFrequency | None = None
    usage: CpuUsage | None = None
    throttle: ThrottleState | None = None

    @classmethod
    def detect(cls, root: Path = Path("/"), run: CommandRunner = run_command) -> Sensors:
        usage = CpuUsage(root)
        try:
            usage.read_fraction()
        except SensorError as exc:
            log.info("no CPU utilisation: %s", exc)
            return cls(ThermalZones(root), CpuFrequency(root), None, probe_throttle(root, run))
        return cls(ThermalZones(root), CpuFrequency(root), usage, probe_throttle(root, run))


class Sampler:
    """Reads the sensors every 1/sample_hz seconds on its own thread.

    Each tick's watts go into `trace` (for per-request energy). A tick counts as idle when
    `activity()` says no request was in flight and none finished since the previous tick;
    idle ticks give the idle power that marginal energy is measured against. Every
    `record_interval_s` one summary record (means, maxima, idle watts) goes to `emit`.
    """

    def __init__(self, power: PowerSource | None, sensors: Sensors, trace: PowerTrace, *,
                 emit: Callable[[dict], None], activity: Callable[[], tuple[int, float]] = lambda: (0, float("-inf")),
                 clock: Callable[[], float] = time.monotonic, sample_hz: float = 1.0,
                 record_interval_s: float = 10.0, throttle_interval_s: float = 1.0):
        self.power = power
        self.sensors = sensors
        self.trace = trace
        self.emit = emit
        self.activity = activity
        self.clock = clock
        self.period_s = 1.0 / sample_hz
        self.record_interval_s = record_interval_s
        self.throttle_interval_s = throttle_interval_s
        self.latest = Reading(t=clock())
        self.errors: dict[str, str] = {}
        self._window: list[Reading] = []
        self._window_start = self.latest.t
        self._throttle_at = float("-inf")
        self._throttled: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source_name(self) -> str:
        return self.power.name if self.power is not None else "none"

    def _guard(self, what: str, read: Callable[[], T]) -> T | None:
        try:
            value = read()
        except (SensorError, OSError) as exc:
            if self.errors.get(what) != str(exc):
                log.warning("%s reading failed: %s; carrying on without it", what, exc)
            self.errors[what] = str(exc)
            return None
        if what in self.errors:
            log.info("%s readings are back", what)
            del self.errors[what]
        return value

    def tick(self) -> Reading:
        """Take one reading now; emit a summary record if the interval is over."""
        now = self.clock()
        reading = Reading(t=now)
        if self.power is not None:
            power = self._guard(f"power ({self.power.name})", self.power.read)
            if power is not None:
                reading.watts, reading.channels, reading.supply_v = power.watts, dict(power.channels), power.supply_v
                self.trace.add(now, power.watts)
        sensors = self.sensors
        if sensors.thermal is not None:
            reading.temp_c = sensors.thermal.read_celsius()
        if sensors.frequency is not None:
            reading.mhz = sensors.frequency.read_mhz()
        if sensors.usage is not None:
            reading.cpu = self._guard("CPU utilisation", sensors.usage.read_fraction)
        if sensors.throttle is not None and now - self._throttle_at >= self.throttle_interval_s:
            self._throttle_at = now
            self._throttled = self._guard("throttling state", sensors.throttle.read_bits)
        reading.throttled = self._throttled
        in_flight, last_finished = self.activity()
        reading.idle = in_flight == 0 and last_finished <= self.latest.t
        self.latest = reading
        self._window.append(reading)
        if now - self._window_start >= self.record_interval_s:
            self.flush_summary()
        return reading

    def flush_summary(self) -> None:
        """Emit the summary of the ticks since the last one (if any)."""
        window, self._window = self._window, []
        self._window_start = self.clock()
        if window:
            self.emit(summarise(window, self.source_name))

    # -- thread ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        next_at = self.clock()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("metrics sampler tick failed; trying again next tick")
            next_at = max(next_at + self.period_s, self.clock())
            self._stop.wait(max(0.0, next_at - self.clock()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush_summary()


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(window: list[Reading], source: str) -> dict:
    """One sample record for a window of ticks (fields with no data are left out)."""
    watts = [r.watts for r in window if r.watts is not None]
    idle = [r.watts for r in window if r.watts is not None and r.idle]
    temps = [r.temp_c for r in window if r.temp_c is not None]
    supply = [r.supply_v for r in window if r.supply_v is not None]
    bits = [r.throttled for r in window if r.throttled is not None]
    record: dict = {"kind": "sample", "source": source, "n": len(window),
                    "span_s": round(window[-1].t - window[0].t, 3)}
    values = {
        "w": _mean(watts), "w_max": max(watts) if watts else None, "idle_w": _mean(idle),
        "temp_c": max(temps) if temps else None,
        "mhz": _mean([r.mhz for r in window if r.mhz is not None]),
        "cpu_pct": _mean([r.cpu * 100 for r in window if r.cpu is not None]),
        "supply_v_min": min(supply) if supply else None,
    }
    record.update({k: round(v, 3) for k, v in values.items() if v is not None})
    if bits:
        combined = 0
        for b in bits:
            combined |= b
        record["throttled"] = combined
    channels: dict[str, list[float]] = {}
    for r in window:
        for name, w in r.channels.items():
            channels.setdefault(name, []).append(w)
    if len(channels) > 1:
        record["channels_w"] = {name: round(sum(v) / len(v), 3) for name, v in channels.items()}
    return record
