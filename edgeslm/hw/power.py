"""Power sources, tried in order: Pi 5 PMIC, hwmon INA2xx/INA3221, RAPL, power_supply, a CPU-load estimate."""

from __future__ import annotations

import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeslm.errors import SensorError
from edgeslm.hw.commands import CommandRunner, run_command
from edgeslm.hw.sensors import CpuUsage
from edgeslm.hw.sysfs import read_number, read_optional, under

log = logging.getLogger(__name__)

SOURCE_ORDER = ("pmic", "hwmon", "rapl", "power_supply", "estimated")


@dataclass(frozen=True, slots=True)
class PowerReading:
    """Watts drawn now (or on average since the previous reading, for counter sources)."""

    watts: float
    channels: Mapping[str, float] = field(default_factory=dict)  # labelled rails or channels, W each
    supply_v: float | None = None  # the board's input voltage where the source measures it (Pi 5 EXT5V_V)


class PowerSource(ABC):
    """One way of knowing the board's power draw.

    A subclass resolves its files or command once in `__init__` and raises SensorError when
    the source is absent. `read()` returns a PowerReading, or None while a counter needs a
    second reading; it raises SensorError on a garbage value. `name` goes into every record;
    `estimated` is True when the watts are a model of the board, not a measurement.
    """

    name: str = "power"
    estimated = False

    @abstractmethod
    def read(self) -> PowerReading | None: ...

    def describe(self) -> str:
        return self.name


def _watts(value: float, what: str, limit_w: float = 500.0) -> float:
    if not (math.isfinite(value) and 0 <= value <= limit_w):
        raise SensorError(f"{what} gives {value:g} W, outside 0..{limit_w:g} W")
    return value


# -- Raspberry Pi 5 PMIC ------------------------------------------------------------------------------------------
_PMIC_LINE = re.compile(r"^\s*(?P<rail>\S+)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)=(?P<value>\S+?)[AV]?\s*$")


def parse_pmic(text: str) -> tuple[dict[str, float], float | None]:
    """`vcgencmd pmic_read_adc` -> ({rail: V*A} for rails that report both, EXT5V_V or None)."""
    volts: dict[str, float] = {}
    amps: dict[str, float] = {}
    for line in text.splitlines():
        match = _PMIC_LINE.match(line)
        if match is None:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            raise SensorError(f"pmic_read_adc line {line.strip()!r} has no number") from None
        if not (math.isfinite(value) and 0 <= value <= 30):
            raise SensorError(f"pmic_read_adc line {line.strip()!r} is out of range")
        (amps if match["kind"] == "A" else volts)[match["rail"]] = value
    rails = {rail: volts[rail] * amps[rail] for rail in sorted(amps) if rail in volts}
    return rails, volts.get("EXT5V")


class PmicSource(PowerSource):
    """Raspberry Pi 5: the PMIC's ADC via `vcgencmd pmic_read_adc`, summing V x I over the rails with both.

    This is the power behind the PMIC's regulators; the 5 V input current is not measured,
    so USB devices and conversion losses are not included. EXT5V_V is recorded as supply_v.
    """

    name = "pmic"

    def __init__(self, run: CommandRunner = run_command):
        self.run = run
        rails, _ = parse_pmic(self.run(["vcgencmd", "pmic_read_adc"]))
        if not rails:
            raise SensorError("vcgencmd pmic_read_adc lists no rail with both volts and amps (not a Pi 5?)")
        self.rails = tuple(rails)

    def read(self) -> PowerReading:
        rails, supply = parse_pmic(self.run(["vcgencmd", "pmic_read_adc"]))
        if not rails:
            raise SensorError("vcgencmd pmic_read_adc answered without rail readings")
        return PowerReading(_watts(sum(rails.values()), "PMIC"), rails, supply)

    def describe(self) -> str:
        return f"pmic: vcgencmd pmic_read_adc, {len(self.rails)} rails"


