"""Text classification: logits -> softmax -> top-k labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeslm.core.scores import softmax, top_k
from edgeslm.errors import ModelLoadError
from edgeslm.runtime.base import TensorSpec
from edgeslm.tasks.text import Encoded, TextEncoder


def read_labels(path: Path) -> list[str]:
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc.strerror}") from None
    if not labels:
        raise ModelLoadError(f"labels file {path} is empty; put one label per line")
    return labels


class ClassifyTask:
    """Labels texts with the model's classes; scores are softmax probabilities."""

    name = "classify"

    def __init__(self, encoder: TextEncoder, output: TensorSpec, labels: Sequence[str]):
        if output.shape and output.shape[-1] is not None and output.shape[-1] != len(labels):
            raise ModelLoadError(
                f"output {output.name!r} has {output.shape[-1]} classes but the labels file has {len(labels)}"
            )
        self.encoder = encoder
        self.output = output.name
        self.labels = np.asarray(labels, dtype=object)

    def prepare(self, texts: Sequence[str], *, truncate: bool = True) -> Encoded:
        return self.encoder.encode(texts, truncate=truncate)

    def answer(self, encoded: Encoded, outputs: Mapping[str, np.ndarray], k: int = 3) -> list[dict]:
        """One dict per text: best label and score, the top-k list, and whether the text was truncated."""
        probs = softmax(outputs[self.output])
        order, scores = top_k(probs, k)
        names = self.labels[order].tolist()
        rounded = np.round(scores, 6).tolist()
        truncated = encoded.truncated.tolist()
        results = []
        for i in range(encoded.rows):
            top = [{"label": name, "score": score} for name, score in zip(names[i], rounded[i])]
            results.append({"index": i, "label": names[i][0], "score": rounded[i][0], "top": top,
                            "truncated": truncated[i]})
        return results
