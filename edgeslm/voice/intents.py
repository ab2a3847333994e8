"""Transcript to intent through a served model (tasks/): its classifier labels, or embedding similarity."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeslm.config import IntentConfig
from edgeslm.errors import ConfigError, EdgeslmError
from edgeslm.tasks.served import ModelRegistry, ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntentGuess:
    """The best intent for a text, its confidence (0..1) and the runners-up."""

    intent: str
    confidence: float
    top: list[dict[str, Any]] = field(default_factory=list)


def check_intent_model(method: str, model_name: str, tasks: Sequence[str], labels: Sequence[str],
                       intent_names: Sequence[str]) -> None:
    """Whether the model can resolve the intents by `method`: ConfigError (serve exits 78) if not.
    Serve checks the loaded model; doctor checks its card, with the same words."""
    if method == "classify":
        if "classify" not in tasks:
            raise ConfigError(f"voice.intent_model {model_name!r} does not classify; choose a classifier or set "
                              "voice.intent_method = \"similarity\"", param="voice.intent_model")
        for i, name in enumerate(intent_names):
            if name not in labels:
                raise ConfigError(f"voice.intents[{i}].name {name!r} is not a label of model {model_name!r} "
                                  f"({', '.join(sorted(labels))}); rename it or use intent_method = \"similarity\"",
                                  param=f"voice.intents[{i}].name")
    elif "embed" not in tasks:
        raise ConfigError(f"voice.intent_model {model_name!r} does not embed; choose an embedding model",
                          param="voice.intent_model")


class ClassifierIntents:
    """The model's best label among the configured intents; confidence is its softmax probability."""

    method = "classify"

    def __init__(self, registry: ModelRegistry, model_name: str, intents: Sequence[IntentConfig],
                 timeout_s: float = 10.0):
        self.registry, self.model_name, self.timeout_s = registry, model_name, timeout_s
        self.names = [intent.name for intent in intents]
        model = registry.models.get(model_name)
        if model is None:
            log.warning("voice: intent model %r is not loaded; voice commands will fail until it is", model_name)
            return
        check_intent_model("classify", model_name, model.tasks, model.classify.labels if model.classify else (),
                           self.names)
        self._check_phrases(model, intents)

    def _check_phrases(self, model: ServedModel, intents: Sequence[IntentConfig]) -> None:
        for intent in intents:
            for phrase in intent.phrases:
                guess = self.resolve(phrase)
                if guess.intent != intent.name:
                    log.warning("voice: model %r reads the phrase %r of intent %r as %r (%.2f); that command will "
                                "not work as configured", self.model_name, phrase, intent.name, guess.intent,
                                guess.confidence)

    def resolve(self, text: str) -> IntentGuess:
        model = self.registry.get(self.model_name, "classify")
        assert model.classify is not None
        encoded = model.classify.prepare([text])
        outputs = model.infer(encoded.feeds, timeout_s=self.timeout_s)
        answer = model.classify.answer(encoded, outputs, k=len(model.classify.labels))[0]
        wanted = [t for t in answer["top"] if t["label"] in self.names]
        best = wanted[0] if wanted else {"label": answer["label"], "score": 0.0}
        return IntentGuess(best["label"], float(best["score"]), wanted[:3])


class SimilarityIntents:
    """The intent of the nearest configured phrase by cosine similarity of the model's sentence embeddings."""

    method = "similarity"

    def __init__(self, registry: ModelRegistry, model_name: str, intents: Sequence[IntentConfig],
                 timeout_s: float = 10.0):
        self.registry, self.model_name, self.timeout_s = registry, model_name, timeout_s
        self.phrases = [p for intent in intents for p in intent.phrases]
        self.owners = np.array([intent.name for intent in intents for _ in intent.phrases], dtype=object)
        self._cache: tuple[ServedModel, np.ndarray] | None = None
        self._lock = threading.Lock()
        model = registry.models.get(model_name)
        if model is not None:
            check_intent_model("similarity", model_name, model.tasks, (), ())

    def _embed(self, model: ServedModel, texts: Sequence[str]) -> np.ndarray:
        assert model.embed is not None
        encoded = model.embed.prepare(texts)
        return model.embed.answer(encoded, model.infer(encoded.feeds, timeout_s=self.timeout_s))

    def _phrase_vectors(self, model: ServedModel) -> np.ndarray:
        with self._lock:
            if self._cache is None or self._cache[0] is not model:  # a reloaded model gets new vectors
                self._cache = (model, self._embed(model, self.phrases))
            return self._cache[1]

    def resolve(self, text: str) -> IntentGuess:
        model = self.registry.get(self.model_name, "embed")
        phrases = self._phrase_vectors(model)
        scores = phrases @ self._embed(model, [text])[0]
        order = np.argsort(-scores)
        top, seen = [], set()
        for index in order:
            owner = self.owners[index]
            if owner not in seen:
                seen.add(owner)
                top.append({"label": owner, "score": round(float(scores[index]), 6), "phrase": self.phrases[index]})
        return IntentGuess(top[0]["label"], max(0.0, top[0]["score"]), top[:3])


def intent_resolver(method: str, registry: ModelRegistry, model_name: str,
                    intents: Sequence[IntentConfig]) -> ClassifierIntents | SimilarityIntents:
    try:
        cls = {"classify": ClassifierIntents, "similarity": SimilarityIntents}[method]
    except KeyError:
        raise ConfigError(f"voice.intent_method {method!r} is not classify or similarity") from None
    try:
        return cls(registry, model_name, intents)
    except ConfigError:
        raise
    except EdgeslmError as exc:
        raise ConfigError(f"voice: intent model {model_name!r}: {exc}") from None
