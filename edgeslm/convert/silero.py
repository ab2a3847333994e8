"""Build Silero VAD from the silero-vad wheel: its 16 kHz ONNX model, described for a streaming caller."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgeslm.errors import PullError
from edgeslm.store.progress import Progress

MODEL_FILE = "silero_vad_16k_op15.onnx"  # the 16 kHz-only graph (the default one also takes 8 kHz)
SAMPLE_RATE_HZ = 16000
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 1, 128)
REFERENCE_CHUNKS = 16


def reference_signal(chunks: int = REFERENCE_CHUNKS) -> np.ndarray:
    """A deterministic test signal: silence, then a vowel-like harmonic tone, then silence. float32 in [-1, 1]."""
    n = chunks * CHUNK_SAMPLES
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE_HZ
    pitch = 140.0 + 30.0 * np.sin(2 * np.pi * 3.0 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE_HZ
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t))
    envelope = np.zeros(n)
    envelope[n // 4: 3 * n // 4] = 0.3
    return (voiced * envelope).astype(np.float32)


def stream_probabilities(session, signal: np.ndarray) -> np.ndarray:
    """Run `signal` through the model chunk by chunk, as a streaming caller must. -> [chunks] speech probability."""
    state = np.zeros(STATE_SHAPE, np.float32)
    context = np.zeros((1, CONTEXT_SAMPLES), np.float32)
    sr = np.array(SAMPLE_RATE_HZ, np.int64)
    probs = []
    for start in range(0, len(signal) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
        chunk = np.concatenate([context, signal[None, start:start + CHUNK_SAMPLES]], axis=1)
        prob, state = session.run(["output", "stateN"], {"input": chunk, "state": state, "sr": sr})
        context = chunk[:, -CONTEXT_SAMPLES:]
        probs.append(float(prob.reshape(-1)[0]))
    return np.array(probs)


def _find(source: Path) -> Path:
    found = sorted(source.rglob(MODEL_FILE))
    if not found:
        raise PullError(f"{MODEL_FILE} is not in the silero-vad package; its layout changed, update the recipe")
    return found[0]


def build(source: Path, out: Path, progress: Progress) -> None:
    """Fill `out` with model.onnx (Silero VAD, 16 kHz), LICENSE and a model.toml describing the streaming contract."""
    import onnxruntime as ort
    import tomli_w

    progress.stage("copy the 16 kHz Silero VAD model", 2)
    shutil.copyfile(_find(source), out / "model.onnx")
    licence = sorted(source.rglob("LICENSE"))
    if licence:
        shutil.copyfile(licence[0], out / "LICENSE")
    progress.advance()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = ({i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()})
    if names != ({"input", "state", "sr"}, {"output", "stateN"}):
        raise PullError(f"silero VAD's inputs/outputs changed ({names}); update the recipe")
    silence = stream_probabilities(session, np.zeros(8 * CHUNK_SAMPLES, np.float32))
    expected = stream_probabilities(session, reference_signal())
    progress.advance()
    if silence.max() > 0.2 or expected.max() < 0.5:
        raise PullError(f"silero VAD does not tell silence ({silence.max():.2f}) from a voiced tone "
                        f"({expected.max():.2f}); the model or onnxruntime is broken")
    progress.note(f"silero-vad: silence max probability {silence.max():.3f}; reference tone peaks at "
                  f"{expected.max():.3f}")
    card = {
        "model": {"name": "silero-vad", "tasks": ["vad"], "license": "MIT",
                  "description": "Silero VAD v6: probability that a 32 ms chunk of 16 kHz mono audio is speech"},
        "files": {"model.onnx": {"runtime": "onnx", "quantization": "none (float32, as published)",
                                 "upstream_file": MODEL_FILE}},
        "vad": {
            "sample_rate_hz": SAMPLE_RATE_HZ, "chunk_samples": CHUNK_SAMPLES, "context_samples": CONTEXT_SAMPLES,
            "input": "input", "input_shape": ["batch", CONTEXT_SAMPLES + CHUNK_SAMPLES],
            "state": "state", "state_shape": [2, "batch", 128], "sample_rate_input": "sr",
            "output": "output", "output_shape": ["batch", 1], "state_output": "stateN",
            "threshold": 0.5,
            "usage": "per stream: state = zeros, context = 64 zeros; each call feeds context + the next 512 "
                     "samples (float32 in [-1, 1]) with sr = 16000 (int64 scalar), then keeps stateN as state "
                     "and the input's last 64 samples as context",
        },
        "vad_selfcheck": {
            "signal": "edgeslm.convert.silero.reference_signal()", "chunks": REFERENCE_CHUNKS,
            "expected": [round(float(p), 5) for p in expected], "max_abs_error": 0.02,
        },
    }
    (out / "model.toml").write_text(tomli_w.dumps(card), encoding="utf-8")
