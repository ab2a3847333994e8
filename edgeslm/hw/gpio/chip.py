"""The lgpio backend: a Linux gpiochip (Pi 5 found by its label pinctrl-rp1, never by number)."""

from __future__ import annotations

import importlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from edgeslm.errors import GpioError, GpioUnavailableError
from edgeslm.hw.clock import Clock
from edgeslm.hw.gpio.base import GpioBackend, LevelCallback, Pull

log = logging.getLogger(__name__)
PI5_LABEL = "pinctrl-rp1"
OLDER_PI_PREFIX = "pinctrl-bcm"  # pinctrl-bcm2711 (Pi 4), pinctrl-bcm2835 (Pi 3 and older)


def chip_numbers(dev: Path) -> list[int]:
    found = [int(m.group(1)) for p in dev.glob("gpiochip*") if (m := re.fullmatch(r"gpiochip(\d+)", p.name))]
    return sorted(found)


def choose_chip(labels: dict[int, str], wanted: str | None) -> int:
    """The chip to open: `wanted` as a label or a number, else the Pi 5 label, else an older Pi's, else the first."""
    if not labels:
        raise GpioUnavailableError("no /dev/gpiochip* here; this is not a board with GPIO (or /dev is not mounted)")
    if wanted is not None:
        for number, label in labels.items():
            if label == wanted:
                return number
        number_text = wanted.removeprefix("gpiochip")
        if number_text.isdigit() and int(number_text) in labels:
            return int(number_text)
        known = ", ".join(f"gpiochip{n} ({label})" for n, label in labels.items())
        raise GpioUnavailableError(f"gpio.chip {wanted!r} matches no chip; found {known}")
    for preferred in (lambda label: label == PI5_LABEL, lambda label: label.startswith(OLDER_PI_PREFIX)):
        for number, label in labels.items():
            if preferred(label):
                return number
    return min(labels)


class LgpioBackend(GpioBackend):
    """Pins on one gpiochip through lgpio; edges arrive on lgpio's callback thread."""

    name = "lgpio"

    def __init__(self, chip: str | None = None, *, lgpio: Any = None, dev: Path = Path("/dev"),
                 clock: Clock = time.monotonic):
        if lgpio is None:
            try:
                lgpio = importlib.import_module("lgpio")
            except ImportError as exc:
                raise GpioUnavailableError(f"lgpio is not installed ({exc}); pip install 'edgeslm[gpio]'") from None
        self._lg, self._clock = lgpio, clock
        labels = {}
        for number in chip_numbers(dev):
            try:
                handle = lgpio.gpiochip_open(number)
            except Exception as exc:  # lgpio.error
                log.debug("gpiochip%d: cannot open: %s", number, exc)
                continue
            try:
                labels[number] = str(lgpio.gpio_get_chip_info(handle)[3])
            finally:
                lgpio.gpiochip_close(handle)
        self.chip = choose_chip(labels, chip)
        self.label = labels[self.chip]
        self._handle = lgpio.gpiochip_open(self.chip)
        self._claimed: set[int] = set()
        self._callbacks: dict[int, Any] = {}
        log.info("lgpio: using gpiochip%d (%s)", self.chip, self.label)

    def _call(self, pin: int, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(self._handle, pin, *args)
        except Exception as exc:  # lgpio.error carries the kernel's reason ('GPIO busy', 'bad GPIO number')
            raise GpioError(f"pin {pin} on gpiochip{self.chip} ({self.label}): cannot {what}: {exc}",
                            param="pin") from None

    def setup_input(self, pin: int, pull: Pull, bounce_ms: float, on_change: LevelCallback) -> None:
        lg = self._lg
        flags = {"up": lg.SET_PULL_UP, "down": lg.SET_PULL_DOWN, "off": lg.SET_PULL_NONE}[pull]
        self._call(pin, "claim it as an input", lg.gpio_claim_alert, lg.BOTH_EDGES, flags)
        self._claimed.add(pin)
        if bounce_ms > 0:
            self._call(pin, "set debounce", lg.gpio_set_debounce_micros, int(bounce_ms * 1000))

        def alert(chip: int, gpio: int, level: int, tick: int) -> None:
            if level in (0, 1):  # 2 is a watchdog timeout, not a change
                on_change(level, self._clock())  # lgpio's tick has no fixed origin; use our clock

        self._callbacks[pin] = lg.callback(self._handle, pin, lg.BOTH_EDGES, alert)

    def setup_output(self, pin: int, level: int) -> None:
        self._call(pin, "claim it as an output", self._lg.gpio_claim_output, level)
        self._claimed.add(pin)

    def write(self, pin: int, level: int) -> None:
        self._call(pin, "write it", self._lg.gpio_write, level)

    def read(self, pin: int) -> int:
        return int(self._call(pin, "read it", self._lg.gpio_read))

    def close(self) -> None:
        if self._handle is None:
            return
        for callback in self._callbacks.values():
            callback.cancel()
        for pin in self._claimed:
            try:
                self._lg.gpio_free(self._handle, pin)
            except Exception as exc:
                log.debug("pin %d: free failed: %s", pin, exc)
        self._lg.gpiochip_close(self._handle)
        self._handle = None
        self._callbacks.clear()
        self._claimed.clear()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "chip": f"gpiochip{self.chip}", "label": self.label}
