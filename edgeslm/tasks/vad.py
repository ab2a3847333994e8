"""Voice activity: Silero VAD (ONNX) run frame by frame with its recurrent state carried between frames."""

from __future__ import annotations

import threading
import tomllib
from pathlib import Path

import numpy as np

from edgeslm.errors import ModelLoadError
from edgeslm.runtime import Engine, EngineOptions, open_engine

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # 32 ms: the window Silero VAD takes at 16 kHz
CONTEXT_SAMPLES = 64  # the tail of the previous frame, prepended to each window


def reference_signal(frames: int = 16) -> np.ndarray:
    """A deterministic test signal: silence, then a vowel-like harmonic tone, then silence. float32 in [-1, 1].

    `edgeslm pull silero-vad` records the model's answers to it in the card ([vad_selfcheck]);
    opening the model replays it, so a runtime that computes garbage is caught at start-up."""
    n = frames * FRAME_SAMPLES
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    pitch = 140.0 + 30.0 * np.sin(2 * np.pi * 3.0 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t))
    envelope = np.zeros(n)
    envelope[n // 4: 3 * n // 4] = 0.3
    return (voiced * envelope).astype(np.float32)


class SileroVad:
    """Speech probability per 32 ms frame of one audio stream.

    The model is stateful (`state` in, `stateN` out) and its batch axis is the state's
    second axis, so frames of one stream must run in order: it is not fed through the
    dynamic batcher, and one stream at a time uses it (`reset` between utterances).
    """

    def __init__(self, engine: Engine):
        names = {spec.name for spec in engine.inputs}
        outs = [spec.name for spec in engine.outputs]
        if names != {"input", "state", "sr"} or len(outs) != 2:
            raise ModelLoadError(f"{engine.path.name} is not a Silero VAD model (inputs {sorted(names)}, outputs "
                                 f"{outs}); use the 16 kHz .onnx from `edgeslm pull silero-vad`")
        self.engine = engine
        self._prob_name, self._state_name = outs
        self._window = np.zeros((1, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self.lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, threads: int = 1) -> SileroVad:
        """The model at `path`, self-checked against its card's [vad_selfcheck] when the folder has one."""
        vad = cls(open_engine(Path(path), "onnx", EngineOptions(threads=threads)))
        try:
            vad.selfcheck(Path(path).with_name("model.toml"))
        except BaseException:
            vad.close()
            raise
        return vad

    def selfcheck(self, card: Path) -> float | None:
        """Replay the reference signal; raises ModelLoadError when the answers stray from the card's.
        Returns the largest difference, or None when the card has no check."""
        try:
            check = tomllib.loads(card.read_text(encoding="utf-8")).get("vad_selfcheck")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ModelLoadError(f"{card}: unreadable model card ({exc})") from None
        if not check:
            return None
        expected = np.asarray(check["expected"], dtype=np.float64)
        got = self.probabilities(reference_signal(len(expected)))
        error = float(np.max(np.abs(got - expected)))
        if error > float(check["max_abs_error"]):
            raise ModelLoadError(f"{card.parent.name}: the VAD self-check failed: its speech probabilities on the "
                                 f"reference signal differ from the card's by up to {error:.3f} (allowed "
                                 f"{check['max_abs_error']}); the runtime computes wrong answers with this model: "
                                 "update onnxruntime, or pull the model again")
        return error

    def probabilities(self, signal: np.ndarray) -> np.ndarray:
        """Speech probability per frame of a whole float32 signal in [-1, 1] (its own stream; resets first)."""
        self.reset()
        probs = []
        for start in range(0, len(signal) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
            window = self._window
            window[0, :CONTEXT_SAMPLES] = window[0, -CONTEXT_SAMPLES:]
            window[0, CONTEXT_SAMPLES:] = signal[start:start + FRAME_SAMPLES]
            probs.append(self._step(window))
        self.reset()
        return np.array(probs)

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._window[:] = 0.0

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability of one frame of FRAME_SAMPLES int16 samples (the stream's next frame)."""
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"a VAD frame is {FRAME_SAMPLES} samples; got {frame.shape}")
        window = self._window
        window[0, :CONTEXT_SAMPLES] = window[0, -CONTEXT_SAMPLES:]
        np.multiply(frame, 1.0 / 32768.0, out=window[0, CONTEXT_SAMPLES:], casting="unsafe")
        return self._step(window)

    def _step(self, window: np.ndarray) -> float:
        out = self.engine.run({"input": window, "state": self._state, "sr": self._sr})
        self._state = out[self._state_name]
        return float(out[self._prob_name].reshape(-1)[0])

    def close(self) -> None:
        self.engine.close()
