"""GPIO: the same board behaviour over every backend (mock pins, and lgpio / RPi.GPIO over fake modules)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgeslm.config import GpioConfig
from edgeslm.errors import BadInputError, GpioError, GpioUnavailableError, NotMockError
from edgeslm.hw.clock import ManualScheduler
from edgeslm.hw.gpio import Button, PinEvent, open_backend
from edgeslm.hw.gpio.board import GpioBoard, StatusLeds
from edgeslm.hw.gpio.chip import LgpioBackend, choose_chip
from edgeslm.hw.gpio.mock import MockBackend
from edgeslm.hw.gpio.rpigpio import RpiGpioBackend
from tests.unit.fake_gpio_libs import FakeLgpio, FakeRpiGpio

WIRING = GpioConfig.model_validate({
    "triggers": [{"pin": 17, "pull": "up", "edge": "falling", "bounce_ms": 20, "hold_ms": 500},
                 {"pin": 5, "pull": "down", "edge": "rising", "bounce_ms": 0}],
    "outputs": [{"pin": 27}, {"pin": 22, "active_high": False, "initial": True}],
})


class Rig:
    """A backend plus a hand on its input lines."""

    def __init__(self, kind: str, tmp_path: Path, clock: ManualScheduler):
        self.kind = kind
        if kind == "mock":
            self.backend = MockBackend(clock=clock)
            self.move = self.backend.drive
        elif kind == "lgpio":
            self.lib = FakeLgpio({0: ("pinctrl-rp1", 54)})
            dev = tmp_path / "dev"
            dev.mkdir()
            (dev / "gpiochip0").touch()
            self.backend = LgpioBackend(lgpio=self.lib, dev=dev, clock=clock)
            self.move = self.lib.set_level
        else:
            self.lib = FakeRpiGpio()
            self.backend = RpiGpioBackend(gpio=self.lib, clock=clock)
            self.move = self.lib.set_level


@pytest.fixture(params=["mock", "lgpio", "rpigpio"])
def board(request, tmp_path):
    clock = ManualScheduler()
    rig = Rig(request.param, tmp_path, clock)
    events: list[PinEvent] = []
    board = GpioBoard(rig.backend, WIRING, scheduler=clock, clock=clock, on_event=events.append)
    yield board, rig, clock, events
    board.close()


def test_press_hold_release_with_monotonic_times(board):
    board, rig, clock, events = board
    clock.advance(1.0)
    rig.move(17, 0)
    assert [(e.kind, e.t_s) for e in events] == [("press", 1.0)]
    clock.advance(0.6)
    assert events[-1].kind == "hold" and events[-1].held_s == pytest.approx(0.5)
    clock.advance(0.4)
    rig.move(17, 1)
    assert events[-1].kind == "release" and events[-1].held_s == pytest.approx(1.0)
    assert board.status()["triggers"][0]["pressed"] is False


def test_a_short_press_gives_no_hold(board):
    board, rig, clock, events = board
    rig.move(17, 0)
    clock.advance(0.1)
    rig.move(17, 1)
    clock.advance(2.0)
    assert [e.kind for e in events] == ["press", "release"]


def test_pull_down_button_presses_on_the_rising_edge(board):
    board, rig, clock, events = board
    rig.move(5, 1)
    rig.move(5, 0)
    assert [(e.pin, e.kind) for e in events] == [(5, "press"), (5, "release")]


def test_outputs_honour_active_high_initial_toggle_and_pulse(board):
    board, rig, clock, events = board
    backend = rig.backend
    assert backend.read(27) == 0 and board.is_on(27) is False
    assert backend.read(22) == 0 and board.is_on(22) is True  # active low, initially on
    board.set_output(27, True)
    assert backend.read(27) == 1
    assert board.toggle(22) is False and backend.read(22) == 1
    board.pulse(22, 250)
    assert board.is_on(22)
    clock.advance(0.2)
    assert board.is_on(22)
    clock.advance(0.1)
    assert not board.is_on(22)
    with pytest.raises(GpioError, match="not in \\[\\[gpio.outputs\\]\\]"):
        board.set_output(4, True)


def test_simulated_presses_only_on_the_mock_backend(board):
    board, rig, clock, events = board
    if rig.kind != "mock":
        with pytest.raises(NotMockError):
            board.press(17, 100)
        return
    board.press(17, 100)
    with pytest.raises(BadInputError, match="pin 17 is still held by an earlier press for 100 ms; press again"):
        board.press(17, 100)  # driving a held line is no edge: it would have done nothing
    clock.advance(0.2)
    assert [e.kind for e in events] == ["press", "release"]
    board.press(17, 100)  # released: a new press
    clock.advance(0.2)
    assert [e.kind for e in events] == ["press", "release", "press", "release"]
    with pytest.raises(BadInputError, match="not a configured trigger"):
        board.press(27, 100)


def test_button_bounce_is_ignored_and_a_change_hidden_in_it_is_caught():
    clock = ManualScheduler()
    level = {"now": 1}
    events: list[PinEvent] = []
    button = Button(17, active_level=0, bounce_s=0.02, hold_s=0, read=lambda: level["now"], scheduler=clock,
                    clock=clock, on_event=events.append)
    for t, lv in [(0.0, 0), (0.002, 1), (0.004, 0), (0.006, 1), (0.008, 0)]:  # contact bounce on press
        clock.now = t
        level["now"] = lv
        button.on_level(lv, t)
    clock.advance(0.05)
    assert [e.kind for e in events] == ["press"]
    # released at 1.0, then an edge inside the lock-out leaves the line low with no further edge:
    # the re-read when the lock-out ends finds the line low and reports the press it would have lost
    clock.now = 1.0
    level["now"] = 1
    button.on_level(1, 1.0)
    clock.now = 1.005
    level["now"] = 0
    button.on_level(0, 1.005)
    assert [e.kind for e in events] == ["press", "release"]
    clock.advance(0.05)
    assert [e.kind for e in events] == ["press", "release", "press"] and button.pressed
    assert events[-1].t_s == pytest.approx(1.02)


def test_lgpio_finds_the_pi5_chip_by_label_not_number():
    assert choose_chip({0: "pinctrl-bcm2711", 4: "pinctrl-rp1", 10: "rp1-gpio"}, None) == 4
    assert choose_chip({0: "gpio-brcmstb@107d508500", 13: "pinctrl-rp1"}, None) == 13
    assert choose_chip({0: "pinctrl-bcm2835", 1: "raspberrypi-exp-gpio"}, None) == 0
    assert choose_chip({2: "tegra234-gpio", 3: "other"}, "other") == 3
    assert choose_chip({2: "tegra234-gpio"}, "gpiochip2") == 2
    with pytest.raises(GpioUnavailableError, match="matches no chip; found gpiochip2 \\(tegra234-gpio\\)"):
        choose_chip({2: "tegra234-gpio"}, "pinctrl-rp1")
    with pytest.raises(GpioUnavailableError, match="no /dev/gpiochip"):
        choose_chip({}, None)


def test_lgpio_backend_opens_the_labelled_chip_and_sets_debounce(tmp_path):
    lib = FakeLgpio({0: ("pinctrl-bcm2711", 58), 4: ("pinctrl-rp1", 54)})
    for n in (0, 4):
        (tmp_path / f"gpiochip{n}").touch()
    backend = LgpioBackend(lgpio=lib, dev=tmp_path, clock=ManualScheduler())
    assert backend.chip == 4 and backend.describe()["label"] == "pinctrl-rp1"
    backend.setup_input(17, "up", 20, lambda level, t: None)
    assert lib.debounce_us[17] == 20_000 and lib.levels[17] == 1
    with pytest.raises(GpioError, match="pin 17 on gpiochip4 \\(pinctrl-rp1\\): cannot claim it as an output"):
        backend.setup_output(17, 0)
    backend.close()
    assert not lib.claimed


def test_auto_falls_back_to_mock_here_and_says_why(caplog):
    # This machine has no /dev/gpiochip* and is not a Pi: the real lgpio and RPi.GPIO both refuse.
    with caplog.at_level(logging.WARNING):
        backend = open_backend("auto")
    try:
        assert backend.name == "mock"
        assert "lgpio:" in caplog.text and "rpigpio:" in caplog.text and "using the mock backend" in caplog.text
    finally:
        backend.close()
    with pytest.raises(GpioUnavailableError):
        open_backend("lgpio")


def test_status_leds_busy_counts_and_error_times_out():
    clock = ManualScheduler()
    config = GpioConfig.model_validate({"outputs": [{"pin": 23}, {"pin": 24}], "busy_led_pin": 23,
                                        "error_led_pin": 24})
    board = GpioBoard(MockBackend(clock=clock), config, scheduler=clock, clock=clock, on_event=lambda e: None)
    leds = StatusLeds(board, 23, 24, 2.0, clock)
    leds.busy(+1)
    leds.busy(+1)
    leds.busy(-1)
    assert board.is_on(23)
    leds.busy(-1)
    assert not board.is_on(23)
    leds.show_error()
    clock.advance(1.0)
    assert board.is_on(24)
    clock.advance(1.5)
    assert not board.is_on(24)
    board.close()