# -- hwmon INA2xx / INA3221 ---------------------------------------------------------------------------------------
class HwmonSource(PowerSource):
    """INA2xx / INA3221 current monitors under /sys/class/hwmon: power*_input (uW), else in*_input (mV) x
    curr*_input (mA) per channel. Channels are labelled from *_label files (else chip:index) and summed."""

    name = "hwmon"

    def __init__(self, root: Path = Path("/")):
        base = under(root, "/sys/class/hwmon")
        self.channels: list[tuple[str, tuple[Path, ...]]] = []
        self.skipped: list[str] = []
        for chip in sorted(base.glob("hwmon*")) if base.is_dir() else []:
            kind = read_optional(chip / "name") or ""
            if kind.startswith("ina"):
                self._add_chip(chip, kind)
        if not self.channels:
            detail = f" ({'; '.join(self.skipped)})" if self.skipped else ""
            raise SensorError(f"no INA2xx/INA3221 channel with readable power under {base}{detail}")

    def _add_chip(self, chip: Path, kind: str) -> None:
        def label(prefix: str, index: str) -> str:
            return f"{kind}:{read_optional(chip / f'{prefix}{index}_label') or index}"

        powers = sorted(chip.glob("power[0-9]*_input"))
        if powers:
            for path in powers:
                index = path.name[5:-6]
                self.channels.append((label("power", index), (path,)))
            return
        for curr in sorted(chip.glob("curr[0-9]*_input")):
            index = curr.name[4:-6]
            volts = chip / f"in{index}_input"
            if read_optional(chip / f"in{index}_enable") == "0":
                continue
            if not volts.exists():
                self.skipped.append(f"{chip.name} channel {index} has current but no in{index}_input")
                continue
            self.channels.append((label("in", index), (volts, curr)))

    def read(self) -> PowerReading:
        channels = {}
        for name, paths in self.channels:
            if len(paths) == 1:
                watts = read_number(paths[0]) / 1e6
            else:
                watts = read_number(paths[0]) / 1e3 * abs(read_number(paths[1])) / 1e3
            channels[name] = _watts(watts, f"hwmon channel {name}")
        return PowerReading(sum(channels.values()), channels)

    def describe(self) -> str:
        return f"hwmon: {', '.join(name for name, _ in self.channels)}"


# -- RAPL powercap ------------------------------------------------------------------------------------------------
class RaplSource(PowerSource):
    """Intel/AMD RAPL energy counters under /sys/class/powercap: psys if present, else the packages.

    energy_uj wraps to 0 after max_energy_range_uj; a decrease is counted as one wrap.
    """

    name = "rapl"

    def __init__(self, root: Path = Path("/"), clock: Callable[[], float] = time.monotonic):
        base = under(root, "/sys/class/powercap")
        self.clock = clock
        domains: dict[str, tuple[Path, float]] = {}
        skipped = []
        for zone in sorted(base.glob("*-rapl:*")) if base.is_dir() else []:
            if zone.name.count(":") != 1:
                continue  # sub-zones (core, uncore, dram) are inside their package
            try:
                span = read_number(zone / "max_energy_range_uj")
                read_number(zone / "energy_uj")
                if span <= 0:
                    raise SensorError(f"{zone / 'max_energy_range_uj'} is {span:g}")
            except SensorError as exc:
                skipped.append(str(exc))
                continue
            domains[read_optional(zone / "name") or zone.name] = (zone / "energy_uj", span)
        if "psys" in domains:
            domains = {"psys": domains["psys"]}
        if not domains:
            detail = f" ({'; '.join(skipped)})" if skipped else ""
            raise SensorError(f"no readable RAPL domain under {base}{detail}")
        self.domains = domains
        self._last: tuple[float, dict[str, float]] | None = None

    def read(self) -> PowerReading | None:
        now = self.clock()
        energy = {name: read_number(path) for name, (path, _) in self.domains.items()}
        last, self._last = self._last, (now, energy)
        if last is None or now <= last[0]:
            return None
        elapsed = now - last[0]
        channels = {}
        for name, (_, span) in self.domains.items():
            delta = energy[name] - last[1][name]
            if delta < 0:
                delta += span
            if not 0 <= delta <= span:
                raise SensorError(f"RAPL {name} energy_uj moved by {delta:g} uJ, more than its range {span:g}")
            channels[name] = _watts(delta / 1e6 / elapsed, f"RAPL {name}", limit_w=5000)
        return PowerReading(sum(channels.values()), channels)

    def describe(self) -> str:
        return f"rapl: {', '.join(self.domains)}"


# -- power_supply (USB-PD, battery) -------------------------------------------------------------------------------
class PowerSupplySource(PowerSource):
    """A /sys/class/power_supply device: power_now (uW), or voltage_now (uV) x current_now (uA).

    Online mains/USB supplies come first; a battery counts only while discharging (charging
    power is not the board's draw).
    """

    name = "power_supply"

    def __init__(self, root: Path = Path("/")):
        base = under(root, "/sys/class/power_supply")
        reasons = []
        candidates = []
        for supply in sorted(base.iterdir()) if base.is_dir() else []:
            battery = read_optional(supply / "type") == "Battery"
            try:
                if read_optional(supply / "online") == "0":
                    raise SensorError(f"{supply.name} is offline")
                self._watts_of(supply, battery)
            except SensorError as exc:
                reasons.append(str(exc))
                continue
            candidates.append((battery, supply))
        if not candidates:
            detail = f" ({'; '.join(reasons)})" if reasons else ""
            raise SensorError(f"no power_supply under {base} reports its power{detail}")
        self.battery, self.supply = sorted(candidates, key=lambda c: c[0])[0]

    @staticmethod
    def _watts_of(supply: Path, battery: bool) -> float:
        if battery and read_optional(supply / "status") != "Discharging":
            raise SensorError(f"battery {supply.name} is not discharging, so it does not measure the board")
        if (supply / "power_now").exists():
            return abs(read_number(supply / "power_now")) / 1e6
        if (supply / "voltage_now").exists() and (supply / "current_now").exists():
            return abs(read_number(supply / "voltage_now") * read_number(supply / "current_now")) / 1e12
        raise SensorError(f"{supply.name} has neither power_now nor voltage_now and current_now")

    def read(self) -> PowerReading:
        watts = _watts(self._watts_of(self.supply, self.battery), f"power_supply {self.supply.name}")
        return PowerReading(watts, {self.supply.name: watts})

    def describe(self) -> str:
        return f"power_supply: {self.supply.name}{' (battery)' if self.battery else ''}"


