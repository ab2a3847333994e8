"""Temperature (thermal zones), CPU frequency and utilisation, and the Pi firmware's throttling bits."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from edgeslm.errors import SensorError
from edgeslm.hw.commands import CommandRunner, run_command
from edgeslm.hw.sysfs import read_number, read_optional, read_text, under

log = logging.getLogger(__name__)

# Bits 0-3 say what is happening now; the same flags shifted by 16 say it has happened since boot.
THROTTLE_FLAGS = ("under_voltage", "freq_capped", "throttled", "soft_temp_limit")
THROTTLE_NOW_MASK = 0xF
THROTTLE_SYSFS = "/sys/devices/platform/soc/soc:firmware/get_throttled"


def decode_throttled(bits: int) -> dict[str, list[str]]:
    """0x50005 -> {"now": ["under_voltage", "throttled"], "since_boot": ["under_voltage", "throttled"]}."""
    return {"now": [f for i, f in enumerate(THROTTLE_FLAGS) if bits >> i & 1],
            "since_boot": [f for i, f in enumerate(THROTTLE_FLAGS) if bits >> (i + 16) & 1]}


def parse_throttled(text: str) -> int:
    """`vcgencmd get_throttled` prints "throttled=0x50005"; the sysfs file holds bare hex ("50005")."""
    match = re.fullmatch(r"\s*(?:throttled=)?(?:0x)?([0-9a-fA-F]+)\s*", text)
    if match is None:
        raise SensorError(f"throttling state {text.strip()[:40]!r} is not hex like 'throttled=0x0'")
    return int(match.group(1), 16)


class _Skips:
    """Remembers why an input was skipped so each reason is logged once, not at every sample."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def skip(self, key: str, reason: str) -> None:
        if self.reasons.get(key) != reason:
            log.warning("skipping %s", reason)
        self.reasons[key] = reason


class ThermalZones(_Skips):
    """The hottest of /sys/class/thermal/thermal_zone*/temp (millidegrees C); bad zones are skipped."""

    def __init__(self, root: Path = Path("/")):
        super().__init__()
        base = under(root, "/sys/class/thermal")
        self.zones = sorted(base.glob("thermal_zone*/temp")) if base.is_dir() else []

    def read_celsius(self) -> float | None:
        hottest = None
        for path in self.zones:
            try:
                celsius = read_number(path) / 1000
            except SensorError as exc:
                self.skip(str(path), f"temperature zone: {exc}")
                continue
            if not -60 <= celsius <= 200:
                self.skip(str(path), f"temperature zone: {path} says {celsius:g} C, which no board reaches")
                continue
            hottest = celsius if hottest is None else max(hottest, celsius)
        return hottest


class CpuFrequency(_Skips):
    """Mean current CPU clock in MHz over the cores' cpufreq policies."""

    def __init__(self, root: Path = Path("/")):
        super().__init__()
        base = under(root, "/sys/devices/system/cpu")
        self.paths = sorted(base.glob("cpu[0-9]*/cpufreq/scaling_cur_freq")) if base.is_dir() else []

    def read_mhz(self) -> float | None:
        values = []
        for path in self.paths:
            try:
                values.append(read_number(path) / 1000)
            except SensorError as exc:
                self.skip(str(path), f"CPU frequency: {exc}")
        return sum(values) / len(values) if values else None


class CpuUsage:
    """Share of CPU time not idle since the previous call, from the first line of /proc/stat."""

    def __init__(self, root: Path = Path("/")):
        self.path = under(root, "/proc/stat")
        self._last: tuple[float, float] | None = None

    def read_fraction(self) -> float | None:
        """None on the first call (a share needs two readings), then a value in [0, 1]."""
        fields = read_text(self.path).splitlines()[0].split()
        try:
            if fields[0] != "cpu":
                raise ValueError
            ticks = [float(x) for x in fields[1:]]
            total, idle = sum(ticks[:8]), ticks[3] + ticks[4]
        except (ValueError, IndexError):
            raise SensorError(f"{self.path} does not start with a 'cpu' line of tick counts") from None
        last, self._last = self._last, (total, idle)
        if last is None or total <= last[0]:
            return None
        return min(1.0, max(0.0, 1 - (idle - last[1]) / (total - last[0])))


class ThrottleState:
    """The firmware's throttling bits, from sysfs when the kernel offers them, else `vcgencmd get_throttled`."""

    def __init__(self, root: Path = Path("/"), run: CommandRunner = run_command):
        self.sysfs = under(root, THROTTLE_SYSFS)
        self.run = run
        self.via = "sysfs" if read_optional(self.sysfs) is not None else "vcgencmd"

    def read_bits(self) -> int:
        if self.via == "sysfs":
            return parse_throttled(read_text(self.sysfs))
        return parse_throttled(self.run(["vcgencmd", "get_throttled"]))


def probe_throttle(root: Path = Path("/"), run: CommandRunner = run_command) -> ThrottleState | None:
    """A working throttle reader, or None (logged) on boards without the Pi firmware."""
    state = ThrottleState(root, run)
    try:
        state.read_bits()
    except SensorError as exc:
        log.info("no throttling state: %s", exc)
        return None
    return state

