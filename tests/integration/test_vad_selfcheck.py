"""Silero VAD checks itself when opened: its card's answers to the reference signal, replayed on this runtime."""

from __future__ import annotations

import shutil

import pytest
import tomli_w

from edgeslm.convert.silero import REFERENCE_CHUNKS
from edgeslm.errors import ModelLoadError
from edgeslm.tasks.vad import SileroVad, reference_signal
from tests.voice_assets import silero_vad_onnx

pytestmark = pytest.mark.integration


def model_folder(tmp_path, shift: float = 0.0):
    folder = tmp_path / "silero-vad"
    folder.mkdir()
    shutil.copyfile(silero_vad_onnx(), folder / "model.onnx")
    fresh = SileroVad.open(folder / "model.onnx")  # no card yet: no self-check
    expected = fresh.probabilities(reference_signal(REFERENCE_CHUNKS))
    fresh.close()
    card = {"vad_selfcheck": {"chunks": REFERENCE_CHUNKS, "max_abs_error": 0.02,
                              "expected": [round(float(p) + shift, 5) for p in expected]}}
    (folder / "model.toml").write_text(tomli_w.dumps(card))
    return folder / "model.onnx", expected


def test_a_vad_that_answers_as_its_card_says_opens(tmp_path):
    path, expected = model_folder(tmp_path)
    vad = SileroVad.open(path)
    try:
        assert vad.selfcheck(path.with_name("model.toml")) <= 1e-4  # the same runtime: the same answers
        assert expected.max() > 0.5 and expected[0] < 0.2  # the tone is speech, the silence is not
    finally:
        vad.close()


def test_a_vad_that_answers_otherwise_is_refused_with_the_measured_error(tmp_path):
    path, _ = model_folder(tmp_path, shift=0.3)
    with pytest.raises(ModelLoadError, match=r"self-check failed.*up to 0\.300"):
        SileroVad.open(path)
