"""Voice activity: Silero VAD (ONNX) run frame by frame with its recurrent state carried between frames."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edgeslm.errors import ModelLoadError
from edgeslm.runtime import Engine, EngineOptions, open_engine

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # 32 ms: the window Silero VAD takes at 16 kHz
CONTEXT_SAMPLES = 64  # the tail of the previous frame, prepended to each window


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
        return cls(open_engine(Path(path), "onnx", EngineOptions(threads=threads)))

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
        out = self.engine.run({"input": window, "state": self._state, "sr": self._sr})
        self._state = out[self._state_name]
        return float(out[self._prob_name].reshape(-1)[0])

    def close(self) -> None:
        self.engine.close()
