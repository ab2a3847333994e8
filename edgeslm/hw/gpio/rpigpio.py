"""The RPi.GPIO backend, for Pi 4 and older (RPi.GPIO does not work on a Pi 5)."""

from __future__ import annotations

import importlib
import time
from typing import Any

from edgeslm.errors import GpioError, GpioUnavailableError
from edgeslm.hw.clock import Clock
from edgeslm.hw.gpio.base import GpioBackend, LevelCallback, Pull


class RpiGpioBackend(GpioBackend):
    """Pins through RPi.GPIO in BCM numbering; edges arrive on its event thread."""

    name = "rpigpio"

    def __init__(self, *, gpio: Any = None, clock: Clock = time.monotonic):
        if gpio is None:
            try:
                gpio = importlib.import_module("RPi.GPIO")
            except ImportError as exc:
                raise GpioUnavailableError(f"RPi.GPIO is not installed ({exc}); on a Pi 4 or older: "
                                           "pip install RPi.GPIO") from None
            except RuntimeError as exc:  # "This module can only be run on a Raspberry Pi!"
                raise GpioUnavailableError(f"RPi.GPIO cannot run here: {exc}") from None
        self._gpio, self._clock = gpio, clock
        gpio.setwarnings(False)
        gpio.setmode(gpio.BCM)
        self._claimed: set[int] = set()

    def _call(self, pin: int, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ValueError) as exc:
            raise GpioError(f"pin {pin}: cannot {what}: {exc}", param="pin") from None

    def setup_input(self, pin: int, pull: Pull, bounce_ms: float, on_change: LevelCallback) -> None:
        g = self._gpio
        pud = {"up": g.PUD_UP, "down": g.PUD_DOWN, "off": g.PUD_OFF}[pull]
        self._call(pin, "claim it as an input", g.setup, pin, g.IN, pull_up_down=pud)
        self._claimed.add(pin)

        # RPi.GPIO's own bouncetime drops the edge after a bounce (a lost release); the Button debounces instead.
        def edge(channel: int) -> None:
            on_change(int(g.input(channel)), self._clock())

        self._call(pin, "watch its edges", g.add_event_detect, pin, g.BOTH, callback=edge)

    def setup_output(self, pin: int, level: int) -> None:
        g = self._gpio
        self._call(pin, "claim it as an output", g.setup, pin, g.OUT, initial=g.HIGH if level else g.LOW)
        self._claimed.add(pin)

    def write(self, pin: int, level: int) -> None:
        self._call(pin, "write it", self._gpio.output, pin, self._gpio.HIGH if level else self._gpio.LOW)

    def read(self, pin: int) -> int:
        return int(self._call(pin, "read it", self._gpio.input, pin))

    def close(self) -> None:
        if self._claimed:
            self._gpio.cleanup(sorted(self._claimed))
            self._claimed.clear()
