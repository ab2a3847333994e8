"""GPIO: one backend interface (lgpio, RPi.GPIO, mock), chosen once; buttons and outputs on top of it."""

from __future__ import annotations

import logging
import time

from edgeslm.errors import GpioUnavailableError
from edgeslm.hw.clock import Clock
from edgeslm.hw.gpio.base import Button, GpioBackend, PinEvent

log = logging.getLogger(__name__)
AUTO_ORDER = ("lgpio", "rpigpio", "mock")


def open_backend(name: str = "auto", *, chip: str | None = None, clock: Clock = time.monotonic,
                 pins_configured: bool = True) -> GpioBackend:
    """The named backend, or with "auto" the first that works here (logged, with why the others did not)."""
    from edgeslm.hw.gpio.chip import LgpioBackend
    from edgeslm.hw.gpio.mock import MockBackend
    from edgeslm.hw.gpio.rpigpio import RpiGpioBackend

    makers = {
        "lgpio": lambda: LgpioBackend(chip, clock=clock),
        "rpigpio": lambda: RpiGpioBackend(clock=clock),
        "mock": lambda: MockBackend(clock=clock),
    }
    if name != "auto":
        return makers[name]()
    reasons = []
    for candidate in AUTO_ORDER:
        try:
            backend = makers[candidate]()
        except GpioUnavailableError as exc:
            reasons.append(f"{candidate}: {exc}")
            continue
        if candidate == "mock":
            log.log(logging.WARNING if pins_configured else logging.INFO,
                    "gpio: no GPIO hardware works here (%s); using the mock backend, pins move only with "
                    "`edgeslm gpio press`", "; ".join(reasons))
        else:
            log.info("gpio: backend %s", candidate)
        return backend
    raise GpioUnavailableError("no GPIO backend works here: " + "; ".join(reasons))


__all__ = ["AUTO_ORDER", "Button", "GpioBackend", "PinEvent", "open_backend"]
