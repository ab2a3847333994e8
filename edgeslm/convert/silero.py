"""Build Silero VAD from the silero-vad wheel: its 16 kHz ONNX model, described for a streaming caller."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgeslm.errors import ModelLoadError, PullError
from edgeslm.runtime import EngineOptions, open_engine
from edgeslm.store.progress import Progress
from edgeslm.tasks.vad import SileroVad, reference_signal

MODEL_FILE = "silero_vad_16k_op15.onnx"  # the 16 kHz-only graph (the default one also takes 8 kHz)
SAMPLE_RATE_HZ = 16000
CHUNK_SAMPLES = 512
CONTEXT_SAMPLES = 64
REFERENCE_CHUNKS = 16


def _find(source: Path) -> Path:
    found = sorted(source.rglob(MODEL_FILE))
    if not found:
        raise PullError(f"{MODEL_FILE} is not in the silero-vad package; its layout changed, update the recipe")
    return found[0]


def build(source: Path, out: Path, progress: Progress) -> None:
    """Fill `out` with model.onnx (Silero VAD, 16 kHz), LICENSE and a model.toml describing the streaming contract."""
    import tomli_w

    progress.stage("copy the 16 kHz Silero VAD model", 2)
    shutil.copyfile(_find(source), out / "model.onnx")
    licence = sorted(source.rglob("LICENSE"))
    if licence:
        shutil.copyfile(licence[0], out / "LICENSE")
    progress.advance()
    try:  # the runtime class the voice pipeline uses, streaming as it does
        vad = SileroVad(open_engine(out / "model.onnx", "onnx", EngineOptions(threads=1)))
    except ModelLoadError as exc:
        raise PullError(f"silero VAD's inputs/outputs changed ({exc}); update the recipe") from None
    try:
        outputs = [spec.name for spec in vad.engine.outputs]
        if outputs != ["output", "stateN"]:
            raise PullError(f"silero VAD's outputs changed ({outputs}); update the recipe")
        silence = vad.probabilities(np.zeros(8 * CHUNK_SAMPLES, np.float32))
        expected = vad.probabilities(reference_signal(REFERENCE_CHUNKS))
    finally:
        vad.close()
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
            "signal": "edgeslm.tasks.vad.reference_signal()", "chunks": REFERENCE_CHUNKS,
            "expected": [round(float(p), 5) for p in expected], "max_abs_error": 0.02,
        },
    }
    (out / "model.toml").write_text(tomli_w.dumps(card), encoding="utf-8")
