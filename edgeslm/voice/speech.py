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


class PhraseRecognizer:
    """Streams one utterance at a time: `start`, `feed` pieces as they arrive, `finish`.

    The decoder is built once; the grammar holds only the configured phrases, so the
    answer is one of them, part of one (the speech did not fit: no match), or nothing.
    """

    def __init__(self, intents: Sequence[IntentConfig], config: SpeechConfig, sample_rate: int = 16000):
        try:
            import pocketsphinx
        except ImportError as exc:
            raise VoiceUnavailableError(f"voice commands need pocketsphinx ({exc}); pip install 'edgeslm[audio]'"
                                        ) from None
        options: dict[str, Any] = {"samprate": sample_rate, "lm": None, "loglevel": "FATAL"}
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
        self._active = False

    def start(self) -> None:
        if self._active:
            self._decoder.end_utt()
        self._decoder.start_utt()
        self._active = True

    def feed(self, samples: np.ndarray) -> None:
        self._decoder.process_raw(samples.astype("<i2", copy=False).tobytes(), False, False)

    def finish(self) -> Heard:
        self._decoder.end_utt()
        self._active = False
        hyp = self._decoder.hyp()
        text = normalise(hyp.hypstr) if hyp is not None and hyp.hypstr else ""
        if not text:
            return Heard("", False, float("-inf"))
        return Heard(text, text in self.phrases, self._frame_score())

    def _frame_score(self) -> float:
        # Segment scores are relative to the best path of each frame; their per-frame mean says how well the
        # grammar's words fit the sound (speech that is not a configured phrase scores lower).
        total, frames = 0.0, 0
        for seg in self._decoder.seg():
            if seg.word.startswith(("<", "[")):
                continue
            total += math.log(max(seg.ascore, 1e-300))
            frames += seg.end_frame - seg.start_frame + 1
        return total / frames if frames else float("-inf")

    def transcribe(self, samples: np.ndarray) -> Heard:
        self.start()
        self.feed(samples)
        return self.finish()
