"""Power sources and sensors against fixture sysfs trees and recorded vcgencmd output (tests/fixtures/hw)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from edgeslm.errors import SensorError
from edgeslm.hw.commands import RecordedCommands
from edgeslm.hw.power import (
    EstimatedSource,
    HwmonSource,
    PmicSource,
    PowerSupplySource,
    RaplSource,
    detect_board,
    detect_sources,
    open_power_source,
    parse_pmic,
)
from edgeslm.hw.sensors import CpuFrequency, CpuUsage, ThermalZones, decode_throttled, parse_throttled, probe_throttle

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hw"


def tree(name: str, tmp_path: Path | None = None) -> Path:
    """A fixture tree, copied to tmp_path when the test changes it."""
    if tmp_path is None:
        return FIXTURES / name
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def first_working(root: Path) -> str | None:
    probes = detect_sources(root, RecordedCommands.from_dir(root))
    return next((p.name for p in probes if p.source is not None), None)


@pytest.mark.parametrize("fixture, expected", [
    ("pi5", "pmic"), ("ina3221", "hwmon"), ("ina219", "hwmon"), ("rapl", "rapl"),
    ("power_supply", "power_supply"), ("battery", "power_supply"), ("pi4", "estimated"), ("zero2w", "estimated"),
    ("garbage", None),
])
def test_detection_picks_the_first_working_source_in_order(fixture, expected):
    assert first_working(tree(fixture)) == expected


def test_pmic_sums_v_times_i_over_rails_with_both_and_records_ext5v():
    run = RecordedCommands.from_dir(tree("pi5"))
    reading = PmicSource(run).read()
    text = (tree("pi5") / "vcgencmd" / "pmic_read_adc.txt").read_text()
    rails, ext5v = parse_pmic(text)
    assert "EXT5V" not in rails and "BATT" not in rails  # volts only: no current to multiply
    assert rails["VDD_CORE"] == pytest.approx(0.70256 * 0.7221208)
    assert len(rails) == 12
    assert reading.watts == pytest.approx(sum(rails.values()))
    assert reading.supply_v == pytest.approx(5.13712) == ext5v
    assert run.calls == ["vcgencmd pmic_read_adc", "vcgencmd pmic_read_adc"]


def test_pmic_garbage_and_absence_are_sensor_errors():
    with pytest.raises(SensorError, match="no number"):
        PmicSource(RecordedCommands.from_dir(tree("garbage")))
    with pytest.raises(SensorError, match="not installed"):
        PmicSource(RecordedCommands())
    with pytest.raises(SensorError, match="no rail"):
        PmicSource(RecordedCommands({"vcgencmd pmic_read_adc": "EXT5V_V volt(24)=5.1V\n"}))


def test_ina3221_channels_are_labelled_paired_and_disabled_ones_left_out():
    source = HwmonSource(tree("ina3221"))
    reading = source.read()
    assert reading.channels == pytest.approx({"ina3221:VDD_IN": 5.080 * 0.850, "ina3221:VDD_CPU_GPU_CV": 4.992 * 0.240})
    assert reading.watts == pytest.approx(5.080 * 0.850 + 4.992 * 0.240)


def test_ina219_prefers_power_input_in_microwatts():
    assert HwmonSource(tree("ina219")).read().watts == pytest.approx(4.25)


def test_hwmon_missing_attribute_and_garbage_value(tmp_path):
    root = tree("garbage", tmp_path)
    source = HwmonSource(root)  # curr2 has no in2_input: that channel is skipped at construction
    assert source.skipped == ["hwmon0 channel 2 has current but no in2_input"]
    with pytest.raises(SensorError, match="'ERROR', not a number"):
        source.read()
    (root / "sys/class/hwmon/hwmon0/curr1_input").write_text("400\n")
    assert source.read().watts == pytest.approx(5.0 * 0.4)


def test_rapl_power_from_counter_deltas_across_wrap_around(tmp_path, clock):
    root = tree("rapl", tmp_path)
    energy0 = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    energy1 = root / "sys/class/powercap/intel-rapl:1/energy_uj"
    source = RaplSource(root, clock)
    assert set(source.domains) == {"package-0", "package-1"}  # sub-zones are not counted twice
    assert source.read() is None  # a rate needs two readings
    clock.advance(2.0)
    energy0.write_text("262143328850\n")  # 328850 uJ later, at the top of the range
    energy1.write_text("7000000\n")  # 6 J later
    first = source.read()
    assert first.channels["package-0"] == pytest.approx(0.328850 / 2)
    assert first.channels["package-1"] == pytest.approx(3.0)
    clock.advance(0.5)
    energy0.write_text("1671150\n")  # wrapped: 262143328850 -> 0 -> 1671150 is 1.67115 J
    energy1.write_text("7500000\n")
    second = source.read()
    assert second.channels["package-0"] == pytest.approx(1.67115 / 0.5)
    assert second.watts == pytest.approx(1.67115 / 0.5 + 1.0)


def test_rapl_prefers_psys_and_rejects_impossible_jumps(tmp_path, clock):
    root = tree("rapl", tmp_path)
    psys = root / "sys/class/powercap/intel-rapl:2"
    psys.mkdir()
    (psys / "name").write_text("psys\n")
    (psys / "energy_uj").write_text("100\n")
    (psys / "max_energy_range_uj").write_text("1000\n")
    source = RaplSource(root, clock)
    assert list(source.domains) == ["psys"]
    source.read()
    clock.advance(1)
    (psys / "energy_uj").write_text("5000\n")  # more than the whole range in one step: garbage
    with pytest.raises(SensorError, match="more than its range"):
        source.read()


def test_rapl_missing_range_and_nan_are_skipped_with_reasons():
    with pytest.raises(SensorError) as info:
        RaplSource(tree("garbage"))
    assert "max_energy_range_uj is missing" in str(info.value) and "'nan'" in str(info.value)


def test_power_supply_usb_pd_voltage_times_current_and_charging_battery_ignored():
    source = PowerSupplySource(tree("power_supply"))
    assert source.supply.name == "ucsi-source-psy-USBC000:001"
    assert source.read().watts == pytest.approx(5.0 * 1.2)


def test_power_supply_discharging_battery_power_now(tmp_path):
    root = tree("battery", tmp_path)
    source = PowerSupplySource(root)
    assert source.battery and source.read().watts == pytest.approx(3.6)
    (root / "sys/class/power_supply/BAT0/status").write_text("Charging\n")
    with pytest.raises(SensorError, match="not discharging"):
        source.read()


@pytest.mark.parametrize("fixture, board, idle, load", [
    ("pi5", "pi5", 2.7, 8.0), ("pi4", "pi4", 3.1, 6.1), ("zero2w", "zero2w", 0.6, 1.8), ("rapl", "unknown", 3.0, 8.0),
])
def test_board_constants_from_device_tree(fixture, board, idle, load):
    found = detect_board(tree(fixture))
    assert (found.name, found.idle_w, found.load_w) == (board, idle, load)


def test_estimate_follows_cpu_utilisation(tmp_path):
    root = tree("pi4", tmp_path)
    stat = root / "proc/stat"
    source = EstimatedSource(root)
    assert source.estimated and source.name == "estimated"
    # 100 ticks pass, 25 of them idle: 75 % busy.
    stat.write_text("cpu  183497 0 30242 800781 2474 0 516 0 0 0\n")
    assert source.read().watts == pytest.approx(3.1 + (6.1 - 3.1) * 0.75)
    overridden = EstimatedSource(root, idle_w=1.0, load_w=2.0)
    stat.write_text("cpu  183497 0 30242 800881 2474 0 516 0 0 0\n")  # 100 idle ticks
    assert overridden.read().watts == pytest.approx(1.0)


def test_garbage_tree_skips_every_source_with_a_logged_reason(caplog):
    root = tree("garbage")
    with caplog.at_level(logging.INFO, logger="edgeslm.hw.power"):
        assert open_power_source("auto", root, RecordedCommands.from_dir(root)) is None
    text = caplog.text
    for name in ("pmic", "hwmon", "rapl", "power_supply", "estimated"):
        assert f"power source {name} skipped" in text
    assert "'five volts', not a number" in text
    assert "no power source works" in text


def test_a_chosen_source_that_is_absent_gives_none_not_a_crash(caplog):
    with caplog.at_level(logging.INFO):
        assert open_power_source("rapl", tree("pi5")) is None
        assert open_power_source("none", tree("rapl")) is None
    assert isinstance(open_power_source("hwmon", tree("ina219")), HwmonSource)


def test_thermal_zones_skip_garbage_and_impossible_values_once(caplog):
    zones = ThermalZones(tree("garbage"))
    with caplog.at_level(logging.WARNING):
        assert zones.read_celsius() == 45.0
        assert zones.read_celsius() == 45.0
    assert caplog.text.count("'N/A', not a number") == 1
    assert caplog.text.count("which no board reaches") == 1
    assert ThermalZones(tree("pi5")).read_celsius() == pytest.approx(51.3)
    assert ThermalZones(tree("ina219")).read_celsius() is None


def test_cpu_frequency_and_usage():
    assert CpuFrequency(tree("pi5")).read_mhz() == pytest.approx((2400 * 2 + 1500 * 2) / 4)
    assert CpuFrequency(tree("garbage")).read_mhz() is None
    usage = CpuUsage(tree("pi5"))
    assert usage.read_fraction() is None and usage.read_fraction() is None  # counters did not move
    with pytest.raises(SensorError, match="'cpu' line"):
        CpuUsage(tree("garbage")).read_fraction()


def test_throttled_bits_decoded_from_vcgencmd_and_sysfs():
    assert decode_throttled(0x50005) == {"now": ["under_voltage", "throttled"],
                                         "since_boot": ["under_voltage", "throttled"]}
    assert decode_throttled(0x80008) == {"now": ["soft_temp_limit"], "since_boot": ["soft_temp_limit"]}
    assert decode_throttled(0x20000) == {"now": [], "since_boot": ["freq_capped"]}
    pi5 = probe_throttle(tree("pi5"), RecordedCommands.from_dir(tree("pi5")))
    assert pi5 is not None and pi5.via == "vcgencmd" and pi5.read_bits() == 0x50005
    pi4 = probe_throttle(tree("pi4"), RecordedCommands())
    assert pi4 is not None and pi4.via == "sysfs" and pi4.read_bits() == 0
    assert probe_throttle(tree("garbage"), RecordedCommands.from_dir(tree("garbage"))) is None
    assert parse_throttled("throttled=0x0\n") == 0
    with pytest.raises(SensorError):
        parse_throttled("error=1")
