"""Audio input: arecord (ALSA) as a subprocess feeding a ring buffer, and an in-memory fake for tests."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from edgeslm.errors import MicrophoneError
from edgeslm.hw.clock import Clock

log = logging.getLogger(__name__)


class AudioSource(Protocol):
    """A capture that yields 16-bit mono samples in order.

    `read(n)` blocks for exactly n samples; it returns None once the source has ended and
    raises MicrophoneError when the device failed. `first_audio_at` is the clock time the
    first samples arrived (None before).
    """

    sample_rate: int
    first_audio_at: float | None

    def start(self) -> None: ...

    def read(self, n: int, timeout_s: float) -> np.ndarray | None: ...

    def stop(self) -> None: ...


class RingBuffer:
    """A fixed-size ring of int16 samples between one writer thread and one reader.

    A full ring holds the writer back rather than dropping audio: with a real microphone
    arecord then reports an ALSA overrun, and a replayed file (which ALSA delivers as fast
    as it is read) is taken whole, in order.
    """

    def __init__(self, capacity: int):
        self._data = np.zeros(capacity, dtype=np.int16)
        self._capacity = capacity
        self._start = 0  # index of the oldest unread sample
        self._size = 0
        self._cond = threading.Condition()
        self._closed = False
        self.error: MicrophoneError | None = None
        self.waits = 0  # times the writer had to wait for room

    def write(self, samples: np.ndarray) -> None:
        """Append `samples`, waiting for room; returns early (dropping them) once closed."""
        offset = 0
        with self._cond:
            while offset < len(samples):
                if self._size == self._capacity:
                    self.waits += 1
                    self._cond.wait_for(lambda: self._size < self._capacity or self._closed)
                if self._closed:
                    return
                end = (self._start + self._size) % self._capacity
                n = min(len(samples) - offset, self._capacity - self._size, self._capacity - end)
                self._data[end:end + n] = samples[offset:offset + n]
                self._size += n
                offset += n
                self._cond.notify_all()

    def read(self, n: int, timeout_s: float) -> np.ndarray | None:
        """n samples, or None when closed with fewer left; raises TimeoutError if none came in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._size >= n or self._closed, timeout_s):
                raise TimeoutError
            if self._size < n:
                return None
            idx = (self._start + np.arange(n)) % self._capacity
            out = self._data[idx]
            self._start = (self._start + n) % self._capacity
            self._size -= n
            self._cond.notify_all()
            return out

    def close(self, error: MicrophoneError | None = None) -> None:
        with self._cond:
            self.error = self.error or error
            self._closed = True
            self._cond.notify_all()


def describe_arecord_failure(device: str, stderr: str, returncode: int | None) -> MicrophoneError:
    text = " ".join(stderr.split())[-300:] or f"arecord exited with status {returncode}"
    if "busy" in text.lower():
        return MicrophoneError(f"capture device {device!r} is busy (another program is recording): {text}; stop "
                               "that program or set voice.device to another device", code="mic_busy")
    return MicrophoneError(f"cannot capture from {device!r}: {text}; list devices with `arecord -L` and set "
                           "voice.device (is a microphone plugged in?)", code="mic_unavailable")


class ArecordSource:
    """`arecord -f S16_LE -c 1 -r RATE -t raw` from one ALSA device into a ring buffer, started per utterance."""

    def __init__(self, device: str, sample_rate: int, *, arecord: str = "arecord", buffer_s: float = 10.0,
                 clock: Clock = time.monotonic, popen: Callable[..., subprocess.Popen] = subprocess.Popen):
        self.device, self.sample_rate = device, sample_rate
        self._arecord, self._popen, self._clock = arecord, popen, clock
        self._ring = RingBuffer(int(buffer_s * sample_rate))
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.first_audio_at: float | None = None

    def start(self) -> None:
        argv = [self._arecord, "-q", "-D", self.device, "-f", "S16_LE", "-c", "1", "-r", str(self.sample_rate),
                "-t", "raw"]
        try:
            self._proc = self._popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     bufsize=0)
        except FileNotFoundError:
            raise MicrophoneError(f"{self._arecord!r} is not installed; apt install alsa-utils, or set "
                                  "voice.arecord_path", code="mic_unavailable") from None
        self._reader = threading.Thread(target=self._pump, name="edgeslm-arecord", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        odd = b""
        while True:
            chunk = proc.stdout.read(4096)
            if not chunk:
                break
            if self.first_audio_at is None:
                self.first_audio_at = self._clock()
            chunk = odd + chunk
            cut = len(chunk) - len(chunk) % 2
            odd = chunk[cut:]
            self._ring.write(np.frombuffer(chunk[:cut], dtype="<i2"))
        returncode = proc.wait()
        error = None
        if not self._stopping:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if returncode != 0 or self.first_audio_at is None:
                error = describe_arecord_failure(self.device, stderr, returncode)
        self._ring.close(error)

    def read(self, n: int, timeout_s: float) -> np.ndarray | None:
        try:
            samples = self._ring.read(n, timeout_s)
        except TimeoutError:
            raise MicrophoneError(f"no audio from {self.device!r} for {timeout_s:g} s; check the device with "
                                  "`arecord -D DEVICE -d 2 test.wav`", code="mic_unavailable") from None
        if samples is None and self._ring.error is not None:
            raise self._ring.error
        return samples

    def stop(self) -> None:
        self._stopping = True
        self._ring.close()  # frees a reader thread waiting for room
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._ring.waits:
            log.debug("audio: the ring buffer was full %d times (audio came faster than real time)", self._ring.waits)


class ArraySource:
    """The fake: samples from memory, as if a microphone had heard them; then it ends (or raises `error`)."""

    def __init__(self, samples: np.ndarray, sample_rate: int = 16000, *, error: MicrophoneError | None = None,
                 clock: Clock = time.monotonic):
        self.samples, self.sample_rate, self.error, self._clock = samples.astype(np.int16), sample_rate, error, clock
        self._pos = 0
        self.first_audio_at: float | None = None
        self.stopped = False

    def start(self) -> None:
        if self.error is not None:
            raise self.error

    def read(self, n: int, timeout_s: float) -> np.ndarray | None:
        if self.stopped or self._pos + n > len(self.samples):
            return None
        if self.first_audio_at is None:
            self.first_audio_at = self._clock()
        out = self.samples[self._pos:self._pos + n]
        self._pos += n
        return out

    def stop(self) -> None:
        self.stopped = True