# -- estimate from CPU load ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Board:
    """A board family with its measured idle and full-load power."""

    name: str
    idle_w: float
    load_w: float
    model: str = ""


# Matched by prefix against /proc/device-tree/model; "Raspberry Pi 400" is a Pi 4, "500" a Pi 5.
BOARDS = (("Raspberry Pi 5", Board("pi5", 2.7, 8.0)), ("Raspberry Pi 4", Board("pi4", 3.1, 6.1)),
          ("Raspberry Pi Zero 2", Board("zero2w", 0.6, 1.8)))
UNKNOWN_BOARD = Board("unknown", 3.0, 8.0)


def detect_board(root: Path = Path("/")) -> Board:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        model = read_optional(under(root, path))
        if model:
            for prefix, board in BOARDS:
                if model.startswith(prefix):
                    return Board(board.name, board.idle_w, board.load_w, model)
            return Board(UNKNOWN_BOARD.name, UNKNOWN_BOARD.idle_w, UNKNOWN_BOARD.load_w, model)
    return UNKNOWN_BOARD


class EstimatedSource(PowerSource):
    """No meter: idle_w + (load_w - idle_w) x CPU utilisation, with the board's constants."""

    name = "estimated"
    estimated = True

    def __init__(self, root: Path = Path("/"), *, idle_w: float | None = None, load_w: float | None = None):
        self.board = detect_board(root)
        self.idle_w = self.board.idle_w if idle_w is None else idle_w
        self.load_w = self.board.load_w if load_w is None else load_w
        self.usage = CpuUsage(root)
        self.usage.read_fraction()

    def read(self) -> PowerReading | None:
        share = self.usage.read_fraction()
        if share is None:
            return None
        return PowerReading(self.idle_w + (self.load_w - self.idle_w) * share)

    def describe(self) -> str:
        model = f" ({self.board.model})" if self.board.model else ""
        return f"estimated: board {self.board.name}{model}, {self.idle_w:g} W idle, {self.load_w:g} W at full load"


# -- detection ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """What detection found for one source kind: a working source, or why there is none."""

    name: str
    source: PowerSource | None
    reason: str


def detect_sources(root: Path = Path("/"), run: CommandRunner = run_command, *,
                   clock: Callable[[], float] = time.monotonic, idle_w: float | None = None,
                   load_w: float | None = None, only: tuple[str, ...] = SOURCE_ORDER) -> list[Probe]:
    """Try each source kind in SOURCE_ORDER (or `only`); each is read once, so garbage is caught here."""
    makers: dict[str, Callable[[], PowerSource]] = {
        "pmic": lambda: PmicSource(run),
        "hwmon": lambda: HwmonSource(root),
        "rapl": lambda: RaplSource(root, clock),
        "power_supply": lambda: PowerSupplySource(root),
        "estimated": lambda: EstimatedSource(root, idle_w=idle_w, load_w=load_w),
    }
    probes = []
    for name in only:
        try:
            source = makers[name]()
            source.read()
        except SensorError as exc:
            probes.append(Probe(name, None, str(exc)))
        except OSError as exc:
            probes.append(Probe(name, None, f"cannot read: {exc}"))
        else:
            probes.append(Probe(name, source, source.describe()))
    return probes


def open_power_source(choice: str = "auto", root: Path = Path("/"), run: CommandRunner = run_command, *,
                      clock: Callable[[], float] = time.monotonic, idle_w: float | None = None,
                      load_w: float | None = None) -> PowerSource | None:
    """The first working source (or the chosen one); each skipped source is logged with its reason."""
    if choice == "none":
        return None
    only = SOURCE_ORDER if choice == "auto" else (choice,)
    for probe in detect_sources(root, run, clock=clock, idle_w=idle_w, load_w=load_w, only=only):
        if probe.source is not None:
            log.info("power source: %s", probe.reason)
            return probe.source
        log.info("power source %s skipped: %s", probe.name, probe.reason)
    log.warning("no power source works (%s); records carry no energy", choice)
    return None
