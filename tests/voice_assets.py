"""Audio test assets made here: Silero VAD from its PyPI wheel, and spoken commands from espeak-ng + sox."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
SILERO_WHEEL = "silero-vad==6.2.3"
SILERO_MEMBER = "silero_vad/data/silero_vad_16k_op15.onnx"
RATE = 16000


def silero_vad_onnx(cache: Path = CACHE / "silero-vad") -> Path:
    """The 16 kHz Silero VAD .onnx, taken from the silero-vad wheel once (pip download --no-deps), then cached."""
    target = cache / "silero_vad_16k.onnx"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                    "--only-binary", ":all:", "-d", str(cache), SILERO_WHEEL], check=True)
    wheel = next(cache.glob("silero_vad-*.whl"))
    with zipfile.ZipFile(wheel) as archive, archive.open(SILERO_MEMBER) as src, open(f"{target}.part", "wb") as dst:
        shutil.copyfileobj(src, dst)
    Path(f"{target}.part").rename(target)
    wheel.unlink()
    return target


def missing_tools() -> list[str]:
    return [tool for tool in ("espeak-ng", "sox", "arecord") if shutil.which(tool) is None]


def speak(text: str, *, voice: str = "en-us", speed: int = 160, workdir: Path) -> np.ndarray:
    """espeak-ng says `text`; sox makes it 16 kHz mono 16-bit; returns the samples.

    The same text gives the same samples every time: sox dithers what it resamples to 16 bits
    with fresh random noise on each run unless -R (repeatable) seeds it.
    """
    wav, raw = workdir / "say.wav", workdir / "say.raw"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
    subprocess.run(["sox", "-R", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw",
                    str(raw)], check=True)
    return np.fromfile(raw, dtype="<i2")


def as_heard(speech: np.ndarray, *, lead_s: float = 0.4, tail_s: float = 1.2, noise: float = 30.0,
             seed: int = 0) -> np.ndarray:
    """Speech as a microphone gives it: a quiet noise floor before, under and after it.

    espeak-ng writes exact digital silence, which no microphone produces and on which
    pocketsphinx's features misbehave; a floor near -60 dBFS stands in for the room.
    """
    rng = np.random.default_rng(seed)
    body = np.concatenate([np.zeros(int(lead_s * RATE)), speech.astype(np.float64), np.zeros(int(tail_s * RATE))])
    return np.clip(body + rng.normal(0.0, noise, len(body)), -32768, 32767).astype(np.int16)


def asoundrc(infile: Path) -> str:
    """An ALSA config whose `voicefile` capture device replays `infile` (raw S16_LE mono) via the file plugin."""
    return (f'pcm.voicefile {{\n    type file\n    slave.pcm "null"\n    file "/dev/null"\n'
            f'    infile "{infile}"\n    format "raw"\n}}\n')


class EventReader:
    """GET /v1/events over the daemon's socket with a real HTTP client, on a thread; events land in a queue."""

    def __init__(self, socket: Path):
        import queue
        import threading

        import httpx

        self.events: queue.Queue = queue.Queue()
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://localhost",
                                    timeout=httpx.Timeout(10.0, read=None))
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("GET /v1/events did not start streaming")

    def _read(self) -> None:
        import json

        try:
            with self._client.stream("GET", "/v1/events") as response:
                kind = None
                for line in response.iter_lines():
                    if line.startswith(": edgeslm events"):
                        self._ready.set()
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind:
                        self.events.put((kind, json.loads(line[5:])))
        except Exception as exc:  # the daemon went away: tell the waiting test
            self.events.put(("closed", {"error": repr(exc)}))

    def until(self, kinds: set[str], timeout_s: float = 30.0) -> list[tuple[str, dict]]:
        """Every event up to and including the first whose kind is in `kinds`."""
        import queue
        import time

        seen, deadline = [], time.monotonic() + timeout_s
        while True:
            try:
                kind, data = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {sorted(kinds)} event within {timeout_s} s; saw {seen}") from None
            seen.append((kind, data))
            if kind in kinds or kind == "closed":
                return seen

    def close(self) -> None:
        self._client.close()


# (intent, phrases the recogniser may hear, output pin its action drives, how). The first phrase is the one spoken.
INTENTS = [
    ("lights_on", ["turn on the light", "lights on", "switch on the light"], 27, "on"),
    ("lights_off", ["turn off the light", "lights off", "switch off the light"], 27, "off"),
    ("fan_on", ["turn on the fan", "fan on"], 22, "on"),
    ("fan_off", ["turn off the fan", "fan off"], 22, "off"),
    ("volume_up", ["volume up", "louder"], 5, "toggle"),
    ("volume_down", ["volume down", "quieter"], 6, "toggle"),
    ("what_time", ["what time is it"], 13, "toggle"),
    ("play_music", ["play some music", "play music"], 19, "toggle"),
    ("pause_music", ["pause the music"], 26, "toggle"),
    ("next_track", ["next song", "skip this song"], 20, "toggle"),
    ("set_timer", ["set a timer"], 21, "toggle"),
    ("stop", ["stop"], 12, "toggle"),
]
TRIGGER_PIN, BUSY_LED, ERROR_LED = 17, 23, 24


def voice_daemon_config(vad: Path, *, device: str = "voicefile") -> str:
    """Mock pins, a push button on BCM 17 that starts capture, an output per intent, busy and error LEDs."""
    lines = ["[gpio]", 'backend = "mock"', f"busy_led_pin = {BUSY_LED}", f"error_led_pin = {ERROR_LED}",
             "error_led_s = 0", "", "[[gpio.triggers]]", f"pin = {TRIGGER_PIN}", 'name = "talk"',
             'action = { type = "voice", mode = "press_to_start" }', ""]
    for pin in sorted({pin for *_, pin, _ in INTENTS} | {BUSY_LED, ERROR_LED}):
        lines += ["[[gpio.outputs]]", f"pin = {pin}", ""]
    lines += ["[voice]", f'device = "{device}"', "", "[voice.vad]", f'model_path = "{vad}"', ""]
    for name, phrases, pin, how in INTENTS:
        actions = [f'{{ type = "output", pin = {pin}, set = "{how}" }}']
        if name == "what_time":
            actions.append('{ type = "command", argv = ["date", "+%H:%M"], timeout_s = 5 }')
        if name.startswith("volume"):
            actions.append(f'{{ type = "event", name = "volume", data = {{ step = {1 if "up" in name else -1} }} }}')
        lines += ["[[voice.intents]]", f'name = "{name}"', "phrases = [" + ", ".join(f'"{p}"' for p in phrases) + "]",
                  "action = [" + ", ".join(actions) + "]", ""]
    return "\n".join(lines)
