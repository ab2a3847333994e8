"""The recogniser on real speech (espeak-ng + sox, pocketsphinx): what it hears depends only on the utterance."""

from __future__ import annotations

import pytest

from edgeslm.config import IntentConfig, SpeechConfig
from edgeslm.voice.speech import PhraseRecognizer
from tests.voice_assets import INTENTS, as_heard, missing_tools, speak

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(missing_tools()), reason="needs espeak-ng, sox and arecord (.ci/run installs "
                                                                  "them: apt install espeak-ng sox alsa-utils)")]


@pytest.fixture(scope="module")
def recognizer():
    return PhraseRecognizer([IntentConfig(name=n, phrases=p) for n, p, *_ in INTENTS], SpeechConfig())


def test_an_utterance_is_heard_the_same_whatever_came_before(recognizer, tmp_path):
    # framed as the VAD hands it over: a little pre-roll, then the trailing silence that ended it
    fan = as_heard(speak("turn on the fan", voice="en-gb", speed=150, workdir=tmp_path), lead_s=0.1, tail_s=0.5)
    first = recognizer.transcribe(fan)
    assert first.text == "turn on the fan" and first.complete
    for text, voice in [("volume down", "en-us"), ("what is the weather like in london", "en-us+f3"),
                        ("stop", "en-gb")]:
        recognizer.transcribe(as_heard(speak(text, voice=voice, speed=175, workdir=tmp_path), noise=300.0))
    again = recognizer.transcribe(fan)
    assert (again.text, again.frame_score, again.words_ms) == (first.text, first.frame_score, first.words_ms)


def test_words_span_the_phrase_and_not_speech_beyond_it(recognizer, tmp_path):
    def share(text: str) -> float:
        spoken = speak(text, workdir=tmp_path)  # espeak-ng's own clip: speech from end to end, no pauses added
        heard = recognizer.transcribe(as_heard(spoken, lead_s=0.0, tail_s=0.0))
        return (heard.words_ms or 0.0) / (1000 * len(spoken) / 16000)

    assert share("what time is it") > 0.7
    assert share("what is the weather like in london") < 0.7  # heard, if at all, as a shorter phrase
