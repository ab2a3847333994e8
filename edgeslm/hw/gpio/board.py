"""The configured wiring on a backend: debounced triggers, outputs (set, toggle, pulse) and status LEDs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from edgeslm.config import GpioConfig, GpioOutputConfig, GpioTriggerConfig
from edgeslm.errors import BadInputError, GpioError
from edgeslm.hw.clock import Clock, Handle, Scheduler
from edgeslm.hw.gpio.base import Button, GpioBackend, PinEvent


class GpioBoard:
    """Claims every configured pin at start-up; `on_event` gets debounced press / release / hold."""

    def __init__(self, backend: GpioBackend, config: GpioConfig, *, scheduler: Scheduler, clock: Clock,
                 on_event: Callable[[PinEvent], None]):
        self.backend, self.config = backend, config
        self._scheduler = scheduler
        self.outputs: dict[int, GpioOutputConfig] = {o.pin: o for o in config.outputs}
        self.triggers: dict[int, GpioTriggerConfig] = {t.pin: t for t in config.triggers}
        self.buttons: dict[int, Button] = {}
        self._pulses: dict[int, Handle] = {}
        self._clock = clock
        self._simulated_until: dict[int, float] = {}  # pin -> when its simulated press releases
        self._lock = threading.RLock()
        try:
            for output in config.outputs:
                backend.setup_output(output.pin, self._level(output, output.initial))
            for trigger in config.triggers:
                self._add_trigger(trigger, scheduler, clock, on_event)
        except BaseException:
            self.close()
            raise

    def _add_trigger(self, trigger: GpioTriggerConfig, scheduler: Scheduler, clock: Clock,
                     on_event: Callable[[PinEvent], None]) -> None:
        pending: list[tuple[int, float]] = []
        button: Button | None = None

        def on_change(level: int, t_s: float) -> None:
            if button is None:
                pending.append((level, t_s))  # a change while the button is being built
            else:
                button.on_level(level, t_s)

        self.backend.setup_input(trigger.pin, trigger.pull, trigger.bounce_ms, on_change)
        button = Button(trigger.pin, active_level=0 if trigger.edge == "falling" else 1,
                        bounce_s=trigger.bounce_ms / 1000, hold_s=trigger.hold_ms / 1000,
                        read=lambda: self.backend.read(trigger.pin), scheduler=scheduler, clock=clock,
                        on_event=on_event)
        self.buttons[trigger.pin] = button
        for level, t_s in pending:
            button.on_level(level, t_s)

    @staticmethod
    def _level(output: GpioOutputConfig, on: bool) -> int:
        return int(on == output.active_high)

    def _output(self, pin: int) -> GpioOutputConfig:
        try:
            return self.outputs[pin]
        except KeyError:
            raise GpioError(f"pin {pin} is not in [[gpio.outputs]]", param="pin") from None

    def is_on(self, pin: int) -> bool:
        output = self._output(pin)
        return self.backend.read(pin) == self._level(output, True)

    def set_output(self, pin: int, on: bool) -> bool:
        output = self._output(pin)
        with self._lock:
            handle = self._pulses.pop(pin, None)
            if handle is not None:
                handle.cancel()
            self.backend.write(pin, self._level(output, on))
        return on

    def toggle(self, pin: int) -> bool:
        with self._lock:
            on = not self.is_on(pin)
        return self.set_output(pin, on)

    def pulse(self, pin: int, pulse_ms: float) -> bool:
        self.set_output(pin, True)
        with self._lock:
            self._pulses[pin] = self._scheduler.call_later(pulse_ms / 1000, lambda: self._end_pulse(pin))
        return True

    def _end_pulse(self, pin: int) -> None:
        with self._lock:
            if self._pulses.pop(pin, None) is None:
                return
            self.backend.write(pin, self._level(self._output(pin), False))

    def press(self, pin: int, hold_ms: float) -> None:
        """Simulate a press of a configured trigger (mock backend only): active level now, released after hold_ms."""
        trigger = self.triggers.get(pin)
        if trigger is None:
            known = ", ".join(str(p) for p in self.triggers) or "none"
            raise BadInputError(f"pin {pin} is not a configured trigger; triggers: {known}", param="pin")
        active = 0 if trigger.edge == "falling" else 1
        with self._lock:
            now = self._clock()
            until = self._simulated_until.get(pin, float("-inf"))
            if now < until:
                # Driving a line that is already held is no edge: the press would silently do nothing.
                raise BadInputError(f"pin {pin} is still held by an earlier press for {(until - now) * 1000:.0f} ms; "
                                    "press again once it is released", param="pin", code="still_pressed")
            self.backend.drive(pin, active)
            self._simulated_until[pin] = now + hold_ms / 1000
        self._scheduler.call_later(hold_ms / 1000, lambda: self.backend.drive(pin, 1 - active))

    def status(self) -> dict[str, Any]:
        triggers = [{"pin": p, "name": t.name or f"pin{p}", "pressed": self.buttons[p].pressed,
                     "level": self.backend.read(p)} for p, t in self.triggers.items()]
        outputs = [{"pin": p, "name": o.name or f"pin{p}", "on": self.is_on(p), "level": self.backend.read(p)}
                   for p, o in self.outputs.items()]
        return {**self.backend.describe(), "triggers": triggers, "outputs": outputs}

    def close(self) -> None:
        for button in self.buttons.values():
            button.close()
        with self._lock:
            for handle in self._pulses.values():
                handle.cancel()
            self._pulses.clear()
        self.backend.close()


class StatusLeds:
    """Busy while any work is in flight; error for `error_led_s` (0: until `clear_error`)."""

    def __init__(self, board: GpioBoard | None, busy_pin: int | None, error_pin: int | None, error_s: float,
                 scheduler: Scheduler):
        self._board, self._busy_pin, self._error_pin = board, busy_pin, error_pin
        self._error_s, self._scheduler = error_s, scheduler
        self._busy = 0
        self._lock = threading.Lock()
        self._error_off: Handle | None = None

    def busy(self, delta: int) -> None:
        if self._board is None or self._busy_pin is None:
            return
        with self._lock:
            before = self._busy
            self._busy = max(0, self._busy + delta)
            if (before == 0) != (self._busy == 0):
                self._board.set_output(self._busy_pin, self._busy > 0)

    def show_error(self) -> None:
        if self._board is None or self._error_pin is None:
            return
        with self._lock:
            self._board.set_output(self._error_pin, True)
            if self._error_off is not None:
                self._error_off.cancel()
            if self._error_s > 0:
                self._error_off = self._scheduler.call_later(self._error_s, self.clear_error)

    def succeeded(self) -> None:
        """A voice command worked: an error LED without a timeout goes off now."""
        if self._error_s == 0:
            self.clear_error()

    def clear_error(self) -> None:
        if self._board is None or self._error_pin is None:
            return
        with self._lock:
            self._error_off = None
            self._board.set_output(self._error_pin, False)
