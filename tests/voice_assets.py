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
    """espeak-ng says `text`; sox makes it 16 kHz mono 16-bit; returns the samples."""
    wav, raw = workdir / "say.wav", workdir / "say.raw"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
    subprocess.run(["sox", str(wav), "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw",
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
