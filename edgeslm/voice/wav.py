"""Uploaded audio: a WAV (raw body or a multipart form field) checked and read into 16-bit mono samples."""

from __future__ import annotations

import io
import wave
from email.parser import BytesParser
from email.policy import HTTP

import numpy as np

from edgeslm.errors import AudioFormatError

CONVERT = "convert it with: sox INPUT -r {rate} -c 1 -b 16 -e signed-integer OUTPUT.wav"


def wav_from_multipart(body: bytes, content_type: str) -> bytes:
    """The first file (or audio/*) part of a multipart/form-data body, as `curl -F file=@cmd.wav` sends it."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
                                                  + body)
    if not message.is_multipart():
        raise AudioFormatError("multipart body without parts; send the WAV as `-F file=@cmd.wav` or as the raw "
                               "body (`--data-binary @cmd.wav`)", param="file")
    for part in message.iter_parts():
        if part.get_filename() or part.get_content_type().startswith("audio/"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload
    raise AudioFormatError("the form has no file field; send it as `-F file=@cmd.wav`", param="file")


def read_wav(data: bytes, *, sample_rate: int, max_seconds: float) -> np.ndarray:
    """int16 samples of a 16-bit PCM mono WAV at `sample_rate`; AudioFormatError says what is wrong and the fix."""
    convert = CONVERT.format(rate=sample_rate)
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioFormatError(f"the body is not a WAV file (no RIFF/WAVE header); {convert}", param="file")
    try:
        with wave.open(io.BytesIO(data)) as clip:
            channels, width, rate = clip.getnchannels(), clip.getsampwidth(), clip.getframerate()
            frames = clip.readframes(clip.getnframes())
    except (wave.Error, EOFError, RuntimeError, OverflowError, ValueError) as exc:  # a lying chunk size: RuntimeError
        why = str(exc) or "its header is cut short or its chunk sizes are wrong"
        raise AudioFormatError(f"cannot read the WAV ({why}); only 16-bit PCM is taken: {convert}",
                               param="file") from None
    problems = []
    if rate != sample_rate:
        problems.append(f"{rate} Hz (needs {sample_rate})")
    if channels != 1:
        problems.append(f"{channels} channels (needs mono)")
    if width != 2:
        problems.append(f"{8 * width}-bit samples (needs 16-bit)")
    if problems:
        raise AudioFormatError(f"the WAV is {', '.join(problems)}; {convert}", param="file")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.int16)
    seconds = len(samples) / sample_rate
    if seconds > max_seconds:
        raise AudioFormatError(f"the clip is {seconds:.1f} s; the limit is voice.max_seconds = {max_seconds:g}: "
                               "trim it", param="file")
    if seconds < 0.1:
        raise AudioFormatError(f"the clip is {seconds * 1000:.0f} ms; send at least 0.1 s of audio", param="file")
    return samples
