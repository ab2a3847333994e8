"""Actions a trigger or an intent runs: drive an output, publish an event, run a command, classify a text."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgeslm.config import Action, ClassifyAction, CommandAction, EventAction, OutputAction
from edgeslm.errors import EdgeslmError
from edgeslm.events import EventBus
from edgeslm.hw.gpio.board import GpioBoard, StatusLeds
from edgeslm.tasks.served import ModelRegistry

log = logging.getLogger(__name__)
OUTPUT_TAIL = 400  # characters of a command's output kept in its event


class ActionRunner:
    """Runs actions on the calling thread; each one publishes an `action` event, a failure also an `error`."""

    def __init__(self, bus: EventBus, board: GpioBoard | None, registry: ModelRegistry, leds: StatusLeds, *,
                 clock: Callable[[], float] = time.perf_counter, popen: Callable[..., Any] = subprocess.Popen):
        self.bus, self.board, self.registry, self.leds = bus, board, registry, leds
        self._clock, self._popen = clock, popen
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._closed = False

    def run_all(self, actions: Sequence[Action], context: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [self.run(action, context) for action in actions]

    def run(self, action: Action, context: Mapping[str, Any]) -> dict[str, Any]:
        started = self._clock()
        result: dict[str, Any] = {"type": action.type}
        try:
            if isinstance(action, OutputAction):
                result.update(self._output(action))
            elif isinstance(action, EventAction):
                self.bus.publish("event", **{**context, **action.data, "name": action.name})
                result["name"] = action.name
            elif isinstance(action, CommandAction):
                result.update(self._command(action, context))
            elif isinstance(action, ClassifyAction):
                result.update(self._classify(action, context))
            else:
                raise EdgeslmError(f"{action.type} actions are run by the trigger, not here")
            result["ok"] = True
        except EdgeslmError as exc:
            result.update(ok=False, error=exc.message, code=exc.code)
        except Exception as exc:  # a bug or a runtime failure must not take the caller's thread down
            log.exception("action %s failed", action.type)
            result.update(ok=False, error=f"{type(exc).__name__}: {exc}", code="action_failed")
        result["ms"] = round((self._clock() - started) * 1000, 3)
        self.bus.publish("action", **{**context, **result})
        if not result["ok"]:
            self.leds.show_error()
            self.bus.publish("error", **{**context, "code": result["code"], "message": result["error"],
                                         "source": "action"})
        return result

    def _output(self, action: OutputAction) -> dict[str, Any]:
        if self.board is None:
            raise EdgeslmError("no GPIO backend is running", code="gpio_unavailable")
        if action.set == "toggle":
            on = self.board.toggle(action.pin)
        elif action.set == "pulse":
            on = self.board.pulse(action.pin, action.pulse_ms)
        else:
            on = self.board.set_output(action.pin, action.set == "on")
        return {"pin": action.pin, "set": action.set, "on": on}

    def _command(self, action: CommandAction, context: Mapping[str, Any]) -> dict[str, Any]:
        env = dict(os.environ)
        env.update({f"EDGESLM_{key.upper()}": str(value) for key, value in context.items()
                    if isinstance(value, (str, int, float))})
        argv = list(action.argv)
        try:
            proc = self._popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        except FileNotFoundError:
            raise EdgeslmError(f"command {argv[0]!r} was not found; give its full path in argv",
                               code="command_not_found") from None
        except OSError as exc:
            raise EdgeslmError(f"command {argv[0]!r} could not start: {exc.strerror}", code="command_failed") from None
        with self._lock:
            self._running.add(proc)
            closed = self._closed
        try:
            if closed:
                proc.kill()
            stdout, stderr = proc.communicate(timeout=action.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise EdgeslmError(f"command {argv[0]!r} ran past its timeout_s = {action.timeout_s:g} and was killed",
                               code="command_timeout") from None
        finally:
            with self._lock:
                self._running.discard(proc)
        if proc.returncode != 0:
            err = stderr.decode(errors="replace").strip()[-OUTPUT_TAIL:]
            raise EdgeslmError(f"command {argv[0]!r} exited with status {proc.returncode}: {err}",
                               code="command_failed")
        return {"argv": argv, "exit_code": proc.returncode, "stdout": stdout.decode(errors="replace")[-OUTPUT_TAIL:]}

    def close(self) -> None:
        """The daemon is stopping: end commands still running rather than wait out their timeouts."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for proc in running:
            proc.terminate()

    def _classify(self, action: ClassifyAction, context: Mapping[str, Any]) -> dict[str, Any]:
        model = self.registry.get(action.model, "classify")
        assert model.classify is not None
        encoded = model.classify.prepare([action.text])
        answer = model.classify.answer(encoded, model.infer(encoded.feeds))[0]
        self.bus.publish("classify", **{**context, "model": model.name, "text": action.text,
                                        "label": answer["label"], "score": answer["score"], "top": answer["top"]})
        return {"model": model.name, "label": answer["label"], "score": answer["score"]}
