"""A power source tests set by hand: watts now, or a SensorError to raise."""

from __future__ import annotations

from edgeslm.errors import SensorError
from edgeslm.hw.power import PowerReading, PowerSource


class FakePowerSource(PowerSource):
    """Reads `watts` (change it between ticks); set `error` to make reads fail with that message."""

    name = "fake"

    def __init__(self, watts: float = 5.0, *, channels: dict[str, float] | None = None):
        self.watts = watts
        self.channels = dict(channels or {})
        self.error: str | None = None
        self.reads = 0

    def read(self) -> PowerReading:
        self.reads += 1
        if self.error is not None:
            raise SensorError(self.error)
        return PowerReading(self.watts, self.channels)
