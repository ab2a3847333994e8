"""The daemon's metrics, wired from the [metrics] config: sampler and flush threads, files, Prometheus."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from edgeslm.config import MetricsConfig
from edgeslm.hw.commands import CommandRunner, run_command
from edgeslm.hw.power import PowerSource, open_power_source
from edgeslm.metrics.energy import PowerTrace
from edgeslm.metrics.files import JsonlWriter
from edgeslm.metrics.prom import LiveState, PromMetrics
from edgeslm.metrics.recorder import Recorder
from edgeslm.metrics.sampler import Sampler, Sensors

log = logging.getLogger(__name__)
DEFAULT_DIR = Path("run/metrics")
SYSTEM_DIR = Path("/var/log/edgeslm")


def metrics_dir(config: MetricsConfig, env: Mapping[str, str] | None = None) -> Path:
    """metrics.dir, else systemd's LogsDirectory ($LOGS_DIRECTORY, first entry), else ./run/metrics."""
    env = os.environ if env is None else env
    if config.dir is not None:
        return config.dir
    if env.get("LOGS_DIRECTORY"):
        return Path(env["LOGS_DIRECTORY"].split(":")[0])
    return DEFAULT_DIR


_DETECT = object()


class Metrics:
    """Everything the daemon records. `start()` once serving, `close()` at shutdown (writes what is buffered).

    Hardware (`power`, `sensors`, `run`) and time (`clock`, `wall_clock`) are injectable; by
    default the power source and sensors are detected under `config.hw_root`.
    """

    def __init__(self, config: MetricsConfig, *, queue_depths: Callable[[], Mapping[str, int]] = dict,
                 power: PowerSource | None | object = _DETECT, sensors: Sensors | None = None,
                 run: CommandRunner = run_command, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, env: Mapping[str, str] | None = None):
        self.config = config
        self.folder = metrics_dir(config, env)
        if power is _DETECT:
            power = open_power_source(config.power_source, config.hw_root, run, clock=clock,
                                      idle_w=config.estimate_idle_w, load_w=config.estimate_load_w)
        assert power is None or isinstance(power, PowerSource)
        self.power = power
        self.trace = PowerTrace(keep=max(64, int(config.sample_hz * 900)))
        self.writer = JsonlWriter(self.folder, rotate_bytes=config.rotate_bytes,
                                  budget_bytes=config.disk_budget_bytes, compress=config.compress_rotated,
                                  wall_clock=wall_clock)
        self.prom = PromMetrics(queue_depths=queue_depths, live=self.live, refresh=self._absorb)
        self.recorder = Recorder(self.writer, self.trace, observer=self.prom, source_name=self._source_name(),
                                 clock=clock, wall_clock=wall_clock, flush_interval_s=config.flush_interval_s,
                                 energy_wait_s=2 / config.sample_hz + 1, waits_for_power=power is not None)
        self.sampler = Sampler(power, sensors or Sensors.detect(config.hw_root, run), self.trace,
                               emit=self.recorder.add_sample, activity=self.recorder.activity, clock=clock,
                               sample_hz=config.sample_hz, record_interval_s=config.record_interval_s)

    def _absorb(self) -> None:
        self.recorder.absorb()

    def _source_name(self) -> str:
        return self.power.name if self.power is not None else "none"

    def describe(self) -> str:
        power = self.power.describe() if self.power is not None else "none (records carry no energy)"
        return f"metrics: records in {self.folder}, power {power}"

    def live(self) -> LiveState:
        latest = self.sampler.latest
        return LiveState(self._source_name(), latest.watts, latest.temp_c, latest.mhz, latest.throttled,
                         self.recorder.dropped, self.writer.written_records, self.writer.written_bytes)

    def start(self) -> None:
        self.sampler.start()
        self.recorder.start()

    def close(self) -> None:
        self.sampler.stop()
        self.recorder.close()
