"""Fakes of the lgpio and RPi.GPIO modules: in-memory lines with pulls, edges and callbacks, like the kernel's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class FakeLgpio:
    """The subset of lgpio edgeslm calls, over fake gpiochips {number: (label, lines)}."""

    SET_PULL_UP, SET_PULL_DOWN, SET_PULL_NONE = 32, 64, 128
    BOTH_EDGES, RISING_EDGE, FALLING_EDGE = 3, 1, 2

    class error(Exception):  # noqa: N801 - lgpio's name
        pass

    def __init__(self, chips: dict[int, tuple[str, int]]):
        self.chips = chips
        self.levels: dict[int, int] = {}
        self.claimed: dict[int, str] = {}
        self.callbacks: dict[int, Callable[..., None]] = {}
        self.debounce_us: dict[int, int] = {}
        self.opened: list[int] = []

    def gpiochip_open(self, number: int) -> int:
        if number not in self.chips:
            raise self.error("can not open gpiochip")
        self.opened.append(number)
        return number

    def gpiochip_close(self, handle: int) -> None:
        pass

    def gpio_get_chip_info(self, handle: int) -> tuple[int, int, str, str]:
        label, lines = self.chips[handle]
        return 0, lines, f"gpiochip{handle}", label

    def _check(self, handle: int, gpio: int) -> None:
        if gpio >= self.chips[handle][1]:
            raise self.error("bad GPIO number")

    def gpio_claim_alert(self, handle: int, gpio: int, edges: int, flags: int = 0) -> int:
        self._check(handle, gpio)
        self.claimed[gpio] = "input"
        self.levels[gpio] = 1 if flags == self.SET_PULL_UP else 0
        return 0

    def gpio_set_debounce_micros(self, handle: int, gpio: int, micros: int) -> int:
        self.debounce_us[gpio] = micros
        return 0

    def callback(self, handle: int, gpio: int, edge: int, func: Callable[..., None]) -> Any:
        self.callbacks[gpio] = func
        fake = self

        class Callback:
            def cancel(self) -> None:
                fake.callbacks.pop(gpio, None)

        return Callback()

    def gpio_claim_output(self, handle: int, gpio: int, level: int = 0, flags: int = 0) -> int:
        self._check(handle, gpio)
        if self.claimed.get(gpio) == "input":
            raise self.error("GPIO busy")
        self.claimed[gpio] = "output"
        self.levels[gpio] = level
        return 0

    def gpio_write(self, handle: int, gpio: int, level: int) -> int:
        self.levels[gpio] = level
        return 0

    def gpio_read(self, handle: int, gpio: int) -> int:
        return self.levels[gpio]

    def gpio_free(self, handle: int, gpio: int) -> int:
        self.claimed.pop(gpio, None)
        return 0

    def set_level(self, gpio: int, level: int) -> None:
        """The outside world moves a line: the alert fires like lgpio's callback thread would."""
        self.levels[gpio] = level
        if gpio in self.callbacks:
            self.callbacks[gpio](0, gpio, level, 123456789)


class FakeRpiGpio:
    """The subset of RPi.GPIO edgeslm calls."""

    BCM, IN, OUT, HIGH, LOW = 11, 1, 0, 1, 0
    PUD_UP, PUD_DOWN, PUD_OFF, BOTH = 22, 21, 20, 33

    def __init__(self) -> None:
        self.mode: int | None = None
        self.levels: dict[int, int] = {}
        self.functions: dict[int, int] = {}
        self.callbacks: dict[int, Callable[[int], None]] = {}
        self.cleaned: list[int] = []

    def setwarnings(self, flag: bool) -> None:
        pass

    def setmode(self, mode: int) -> None:
        self.mode = mode

    def setup(self, pin: int, function: int, pull_up_down: int = 20, initial: int = -1) -> None:
        if self.mode != self.BCM:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode")
        self.functions[pin] = function
        self.levels[pin] = (1 if pull_up_down == self.PUD_UP else 0) if function == self.IN else max(initial, 0)

    def add_event_detect(self, pin: int, edge: int, callback: Callable[[int], None]) -> None:
        if self.functions.get(pin) != self.IN:
            raise RuntimeError("You must setup() the GPIO channel as an input first")
        self.callbacks[pin] = callback

    def input(self, pin: int) -> int:
        return self.levels[pin]

    def output(self, pin: int, level: int) -> None:
        if self.functions.get(pin) != self.OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        self.levels[pin] = level

    def cleanup(self, pins: list[int]) -> None:
        self.cleaned.extend(pins)

    def set_level(self, pin: int, level: int) -> None:
        self.levels[pin] = level
        if pin in self.callbacks:
            self.callbacks[pin](pin)
