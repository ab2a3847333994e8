"""The mock backend: gpiozero's MockFactory pins, driven by tests and by `edgeslm gpio press`."""

from __future__ import annotations

import time
from typing import Any

from edgeslm.errors import GpioError, GpioUnavailableError
from edgeslm.hw.clock import Clock
from edgeslm.hw.gpio.base import GpioBackend, LevelCallback, Pull

_PULLS = {"up": "up", "down": "down", "off": "floating"}


class MockBackend(GpioBackend):
    """Pins that exist only in memory; `drive(pin, level)` is a hand on the button."""

    name = "mock"

    def __init__(self, *, factory: Any = None, clock: Clock = time.monotonic):
        if factory is None:
            try:
                from gpiozero.pins.mock import MockFactory
            except ImportError as exc:
                raise GpioUnavailableError(f"the mock GPIO backend needs gpiozero ({exc}); "
                                           "pip install 'edgeslm[gpio]'") from None
            factory = MockFactory()
        self.factory = factory
        self._clock = clock
        self._pins: dict[int, Any] = {}
        self._callbacks: dict[int, Any] = {}  # gpiozero keeps only a weak reference to when_changed

    def _pin(self, pin: int) -> Any:
        try:
            return self.factory.pin(pin)
        except Exception as exc:
            raise GpioError(f"pin {pin}: {exc}", param="pin") from None

    def setup_input(self, pin: int, pull: Pull, bounce_ms: float, on_change: LevelCallback) -> None:
        mock = self._pin(pin)
        try:
            mock.function = "input"
            mock.pull = _PULLS[pull]
        except Exception as exc:
            raise GpioError(f"pin {pin} cannot be an input with pull {pull!r}: {exc}", param="pin") from None

        def changed(ticks: float, state: Any) -> None:
            on_change(int(bool(state)), self._clock())

        self._callbacks[pin] = changed
        mock.edges = "both"
        mock.when_changed = changed
        self._pins[pin] = mock

    def setup_output(self, pin: int, level: int) -> None:
        mock = self._pin(pin)
        mock.function = "output"
        mock.state = level
        self._pins[pin] = mock

    def write(self, pin: int, level: int) -> None:
        self._pins[pin].state = level

    def read(self, pin: int) -> int:
        return int(bool(self._pins[pin].state))

    def drive(self, pin: int, level: int) -> None:
        mock = self._pins.get(pin)
        if mock is None or mock.function != "input":
            raise GpioError(f"pin {pin} is not set up as an input", param="pin")
        mock.drive_high() if level else mock.drive_low()

    def close(self) -> None:
        for mock in self._pins.values():
            mock.when_changed = None
        self._pins.clear()
        self._callbacks.clear()
