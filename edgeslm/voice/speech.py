"""Speech to text with pocketsphinx, constrained by a JSGF grammar made from the configured phrases."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeslm.config import IntentConfig, SpeechConfig
from edgeslm.errors import ConfigError, VoiceUnavailableError

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def normalise(phrase: str) -> str:
    """What the recogniser can emit: lower case words, no punctuation."""
    return " ".join(_NOT_WORD.sub(" ", phrase.lower()).split())


def grammar_for(phrases: Sequence[str]) -> str:
    """A JSGF grammar whose sentences are exactly `phrases` (already normalised)."""
    choices = " | ".join(f"( {p} )" for p in sorted(set(phrases)))
    return f"#JSGF V1.0;\ngrammar commands;\npublic <command> = {choices};\n"


@dataclass(frozen=True)
class Heard:
    """What the recogniser heard: the words, whether they form a whole configured phrase, and how well they fit."""

    text: str
    complete: bool
    frame_score: float  # mean per-frame log acoustic score of the words against the best free path; 0 = perfect
    words_ms: float | None = None  # audio the words span, silences inside the phrase left out; None = not known


# pocketsphinx's forward search keeps scores divided by 2**10 and reports its segments' acoustic scores at that
# scale; times this, their logs are log-likelihoods in nats.
_FORWARD_SCORE_SCALE = 2 ** 10
_FRAME_MS = 10.0  # pocketsphinx's feature frame rate is 100 per second


class PhraseRecognizer:
    """Turns one utterance at a time into one of the configured phrases.

    The decoder is built once; the grammar holds only the configured phrases, so the answer
    is one of them or nothing. Three choices, each measured on espeak-ng voices (make bench-voice):
    - Each utterance is decoded whole once it has ended, normalised by its own cepstral mean, with the
      front end reset. Streaming normalises by the mean of what came before (the last commands,
      or the model's prior at start-up), so one utterance was heard differently depending on its
      predecessors; whole, a result depends only on its own audio. The mean also counts the
      silence around the speech, so the pipeline hands over the speech with a fixed margin, not
      however long the speaker paused. The cost is the decode after the end of speech, about
      30 ms per second of audio on a 2-core x86 VM at topn 16.
    - The forward search's answer, not the lattice's best path: the best path may end on any
      word in the last frame, and stopped inside phrases ("turn on the") on a few LSB of noise.
    - `topn` 16 Gaussians per frame instead of pocketsphinx's 4: 97% of commands right instead
      of 94%, and far fewer answers that flip with the noise floor.
    """

    def __init__(self, intents: Sequence[IntentConfig], config: SpeechConfig, sample_rate: int = 16000):
        try:
            import pocketsphinx
        except ImportError as exc:
            raise VoiceUnavailableError(f"voice commands need pocketsphinx ({exc}); pip install 'edgeslm[audio]'"
                                        ) from None
        options: dict[str, Any] = {"samprate": sample_rate, "lm": None, "loglevel": "FATAL", "bestpath": False,
                                   "topn": config.topn}
        if config.acoustic_model is not None:
            options["hmm"] = str(config.acoustic_model)
        if config.dictionary is not None:
            options["dict"] = str(config.dictionary)
        try:
            self._decoder = pocketsphinx.Decoder(**options)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"voice.speech: pocketsphinx cannot load its model: {exc}") from None
        for word, phones in config.pronunciations.items():
            try:
                self._decoder.add_word(normalise(word), " ".join(phones.upper().split()), True)
            except Exception as exc:
                raise ConfigError(f"voice.speech.pronunciations[{word!r}]: {exc}; write CMU phones, e.g. "
                                  "\"HH AH L OW\"") from None
        self.phrases: set[str] = set()
        for i, intent in enumerate(intents):
            for j, phrase in enumerate(intent.phrases):
                text = normalise(phrase)
                if not text:
                    raise ConfigError(f"voice.intents[{i}].phrases[{j}] has no words", param=f"voice.intents[{i}]")
                for word in text.split():
                    if self._decoder.lookup_word(word) is None:
                        hint = "spell numbers as words; " if word.isdigit() else ""
                        raise ConfigError(
                            f"voice.intents[{i}].phrases[{j}] ({phrase!r}): the word {word!r} is not in the "
                            f"pronunciation dictionary; {hint}add it under [voice.speech.pronunciations]",
                            param=f"voice.intents[{i}].phrases[{j}]")
                self.phrases.add(text)
        self.grammar = grammar_for(sorted(self.phrases))
        self._decoder.add_jsgf_string("commands", self.grammar)
        self._decoder.activate_search("commands")

    def transcribe(self, samples: np.ndarray) -> Heard:
        """The configured phrase in `samples` (one utterance, 16-bit mono), or nothing."""
        decoder = self._decoder
        decoder.reinit_feat()  # the front end forgets the last utterance (its state nudged the scores)
        decoder.start_utt()
        decoder.process_raw(samples.astype("<i2", copy=False).tobytes(), False, True)  # full_utt: its own mean
        decoder.end_utt()
        hyp = decoder.hyp()
        text = normalise(hyp.hypstr) if hyp is not None and hyp.hypstr else ""
        if not text:
            return Heard("", False, float("-inf"))
        score, frames = self._word_frames()
        return Heard(text, text in self.phrases, score, frames * _FRAME_MS)

    def _word_frames(self) -> tuple[float, int]:
        """The words' mean per-frame acoustic score and how many frames they span.

        Segment scores are relative to the best path of each frame; their per-frame mean says how well the
        grammar's words fit the sound (speech that is not a configured phrase scores lower). Speech that is
        longer than any phrase ends up partly in silences between or around the words (see words_ms).
        """
        total, frames = 0.0, 0
        for seg in self._decoder.seg() or ():
            if seg.word.startswith(("<", "[", "(")):  # silence, fillers, (NULL) transitions
                continue
            total += math.log(max(seg.ascore, 1e-300)) * _FORWARD_SCORE_SCALE
            frames += seg.end_frame - seg.start_frame + 1
        return (total / frames if frames else float("-inf")), frames
