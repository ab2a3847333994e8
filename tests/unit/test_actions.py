"""Actions: outputs, events, commands (no shell, with a timeout), classify through a served model; and the edge API."""

from __future__ import annotations

import asyncio
import io
import sys
import wave

import httpx
import numpy as np
import pytest

from edgeslm.cli import main
from edgeslm.config import ClassifyAction, CommandAction, Config, EventAction, GpioConfig, ModelConfig, OutputAction
from edgeslm.events import EventBus
from edgeslm.hw.clock import ManualScheduler
from edgeslm.hw.gpio.board import GpioBoard, StatusLeds
from edgeslm.hw.gpio.mock import MockBackend
from edgeslm.runtime.fake import FakeEngine
from edgeslm.server.app import build_app
from edgeslm.server.edge import EdgeServices
from edgeslm.server.edge_api import parse_kinds
from edgeslm.tasks.served import ModelRegistry, ServedModel
from edgeslm.voice.actions import ActionRunner
from edgeslm.voice.pipeline import VoiceResult


@pytest.fixture
def rig(fake_model_dir):
    clock = ManualScheduler()
    config = GpioConfig.model_validate({"outputs": [{"pin": 27}, {"pin": 24}], "error_led_pin": 24})
    board = GpioBoard(MockBackend(), config, scheduler=clock, clock=clock, on_event=lambda e: None)
    registry = ModelRegistry()
    registry.models["fake"] = ServedModel.load(ModelConfig(name="fake", path=fake_model_dir), engine=FakeEngine())
    bus = EventBus()
    events = bus.subscribe()
    runner = ActionRunner(bus, board, registry, StatusLeds(board, None, 24, 5.0, clock))
    yield runner, events, board
    registry.close(timeout_s=5)
    board.close()


def test_output_and_event_actions_publish_what_they_did(rig):
    runner, events, board = rig
    result = runner.run(OutputAction(type="output", pin=27, set="toggle"), {"intent": "lights_on"})
    assert result["ok"] and result["on"] is True and board.is_on(27)
    runner.run(EventAction(type="event", name="doorbell", data={"room": "hall"}), {"trigger": "bell"})
    kinds = [(e.kind, e.data.get("name"), e.data.get("intent")) for e in events.drain()]
    assert kinds == [("action", None, "lights_on"), ("event", "doorbell", None), ("action", "doorbell", None)]


def test_commands_run_without_a_shell_and_see_the_context(rig):
    runner, events, board = rig
    code = "import os, sys; print(os.environ['EDGESLM_INTENT'], '|', sys.argv[1])"
    result = runner.run(CommandAction(type="command", argv=(sys.executable, "-c", code, "x; rm -rf /tmp/nope")),
                        {"intent": "what_time"})
    assert result["ok"] and result["stdout"].strip() == "what_time | x; rm -rf /tmp/nope"


@pytest.mark.parametrize("argv, timeout_s, code", [
    ((sys.executable, "-c", "import time; time.sleep(30)"), 0.3, "command_timeout"),
    ((sys.executable, "-c", "import sys; sys.exit(3)"), 10, "command_failed"),
    (("/no/such/program",), 10, "command_not_found"),
])
def test_failing_commands_are_error_events_and_light_the_error_led(rig, argv, timeout_s, code):
    runner, events, board = rig
    result = runner.run(CommandAction(type="command", argv=argv, timeout_s=timeout_s), {"intent": "x"})
    assert not result["ok"] and result["code"] == code
    assert [e.kind for e in events.drain()] == ["action", "error"] and board.is_on(24)


def test_classify_action_goes_through_the_served_model(rig):
    runner, events, board = rig
    result = runner.run(ClassifyAction(type="classify", text="turn on the light"), {"trigger": "b"})
    assert result["ok"] and result["model"] == "fake" and result["label"] in {"alpha", "beta", "gamma", "delta"}
    classify = [e for e in events.drain() if e.kind == "classify"][0]
    assert classify.data["text"] == "turn on the light" and len(classify.data["top"]) == 3


class FakeVoice:
    def __init__(self) -> None:
        self.clips = []

    def run_upload(self, samples, *, act=True):
        self.clips.append((len(samples), act))
        return VoiceResult(status="intent", intent="lights_on", confidence=0.9, transcript="lights on")


