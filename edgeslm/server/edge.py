"""Start-up wiring of the hardware edge: event bus, GPIO board, status LEDs, triggers and the voice pipeline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeslm.config import Config, VoiceConfig
from edgeslm.errors import ConfigError, GpioError, GpioUnavailableError, ModelLoadError, VoiceUnavailableError
from edgeslm.events import EventBus
from edgeslm.hw.audio import ArecordSource, AudioSource
from edgeslm.hw.clock import Clock, TimerThread
from edgeslm.hw.gpio import GpioBackend, PinEvent, open_backend
from edgeslm.hw.gpio.board import GpioBoard, StatusLeds
from edgeslm.tasks.served import ModelRegistry
from edgeslm.tasks.vad import SileroVad
from edgeslm.voice.actions import ActionRunner
from edgeslm.voice.intents import intent_resolver
from edgeslm.voice.pipeline import FRAME_S, VoicePipeline
from edgeslm.voice.service import VoiceService, WorkRecorder
from edgeslm.voice.speech import PhraseRecognizer
from edgeslm.voice.triggers import TriggerRouter
from edgeslm.voice.utterance import UtteranceRules

log = logging.getLogger(__name__)


class EdgeServices:
    """What the daemon runs beside its models; `close` stops it all (captures first, pins last)."""

    def __init__(self, bus: EventBus, *, scheduler: TimerThread | None = None, board: GpioBoard | None = None,
                 leds: StatusLeds | None = None, voice: VoiceService | None = None,
                 executor: ThreadPoolExecutor | None = None, voice_config: VoiceConfig | None = None,
                 runner: ActionRunner | None = None):
        self.bus, self.scheduler, self.board, self.voice, self.executor = bus, scheduler, board, voice, executor
        self.leds, self.runner = leds, runner
        self.voice_config = voice_config or VoiceConfig()
        self.stopping: Callable[[], bool] = lambda: bus.closed

    @classmethod
    def idle(cls) -> EdgeServices:
        """Events only: no GPIO, no voice (API tests, a daemon embedded without hardware)."""
        return cls(EventBus())

    @classmethod
    def start(cls, config: Config, registry: ModelRegistry, *, backend: GpioBackend | None = None,
              source_factory: Callable[[], AudioSource] | None = None, clock: Clock = time.monotonic,
              recorder: WorkRecorder | None = None) -> EdgeServices:
        """Claim the configured pins and load the voice pipeline; a misconfiguration raises ConfigError.

        Each voice command writes a request record (model and task "voice", stages_ms) to `recorder`."""
        bus = EventBus()
        scheduler = TimerThread(clock)
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgeslm-action")
        edge = cls(bus, scheduler=scheduler, executor=executor, voice_config=config.voice)
        router: list[TriggerRouter] = []

        def on_pin(event: PinEvent) -> None:
            if router:
                router[0].on_event(event)

        try:
            backend = backend or _open_backend(config)
            if backend is not None:
                try:
                    edge.board = GpioBoard(backend, config.gpio, scheduler=scheduler, clock=clock, on_event=on_pin)
                except GpioError as exc:
                    raise ConfigError(f"gpio: {exc}; check [[gpio.triggers]] and [[gpio.outputs]]") from None
            gpio = config.gpio
            edge.leds = StatusLeds(edge.board, gpio.busy_led_pin, gpio.error_led_pin, gpio.error_led_s, scheduler)
            runner = edge.runner = ActionRunner(bus, edge.board, registry, edge.leds)
            if config.voice.intents:
                edge.voice = _start_voice(config.voice, registry, runner, bus, edge.leds, source_factory, clock,
                                          recorder)
            router.append(TriggerRouter(gpio.triggers, bus, runner, edge.voice, executor))
        except BaseException:
            edge.close()
            raise
        for name in registry.models:
            bus.publish("model", model=name, state="ready")
        for name, why in registry.failed.items():
            bus.publish("model", model=name, state="failed", error=why)
        return edge

    def describe(self) -> list[str]:
        """Start-up lines for the daemon's banner."""
        lines = []
        if self.board is not None:
            info = self.board.backend.describe()
            lines.append(f"  gpio: {info['backend']} backend{' ' + info['label'] if 'label' in info else ''}, "
                         f"{len(self.board.triggers)} trigger(s), {len(self.board.outputs)} output(s)")
        if self.voice is not None:
            vc = self.voice_config
            lines.append(f"  voice: {len(vc.intents)} intent(s) from {vc.device!r}, intents by {vc.intent_method} "
                         f"({vc.intent_model}), busy presses {vc.busy_policy}d")
        return lines

    def close(self) -> None:
        self.bus.close()
        if self.runner is not None:
            self.runner.close()
        if self.voice is not None:
            self.voice.close()
            self.voice.pipeline.vad.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.board is not None:
            self.board.close()
        if self.scheduler is not None:
            self.scheduler.close()


def _open_backend(config: Config) -> GpioBackend | None:
    gpio = config.gpio
    try:
        return open_backend(gpio.backend, chip=gpio.chip, pins_configured=bool(gpio.triggers or gpio.outputs))
    except GpioUnavailableError as exc:
        if gpio.triggers or gpio.outputs or gpio.backend != "auto":
            raise ConfigError(f"gpio.backend = {gpio.backend!r}: {exc}") from None
        log.info("gpio: off (%s)", exc)
        return None


def open_vad(voice: VoiceConfig, model_path: Path | None = None) -> SileroVad:
    """The voice pipeline's VAD, opened and self-checked; ConfigError naming voice.vad.model_path if it cannot be.
    `model_path` overrides the config's (doctor reads it under its --root)."""
    path = model_path or voice.vad.model_path
    assert path is not None  # the config places the store's silero-vad when none is given
    if not path.is_file():
        raise ConfigError(f"voice.vad.model_path: {path} does not exist; run `edgeslm pull silero-vad` (the "
                          "default path is the store's), or set [voice.vad] model_path", param="voice.vad.model_path")
    try:
        return SileroVad.open(path, threads=voice.vad.threads)
    except ModelLoadError as exc:
        raise ConfigError(f"voice.vad.model_path: {exc}", param="voice.vad.model_path") from None


def _start_voice(voice: VoiceConfig, registry: ModelRegistry, runner: ActionRunner, bus: EventBus,
                 leds: StatusLeds, source_factory: Callable[[], AudioSource] | None, clock: Clock,
                 recorder: WorkRecorder | None = None) -> VoiceService:
    vad = open_vad(voice)
    try:
        recognizer = PhraseRecognizer(voice.intents, voice.speech, voice.sample_rate_hz)
        resolver = intent_resolver(voice.intent_method, registry, voice.intent_model, voice.intents)
    except VoiceUnavailableError as exc:
        vad.close()
        raise ConfigError(f"voice: {exc}") from None
    except BaseException:
        vad.close()
        raise
    rules = UtteranceRules.from_config(voice.vad, voice.max_seconds, FRAME_S)
    pipeline = VoicePipeline(vad, recognizer, resolver, voice.intents, runner, rules,
                             min_frame_score=voice.speech.min_frame_score, min_confidence=voice.min_confidence,
                             min_word_coverage=voice.speech.min_word_coverage,
                             clock=clock)

    def microphone() -> AudioSource:
        return ArecordSource(voice.device, voice.sample_rate_hz, arecord=voice.arecord_path,
                             buffer_s=voice.max_seconds + 2, clock=clock)

    return VoiceService(pipeline, source_factory or microphone, bus, leds, busy_policy=voice.busy_policy,
                        max_queued=voice.max_queued, clock=clock, recorder=recorder)
