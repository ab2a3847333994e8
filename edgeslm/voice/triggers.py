"""Button events to actions: publish every press, release and hold; start voice capture or run the actions."""

from __future__ import annotations

import logging
from concurrent.futures import Executor

from edgeslm.config import GpioTriggerConfig, VoiceAction
from edgeslm.events import EventBus
from edgeslm.hw.gpio.base import PinEvent
from edgeslm.voice.actions import ActionRunner
from edgeslm.voice.service import VoiceService

log = logging.getLogger(__name__)


class TriggerRouter:
    """Called on GPIO callback threads: it only publishes and hands work to the voice thread or the executor."""

    def __init__(self, triggers: list[GpioTriggerConfig], bus: EventBus, runner: ActionRunner,
                 voice: VoiceService | None, executor: Executor):
        self.triggers = {t.pin: t for t in triggers}
        self.bus, self.runner, self.voice, self.executor = bus, runner, voice, executor

    def on_event(self, event: PinEvent) -> None:
        trigger = self.triggers.get(event.pin)
        if trigger is None:
            return
        name = trigger.name or f"pin{event.pin}"
        self.bus.publish("button", pin=event.pin, name=name, edge=event.kind, t_mono_s=round(event.t_s, 6),
                         held_ms=round(event.held_s * 1000, 3))
        if event.kind == "release":
            if self.voice is not None:
                self.voice.release(event.pin)
            return
        actions = trigger.action if event.kind == "press" else trigger.hold_action
        context = {"trigger": name, "pin": event.pin}
        for action in actions:
            if isinstance(action, VoiceAction):
                if self.voice is None:
                    self.bus.publish("error", **context, code="voice_unavailable", source="gpio",
                                     message="this trigger starts voice capture but voice is not running")
                else:
                    self.voice.press(trigger=name, pin=event.pin, mode=action.mode, pressed_at=event.t_s)
            else:
                self.executor.submit(self.runner.run, action, context)