def call(edge: EdgeServices, method: str, path: str, config: Config | None = None, **kwargs):
    app = build_app(ModelRegistry(), config or Config(models=[]), edge)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def wav(rate=16000, channels=1, seconds=1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(channels)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(np.zeros(int(rate * seconds) * channels, "<i2").tobytes())
    return buffer.getvalue()


def test_audio_intent_answers_and_refuses_what_it_cannot_hear():
    voice = FakeVoice()
    edge = EdgeServices(EventBus(), voice=voice)  # type: ignore[arg-type]
    ok = call(edge, "POST", "/v1/audio/intent?act=false", content=wav(), headers={"Content-Type": "audio/wav"})
    assert ok.status_code == 200 and ok.json()["intent"] == "lights_on" and voice.clips == [(16000, False)]
    for body, code, text in [
        (b"not audio at all", "invalid_audio", "not a WAV file"),
        (wav(rate=8000), "invalid_audio", "8000 Hz (needs 16000)"),
        (wav(channels=2), "invalid_audio", "2 channels (needs mono)"),
    ]:
        r = call(edge, "POST", "/v1/audio/intent", content=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == code and text in r.json()["error"]["message"]
    form = call(edge, "POST", "/v1/audio/intent", files={"file": ("c.wav", wav(), "audio/wav")})
    assert form.status_code == 200 and voice.clips[-1] == (16000, True)


def test_edge_endpoints_without_hardware_say_what_is_missing():
    edge = EdgeServices.idle()
    r = call(edge, "POST", "/v1/audio/intent", content=wav())
    assert r.status_code == 503 and "add [[voice.intents]]" in r.json()["error"]["message"]
    r = call(edge, "POST", "/v1/gpio/17/press")
    assert r.status_code == 503 and "backend = \"mock\"" in r.json()["error"]["message"]
    assert call(edge, "GET", "/v1/gpio").json() == {"backend": None, "triggers": [], "outputs": []}
    r = call(edge, "GET", "/v1/events?since=abc")
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"


def test_events_refuse_an_unknown_kind_naming_the_valid_ones():
    r = call(EdgeServices.idle(), "GET", "/v1/events?kinds=intent,bogus")
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "kinds"
    assert "'bogus'" in error["message"] and "valid kinds: button, listening, intent, no_match" in error["message"]
    assert parse_kinds(" intent , no_match,") == ["intent", "no_match"]
    assert parse_kinds("") == []


def test_act_takes_only_a_clear_yes_or_no():
    voice = FakeVoice()
    edge = EdgeServices(EventBus(), voice=voice)  # type: ignore[arg-type]
    for text, act in [("YES", True), ("0", False), ("False", False), ("1", True), ("no", False)]:
        r = call(edge, "POST", f"/v1/audio/intent?act={text}", content=wav())
        assert r.status_code == 200 and voice.clips[-1][1] is act, (text, r.text)
    for text in ("maybe", "", "tru"):
        r = call(edge, "POST", f"/v1/audio/intent?act={text}", content=wav())
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == "act" and "give true or false" in error["message"], text
    assert len(voice.clips) == 5  # the refused uploads never reached the pipeline


@pytest.mark.parametrize("argv, complaint", [
    (["--kinds", "intent,bogus"], "unknown kind(s) 'bogus'; valid kinds: button, listening"),
    (["--count", "0"], "'0' is not a count of at least 1"),
    (["--count", "-1"], "'-1' is not a count of at least 1"),
    (["--count", "many"], "'many' is not a count of at least 1"),
])
def test_listen_refuses_bad_kinds_and_counts_before_connecting(tmp_path, capsys, argv, complaint):
    with pytest.raises(SystemExit) as exited:
        main(["listen", *argv, "--socket", str(tmp_path / "none.sock")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and complaint in err and "usage: edgeslm listen" in err


def test_voice_with_a_missing_wav_exits_no_input_not_bad_config(tmp_path, capsys):
    assert main(["voice", str(tmp_path / "missing.wav"), "--socket", str(tmp_path / "none.sock")]) == 66
    err = capsys.readouterr().err
    assert "edgeslm voice: cannot read" in err and "missing.wav" in err and "Traceback" not in err


def test_press_endpoint_validates_its_body():
    clock = ManualScheduler()
    config = GpioConfig.model_validate({"triggers": [{"pin": 17}]})
    board = GpioBoard(MockBackend(), config, scheduler=clock, clock=clock, on_event=lambda e: None)
    edge = EdgeServices(EventBus(), board=board)
    assert call(edge, "POST", "/v1/gpio/17/press", json={"hold_ms": 50}).json() == {"pin": 17, "pressed": True,
                                                                                     "hold_ms": 50.0}
    r = call(edge, "POST", "/v1/gpio/17/press", json={"hold_ms": "long"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "hold_ms"
    r = call(edge, "POST", "/v1/gpio/4/press")
    assert r.status_code == 400 and "not a configured trigger" in r.json()["error"]["message"]
    board.close()


def test_closing_the_runner_ends_running_commands(rig):
    import threading
    import time

    runner, events, board = rig
    results = []
    action = CommandAction(type="command", argv=(sys.executable, "-c", "import time; time.sleep(60)"), timeout_s=60)
    worker = threading.Thread(target=lambda: results.append(runner.run(action, {})))
    worker.start()
    time.sleep(0.5)
    runner.close()
    worker.join(10)
    assert not worker.is_alive() and results[0]["ok"] is False and results[0]["code"] == "command_failed"
