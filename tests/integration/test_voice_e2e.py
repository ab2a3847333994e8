"""Button to action with real parts: mock pin press -> arecord (ALSA file plugin) -> Silero VAD -> pocketsphinx ->
intents model -> GPIO output, observed on GET /v1/events and GET /v1/gpio over the daemon's socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import wave

import pytest

from edgeslm.metrics.files import read_records
from tests.integration.conftest import Daemon
from tests.voice_assets import (
    ERROR_LED,
    INTENTS,
    TRIGGER_PIN,
    EventReader,
    as_heard,
    asoundrc,
    missing_tools,
    silero_vad_onnx,
    speak,
    voice_daemon_config,
)

pytestmark = pytest.mark.integration
MISSING = missing_tools()
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (.ci/run installs them: "
                                                        "apt install espeak-ng sox alsa-utils)")


@pytest.fixture(scope="module")
def voice_daemon(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("voice")
    (workdir / ".asoundrc").write_text(asoundrc(workdir / "utterance.raw"))  # arecord -D voicefile replays it
    daemon = Daemon(workdir, voice_daemon_config(silero_vad_onnx(), metrics_dir=workdir / "metrics"),
                    env={"HOME": str(workdir)}).start()
    reader = EventReader(daemon.socket)
    yield daemon, reader
    reader.close()
    assert daemon.stop() == 0


def outputs(daemon: Daemon) -> dict[int, bool]:
    return {o["pin"]: o["on"] for o in daemon.client().get("/v1/gpio").json()["outputs"]}


def press_and_wait(daemon: Daemon, reader: EventReader) -> list[tuple[str, dict]]:
    """Press the talk button for 50 ms: the events up to the command's result. Returns only once the button is
    released too: a result can come first (no microphone fails at once), and a next press made while this one
    is still held is no edge at all, so it would start nothing."""
    r = daemon.client().post(f"/v1/gpio/{TRIGGER_PIN}/press", json={"hold_ms": 50})
    assert r.status_code == 200, r.text
    seen = reader.until({"intent", "no_match", "error"})
    if not any(kind == "button" and data["edge"] == "release" for kind, data in seen):
        assert reader.until({"button"})[-1][1]["edge"] == "release"
    return seen


@needs_tools
def test_spoken_commands_drive_their_outputs(voice_daemon):
    daemon, reader = voice_daemon
    utterance = daemon.workdir / "utterance.raw"
    results = []
    for name, phrases, pin, how in INTENTS:
        as_heard(speak(phrases[0], voice="en-us", speed=160, workdir=daemon.workdir)).tofile(utterance)
        before = outputs(daemon)
        events = press_and_wait(daemon, reader)
        kinds = [k for k, _ in events]
        kind, result = events[-1]
        after = outputs(daemon)
        changed = {p for p in after if after[p] != before[p]}
        results.append((phrases[0], kind, result.get("intent"), result.get("transcript"), changed))
        assert "button" in kinds and "listening" in kinds, events
        assert kind == "intent" and result["intent"] == name, events
        assert result["confidence"] >= 0.5 and result["source"] == "microphone"
        assert {"first_audio", "vad", "speech", "intent", "action", "total"} <= set(result["latency_ms"])
        actions = [d for k, d in events if k == "action"]
        assert actions and all(a["ok"] for a in actions), actions
        wanted = {"on": True, "off": False}.get(how, not before[pin])
        assert after[pin] is wanted, (name, before, after)
        assert changed == {pin}, f"{name} should move pin {pin} only; moved {changed}"
    print("\nspoken command -> event, intent, transcript, outputs changed:")
    for row in results:
        print("  ", row)
    # every command is a request record too: its stages, and the energy of its window
    deadline = time.monotonic() + 20
    while len(voice := [r for r in read_records(daemon.workdir / "metrics") if r.get("model") == "voice"]) < len(
            INTENTS) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(voice) >= len(INTENTS), voice
    for record in voice[-len(INTENTS):]:
        assert (record["kind"], record["task"], record["status"], record["result"]) == ("request", "voice", "ok",
                                                                                           "intent"), record
        assert {"vad", "speech", "intent", "action"} <= set(record["stages_ms"]), record
        assert 0 < record["stages_ms"]["speech"] < record["total_ms"] and record["energy_j"] >= 0, record
    assert [r["intent"] for r in voice[-len(INTENTS):]] == [name for name, *_ in INTENTS]


@needs_tools
def test_speech_that_is_no_command_is_no_match_and_moves_nothing(voice_daemon):
    daemon, reader = voice_daemon
    before = outputs(daemon)
    as_heard(speak("banana republic", voice="en-us", speed=160, workdir=daemon.workdir)).tofile(
        daemon.workdir / "utterance.raw")
    events = press_and_wait(daemon, reader)
    kind, result = events[-1]
    assert kind == "no_match", events
    assert result["reason"] in ("not_a_phrase", "low_score", "low_confidence"), result
    assert not [k for k, _ in events if k == "action"] and outputs(daemon) == before
    # silence: nothing to hear
    as_heard(speak(" ", workdir=daemon.workdir), tail_s=5.0).tofile(daemon.workdir / "utterance.raw")
    kind, result = press_and_wait(daemon, reader)[-1]
    assert kind == "no_match" and result["reason"] == "no_speech"


@needs_tools
def test_uploaded_wav_runs_the_same_pipeline_with_curl(voice_daemon):
    daemon, reader = voice_daemon
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    clip = daemon.workdir / "upload.wav"
    samples = as_heard(speak("turn on the fan", voice="en-gb", speed=150, workdir=daemon.workdir))
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    out = subprocess.run(["curl", "-s", "--unix-socket", str(daemon.socket), "-F", f"file=@{clip}",
                          "http://localhost/v1/audio/intent?act=false"], capture_output=True, text=True, check=True)
    answer = json.loads(out.stdout)
    assert (answer["status"], answer["intent"], answer["actions"]) == ("intent", "fan_on", []), answer
    kind, result = reader.until({"intent", "no_match"})[-1]
    assert (kind, result["intent"], result["source"]) == ("intent", "fan_on", "upload")
    bad = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket",
                          str(daemon.socket), "--data-binary", "not audio", "http://localhost/v1/audio/intent"],
                         capture_output=True, text=True, check=True)
    assert bad.stdout == "400"


@needs_tools
def test_no_microphone_is_an_error_event_the_error_led_and_the_daemon_lives(tmp_path):
    daemon = Daemon(tmp_path, voice_daemon_config(silero_vad_onnx(), device="hw:97,0"),
                    env={"HOME": str(tmp_path)}).start()
    try:
        reader = EventReader(daemon.socket)
        for _ in range(2):
            kind, error = press_and_wait(daemon, reader)[-1]
            assert kind == "error" and error["code"] == "mic_unavailable" and error["source"] == "microphone"
            assert "voice.device" in error["message"]
            assert outputs(daemon)[ERROR_LED] is True
        assert daemon.client().get("/health").status_code == 200
        reader.close()
    finally:
        assert daemon.stop() == 0
